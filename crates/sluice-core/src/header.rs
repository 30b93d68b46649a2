//! What a producer may put in an event's headers, key and id.
//!
//! Producer headers are data, never control. Every broker queue and sink carries an
//! event's own headers next to headers that *do* steer something: sluice's own
//! (`sluice-stream` decides where an event is written) and the broker's (JetStream
//! acts on `Nats-Expected-Last-Sequence`, `Nats-Rollup`, `Nats-Msg-Id`, ...). So
//! ingest refuses, case-insensitively, any producer header whose name starts with one
//! of [`RESERVED_HEADER_PREFIXES`] or is one of [`RESERVED_HEADER_NAMES`], and every
//! name or value a broker could misread:
//!
//! - a name is 1 to [`MAX_HEADER_NAME_LEN`] bytes of visible ASCII other than `:`
//!   (the NATS header rule, stricter than HTTP's);
//! - a value is at most [`MAX_HEADER_VALUE_LEN`] bytes with no control character
//!   (no CR/LF that would end a NATS header line);
//! - an event has at most [`MAX_HEADERS`] headers.
//!
//! Keys ([`validate_key`]) and producer-supplied ids ([`validate_event_id`]) travel in
//! headers too (`sluice-key`, `sluice-id`), so they obey the value rules with their
//! own length limits. Kafka brokers act on no record header; the reserved names are
//! all NATS's and sluice's.

/// Most headers one event may carry.
pub const MAX_HEADERS: usize = 64;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 128;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Longest event key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest event id a producer may supply, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// Header name prefixes a producer may not use (compared ignoring ASCII case):
/// sluice's own namespace and JetStream's control headers.
pub const RESERVED_HEADER_PREFIXES: [&str; 2] = ["sluice-", "nats-"];
/// Whole header names a producer may not use (ignoring ASCII case): the NATS
/// key-value store reads `KV-Operation` as a delete or purge marker.
pub const RESERVED_HEADER_NAMES: [&str; 1] = ["kv-operation"];

/// Why a header (or a key or id) was refused. Values are never echoed: they are
/// the producer's data and may be large.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The name is empty.
    #[error("header name is empty")]
    EmptyName,
    /// The name is longer than [`MAX_HEADER_NAME_LEN`].
    #[error("header name is {len} bytes long; at most {MAX_HEADER_NAME_LEN} are allowed")]
    NameTooLong { len: usize },
    /// The name holds a byte that is not visible ASCII, or a `:`.
    #[error("header name has the character {ch:?} at byte {at}; only visible ASCII other than ':' is allowed")]
    BadNameChar { ch: char, at: usize },
    /// The name is sluice's or the broker's.
    #[error("header name is reserved (names starting with 'sluice-' or 'Nats-', and 'KV-Operation', in any case, are sluice's and the brokers' control headers)")]
    Reserved,
    /// The value (an id) is empty where one is required.
    #[error("value is empty")]
    EmptyValue,
    /// The value is longer than allowed.
    #[error("value is {len} bytes long; at most {max} are allowed")]
    ValueTooLong { len: usize, max: usize },
    /// The value holds a control character (CR, LF, NUL, ...).
    #[error("value has a control character ({ch:?}) at byte {at}")]
    BadValueChar { ch: char, at: usize },
    /// The event has more than [`MAX_HEADERS`] headers.
    #[error("the event has {count} headers; at most {MAX_HEADERS} are allowed")]
    TooMany { count: usize },
}

/// True if `name` is in sluice's or a broker's reserved namespace (any case).
pub fn is_reserved_header(name: &str) -> bool {
    let lower = |n: &str| {
        name.len() >= n.len() && name.as_bytes()[..n.len()].eq_ignore_ascii_case(n.as_bytes())
    };
    RESERVED_HEADER_PREFIXES.iter().any(|p| lower(p))
        || RESERVED_HEADER_NAMES
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
}

/// Checks a header name's syntax (not whether it is reserved).
pub fn validate_header_name(name: &str) -> Result<(), HeaderError> {
    if name.is_empty() {
        return Err(HeaderError::EmptyName);
    }
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(HeaderError::NameTooLong { len: name.len() });
    }
    match name
        .char_indices()
        .find(|(_, c)| !c.is_ascii_graphic() || *c == ':')
    {
        Some((at, ch)) => Err(HeaderError::BadNameChar { ch, at }),
        None => Ok(()),
    }
}

/// Checks a value that travels in a broker header: at most `max` bytes, no control
/// characters.
pub fn validate_header_value(value: &str, max: usize) -> Result<(), HeaderError> {
    if value.len() > max {
        return Err(HeaderError::ValueTooLong {
            len: value.len(),
            max,
        });
    }
    // Printable ASCII (every id sluice makes, most keys and values) in one byte pass;
    // anything else through the char-by-char check, which also finds the culprit.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    match value.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, ch)) => Err(HeaderError::BadValueChar { ch, at }),
        None => Ok(()),
    }
}

