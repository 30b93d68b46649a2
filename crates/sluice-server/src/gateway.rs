//! `sluice gateway`: the edge in front of ingest nodes.
//!
//! A gateway is a node whose queue is [`Upstreams`]: every front-door feature (TLS,
//! API keys, rate limits, body limits, JSON/NDJSON parsing, the gRPC service,
//! graceful drain) is the ingest node's own code, and an "append" forwards the
//! request's batch as one protobuf `IngestRequest` to an ingest node over gRPC. It
//! is acked to the producer only once an ingest node acked it, i.e. once durable.
//!
//! - Event ids are assigned at the gateway, so a batch retried on another upstream
//!   carries the same ids (at-least-once, and sinks can dedupe).
//! - Each upstream has `gateway.connections` HTTP/2 connections (hyper's connection
//!   API directly, no pool layer in between), made on first use, remade when closed
//!   and kept warm with pings; a request goes to the less loaded of two random
//!   healthy upstreams (power of two choices on in-flight requests).
//! - A transport error, a timeout or UNAVAILABLE counts as a failure; after
//!   `gateway.eject_after` in a row the upstream is ejected and probed every
//!   `gateway.probe_interval` until an `Ingest` call is answered again. The batch is
//!   retried on another upstream, up to `gateway.max_attempts` tries.
//! - Back-pressure passes through: RESOURCE_EXHAUSTED from every upstream tried
//!   becomes 429 with the upstream's retry delay; no upstream reachable becomes 503.
//! - Requests are merged under load, like a group commit: at most
//!   `gateway.max_in_flight` calls per upstream run at once (2 by default), and the
//!   requests that arrive meanwhile (of one stream, up to `gateway.max_batch_bytes`)
//!   go out together as one `IngestRequest` when a call finishes; a lone request
//!   goes out at once. Each producer is answered once the merged call is acked, so
//!   the durable-ack contract is unchanged. An upstream call costs far more at both
//!   ends (the gateway's HTTP/2 client and protobuf encode, the ingest node's gRPC
//!   server and WAL append) than the events in it, so fewer, fuller calls are
//!   cheaper. A merged call that fails fails every request in it, each with the same
//!   status (429 with its own batch back, or 503).
//! - The merge queue is bounded: at most `gateway.max_queued_bytes` of event bytes
//!   and `gateway.max_queued_requests` requests wait for a call slot; past either the
//!   request is refused at once with 429 and `Retry-After` (and, since the queue's
//!   stats report that depth and capacity, the front door sheds before reading
//!   bodies). A waiting request whose producer went away is dropped, never sent.
//! - Readiness: every upstream is probed once at start; `/readyz` answers 503 (and
//!   ingest 503 at once) while no upstream is healthy. Producers never see upstream
//!   addresses: those go to the logs (`warn`) and the ejection metrics only.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Uri;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sluice_core::{
    AppendError, Batch, BoxFuture, Committed, ConsumeError, Consumer, Queue, QueueStats, Unhealthy,
};
use sluice_proto::wire::{encode_ingest_request, PreEncoded};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::config::GatewayConfig;
use crate::metrics::Metrics;

mod merge;
use merge::{Merge, Waiter};

