//! The gRPC `IngestService` (`proto/sluice/v1/ingest.proto`), served on the HTTP
//! port: requests whose `content-type` starts with `application/grpc` are routed
//! here by the listener, everything else goes to the HTTP API.
//!
//! The contract is the HTTP one. One request message is one batch, appended whole
//! and answered only once durable. `IngestStream` and `IngestBidi` keep up to
//! `grpc.window` messages in flight, so a fast producer is not held to one fsync per
//! message; their appends still reach the queue in message order.
//!
//! Back-pressure: a unary call finds a full queue before its message is read
//! (RESOURCE_EXHAUSTED with a retry delay). A stream instead stops reading while the
//! queue is full, for up to [`HOLD_MAX`]: HTTP/2 flow control slows the producer to
//! what the processor delivers, and no message is decoded only to be refused. Past
//! that, the next message is read and refused.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use sluice_core::{validate_stream_name, Event};
use sluice_proto::v1::ingest_service_server::{IngestService, IngestServiceServer};
use sluice_proto::v1::{self as pb, IngestAck, IngestRequest, IngestResponse};
use tokio::sync::mpsc;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{check_stream, Principal};
use crate::error::ApiError;
use crate::front::IngestState;

/// Longest event id a producer may supply.
const MAX_ID_LEN: usize = 128;

/// Longest a stream waits for room in a full queue before reading on (and failing).
pub const HOLD_MAX: Duration = Duration::from_secs(5);

/// How often a held-back stream looks for room again.
const HOLD_POLL: Duration = Duration::from_millis(5);

/// Waits until the queue has room for a message of `max_body_bytes`, or `HOLD_MAX`.
async fn hold_while_full(state: &IngestState) {
    let room = state.limits.max_body_bytes.0;
    let started = tokio::time::Instant::now();
    while !state.has_room(room) && started.elapsed() < HOLD_MAX {
        tokio::time::sleep(HOLD_POLL).await;
    }
}

/// The service, ready to be called with `http::Request`s.
pub fn service(state: Arc<IngestState>, window: usize) -> IngestServiceServer<Grpc> {
    let limit = state.limits.max_body_bytes.0 as usize;
    // Compressed messages are inflated into a buffer bounded by the same limit, so a
    // decompression bomb costs at most `http.max_body_bytes`.
    IngestServiceServer::new(Grpc {
        state,
        window: window.max(1),
    })
    .max_decoding_message_size(limit)
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Zstd)
}

/// The `IngestService` implementation.
pub struct Grpc {
    state: Arc<IngestState>,
    window: usize,
}

/// What one accepted request message produced.
struct Accepted {
    events: u64,
    ids: Vec<String>,
}

type AckStream = Pin<Box<dyn futures_util::Stream<Item = Result<IngestAck, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for Grpc {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let state = &self.state;
        let principal = authenticate(state, &request)?;
        let _permit = state.admit().map_err(|e| reject(state, e))?;
        let prepared = prepare(state, &principal, request.into_inner());
        let accepted = append(state.clone(), prepared)
            .await
            .map_err(|e| reject(state, e))?;
        Ok(Response::new(IngestResponse {
            accepted: accepted.events,
            ids: accepted.ids,
        }))
    }

    async fn ingest_stream(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<IngestResponse>, Status> {
        let state = &self.state;
        let principal = authenticate(state, &request)?;
        let _permit = state.admit().map_err(|e| reject(state, e))?;
        let mut inbound = request.into_inner();
        let mut pending: FuturesOrdered<_> = FuturesOrdered::new();
        let mut total = IngestResponse::default();
        let mut sequence = 0u64;
        let mut inbound_done = false;
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
                msg = async { hold_while_full(state).await; inbound.message().await },
                    if !inbound_done && failed.is_none() && pending.len() < self.window => {
                    match msg {
                        Ok(Some(m)) => {
                            sequence += 1;
                            let prepared = prepare(state, &principal, m);
                            if let Err(e) = prepared {
                                failed = Some((sequence, e));
                                continue;
                            }
                            let seq = sequence;
                            let state = state.clone();
                            pending.push_back(async move { (seq, append(state, prepared).await) });
                        }
                        Ok(None) => inbound_done = true,
                        Err(status) => {
                            // The client's stream broke: what is in flight still
                            // completes (it may be durable), but nothing is acked.
                            while pending.next().await.is_some() {}
                            return Err(status);
                        }
                    }
                }
                else => break,
            }
        }
        if let Some((seq, e)) = failed {
            let mut status = reject(state, e);
            let md = status.metadata_mut();
            md.insert("sluice-failed-message", seq.into());
            md.insert("sluice-accepted-events", total.accepted.into());
            if !accepted_after.is_empty() {
                let list: Vec<String> = accepted_after.iter().map(u64::to_string).collect();
                if let Ok(v) = list.join(",").parse() {
                    md.insert("sluice-accepted-after-failure", v);
                }
            }
            return Err(status);
        }
        Ok(Response::new(total))
    }

    type IngestBidiStream = AckStream;

    async fn ingest_bidi(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<AckStream>, Status> {
        let state = self.state.clone();
        let principal = authenticate(&state, &request)?;
        // Admission is per call; the permit lives as long as the stream.
        let permit = state.admit().map_err(|e| reject(&state, e))?;
        let window = self.window;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<IngestAck, Status>>(window);
        tokio::spawn(async move {
            let _permit = permit;
            let mut pending = FuturesOrdered::new();
            let mut sequence = 0u64;
            let mut inbound_done = false;
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
                                state.metrics.reject(e.code);
                                let status = e.into_status();
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
                    msg = async { hold_while_full(&state).await; inbound.message().await },
                        if !inbound_done && pending.len() < window => {
                        match msg {
                            Ok(Some(m)) => {
                                sequence += 1;
                                sequences.push_back(sequence);
                                let prepared = prepare(&state, &principal, m);
                                pending.push_back(append(state.clone(), prepared));
                            }
                            Ok(None) => inbound_done = true,
                            Err(status) => {
                                while pending.next().await.is_some() {}
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        }
                    }
                    else => return,
                }
            }
        });
        let acks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|ack| (ack, rx))
        });
        Ok(Response::new(Box::pin(acks)))
    }
}

