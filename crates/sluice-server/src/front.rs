//! What the HTTP and gRPC front doors share: admission (shutdown, the concurrency
//! limit), the node-wide byte budget of requests being decoded ([`budget`]), bounded
//! decompression ([`inflate`]) and the one way a request's events reach the queue,
//! with its metrics. Both protocols map the same typed errors ([`ApiError`]) to
//! their own answers.

pub mod budget;
pub mod inflate;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use sluice_core::{AppendError, Batch, Event, Queue};
use sluice_telemetry::RequestSpan;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::auth::{Keys, Principal};
use crate::config::{Config, HttpConfig};
use crate::error::ApiError;
use crate::limit::Bucket;
use crate::metrics::Metrics;
use budget::Budget;

/// Bytes a request's WAL record may hold per event beyond the event's own bytes in
/// the request: the framing of `sluice_proto::record` (lengths, flags, timestamps:
/// 33 bytes), a server-assigned id (36) and a stream name copied from the URL or
/// `IngestRequest.stream` (up to 128), rounded up to 201. With
/// [`RECORD_BYTES_PER_HEADER`] this bounds a record by
/// `max_body_bytes + max_events_per_request * (201 + 8)`.
pub const RECORD_BYTES_PER_EVENT: u64 = 201;

/// Record framing of one gRPC header entry (two length prefixes).
pub const RECORD_BYTES_PER_HEADER: u64 = 8;

/// The largest record a request with `body` bytes of at most `events` events (and
/// as many header entries) can become.
pub fn record_bound(body: u64, events: u64) -> u64 {
    // Saturating: the config check compares it with the segment size, whatever
    // limits an operator wrote (fuzz finding F4).
    events
        .saturating_mul(RECORD_BYTES_PER_EVENT + RECORD_BYTES_PER_HEADER)
        .saturating_add(body)
        .saturating_add(5)
}

/// The state both front doors serve from.
pub struct IngestState {
    pub queue: Arc<dyn Queue>,
    pub metrics: Arc<Metrics>,
    pub limits: HttpConfig,
    /// Cancelled when shutdown starts: new requests get 503 / UNAVAILABLE.
    pub shutting_down: CancellationToken,
    /// Requests (HTTP requests, gRPC calls) being served at once.
    pub in_flight: Arc<Semaphore>,
    /// API keys.
    pub keys: Keys,
    /// Node-wide rate limits.
    pub events_rate: Option<Bucket>,
    pub bytes_rate: Option<Bucket>,
    /// Bytes of requests being read and decoded (`http.max_inflight_bytes`).
    pub budget: Arc<Budget>,
}

impl IngestState {
    /// The state for `config`, serving from `queue`; `shutting_down` is the node's
    /// shutdown token.
    pub fn new(
        config: &Config,
        queue: Arc<dyn Queue>,
        metrics: Arc<Metrics>,
        shutting_down: CancellationToken,
    ) -> IngestState {
        IngestState {
            queue,
            metrics,
            limits: config.http.clone(),
            shutting_down,
            in_flight: Arc::new(Semaphore::new(config.http.max_concurrent_requests)),
            keys: Keys::new(&config.auth),
            events_rate: config.limits.events_per_s.map(|r| Bucket::new(r as f64)),
            bytes_rate: config.limits.bytes_per_s.map(|r| Bucket::new(r.0 as f64)),
            budget: Budget::new(config.http.max_inflight_bytes.0),
        }
    }

