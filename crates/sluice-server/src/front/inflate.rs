//! Bounded decompression of request bodies (HTTP `Content-Encoding`) and gRPC
//! messages (`grpc-encoding`): gzip and zstd.
//!
//! A few KiB of gzip or zstd can expand to gigabytes. The output is read in chunks
//! of [`CHUNK`] bytes, stops at `limit + 1` bytes (so a bomb costs at most the limit)
//! and charges every chunk to the node's byte budget before it is kept. zstd's
//! window is capped at 2^[`ZSTD_WINDOW_LOG_MAX`] bytes, so a tiny frame that declares
//! a huge window cannot make the decoder allocate it (zstd's own default allows
//! 128 MiB per decoder); every standard compression level up to 19 stays inside.

use std::io::Read;

use bytes::Bytes;
use http::StatusCode;

use super::budget::Charge;
use crate::error::ApiError;

/// Largest zstd window accepted: 8 MiB (levels 1–19 use at most this).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Bytes decompressed (and charged) at a time.
const CHUNK: usize = 64 * 1024;

/// A body's or message's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// The encoding a `Content-Encoding` / `grpc-encoding` value names, if supported.
    pub fn parse(value: &str) -> Option<Encoding> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Some(Encoding::Identity),
            "gzip" | "x-gzip" => Some(Encoding::Gzip),
            "zstd" => Some(Encoding::Zstd),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

/// Decompresses `input` into at most `limit` bytes, charging the output to
/// `charge`. `what` names the input in the 413 (e.g. "decompressed request body").
pub fn inflate(
    encoding: Encoding,
    input: &[u8],
    limit: u64,
    what: &str,
    charge: &mut Charge,
) -> Result<Bytes, ApiError> {
    let invalid = |e: std::io::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_encoding",
            format!("the body is not valid {}: {e}", encoding.name()),
        )
    };
    let mut reader: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => return Ok(Bytes::copy_from_slice(input)),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Encoding::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(input).map_err(invalid)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(invalid)?;
            Box::new(d)
        }
    };
    let mut out: Vec<u8> = Vec::new();
    loop {
        let room = (limit + 1).saturating_sub(out.len() as u64);
        if room == 0 {
            return Err(ApiError::too_large(what, limit));
        }
        let want = room.min(CHUNK as u64) as usize;
        charge.add(want as u64)?;
        let start = out.len();
        out.resize(start + want, 0);
        let got = loop {
            match reader.read(&mut out[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let mut e = invalid(e);
                    if e.message.contains("Frame requires too much memory") {
                        e.message = format!(
                            "{}; sluice accepts zstd windows up to {} MiB (window_log_max {ZSTD_WINDOW_LOG_MAX})",
                            e.message,
                            (1u64 << ZSTD_WINDOW_LOG_MAX) >> 20
                        );
                    }
                    return Err(e);
                }
            }
        };
        out.truncate(start + got);
        charge.release((want - got) as u64);
        if got == 0 {
            break;
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::front::budget::Budget;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn round_trips_and_charges_what_it_keeps() {
        let budget = Budget::new(1 << 30);
        let mut c = budget.charge();
        let data = vec![b'x'; 200_000];
        let out = inflate(Encoding::Gzip, &gzip(&data), 1 << 20, "body", &mut c).unwrap();
        assert_eq!(&out[..], &data[..]);
        assert_eq!(c.held(), 200_000);
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let out = inflate(Encoding::Zstd, &z, 1 << 20, "body", &mut c).unwrap();
        assert_eq!(out.len(), data.len());
    }

    #[test]
    fn bombs_stop_at_the_limit_and_bad_input_is_invalid_encoding() {
        let budget = Budget::new(1 << 30);
        let mut c = budget.charge();
        let bomb = gzip(&vec![0u8; 4 << 20]);
        let e = inflate(Encoding::Gzip, &bomb, 1 << 20, "body", &mut c).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (413, "payload_too_large"));
        let e = inflate(Encoding::Zstd, b"not zstd", 1 << 20, "body", &mut c).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_encoding"));
    }

    #[test]
    fn a_zstd_frame_declaring_a_huge_window_is_refused() {
        // A frame header: magic, descriptor (single segment off, no checksum, no
        // content size), window descriptor with exponent 14 → a 16 MiB window (zstd's
        // default limit allows 128 MiB), then one empty last raw block.
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 14 << 3, 0x01, 0x00, 0x00];
        let budget = Budget::new(1 << 30);
        let mut c = budget.charge();
        let e = inflate(Encoding::Zstd, &frame, 1 << 20, "body", &mut c).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.code),
            (400, "invalid_encoding"),
            "{e:?}"
        );
    }

    #[test]
    fn a_spent_budget_refuses_with_overloaded() {
        let budget = Budget::new(100_000);
        let mut c = budget.charge();
        let e = inflate(
            Encoding::Gzip,
            &gzip(&[b'a'; 300_000]),
            1 << 20,
            "body",
            &mut c,
        )
        .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (429, "overloaded"));
    }
}
