//! The local [`Queue`](sluice_core::Queue)s, and the [`CommitTracker`] every queue
//! with out-of-order commits shares:
//!
//! - [`MemoryQueue`]: bounded, lock-free, fastest, **not durable** (a crash loses what
//!   it holds; acks mean "in memory").
//! - [`WalQueue`]: the embedded write-ahead log, durable per its ack mode. The default.
//!
//! The broker queues (NATS JetStream, Kafka) live in `sluice-brokers`.
#![forbid(unsafe_code)]

mod handoff;
mod memory;
mod tracker;
mod wal;

pub use memory::{MemoryConfig, MemoryQueue};
pub use tracker::CommitTracker;
pub use wal::{AckMode, WalConfig, WalQueue, WalQueueOptions};
