//! What the HTTP and gRPC front doors share: admission (shutdown, the concurrency
//! limit) and the one way a request's events reach the queue, with its metrics.
//! Both protocols map the same typed errors ([`ApiError`]) to their own answers.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use sluice_core::{Batch, Event, Queue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The state both front doors serve from.
pub struct IngestState {
    pub queue: Arc<dyn Queue>,
    pub metrics: Arc<Metrics>,
    pub limits: HttpConfig,
    /// Cancelled when shutdown starts: new requests get 503 / UNAVAILABLE.
    pub shutting_down: CancellationToken,
    /// Requests (HTTP requests, gRPC calls) being served at once.
    pub in_flight: Arc<Semaphore>,
}

impl IngestState {
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

    /// Appends one request's events as one batch (all or nothing) and returns once
    /// the queue says they are durable. `bytes` is their payload size, for metrics.
    pub async fn append(&self, events: Vec<Event>, bytes: usize) -> Result<(), ApiError> {
        let n = events.len() as u64;
        self.queue.append(Batch::new(events)).await?;
        self.metrics.events_accepted.inc_by(n);
        self.metrics.bytes_accepted.inc_by(bytes as u64);
        self.metrics.requests_accepted.inc();
        Ok(())
    }
}
