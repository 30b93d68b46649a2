//! The processor: a worker pool that consumes deliveries from a
//! [`Queue`](sluice_core::Queue), hands them to a [`Sink`](sluice_core::Sink) and
//! commits them only once the sink has them (at-least-once).
//!
//! A failing sink is retried with exponential backoff and full jitter, forever:
//! nothing is ever skipped. Sinks live in [`sinks`].
#![forbid(unsafe_code)]

mod processor;
mod retry;
pub mod sinks;

pub use processor::{default_workers, Processor, ProcessorOptions, ProcessorStats};
pub use retry::Backoff;