/// One multiplexed HTTP/2 connection as a tower service for the generated client.
#[derive(Clone)]
struct Channel(SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// One ingest node.
struct Upstream {
    uri: Uri,
    /// `host:port`, for connecting.
    authority: String,
    /// The connections, each made on first use and remade once closed.
    conns: Vec<Mutex<Option<SendRequest<tonic::body::Body>>>>,
    /// Held while a connection slot is being (re)made, so that the requests that find
    /// it closed wait for one new connection instead of each making their own.
    connecting: Vec<tokio::sync::Mutex<()>>,
    next: AtomicUsize,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    ejected: AtomicBool,
}

/// The ingest nodes a gateway forwards to, as its queue.
pub struct Upstreams {
    upstreams: Vec<Arc<Upstream>>,
    config: GatewayConfig,
    api_key: Option<tonic::metadata::AsciiMetadataValue>,
    closed: CancellationToken,
    metrics: Arc<Metrics>,
    merge: Mutex<Merge>,
    /// Most events in one merged call: `http.max_events_per_request`, which the
    /// ingest nodes behind the gateway share (a larger call would be refused there).
    max_merged_events: usize,
    /// This value's own `Arc`, for spawning the tasks that send merged calls.
    me: Weak<Upstreams>,
}

/// Why no upstream took a batch.
enum Failure {
    /// Every upstream tried is full: 429 after this long.
    Full(Duration),
    /// Unreachable, failing or refusing: 503 with this message.
    Backend(String),
}

impl Failure {
    fn error(&self, batch: Batch) -> AppendError {
        match self {
            Failure::Full(retry_after) => AppendError::Full {
                batch: Box::new(batch),
                reason: "every upstream tried is full".into(),
                retry_after: *retry_after,
            },
            Failure::Backend(message) => AppendError::Backend {
                message: message.clone(),
            },
        }
    }
}

/// Why a connection to an upstream could not be opened.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connecting: {0}")]
    Tcp(std::io::Error),
    #[error("HTTP/2 handshake: {0}")]
    Handshake(hyper::Error),
    #[error("no connection within gateway.connect_timeout ({0})")]
    Timeout(sluice_core::units::HumanDuration),
}

/// How one attempt on an upstream ended.
enum Attempt {
    /// The upstream acked: the batch is durable there.
    Ok,
    /// Try another upstream; counts against this one's health.
    Failed(String),
    /// The upstream is full: try another, then pass the back-pressure on.
    Full(Duration),
    /// The request itself was refused: retrying elsewhere cannot help.
    Refused(tonic::Status),
}

impl Upstreams {
    /// Clients for every upstream (connections are made on first use and by the
    /// prober), and the prober itself.
    pub fn start(
        config: GatewayConfig,
        max_merged_events: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Upstreams>, String> {
        let mut upstreams = Vec::new();
        for url in &config.upstreams {
            let uri: Uri = url
                .parse()
                .map_err(|e| format!("gateway.upstreams: {url:?} is not a URL: {e}"))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(format!(
                    "gateway.upstreams: {url:?} must look like http://HOST:PORT"
                ));
            }
            let authority = uri.authority().expect("checked above").to_string();
            let n = config.connections.max(1);
            let conns = (0..n).map(|_| Mutex::new(None)).collect();
            let connecting = (0..n).map(|_| tokio::sync::Mutex::new(())).collect();
            upstreams.push(Arc::new(Upstream {
                uri,
                authority,
                conns,
                connecting,
                next: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                failures: AtomicU32::new(0),
                ejected: AtomicBool::new(false),
            }));
        }
        if upstreams.is_empty() {
            return Err("gateway.upstreams: at least one upstream is needed".into());
        }
        let api_key = match &config.upstream_api_key {
            None => None,
            Some(k) => Some(
                format!("Bearer {}", k.expose())
                    .parse()
                    .map_err(|_| "gateway.upstream_api_key is not a valid header value")?,
            ),
        };
        let me = Arc::new_cyclic(|me| Upstreams {
            upstreams,
            config,
            api_key,
            closed: CancellationToken::new(),
            metrics,
            merge: Mutex::new(Merge::default()),
            max_merged_events,
            me: me.clone(),
        });
        me.metrics
            .gateway_upstreams_healthy
            .set(me.upstreams.len() as i64);
        tokio::spawn(me.clone().probe());
        Ok(me)
    }

    /// Probes every upstream once (at start): those that do not answer are ejected
    /// at once, so readiness is known before the first request.
    async fn probe_all(&self) {
        let probes = self.upstreams.iter().map(|u| async move {
            if !self.alive(u).await && !u.ejected.swap(true, Ordering::Relaxed) {
                self.metrics.gateway_ejections.inc();
                self.metrics.gateway_upstreams_healthy.dec();
                tracing::warn!(upstream = %u.uri, "upstream does not answer, ejected");
            }
        });
        futures_util::future::join_all(probes).await;
    }

