//! The gRPC `IngestService` (`proto/sluice/v1/ingest.proto`), served on the HTTP
//! port: requests whose `content-type` starts with `application/grpc` are routed
//! here by the listener, everything else goes to the HTTP API.
//!
//! The contract is the HTTP one. One request message is one batch, appended whole
//! and answered only once durable. `IngestStream` and `IngestBidi` keep up to
//! `grpc.window` messages in flight, so a fast producer is not held to one fsync per
//! message; their appends still reach the queue in message order.
//!
//! Cheap checks first, as on HTTP: the listener's `route` calls [`admit_call`] with
//! the call's headers — method, API key, shutdown, `http.max_concurrent_requests`,
//! for `Ingest` a full queue — before a byte of any message is read, and passes the
//! [`Admission`] (principal and permit) in the request's extensions. Messages are
//! then read by hand ([`frames`]): refused on their length prefix past
//! `http.max_body_bytes`, charged to the byte budget as they arrive, decompressed
//! with bounds ([`crate::front::inflate`]), walked on the wire ([`scan`]: at most
//! `http.max_events_per_request` events and header entries, text fields UTF-8)
//! before prost allocates anything per event, and decoded and validated off the
//! async runtime when large. Answers are written by hand too ([`reply`]).
//!
//! Back-pressure: a unary call finds a full queue before its message is read
//! (RESOURCE_EXHAUSTED with a retry delay). A stream instead stops reading while the
//! queue is full, for up to [`HOLD_MAX`]: HTTP/2 flow control slows the producer to
//! what the processor delivers, and no message is decoded only to be refused. Past
//! that, the next message is read and refused.
//!
//! Shutdown: a stream stops reading when the node starts shutting down, lets the
//! messages in flight finish, and ends with UNAVAILABLE (and a retry delay), so an
//! idle stream does not hold its permit, nor the shutdown, until the grace period.

mod events;
mod frames;
mod reply;
pub mod scan;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use http::StatusCode;
use hyper::body::Incoming;
use sluice_proto::v1::{IngestAck, IngestResponse};
use sluice_telemetry::{KeyValue, RequestSpan};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tonic::Status;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::front::inflate::Encoding;
use crate::front::IngestState;
use events::{decode, Prepared};
use frames::{Messages, Raw};
pub use reply::GrpcResponse;

/// Longest a stream waits for room in a full queue before reading on (and failing).
pub const HOLD_MAX: Duration = Duration::from_secs(5);

/// How often a held-back stream looks for room again.
const HOLD_POLL: Duration = Duration::from_millis(5);

/// Messages at least this large (as received, or any compressed one) are
/// decompressed, scanned and decoded on the blocking pool.
const BLOCKING_BYTES: usize = 64 * 1024;

/// Waits until the queue has room for a message of `max_body_bytes`, or `HOLD_MAX`.
async fn hold_while_full(state: &IngestState) {
    let room = state.limits.max_body_bytes.0;
    let started = tokio::time::Instant::now();
    while !state.has_room(room) && started.elapsed() < HOLD_MAX {
        tokio::time::sleep(HOLD_POLL).await;
    }
}

/// The service, ready to serve calls admitted by [`admit_call`].
pub fn service(state: Arc<IngestState>, window: usize) -> Grpc {
    Grpc {
        state,
        window: window.max(1),
    }
}

/// The `IngestService`.
#[derive(Clone)]
pub struct Grpc {
    state: Arc<IngestState>,
    window: usize,
}

/// The three RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Ingest,
    IngestStream,
    IngestBidi,
}

impl Rpc {
    /// The span name OpenTelemetry's RPC conventions give the call.
    fn span_name(self) -> &'static str {
        match self {
            Rpc::Ingest => "sluice.v1.IngestService/Ingest",
            Rpc::IngestStream => "sluice.v1.IngestService/IngestStream",
            Rpc::IngestBidi => "sluice.v1.IngestService/IngestBidi",
        }
    }

    fn from_path(path: &str) -> Option<Rpc> {
        match path.strip_prefix("/sluice.v1.IngestService/")? {
            "Ingest" => Some(Rpc::Ingest),
            "IngestStream" => Some(Rpc::IngestStream),
            "IngestBidi" => Some(Rpc::IngestBidi),
            _ => None,
        }
    }
}

