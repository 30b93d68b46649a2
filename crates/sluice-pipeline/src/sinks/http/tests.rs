//! Unit tests of the HTTP sink's private parts; its behaviour against a real server
//! is tested in tests/it/http/mod.rs.

use super::*;

// tests/it/http/mod.rs sends a body just over this threshold, with a copy of its value.
const _: () = assert!(
    GZIP_INLINE_BYTES == 32 * 1024,
    "update the copy of GZIP_INLINE_BYTES in tests/it/http/mod.rs"
);

#[test]
fn chunks_respect_the_bound_and_send_oversized_events_alone() {
    // Lines of 10, 10, 50, 10, 10, 10 bytes.
    let ends = [10, 20, 70, 80, 90, 100];
    assert_eq!(chunks(&ends, 25), vec![0..2, 2..3, 3..5, 5..6]);
    assert_eq!(chunks(&ends, 1000), vec![0..6]);
    assert_eq!(chunks(&ends, 1), vec![0..1, 1..2, 2..3, 3..4, 4..5, 5..6]);
    assert!(chunks(&[], 10).is_empty());
}

#[test]
fn parses_imf_fixdates() {
    let at = |s| {
        httpdate::parse_http_date(s)
            .ok()
            .map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs())
    };
    assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
    assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    assert_eq!(at("Wed, 01 Mar 2000 00:00:00 GMT"), Some(951_868_800));
    // RFC 9110 §5.6.7: recipients also read the two obsolete forms.
    assert_eq!(at("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
    assert_eq!(at("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
    assert_eq!(at("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    assert_eq!(at("Sun, 06 Nov 1994 25:49:37 GMT"), None);
    assert_eq!(at("Mon, 06 Nov 1994 08:49:37 GMT"), None, "wrong weekday");
    assert_eq!(at("Thu, 31 Feb 2000 00:00:00 GMT"), None, "no such day");
    assert_eq!(at("Sun, 06 Nov 1994 08:49:37 UTC"), None);
    let mut h = HeaderMap::new();
    h.insert(
        RETRY_AFTER,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
    );
    assert_eq!(
        retry_after(&h),
        Some(Duration::ZERO),
        "a past date means now"
    );
    h.insert(RETRY_AFTER, HeaderValue::from_static(" 120 "));
    assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
    h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
    assert_eq!(retry_after(&h), None);
}