/// The API key in the call's metadata (`authorization: Bearer KEY` or `x-api-key`).
fn authenticate<T>(state: &IngestState, request: &Request<T>) -> Result<Principal, Status> {
    let md = request.metadata();
    state
        .keys
        .authenticate_by(|name| md.get(name).and_then(|v| v.to_str().ok()))
        .map_err(|e| reject(state, e))
}

/// Counts a rejection and turns it into a status.
fn reject(state: &IngestState, e: ApiError) -> Status {
    state.metrics.reject(e.code);
    e.into_status()
}

/// A validated request message, ready to append.
struct Prepared {
    events: Vec<Event>,
    bytes: usize,
    return_ids: bool,
}

/// Validates one request message and charges it to the rate limits (synchronously,
/// so a stream's messages are judged in order).
fn prepare(
    state: &IngestState,
    principal: &Principal,
    req: IngestRequest,
) -> Result<Prepared, ApiError> {
    state.check_rate(principal)?;
    let (events, bytes) = to_events(principal, req.stream, req.events)?;
    state.charge(principal, events.len(), bytes)?;
    Ok(Prepared {
        events,
        bytes,
        return_ids: req.return_ids,
    })
}

/// Appends a prepared message and waits until it is durable. Owns what it needs, so
/// a stream can keep several in flight; a message that failed to prepare passes its
/// error through, keeping its place in the order of acks.
async fn append(
    state: Arc<IngestState>,
    prepared: Result<Prepared, ApiError>,
) -> Result<Accepted, ApiError> {
    let p = prepared?;
    if state.shutting_down.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    let ids = if p.return_ids {
        p.events.iter().map(|e| e.id.clone()).collect()
    } else {
        Vec::new()
    };
    let n = p.events.len() as u64;
    state.append(p.events, p.bytes).await?;
    Ok(Accepted { events: n, ids })
}

/// Turns the protobuf events into queue events: ids assigned where missing, streams
/// defaulted and checked, payloads checked to be JSON objects.
fn to_events(
    principal: &Principal,
    stream: String,
    events: Vec<pb::Event>,
) -> Result<(Vec<Event>, usize), ApiError> {
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the request has no events",
        ));
    }
    let default: Option<Arc<str>> = if stream.is_empty() {
        None
    } else {
        validate_stream_name(&stream)?;
        check_stream(principal, &stream)?;
        Some(stream.into())
    };
    let received_at = sluice_core::now_unix_nanos();
    let mut fresh = sluice_core::new_event_ids(events.iter().filter(|e| e.id.is_empty()).count());
    let mut bytes = 0;
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let n = i + 1;
        let stream = match (&default, e.stream.is_empty()) {
            (Some(d), true) => d.clone(),
            (Some(d), false) if *d.as_ref() == e.stream => d.clone(),
            (None, true) => {
                return Err(ApiError::bad_request(
                    "invalid_stream",
                    "no stream (set IngestRequest.stream or Event.stream)",
                )
                .at_event(n))
            }
            (_, false) => {
                validate_stream_name(&e.stream).map_err(|err| ApiError::from(err).at_event(n))?;
                check_stream(principal, &e.stream).map_err(|err| err.at_event(n))?;
                e.stream.into()
            }
        };
        sluice_proto::body::validate_payload(&e.payload, n)?;
        let id = if e.id.is_empty() {
            fresh.next().expect("one id reserved per event without one")
        } else if e.id.len() > MAX_ID_LEN || e.id.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "invalid_id",
                format!("an id has 1 to {MAX_ID_LEN} bytes and no control characters"),
            )
            .at_event(n));
        } else {
            e.id
        };
        sluice_core::validate_headers(e.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|(name, err)| {
                let name: String = name.escape_debug().take(128).collect();
                let msg = match name.is_empty() {
                    true => err.to_string(),
                    false => format!("header \"{name}\": {err}"),
                };
                ApiError::bad_request("invalid_header", msg).at_event(n)
            })?;
        sluice_core::validate_key(&e.key).map_err(|err| {
            ApiError::bad_request("invalid_key", format!("key: {err}")).at_event(n)
        })?;
        let mut headers: Vec<(String, String)> = e.headers.into_iter().collect();
        headers.sort_unstable();
        bytes += e.payload.len();
        out.push(Event {
            id,
            stream,
            key: (!e.key.is_empty()).then_some(e.key),
            received_at_unix_nanos: received_at,
            timestamp_unix_nanos: e.timestamp_unix_nanos,
            headers,
            payload: e.payload,
        });
    }
    Ok((out, bytes))
}
