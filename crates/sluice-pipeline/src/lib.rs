//! The processor: a worker pool that consumes deliveries from a
//! [`Queue`](sluice_core::Queue), hands them to a [`Sink`](sluice_core::Sink) and
//! commits them only once the sink has them (at-least-once).
//!
//! A failing sink is retried with exponential backoff and full jitter; an event the
//! sink refuses for good, or one still failing after `max_attempts` (0, the default:
//! no limit), goes to the dead-letter sink with its reason. Nothing is ever skipped
//! silently. Sinks live in [`sinks`]; the broker sinks in `sluice-brokers`.
#![forbid(unsafe_code)]

mod processor;
mod retry;
pub mod sinks;

pub use processor::{default_workers, Processor, ProcessorOptions, ProcessorStats};
pub use retry::Backoff;
