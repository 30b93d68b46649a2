//! sluice's Rust client.
//!
//! - [`Client`]: the HTTP API (`POST /v1/streams/{stream}/events`) over HTTP/1.1 or
//!   HTTP/2 (h2c prior knowledge, or TLS with ALPN), on its own connection
//!   [`pool`](crate::pool) with keep-alive and HTTP/2 multiplexing; per-attempt
//!   timeouts; retries on 429/503 that wait at least `Retry-After` and stop at a
//!   [`RetryPolicy`] budget; and per-request [`Timings`] (DNS, TCP connect, TLS,
//!   time to first byte, total; a reused connection says so), like Go's httptrace.
//!   HTTP/1.1 is hyper's; HTTP/2 is the client's own [`http2`] connection, which
//!   puts many requests in one write and reads many answers in one read (~2 µs of
//!   client CPU per request, against ~7.5 µs through hyper's).
//! - [`GrpcClient`]: the generated `IngestService` client over the same pool (no
//!   tonic transport), with the API key in metadata and the same retry rules for
//!   `RESOURCE_EXHAUSTED` / `UNAVAILABLE` (`google.rpc.RetryInfo`).
//! - [`Batcher`]: collects events and sends them when N are buffered or T passed.
//!
//! The `sluice send` and `sluice load` tools built on it are the `sluice-tools` crate.
//!
//! Cancelling is dropping: every request is a future, and dropping it abandons the
//! request (an HTTP/1.1 connection in the middle of one is closed, never reused; an
//! HTTP/2 stream is reset).
#![forbid(unsafe_code)]

pub mod batch;
pub mod builder;
pub mod client;
pub mod error;
pub mod grpc;
pub mod http2;
pub mod pool;
pub mod retry;
pub mod timing;
pub mod tls;

pub use batch::{BatchOptions, BatchSummary, Batcher};
pub use builder::{ClientBuilder, Protocol};
pub use client::{Accepted, Body, Client, Endpoint};
pub use error::{BuildError, ClientError};
pub use grpc::GrpcClient;
pub use retry::RetryPolicy;
pub use timing::Timings;
