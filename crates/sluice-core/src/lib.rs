//! sluice's data model: [`Event`], [`Batch`], event ids, stream names, and the
//! [`Queue`] and [`Sink`] traits that every queue backend (memory, WAL, brokers) and
//! every sink implements; and [`units`], the human sizes and durations (`"10 MiB"`,
//! `"30s"`) that the config file and the command-line tools share.
//!
//! This crate does no I/O and knows no runtime: the traits return boxed futures so
//! that callers can hold them as `dyn Queue` / `dyn Sink`.
#![forbid(unsafe_code)]

pub mod blocking;
mod event;
mod header;
pub mod options;
mod queue;
mod sink;
mod stream;
mod time;
pub mod units;

pub use event::{new_event_id, new_event_ids, producer_timestamp, Batch, Event, EventId, EventIds};
pub use header::{
    is_reserved_header, validate_event_id, validate_header, validate_header_name,
    validate_header_value, validate_headers, validate_key, HeaderError, MAX_EVENT_ID_LEN,
    MAX_HEADERS, MAX_HEADER_NAME_LEN, MAX_HEADER_VALUE_LEN, MAX_KEY_LEN, RESERVED_HEADER_NAMES,
    RESERVED_HEADER_PREFIXES,
};
pub use options::{OptionError, Properties, Secret};
pub use queue::{
    AppendError, Committed, ConsumeError, Consumer, Delivery, Queue, QueueStats, Unhealthy,
};
pub use sink::{Rejection, Sink, SinkError};
pub use stream::{validate_stream_name, StreamNameError, MAX_STREAM_NAME_LEN, QUARANTINE_STREAM};
pub use time::{format_rfc3339_millis, now_unix_nanos};

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future: what the object-safe traits of this crate return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
