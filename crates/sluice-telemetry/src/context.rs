//! W3C trace context (`traceparent`), as HTTP headers carry it and as sluice keeps
//! it with each traced event.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The header name, on requests and as an event header.
pub const TRACEPARENT: &str = "traceparent";

/// Reads a `traceparent` value (W3C Trace Context level 1): `None` for anything
/// malformed, so a bad header only means "no parent". Version `00` must be exactly
/// 55 characters; a later version may carry more after a `-`.
pub fn parse_traceparent(v: &str) -> Option<SpanContext> {
    let b = v.as_bytes();
    if b.len() < 55 || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = hex_u8(&b[0..2])?;
    if version == 0xff || (version == 0 && b.len() != 55) {
        return None;
    }
    let trace = hex_u128(&b[3..35])?;
    let span = hex_u64(&b[36..52])?;
    let flags = hex_u8(&b[53..55])?;
    if trace == 0 || span == 0 {
        return None;
    }
    Some(SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    ))
}

/// The `traceparent` value of `cx` (version `00`).
pub fn format_traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// Lowercase hex only, as the spec asks.
fn hex_digits(b: &[u8]) -> Option<u128> {
    let mut n: u128 = 0;
    for &c in b {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | u128::from(d);
    }
    Some(n)
}

fn hex_u8(b: &[u8]) -> Option<u8> {
    hex_digits(b).map(|n| n as u8)
}

fn hex_u64(b: &[u8]) -> Option<u64> {
    hex_digits(b).map(|n| n as u64)
}

fn hex_u128(b: &[u8]) -> Option<u128> {
    hex_digits(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_and_writes_the_spec_example() {
        let cx = parse_traceparent(GOOD).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled());
        assert!(cx.is_remote());
        assert_eq!(format_traceparent(&cx), GOOD);
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        // A later version may append fields.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let cx = parse_traceparent(v1).unwrap();
        assert!(!cx.is_sampled());
    }
}
