//! sluice's data model: [`Event`], [`Batch`], event ids, stream names, and the
//! [`Queue`] and [`Sink`] traits that every queue backend (memory, WAL, brokers) and
//! every sink implements.
//!
//! This crate does no I/O and knows no runtime: the traits return boxed futures so
//! that callers can hold them as `dyn Queue` / `dyn Sink`.
#![forbid(unsafe_code)]

mod event;
mod queue;
mod sink;
mod stream;
mod time;

pub use event::{new_event_id, new_event_ids, Batch, Event, EventIds};
pub use queue::{AppendError, ConsumeError, Consumer, Delivery, Queue, QueueStats};
pub use sink::{Rejection, Sink, SinkError};
pub use stream::{validate_stream_name, StreamNameError, MAX_STREAM_NAME_LEN};
pub use time::{format_rfc3339_millis, now_unix_nanos};

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future: what the object-safe traits of this crate return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
