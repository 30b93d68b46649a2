//! The bodies of sluice's fuzz targets: every parser that takes bytes from outside.
//!
//! Each target is a `fn(&[u8])` that feeds the bytes to one parser and asserts what
//! must hold for *any* input, beyond "it did not panic":
//!
//! | target            | parser                                        | oracle                                           |
//! |-------------------|-----------------------------------------------|--------------------------------------------------|
//! | `json`            | `sluice_proto::json::validate`                | same verdict as serde_json                       |
//! | `ndjson`          | `body::split_ndjson`                          | a line-by-line reference split, byte for byte    |
//! | `json_body`       | `body::split_json`, `body::validate_payload`  | payloads are valid objects sliced from the body  |
//! | `record`          | `record::decode`                              | decode ∘ encode ∘ decode = decode                |
//! | `broker`          | `broker::decode`                              | decode ∘ headers ∘ decode = decode               |
//! | `grpc_request`    | prost `v1::IngestRequest`, `wire`             | re-encoding (prost and `wire`) decodes the same  |
//! | `wal_segment`     | WAL open (recovery) + readers + inspect       | every valid frame before the first bad one is read back |
//! | `wal_checkpoint`  | WAL open with a fuzzed checkpoint file        | the log opens or refuses; an append reads back   |
//! | `hpack`           | the client's HPACK + Huffman decoder          | our own literals decode as sent                  |
//! | `h2_frames`       | the client's HTTP/2 connection                | a request always ends (answer or error)          |
//! | `gzip`, `zstd`    | bounded decompression (`take(limit + 1)`)     | output never passes `limit + 1` bytes            |
//! | `config`          | `sluice_server::Config::load` (TOML + flags)  | loads or errors                                  |
//!
//! `fuzz/` (cargo-fuzz) wraps each in a one-line libFuzzer target; this crate's
//! `corpus` test replays `fuzz/corpus/<target>/` and mutations of it in CI.

#![forbid(unsafe_code)]

mod decompress;
mod h2;
mod proto;
mod wal;

pub use decompress::{bounded_decompress, gzip, zstd, Encoding, ZSTD_WINDOW_LOG_MAX};
pub use h2::{h2_frames, hpack};
pub use proto::{broker, grpc_request, json, json_body, ndjson, record};
pub use wal::{wal_checkpoint, wal_segment};

#[cfg(feature = "config")]
mod config;
#[cfg(feature = "config")]
pub use config::config;

/// A fuzz target: feeds one input to one parser and checks what must hold.
pub type Target = fn(&[u8]);

/// Every target by name (the name of its `fuzz/fuzz_targets/*.rs` and corpus directory).
pub const TARGETS: &[(&str, Target)] = &[
    ("json", json),
    ("ndjson", ndjson),
    ("json_body", json_body),
    ("record", record),
    ("broker", broker),
    ("grpc_request", grpc_request),
    ("wal_segment", wal_segment),
    ("wal_checkpoint", wal_checkpoint),
    ("hpack", hpack),
    ("h2_frames", h2_frames),
    ("gzip", gzip),
    ("zstd", zstd),
    #[cfg(feature = "config")]
    ("config", config),
];

/// Splits `data` into chunks of at most 255 bytes, each prefixed by its length byte;
/// a missing or short last chunk takes what is left. Lets one input carry several
/// fields (headers, blocks, frames) while staying mutation-friendly.
pub(crate) fn chunks(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = data.split_first()?;
        let n = usize::from(len).min(rest.len());
        let (chunk, rest) = rest.split_at(n);
        data = rest;
        Some(chunk)
    })
}