/// What admission established about a call, handed to the service in the
/// request's extensions.
#[derive(Clone)]
pub struct Admission {
    rpc: Rpc,
    principal: Principal,
    encoding: Encoding,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Admits a call from its headers alone, before any message is read: the method,
/// the API key (`authorization: Bearer KEY` or `x-api-key`), the message encoding,
/// shutdown and `http.max_concurrent_requests`, and for a unary call a full queue.
/// Refusals are counted by reason.
pub fn admit_call<B>(state: &IngestState, req: &http::Request<B>) -> Result<Admission, Status> {
    let Some(rpc) = Rpc::from_path(req.uri().path()) else {
        count_rejection(state, None, "not_found");
        return Err(Status::unimplemented(format!(
            "no method {} in sluice.v1.IngestService",
            req.uri().path()
        )));
    };
    let principal = state
        .keys
        .authenticate(req.headers())
        .map_err(|e| reject(state, None, e))?;
    let encoding = match req.headers().get("grpc-encoding") {
        None => Encoding::Identity,
        Some(v) => match v.to_str().ok().and_then(Encoding::parse) {
            Some(e) => e,
            None => {
                count_rejection(state, Some(&principal), "unsupported_encoding");
                return Err(Status::unimplemented(format!(
                    "grpc-encoding {v:?} is not supported; use gzip or zstd"
                )));
            }
        },
    };
    let permit = state
        .admit()
        .map_err(|e| reject(state, Some(&principal), e))?;
    if rpc == Rpc::Ingest {
        // A unary call is refused before its message is even read when the queue has
        // no room for a message of the largest size (gRPC has no Content-Length to
        // go by; `/readyz` uses the same bound); streams hold back instead.
        state
            .shed_if_full(state.limits.max_body_bytes.0)
            .map_err(|e| reject(state, Some(&principal), e))?;
    }
    Ok(Admission {
        rpc,
        principal,
        encoding,
        _permit: Arc::new(permit),
    })
}

impl Grpc {
    /// Serves one call; `req` carries the [`Admission`] from [`admit_call`].
    pub async fn call(&self, mut req: http::Request<Incoming>) -> GrpcResponse {
        let Some(admission) = req.extensions_mut().remove::<Admission>() else {
            return reply::status(Status::internal("the call was not admitted"));
        };
        let limit = self.state.limits.max_body_bytes.0;
        // The call's span ends when the last of its appends is done with it.
        let trace = RequestSpan::start(admission.rpc.span_name(), req.headers(), || {
            let method = admission.rpc.span_name().rsplit('/').next().unwrap_or("");
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "sluice.v1.IngestService"),
                KeyValue::new("rpc.method", method),
                KeyValue::new(
                    "sluice.key",
                    crate::auth::key_name(&admission.principal).to_string(),
                ),
            ]
        })
        .map(Arc::new);
        let messages = Messages::new(req.into_body(), &self.state.budget, limit);
        let call = Call {
            state: self.state.clone(),
            principal: admission.principal.clone(),
            encoding: admission.encoding,
            window: self.window,
            trace,
        };
        let r = match admission.rpc {
            Rpc::Ingest => call.ingest(messages).await,
            Rpc::IngestStream => call.ingest_stream(messages).await,
            Rpc::IngestBidi => call.ingest_bidi(messages, admission.clone()),
        };
        drop(admission);
        r
    }
}

/// One admitted call.
#[derive(Clone)]
struct Call {
    state: Arc<IngestState>,
    principal: Principal,
    encoding: Encoding,
    window: usize,
    trace: Option<Arc<RequestSpan>>,
}

/// What one accepted request message produced.
struct Accepted {
    events: u64,
    ids: Vec<String>,
}