    /// Admits a request, or says why not: shutting down, or too many in flight.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if self.shutting_down.is_cancelled() {
            return Err(ApiError::shutting_down());
        }
        self.in_flight.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!(
                    "more than http.max_concurrent_requests ({}) requests in flight",
                    self.limits.max_concurrent_requests
                ),
            )
            .retry_after(Duration::from_secs(1))
        })
    }

    /// The largest record a body of `body_bytes` (as received, before any
    /// decompression) can become: every event takes at least 2 bytes (`{}`) of the
    /// body, so there are at most `body_bytes / 2` of them, and at most
    /// `http.max_events_per_request`. A compressed body can expand up to
    /// `http.max_body_bytes`; pass that as `body_bytes` for it.
    pub fn record_estimate(&self, body_bytes: u64) -> u64 {
        let events = (body_bytes / 2 + 1).min(self.limits.max_events_per_request as u64);
        record_bound(body_bytes, events)
    }

    /// True when the queue has room for about `bytes` more.
    pub fn has_room(&self, bytes: u64) -> bool {
        let q = self.queue.stats();
        q.depth_bytes.saturating_add(bytes) <= q.capacity_bytes
    }

    /// 429 / RESOURCE_EXHAUSTED before any work is done on a request that the full
    /// queue would refuse anyway: under overload, reading, decoding and validating
    /// requests only to refuse them is what starves the processor. A hint (the append
    /// is the real check); `bytes` is the request's expected record size.
    pub fn shed_if_full(&self, bytes: u64) -> Result<(), ApiError> {
        // A broker known to be away: 503 now, not after the publish timeout.
        if let Err(why) = self.queue.health() {
            return Err(AppendError::Backend {
                message: why.to_string(),
            }
            .into());
        }
        if self.has_room(bytes) {
            return Ok(());
        }
        Err(AppendError::Full {
            batch: Box::default(),
            reason: "queue.max_bytes reached".into(),
            retry_after: Duration::from_secs(1),
        }
        .into())
    }

    /// 429 while a node-wide or the key's own rate limit is in debt: a cheap hint
    /// before the body is read (the decision is [`IngestState::charge`]).
    pub fn check_rate(&self, principal: &Principal) -> Result<(), ApiError> {
        for (bucket, what, _) in self.buckets(principal, 0, 0) {
            if let Err(wait) = bucket.check() {
                return Err(rate_limited(principal, what, wait));
            }
        }
        Ok(())
    }

    /// Takes a request's events and bytes from the rate limits, or refuses it (429
    /// with the exact wait as `Retry-After`, nothing taken) while one of them is in
    /// debt. Each bucket checks and charges in one atomic step, so concurrent
    /// requests cannot all pass the check and then all pay.
    pub fn charge(
        &self,
        principal: &Principal,
        events: usize,
        bytes: usize,
    ) -> Result<(), ApiError> {
        let buckets = self.buckets(principal, events as u64, bytes as u64);
        for (i, (bucket, what, units)) in buckets.iter().enumerate() {
            if let Err(wait) = bucket.try_charge(*units) {
                for (b, _, u) in &buckets[..i] {
                    b.refund(*u);
                }
                return Err(rate_limited(principal, what, wait));
            }
        }
        Ok(())
    }

    /// The rate limits that apply to `principal`, each with its name and what a
    /// request of `events` and `bytes` costs it.
    fn buckets<'a>(
        &'a self,
        principal: &'a Principal,
        events: u64,
        bytes: u64,
    ) -> Vec<(&'a Bucket, &'static str, u64)> {
        let key = principal.as_deref();
        [
            (self.events_rate.as_ref(), "limits.events_per_s", events),
            (self.bytes_rate.as_ref(), "limits.bytes_per_s", bytes),
            (
                key.and_then(|k| k.events.as_ref()),
                "events_per_s of the API key",
                events,
            ),
            (
                key.and_then(|k| k.bytes.as_ref()),
                "bytes_per_s of the API key",
                bytes,
            ),
        ]
        .into_iter()
        .filter_map(|(b, what, units)| b.map(|b| (b, what, units)))
        .collect()
    }

    /// Appends one request's events as one batch (all or nothing) and returns once
    /// the queue says they are durable. `bytes` is their payload size, for metrics,
    /// which count them by stream and `principal`'s key too.
    pub async fn append(
        &self,
        mut events: Vec<Event>,
        bytes: usize,
        principal: &Principal,
        trace: Option<&RequestSpan>,
    ) -> Result<(), ApiError> {
        let n = events.len() as u64;
        // Events and payload bytes per stream (a request's events share one, or few).
        let mut per_stream: Vec<(Arc<str>, u64, u64)> = Vec::new();
        for e in &events {
            let len = e.payload.len() as u64;
            match per_stream.iter_mut().find(|(s, _, _)| *s == e.stream) {
                Some((_, n, b)) => (*n, *b) = (*n + 1, *b + len),
                None => per_stream.push((e.stream.clone(), 1, len)),
            }
        }
        let appended = match trace {
            None => self.queue.append(Batch::new(events)).await,
            Some(t) => {
                t.stamp(&mut events);
                let started = std::time::SystemTime::now();
                let r = self.queue.append(Batch::new(events)).await;
                match &r {
                    Ok(c) => t.appended(started, n as usize, Ok(c)),
                    Err(e) => t.appended(started, n as usize, Err(&e.to_string())),
                }
                r
            }
        };
        appended?;
        self.metrics.events_accepted.inc_by(n);
        self.metrics.bytes_accepted.inc_by(bytes as u64);
        self.metrics.requests_accepted.inc();
        let key = crate::auth::key_name(principal);
        for (stream, n, b) in per_stream {
            self.metrics.tenants.accepted(&stream, key, n, b);
        }
        Ok(())
    }
}

/// The 429 of a rate limit in debt for another `wait`.
fn rate_limited(principal: &Principal, what: &str, wait: Duration) -> ApiError {
    let who = principal
        .as_deref()
        .map_or(String::new(), |k| format!(" (key {})", k.name));
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("over the rate limit {what}{who}"),
    )
    .retry_after(wait.max(Duration::from_millis(1)))
}
