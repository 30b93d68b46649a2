//! sluice's broker backends, each one module that owns everything about it: its
//! options (deserialized straight from the config file), its client setup, its
//! message layout, its [`Queue`](sluice_core::Queue) and its
//! [`Sink`](sluice_core::Sink).
//!
//! - `nats` (feature `nats`): NATS JetStream, pure Rust.
//! - `kafka` (feature `kafka`): Kafka through librdkafka, built from its C source.
//!
//! Without either feature the crate is empty, and a node has only its local queues
//! and sinks.
#![forbid(unsafe_code)]

#[cfg(any(feature = "nats", feature = "kafka"))]
mod coalesce;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