impl Call {
    async fn ingest(&self, mut messages: Messages) -> GrpcResponse {
        let state = &self.state;
        let timeout = state.limits.body_read_timeout.0;
        let raw = match tokio::time::timeout(timeout, messages.next()).await {
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the message did not arrive within http.body_read_timeout ({timeout:?})"),
            )),
            Ok(Ok(None)) => Err(ApiError::bad_request(
                "empty_body",
                "the call has no request message",
            )),
            Ok(Ok(Some(raw))) => Ok(raw),
            Ok(Err(e)) => Err(e),
        };
        let prepared = match raw {
            Ok(raw) => self.prepare(raw).await,
            Err(e) => Err(e),
        };
        match append(state.clone(), prepared, self.trace.clone()).await {
            Ok(a) => reply::unary(&IngestResponse {
                accepted: a.events,
                ids: a.ids,
            }),
            Err(e) => {
                if let Some(t) = &self.trace {
                    t.set(KeyValue::new("error.type", e.code));
                }
                reply::status(reject(state, Some(&self.principal), e))
            }
        }
    }

    async fn ingest_stream(&self, mut inbound: Messages) -> GrpcResponse {
        let state = &self.state;
        let max_ids = state.limits.max_events_per_request;
        let mut pending: FuturesOrdered<_> = FuturesOrdered::new();
        let mut total = IngestResponse::default();
        let mut sequence = 0u64;
        let mut inbound_done = false;
        // Ids promised to the answer: bounded over the whole call.
        let mut ids_promised = 0usize;
        // The first rejected message; messages after it that were already in flight
        // (only possible when the queue, not validation, refused it) still complete.
        let mut failed: Option<(u64, ApiError)> = None;
        let mut accepted_after = Vec::new();
        loop {
            tokio::select! {
                // Finish (and first-poll, which enqueues) what is in flight before
                // reading further ahead: appends reach the queue in message order.
                biased;
                Some((seq, done)) = pending.next() => match done as Result<Accepted, ApiError> {
                    Ok(a) => {
                        total.accepted += a.events;
                        total.ids.extend(a.ids);
                        if failed.as_ref().is_some_and(|(f, _)| seq > *f) {
                            accepted_after.push(seq);
                        }
                    }
                    Err(e) => {
                        if failed.as_ref().is_none_or(|(f, _)| seq < *f) {
                            failed = Some((seq, e));
                        }
                    }
                },
                _ = state.shutting_down.cancelled(), if !inbound_done && failed.is_none() => {
                    // Stop reading; what is in flight finishes, then UNAVAILABLE.
                    failed = Some((sequence + 1, ApiError::shutting_down()));
                }
                msg = next_message(state, &mut inbound),
                    if !inbound_done && failed.is_none() && pending.len() < self.window => {
                    let Some(msg) = msg else {
                        // Idle: stop reading; what is in flight finishes, then the answer.
                        failed = Some((sequence + 1, stream_idle(state)));
                        continue;
                    };
                    match msg {
                        Ok(Some(raw)) => {
                            sequence += 1;
                            let prepared = self.prepare(raw).await.and_then(|p| {
                                if !p.return_ids {
                                    return Ok(p);
                                }
                                ids_promised += p.events.len();
                                if ids_promised > max_ids {
                                    return Err(too_many_ids(max_ids, ids_promised));
                                }
                                Ok(p)
                            });
                            if let Err(e) = prepared {
                                failed = Some((sequence, e));
                                continue;
                            }
                            let seq = sequence;
                            let state = state.clone();
                            let trace = self.trace.clone();
                            pending.push_back(async move {
                                (seq, append(state, prepared, trace).await)
                            });
                        }
                        Ok(None) => inbound_done = true,
                        Err(e) => {
                            // The client's stream broke or sent a bad frame: what is in
                            // flight still completes (it may be durable), nothing is acked.
                            while pending.next().await.is_some() {}
                            return reply::status(reject(state, Some(&self.principal), e));
                        }
                    }
                }
                else => break,
            }
        }
        if let Some((seq, e)) = failed {
            let mut status = reject(state, Some(&self.principal), e);
            let md = status.metadata_mut();
            md.insert("sluice-failed-message", seq.into());
            md.insert("sluice-accepted-events", total.accepted.into());
            if !accepted_after.is_empty() {
                let list: Vec<String> = accepted_after.iter().map(u64::to_string).collect();
                if let Ok(v) = list.join(",").parse() {
                    md.insert("sluice-accepted-after-failure", v);
                }
            }
            return reply::status(status);
        }
        reply::unary(&total)
    }

    /// Admission (its permit) lives as long as the stream's task.
    fn ingest_bidi(&self, mut inbound: Messages, admission: Admission) -> GrpcResponse {
        let call = self.clone();
        let window = self.window;
        let (tx, rx) = mpsc::channel::<Result<IngestAck, Status>>(window);
        tokio::spawn(async move {
            let _admission = admission;
            let state = call.state.clone();
            let mut pending = FuturesOrdered::new();
            let mut sequence = 0u64;
            let mut inbound_done = false;
            let mut stopping = false;
            let mut idle = false;
            let mut sequences = VecDeque::with_capacity(window);
            loop {
                tokio::select! {
                    biased;
                    Some(done) = pending.next() => {
                        let seq = sequences.pop_front().expect("one sequence per pending message");
                        let done: Result<Accepted, ApiError> = done;
                        let ack = match done {
                            Ok(a) => {
                                IngestAck { sequence: seq, accepted: a.events, ..Default::default() }
                            }
                            Err(e) => {
                                let status = reject(&state, Some(&call.principal), e);
                                IngestAck {
                                    sequence: seq,
                                    accepted: 0,
                                    error: format!("{:?}: {}", status.code(), status.message()),
                                    retry_after_ms: crate::error::retry_after_ms(&status),
                                }
                            }
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    _ = state.shutting_down.cancelled(), if !inbound_done && !stopping => {
                        stopping = true;
                    }
                    msg = next_message(&state, &mut inbound),
                        if !inbound_done && !stopping && pending.len() < window => {
                        let Some(msg) = msg else {
                            idle = true;
                            stopping = true;
                            continue;
                        };
                        match msg {
                            Ok(Some(raw)) => {
                                sequence += 1;
                                sequences.push_back(sequence);
                                let prepared = call.prepare(raw).await;
                                pending.push_back(append(
                                    state.clone(),
                                    prepared,
                                    call.trace.clone(),
                                ));
                            }
                            Ok(None) => inbound_done = true,
                            Err(e) => {
                                while pending.next().await.is_some() {}
                                let _ = tx.send(Err(reject(&state, Some(&call.principal), e))).await;
                                return;
                            }
                        }
                    }
                    else => break,
                }
            }
            if stopping {
                let why = if idle {
                    stream_idle(&state)
                } else {
                    ApiError::shutting_down()
                };
                let _ = tx
                    .send(Err(reject(&state, Some(&call.principal), why)))
                    .await;
            }
        });
        reply::streaming(rx)
    }

    /// Checks the rate limits, then decodes and validates one message (on the
    /// blocking pool when it is large or compressed) and charges it to the rate
    /// limits. Called in message order.
    async fn prepare(&self, raw: Raw) -> Result<Prepared, ApiError> {
        let state = &self.state;
        state.check_rate(&self.principal)?;
        let big = raw.compressed || raw.bytes.len() >= BLOCKING_BYTES;
        let (principal, encoding) = (self.principal.clone(), self.encoding);
        let limits = (
            state.limits.max_body_bytes.0,
            state.limits.max_events_per_request,
        );
        let work = move || decode(&principal, encoding, raw, limits);
        let p = if big {
            sluice_core::blocking::run(sluice_core::blocking::Kind::IngestDecode, work)
                .await
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })??
        } else {
            work()?
        };
        state.charge(&self.principal, p.events.len(), p.bytes)?;
        Ok(p)
    }
}