/// Checks one producer header: name syntax, not reserved, value rules.
pub fn validate_header(name: &str, value: &str) -> Result<(), HeaderError> {
    validate_header_name(name)?;
    if is_reserved_header(name) {
        return Err(HeaderError::Reserved);
    }
    validate_header_value(value, MAX_HEADER_VALUE_LEN)
}

/// Checks every header of one event and their count. On failure returns the
/// offending header's name (empty for the count) with the reason.
pub fn validate_headers<'a>(
    headers: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), (&'a str, HeaderError)> {
    if headers.len() > MAX_HEADERS {
        return Err((
            "",
            HeaderError::TooMany {
                count: headers.len(),
            },
        ));
    }
    for (name, value) in headers {
        validate_header(name, value).map_err(|e| (name, e))?;
    }
    Ok(())
}

/// Checks an event key: at most [`MAX_KEY_LEN`] bytes, no control characters.
pub fn validate_key(key: &str) -> Result<(), HeaderError> {
    validate_header_value(key, MAX_KEY_LEN)
}

/// Checks an event id: 1 to [`MAX_EVENT_ID_LEN`] bytes, no control characters.
pub fn validate_event_id(id: &str) -> Result<(), HeaderError> {
    if id.is_empty() {
        return Err(HeaderError::EmptyValue);
    }
    validate_header_value(id, MAX_EVENT_ID_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_refused_in_any_case() {
        for name in [
            "sluice-stream",
            "SLUICE-STREAM",
            "Sluice-Id",
            "sluice-dead-letter-reason",
            "Nats-Expected-Last-Sequence",
            "Nats-Rollup",
            "NATS-ROLLUP",
            "nats-msg-id",
            "Nats-TTL",
            "KV-Operation",
        ] {
            assert_eq!(
                validate_header(name, "x"),
                Err(HeaderError::Reserved),
                "{name}"
            );
        }
        for name in [
            "trace",
            "x-sluice-stream",
            "natsy",
            "sluice",
            "kv-operations",
            "content-type",
        ] {
            assert_eq!(validate_header(name, "v"), Ok(()), "{name}");
        }
    }

    #[test]
    fn names_and_values_a_broker_could_misread_are_refused() {
        assert_eq!(validate_header("", "v"), Err(HeaderError::EmptyName));
        assert_eq!(
            validate_header("a:b", "v"),
            Err(HeaderError::BadNameChar { ch: ':', at: 1 })
        );
        assert_eq!(
            validate_header("a b", "v"),
            Err(HeaderError::BadNameChar { ch: ' ', at: 1 })
        );
        assert_eq!(
            validate_header("caf\u{e9}", "v"),
            Err(HeaderError::BadNameChar {
                ch: '\u{e9}',
                at: 3
            })
        );
        assert_eq!(
            validate_header(&"n".repeat(129), "v"),
            Err(HeaderError::NameTooLong { len: 129 })
        );
        assert!(validate_header(&"n".repeat(128), "v").is_ok());
        assert_eq!(
            validate_header("t", "x\r\nNats-Rollup: all"),
            Err(HeaderError::BadValueChar { ch: '\r', at: 1 })
        );
        assert_eq!(
            validate_header("t", "\0"),
            Err(HeaderError::BadValueChar { ch: '\0', at: 0 })
        );
        assert_eq!(
            validate_header("t", &"v".repeat(4097)),
            Err(HeaderError::ValueTooLong {
                len: 4097,
                max: 4096
            })
        );
        assert!(validate_header("t", "caf\u{e9} and spaces").is_ok());
        assert!(validate_header("t", "").is_ok());
    }

    #[test]
    fn count_keys_and_ids_are_bounded() {
        let many: Vec<(String, String)> =
            (0..65).map(|i| (format!("h{i}"), String::new())).collect();
        let err = validate_headers(many.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(err, Err(("", HeaderError::TooMany { count: 65 })));
        let ok = validate_headers(many[..64].iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(ok, Ok(()));
        let bad = [("ok", "1"), ("Nats-Rollup", "all")];
        assert_eq!(
            validate_headers(bad.into_iter()),
            Err(("Nats-Rollup", HeaderError::Reserved))
        );
        assert!(validate_key("user-7").is_ok());
        assert!(validate_key(&"k".repeat(257)).is_err());
        assert!(validate_key("a\nb").is_err());
        assert!(validate_event_id("").is_err());
        assert!(validate_event_id(&"i".repeat(129)).is_err());
        assert!(validate_event_id("order-17").is_ok());
    }
}
