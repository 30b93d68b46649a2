//! sluice's pure codecs: no I/O, no async, no runtime.
//!
//! - [`body`]: HTTP request bodies (one JSON object, a JSON array of objects, NDJSON)
//!   split into the producers' payloads, byte for byte, without copying.
//! - [`record`]: the binary encoding of a [`sluice_core::Batch`] as one queue record.
//! - [`broker`]: an event as one broker message (payload verbatim, fields in headers).
//! - [`envelope`]: the JSON envelope that text sinks write for each delivered event.
//! - [`wire`]: an `IngestRequest` encoded straight from events, and a codec to send it.
//! - [`v1`]: the gRPC messages and the `IngestService` stubs generated from
//!   `proto/sluice/v1/ingest.proto` (server and client, without a transport).
#![forbid(unsafe_code)]

pub mod body;
pub mod broker;
pub mod envelope;
pub mod json;
pub mod record;
mod scan;
pub mod wire;

/// The protobuf runtime the generated messages use, for crates that encode and
/// decode them by hand.
pub use prost;

/// Generated from `proto/sluice/v1/ingest.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}