/// The next message of a stream, waiting while the queue is full; `None` when none
/// arrived within `http.idle_timeout`: a stream that sends nothing must not hold
/// its admission permit (and its connection) forever.
async fn next_message(
    state: &IngestState,
    inbound: &mut Messages,
) -> Option<Result<Option<Raw>, ApiError>> {
    let idle = state.limits.idle_timeout.0;
    tokio::time::timeout(idle, async {
        hold_while_full(state).await;
        inbound.next().await
    })
    .await
    .ok()
}

/// Why an idle stream was ended (DEADLINE_EXCEEDED).
fn stream_idle(state: &IngestState) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "stream_idle",
        format!(
            "no request message for http.idle_timeout ({:?}); open a new stream to send more",
            state.limits.idle_timeout.0
        ),
    )
}

fn too_many_ids(max: usize, promised: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_ids",
        format!(
            "an IngestStream call with return_ids answers at most http.max_events_per_request ({max}) ids; this message would make {promised}; send return_ids = false or use IngestBidi"
        ),
    )
}

/// Counts a rejection (by reason, and for the caller's key: `who`, `None` before
/// authentication) and turns it into a status. A gRPC call's stream is per message,
/// so its rejections count under stream `_grpc`.
fn reject(state: &IngestState, who: Option<&Principal>, e: ApiError) -> Status {
    count_rejection(state, who, e.code);
    e.into_status()
}

fn count_rejection(state: &IngestState, who: Option<&Principal>, code: &'static str) {
    state.metrics.reject(code);
    let key = who.map_or("_unauthenticated", crate::auth::key_name);
    state.metrics.tenants.rejected(Some("_grpc"), key, code);
}

/// Appends a prepared message and waits until it is durable. Owns what it needs, so
/// a stream can keep several in flight; a message that failed to prepare passes its
/// error through, keeping its place in the order of acks.
async fn append(
    state: Arc<IngestState>,
    prepared: Result<Prepared, ApiError>,
    trace: Option<Arc<RequestSpan>>,
) -> Result<Accepted, ApiError> {
    let p = prepared?;
    if state.shutting_down.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    let ids = if p.return_ids {
        p.events.iter().map(|e| e.id.to_string()).collect()
    } else {
        Vec::new()
    };
    let n = p.events.len() as u64;
    state
        .append(p.events, p.bytes, &p.principal, trace.as_deref())
        .await?;
    Ok(Accepted { events: n, ids })
}
