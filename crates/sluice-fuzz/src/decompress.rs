//! Targets for request-body decompression: the bounded-read pattern of the HTTP
//! front door (`take(limit + 1)` over flate2's `MultiGzDecoder` and zstd's stream
//! decoder), with zstd's window limited.
//!
//! TODO(lead): `decompress_sync` in crates/sluice-server/src/http/ingest.rs is being
//! reworked for issue #14; once it settles, make it reachable (e.g. a `pub fn` in a
//! small module) and point [`bounded_decompress`] at it instead of this copy.

use std::io::Read;

/// A `Content-Encoding` sluice accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Zstd,
}

/// Largest zstd window accepted (8 MiB): a frame may ask for up to 2 GiB, which the
/// decoder would allocate before producing a byte.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The largest decompressed body the targets allow (the real limit is
/// `http.max_body_bytes`; a small one makes the bound easy to hit).
const LIMIT: u64 = 64 << 10;

/// Decompresses at most `limit + 1` bytes of `body`; `Err` for a body that is not
/// valid, `Ok` with more than `limit` bytes meaning "too large".
pub fn bounded_decompress(encoding: Encoding, body: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity((body.len() * 4).min(limit as usize));
    match encoding {
        Encoding::Gzip => flate2::read::MultiGzDecoder::new(body)
            .take(limit + 1)
            .read_to_end(&mut out)?,
        Encoding::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(body)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            d.take(limit + 1).read_to_end(&mut out)?
        }
    };
    Ok(out)
}

/// Never more than `limit + 1` bytes out, and a smaller limit gives a prefix of
/// what a larger one gives.
fn check(encoding: Encoding, data: &[u8]) {
    let Ok(out) = bounded_decompress(encoding, data, LIMIT) else {
        return;
    };
    assert!(out.len() as u64 <= LIMIT + 1, "{} bytes out", out.len());
    let small = (out.len() / 2) as u64;
    if let Ok(prefix) = bounded_decompress(encoding, data, small) {
        assert_eq!(
            prefix[..],
            out[..prefix.len()],
            "a smaller limit changed the bytes"
        );
        assert!(prefix.len() as u64 <= small + 1);
    }
}

/// Gzip bodies (several members allowed).
pub fn gzip(data: &[u8]) {
    check(Encoding::Gzip, data);
}

/// Zstd bodies.
pub fn zstd(data: &[u8]) {
    check(Encoding::Zstd, data);
}
