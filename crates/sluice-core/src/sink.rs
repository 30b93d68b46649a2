//! The [`Sink`] trait: where the processor delivers events.

use crate::{BoxFuture, Event};

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A passing failure (I/O, a broker away): the processor retries with backoff,
    /// waiting at least `retry_after` when the destination named a delay (HTTP
    /// `Retry-After`).
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// The sink can never take any of these events; they all go to the dead-letter
    /// sink with `message` as the reason.
    #[error("{message}")]
    Permanent { message: String },
    /// The sink took every event except the listed ones, which it can never take
    /// (e.g. larger than the broker's message limit); only those are dead-lettered.
    #[error("{} of the events were rejected permanently", .0.len())]
    Rejected(Vec<Rejection>),
}

/// One event a sink refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Its index in the slice given to [`Sink::deliver`].
    pub index: usize,
    /// Why, for the dead-letter record.
    pub reason: String,
}

impl SinkError {
    /// A passing failure with no delay hint.
    pub fn retryable(message: impl Into<String>) -> SinkError {
        SinkError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// A destination for events.
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs and metric labels (`file`, `stdout`, ...).
    fn name(&self) -> &'static str;

    /// Delivers the events and resolves once the sink holds them as durably as it
    /// promises (the file sink: written and fsynced). Only then does the processor
    /// commit them in the queue.
    fn deliver<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>>;
}
