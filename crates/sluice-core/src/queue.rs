//! The [`Queue`] trait: the durable (or not) buffer between ingest and the processor.
//!
//! Every backend (memory, the embedded WAL, NATS JetStream, Kafka) implements it with
//! the same contract:
//!
//! - [`Queue::append`] stores a whole [`Batch`] atomically and resolves only once the
//!   batch is as durable as the backend's ack mode promises. A full queue refuses at
//!   once with [`AppendError::Full`], handing the batch back.
//! - A [`Consumer`] hands out [`Delivery`]s; [`Consumer::commit`] marks one done.
//!   Deliveries may be committed in any order; the backend only makes durable the
//!   prefix that is fully committed, so a crash replays (never skips) the rest.

use std::time::Duration;

use crate::{Batch, BoxFuture, Event};

/// What an append waited for: the group commit that made it durable, for traces.
/// A backend that does not group appends (or does not say) reports the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// Appends made durable together with this one (itself included); 0 = unknown.
    pub group_appends: u32,
    /// Bytes written for the whole group.
    pub group_bytes: u64,
    /// How long the group's fsync took, when there was one.
    pub sync: Option<Duration>,
}

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The queue is at its bound (events or bytes); retry after the hint.
    #[error("queue is full ({reason}); retry later")]
    Full {
        /// The refused batch, handed back.
        batch: Box<Batch>,
        /// Which bound was hit, for the error message.
        reason: String,
        /// How long the caller should wait before retrying.
        retry_after: Duration,
    },
    /// The queue is shutting down and takes nothing more.
    #[error("queue is shutting down")]
    ShuttingDown,
    /// The batch can never fit (larger than the queue's whole capacity or record limit).
    #[error("batch of {bytes} bytes is larger than the queue can ever hold ({limit} bytes)")]
    TooLarge { bytes: usize, limit: usize },
    /// The backend failed; the batch may or may not be stored, so it was not acked.
    #[error("queue backend failed: {message}")]
    Backend { message: String },
}

/// Why a queue takes no appends right now (see [`Queue::health`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    /// A local write or fsync failed: the log refuses appends until the node is
    /// restarted. The message says what failed and what to do.
    #[error("{0}")]
    Failed(String),
    /// The broker (or every upstream) is unreachable; it may come back by itself.
    #[error("{0}")]
    Unreachable(String),
}

/// Why a consumer call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The queue was closed.
    #[error("queue is closed")]
    Closed,
    /// The backend failed; the call may be retried.
    #[error("queue backend failed: {message}")]
    Backend { message: String },
}

/// A run of events handed to the processor, identified by an opaque token.
#[derive(Debug)]
pub struct Delivery {
    /// The events, in queue order.
    pub events: Vec<Event>,
    /// Passed back to [`Consumer::commit`] once the events are safely delivered.
    pub token: u64,
    /// How many times each event has been handed out, counting this time, for
    /// backends that track redelivery (JetStream); empty when unknown (the WAL and the
    /// memory queue replay only after a restart). The processor dead-letters events
    /// handed out more than its `max_deliveries`.
    pub attempts: Vec<u32>,
    /// Messages the backend could not read as sluice events (a foreign or tampered
    /// broker message: a missing or duplicated sluice header, an invalid stream name,
    /// id or key), each as a quarantine event (stream [`QUARANTINE_STREAM`]) with the
    /// reason. The processor hands them to the dead-letter sink, never to the main
    /// sink, and commits them with the delivery.
    ///
    /// [`QUARANTINE_STREAM`]: crate::QUARANTINE_STREAM
    pub unreadable: Vec<(Event, String)>,
}

impl Delivery {
    /// A delivery whose redelivery counts are unknown.
    pub fn new(events: Vec<Event>, token: u64) -> Delivery {
        Delivery {
            events,
            token,
            attempts: Vec::new(),
            unreadable: Vec::new(),
        }
    }
}

/// Point-in-time figures for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Events appended but not yet committed by the consumer.
    pub depth_events: u64,
    /// Bytes held (on disk for the WAL, in memory for the memory queue).
    pub depth_bytes: u64,
    /// The byte bound at which appends are refused.
    pub capacity_bytes: u64,
}

/// A queue backend. See the module docs for the contract.
pub trait Queue: Send + Sync + 'static {
    /// Appends `batch` atomically; resolves once it is durable per the ack mode.
    fn append(&self, batch: Batch) -> BoxFuture<'_, Result<Committed, AppendError>>;

    /// Opens the named consumer, resuming after its last committed position.
    fn consumer(&self, name: &str) -> Result<Box<dyn Consumer>, ConsumeError>;

    /// Current depth and capacity.
    fn stats(&self) -> QueueStats;

    /// `Err(why)` while the backend is known to take no appends (a broker connection
    /// down, a failed disk), so ingest can answer 503 at once and `/readyz` can say
    /// so. The default: always healthy.
    fn health(&self) -> Result<(), Unhealthy> {
        Ok(())
    }

    /// Refuses further appends, waits for in-flight ones and makes everything durable.
    fn close(&self) -> BoxFuture<'_, Result<(), ConsumeError>>;
}

/// One consumer of a queue. Methods take `&self` so that a reader task can poll while
/// worker tasks commit.
pub trait Consumer: Send + Sync {
    /// Returns a delivery as soon as `max_events` events are available, or when
    /// `max_wait` has passed with fewer (`None` when none arrived in time). Backends
    /// that store whole batches may pass `max_events` by less than one batch. Must be
    /// cancel-safe: a poll dropped before it resolves has handed nothing out.
    fn poll(
        &self,
        max_events: usize,
        max_wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Delivery>, ConsumeError>>;

    /// Marks a delivery as done. The backend persists the longest fully committed
    /// prefix; uncommitted deliveries are handed out again after a restart.
    fn commit(&self, token: u64) -> BoxFuture<'_, Result<(), ConsumeError>>;

    /// Persists the committed prefix now (called on shutdown).
    fn flush(&self) -> BoxFuture<'_, Result<(), ConsumeError>>;
}