    /// True when `u` answers an `Ingest` call (an empty request: a live node refuses
    /// it with INVALID_ARGUMENT).
    async fn alive(&self, u: &Upstream) -> bool {
        matches!(
            self.attempt(u, Bytes::new()).await,
            Attempt::Refused(_) | Attempt::Ok
        )
    }

    /// How many upstreams are healthy (not ejected).
    pub fn healthy(&self) -> usize {
        self.upstreams
            .iter()
            .filter(|u| !u.ejected.load(Ordering::Relaxed))
            .count()
    }

    /// Power of two choices over healthy upstreams not yet tried; all of them when
    /// none is healthy (better to try than to refuse).
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let candidates = |healthy_only: bool| -> Vec<usize> {
            (0..self.upstreams.len())
                .filter(|i| !tried.contains(i))
                .filter(|&i| !healthy_only || !self.upstreams[i].ejected.load(Ordering::Relaxed))
                .collect()
        };
        let mut c = candidates(true);
        if c.is_empty() {
            c = candidates(false);
        }
        match c.len() {
            0 => None,
            1 => Some(c[0]),
            n => {
                let a = c[fastrand::usize(..n)];
                let mut b = c[fastrand::usize(..n - 1)];
                if b == a {
                    b = c[n - 1];
                }
                let load = |i: usize| self.upstreams[i].in_flight.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    /// A ready connection to `u` (round-robin over its slots), connecting if needed.
    async fn channel(&self, u: &Upstream) -> Result<Channel, ConnectError> {
        let i = u.next.fetch_add(1, Ordering::Relaxed) % u.conns.len();
        let open = |slot: &Mutex<Option<SendRequest<tonic::body::Body>>>| {
            slot.lock()
                .expect("conn lock poisoned")
                .as_ref()
                .filter(|tx| !tx.is_closed())
                .map(|tx| Channel(tx.clone()))
        };
        if let Some(c) = open(&u.conns[i]) {
            return Ok(c);
        }
        let _connecting = u.connecting[i].lock().await;
        if let Some(c) = open(&u.conns[i]) {
            return Ok(c); // another request made it meanwhile
        }
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(&u.authority)
                .await
                .map_err(ConnectError::Tcp)?;
            let _ = tcp.set_nodelay(true);
            let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(10)))
                .keep_alive_while_idle(true)
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(ConnectError::Handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok::<_, ConnectError>(tx)
        };
        let tx = tokio::time::timeout(self.config.connect_timeout.0, connect)
            .await
            .map_err(|_| ConnectError::Timeout(self.config.connect_timeout))??;
        *u.conns[i].lock().expect("conn lock poisoned") = Some(tx.clone());
        Ok(Channel(tx))
    }

