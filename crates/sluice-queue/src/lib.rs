//! [`Queue`](sluice_core::Queue) implementations:
//!
//! - [`MemoryQueue`]: bounded, lock-free, fastest, **not durable** (a crash loses what
//!   it holds; acks mean "in memory").
//! - [`WalQueue`]: the embedded write-ahead log, durable per its ack mode. The default.
//! - `NatsQueue` (feature `nats`): NATS JetStream, shared by many processes.
#![forbid(unsafe_code)]

#[cfg(feature = "kafka")]
pub mod kafka;
mod memory;
#[cfg(feature = "nats")]
pub mod nats;
mod tracker;
mod wal;

#[cfg(feature = "kafka")]
pub use kafka::{KafkaOptions, KafkaQueue};
pub use memory::MemoryQueue;
#[cfg(feature = "nats")]
pub use nats::{NatsOptions, NatsQueue};
pub use wal::{WalQueue, WalQueueOptions};
