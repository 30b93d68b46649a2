//! The [`Sink`] trait: where the processor delivers events.

use crate::{BoxFuture, Event};

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A passing failure (I/O, a broker away): the processor retries with backoff.
    #[error("{message}")]
    Retryable { message: String },
    /// The sink can never take these events; they go to the dead-letter sink.
    #[error("{message}")]
    Permanent { message: String },
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