    /// One `Ingest` call of `req` (a pre-encoded `IngestRequest`) to `u`.
    async fn attempt(&self, u: &Upstream, req: Bytes) -> Attempt {
        let channel = match self.channel(u).await {
            Ok(c) => c,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let mut client = tonic::client::Grpc::with_origin(channel, u.uri.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(usize::MAX);
        if let Err(e) = client.ready().await {
            return Attempt::Failed(format!("connection not ready: {e}"));
        }
        let mut request = tonic::Request::new(req);
        if let Some(k) = &self.api_key {
            request.metadata_mut().insert("authorization", k.clone());
        }
        let call = client.unary(
            request,
            http::uri::PathAndQuery::from_static("/sluice.v1.IngestService/Ingest"),
            PreEncoded,
        );
        u.in_flight.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(self.config.request_timeout.0, call).await;
        u.in_flight.fetch_sub(1, Ordering::Relaxed);
        match r {
            Err(_) => Attempt::Failed(format!(
                "no answer within gateway.request_timeout ({:?})",
                self.config.request_timeout.0
            )),
            Ok(Ok(_)) => Attempt::Ok,
            Ok(Err(status)) => match status.code() {
                Code::ResourceExhausted => {
                    let ms = crate::error::retry_after_ms(&status).max(1000);
                    Attempt::Full(Duration::from_millis(ms))
                }
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => {
                    Attempt::Failed(format!("{:?}: {}", status.code(), status.message()))
                }
                _ => Attempt::Refused(status),
            },
        }
    }

    fn record(&self, u: &Upstream, ok: bool) {
        if ok {
            u.failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = u.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.config.eject_after && !u.ejected.swap(true, Ordering::Relaxed) {
            self.metrics.gateway_ejections.inc();
            self.metrics.gateway_upstreams_healthy.dec();
            tracing::warn!(upstream = %u.uri, failures = n, "upstream ejected");
        }
    }

    /// Probes ejected upstreams until they answer an `Ingest` call again (an empty
    /// request: a live node refuses it with INVALID_ARGUMENT).
    async fn probe(self: Arc<Self>) {
        tokio::select! {
            _ = self.closed.cancelled() => return,
            _ = self.probe_all() => {}
        }
        loop {
            tokio::select! {
                _ = self.closed.cancelled() => return,
                _ = tokio::time::sleep(self.config.probe_interval.0) => {}
            }
            for u in &self.upstreams {
                if !u.ejected.load(Ordering::Relaxed) {
                    continue;
                }
                if self.alive(u).await {
                    u.failures.store(0, Ordering::Relaxed);
                    if u.ejected.swap(false, Ordering::Relaxed) {
                        self.metrics.gateway_upstreams_healthy.inc();
                    }
                    tracing::info!(upstream = %u.uri, "upstream back in rotation");
                }
            }
        }
    }
}

/// Batches as one protobuf `IngestRequest`, encoded once (a retry resends the same
/// bytes): events keep their ids, streams, keys, headers; the first event's stream is
/// the request's.
fn to_request<'a>(batches: impl Iterator<Item = &'a Batch> + Clone) -> Bytes {
    let stream = batches
        .clone()
        .find_map(|b| b.events.first())
        .map(|e| e.stream.clone());
    encode_ingest_request(
        stream.as_deref().unwrap_or_default(),
        batches.flat_map(|b| b.events.iter()),
    )
}

/// The stream of every event of `batch`, if there is exactly one.
fn one_stream(batch: &Batch) -> Option<&Arc<str>> {
    let first = &batch.events.first()?.stream;
    batch
        .events
        .iter()
        .all(|e| Arc::ptr_eq(&e.stream, first) || e.stream == *first)
        .then_some(first)
}

impl Upstreams {
    /// Sends `req` to an upstream, trying others as the config allows.
    async fn forward(&self, req: Bytes) -> Result<(), Failure> {
        self.metrics.gateway_calls.inc();
        let mut tried = Vec::new();
        let mut full: Option<Duration> = None;
        let mut last_error = String::from("no upstream tried");
        while tried.len() < self.config.max_attempts as usize {
            let Some(i) = self.pick(&tried) else { break };
            if !tried.is_empty() {
                self.metrics.gateway_retries.inc();
            }
            tried.push(i);
            let u = &self.upstreams[i];
            match self.attempt(u, req.clone()).await {
                Attempt::Ok => {
                    self.record(u, true);
                    return Ok(());
                }
                Attempt::Full(wait) => {
                    self.record(u, true);
                    full = Some(full.map_or(wait, |w| w.min(wait)));
                }
                Attempt::Failed(why) => {
                    self.record(u, false);
                    tracing::debug!(upstream = %u.uri, error = %why, "upstream attempt failed");
                    last_error = format!("{}: {why}", u.uri);
                }
                Attempt::Refused(status) => {
                    self.record(u, true);
                    tracing::warn!(
                        upstream = %u.uri, code = ?status.code(), message = status.message(),
                        "upstream refused a batch"
                    );
                    return Err(Failure::Backend(format!(
                        "an upstream refused the batch: {:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
            }
        }
        Err(match full {
            Some(retry_after) => Failure::Full(retry_after),
            None => {
                // The upstream's address and error are for the operator, not producers.
                tracing::warn!(attempts = tried.len(), last_error = %last_error, "no upstream took a batch");
                Failure::Backend(format!(
                    "no upstream took the batch after {} attempts",
                    tried.len()
                ))
            }
        })
    }

    /// Sends merged calls while requests are waiting; one such task per call slot.
    async fn send_waiting(self: Arc<Self>) {
        loop {
            let group = {
                let mut m = self.merge.lock().expect("merge lock poisoned");
                let Some(first) = m.pop() else {
                    m.senders -= 1;
                    return;
                };
                let stream = first.batch.events[0].stream.clone();
                let (mut bytes, mut events) = (first.bytes, first.batch.len());
                let mut group = vec![first];
                // In arrival order, while the next one is of the same stream and fits.
                let max_bytes = self.config.max_batch_bytes.0 as usize;
                while let Some(next) = m.pop_if(|next| {
                    next.batch.events[0].stream == stream
                        && bytes + next.bytes <= max_bytes
                        && events + next.batch.len() <= self.max_merged_events
                }) {
                    bytes += next.bytes;
                    events += next.batch.len();
                    group.push(next);
                }
                group
            };
            if group.len() > 1 {
                self.metrics
                    .gateway_merged_requests
                    .inc_by(group.len() as u64);
            }
            let outcome = self
                .forward(to_request(group.iter().map(|w| &w.batch)))
                .await;
            for w in group {
                let answer = match &outcome {
                    Ok(()) => Ok(()),
                    Err(failure) => Err(failure.error(w.batch)),
                };
                // A producer that went away gets no answer; its events are acked upstream.
                let _ = w.done.send(answer);
            }
        }
    }
}

impl Queue for Upstreams {
    fn append(&self, batch: Batch) -> BoxFuture<'_, Result<Committed, AppendError>> {
        Box::pin(async move {
            if self.closed.is_cancelled() {
                return Err(AppendError::ShuttingDown);
            }
            let bytes = batch.size_hint();
            let mergeable = self.config.max_in_flight > 0
                && one_stream(&batch).is_some()
                && bytes <= self.config.max_batch_bytes.0 as usize
                && batch.len() <= self.max_merged_events;
            let me = self.me.upgrade();
            let Some(me) = me.filter(|_| mergeable) else {
                let req = to_request(std::iter::once(&batch));
                return self
                    .forward(req)
                    .await
                    .map(|()| Committed::default())
                    .map_err(|f| f.error(batch));
            };
            let (done, answer) = tokio::sync::oneshot::channel();
            let start_sender = {
                let mut m = self.merge.lock().expect("merge lock poisoned");
                if let Err(full) = m.has_room(bytes, &self.config) {
                    return Err(AppendError::Full {
                        batch: Box::new(batch),
                        reason: full.to_string(),
                        retry_after: Duration::from_secs(1),
                    });
                }
                m.push(Waiter { batch, bytes, done });
                let start = m.senders < self.config.max_in_flight * self.upstreams.len();
                if start {
                    m.senders += 1;
                }
                start
            };
            if start_sender {
                tokio::spawn(me.send_waiting());
            }
            answer
                .await
                .unwrap_or(Err(AppendError::ShuttingDown))
                .map(|()| Committed::default())
        })
    }

    fn consumer(&self, _name: &str) -> Result<Box<dyn Consumer>, ConsumeError> {
        Err(ConsumeError::Backend {
            message: "a gateway forwards events; it has nothing to consume".into(),
        })
    }

    fn stats(&self) -> QueueStats {
        let m = self.merge.lock().expect("merge lock poisoned");
        QueueStats {
            depth_events: m.waiting.iter().map(|w| w.batch.len() as u64).sum(),
            depth_bytes: m.waiting_bytes as u64,
            capacity_bytes: self.config.max_queued_bytes.0,
        }
    }

    fn health(&self) -> Result<(), Unhealthy> {
        match self.healthy() {
            0 => Err(Unhealthy::Unreachable(format!(
                "no healthy upstream (0 of {}; probed every gateway.probe_interval)",
                self.upstreams.len()
            ))),
            _ => Ok(()),
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.closed.cancel();
        Box::pin(async { Ok(()) })
    }
}
