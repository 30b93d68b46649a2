//! Kafka support: one sluice [`Event`](sluice_core::Event) as one Kafka record.
//!
//! # Record encoding (a public contract; the Kafka sink writes the same)
//!
//! ```text
//! key        event.key if it has one, else event.id (UTF-8)
//! value      event.payload, verbatim
//! timestamp  event.received_at_unix_nanos / 1_000_000 (CreateTime, ms)
//! headers    sluice-id           event.id
//!            sluice-stream       event.stream
//!            sluice-received-at  event.received_at_unix_nanos, decimal
//!            sluice-timestamp    event.timestamp_unix_nanos, decimal; only if non-zero
//!            sluice-key          event.key; only if the event has one
//!            <name>              <value>: the event's own headers, verbatim, in order
//! ```
//!
//! Invariants: sluice's headers come first, in this order, so [`decode_record`]
//! reads them by place; an event's own headers never use one of the
//! [`RESERVED_HEADERS`] names (see [`validate_event`]); all header values are UTF-8.
//! Decoding rebuilds an identical [`Event`](sluice_core::Event).

mod record;

pub use record::{
    decode_record, encode_record, record_key, validate_event, DecodeError, EncodeError, HEADER_ID,
    HEADER_KEY, HEADER_RECEIVED_AT, HEADER_STREAM, HEADER_TIMESTAMP, RESERVED_HEADERS,
};
