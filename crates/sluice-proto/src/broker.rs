//! How an [`Event`] travels as one broker message (a Kafka record, a NATS message):
//! the payload is the producer's bytes verbatim, and everything else rides in headers.
//!
//! | header               | value                                             |
//! |----------------------|---------------------------------------------------|
//! | `sluice-id`          | the event id                                      |
//! | `sluice-stream`      | the sluice stream                                 |
//! | `sluice-received-at` | receive time, Unix nanoseconds, decimal           |
//! | `sluice-timestamp`   | the producer's timestamp (nanoseconds), if it sent one |
//! | `sluice-key`         | the event key, if it has one                      |
//! | anything else        | the event's own headers, verbatim                 |
//!
//! Consumers outside sluice read the payload as is and the headers if they care; the
//! same layout serves the queue backends and the broker sinks, so a sluice processor
//! can consume what a broker sink of another sluice produced.
//!
//! **Batch messages.** A queue may carry the events of one append together in one
//! message: header [`BATCH`] = `1` (the layout version) and the payload is the
//! batch in sluice's record encoding ([`crate::record`], itself versioned by its
//! first byte), all events of one stream (also in [`STREAM`]). A broker stores and
//! acks messages, not bytes: on this project's machine JetStream's own ceiling was
//! ~30-50k messages/s with a native client, so one message per event capped a
//! 1,000-event request at that many events/s. [`decode_batch`] checks every event
//! as [`decode`] checks a message's, so a crafted batch is refused whole, never
//! delivered in part. The broker *sinks* keep one message per event: they write for
//! consumers outside sluice.
//!
//! Invariants (producer headers are data, never control):
//!
//! - [`check_event`] runs before anything is encoded: the stream name, id and key are
//!   valid, and no header of the event's own uses one of sluice's names (in any case)
//!   or a broker's reserved ones (`Nats-*`, `KV-Operation`), or a name or value a
//!   broker could misread. Ingest refuses such headers earlier
//!   ([`sluice_core::validate_headers`]); this is the second line.
//! - [`decode`] refuses, never overwrites: a sluice header that appears twice (in any
//!   case), an invalid stream name, id or key, or an own header that breaks the same
//!   rules is a [`DecodeError`]. The queues hand such a message to the dead-letter
//!   sink as a [`quarantine`] event, under [`sluice_core::QUARANTINE_STREAM`]; it
//!   never reaches a sink under the name it carried.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use sluice_core::{
    is_reserved_header, validate_event_id, validate_header_name, validate_key,
    validate_stream_name, Event, EventId, HeaderError, StreamNameError, QUARANTINE_STREAM,
};

/// The event id.
pub const ID: &str = "sluice-id";
/// The sluice stream.
pub const STREAM: &str = "sluice-stream";
/// Receive time in Unix nanoseconds.
pub const RECEIVED_AT: &str = "sluice-received-at";
/// The producer's own timestamp in Unix nanoseconds.
pub const TIMESTAMP: &str = "sluice-timestamp";
/// The event key.
pub const KEY: &str = "sluice-key";
/// On a batch message: the version of its layout, [`BATCH_VERSION`].
pub const BATCH: &str = "sluice-batch";
/// The one batch layout there is: the payload is a [`crate::record`] of one stream.
pub const BATCH_VERSION: &str = "1";
/// On a [`quarantine`] event: the unreadable message's headers, escaped.
pub const QUARANTINED_HEADERS: &str = "sluice-quarantined-headers";

/// The names sluice writes itself; an event's own header may not use one (the
/// decoder could not tell it from sluice's).
pub const RESERVED: [&str; 5] = [ID, STREAM, RECEIVED_AT, TIMESTAMP, KEY];

/// Longest excerpt of a bad value quoted in an error.
const QUOTE_LEN: usize = 64;

/// Why a broker message is not a sluice event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A required header is absent.
    #[error("broker message has no {0} header")]
    Missing(&'static str),
    /// One of sluice's headers appears more than once (possibly in another case).
    #[error("broker message has the {0} header more than once")]
    Duplicate(&'static str),
    /// A header is not what sluice writes.
    #[error("broker message header {name} is invalid ({reason}): {value:?}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// An own header sluice would never have written.
    #[error("broker message header {name:?} is not allowed: {error}")]
    Header { name: String, error: HeaderError },
    /// The payload is not the JSON object sluice wrote: a sink would write a broken
    /// envelope.
    #[error("broker message payload is refused: {0}")]
    Payload(String),
    /// A batch message that is not what sluice writes.
    #[error("broker batch message is refused: {0}")]
    Batch(String),
}

/// Why an event cannot be written as a broker message. Permanent: retrying cannot
/// help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// One of the event's own headers uses a name sluice writes itself.
    #[error("event header {name:?} uses a name reserved for sluice's own record headers")]
    ReservedHeader { name: String },
    /// One of the event's own headers is one a broker acts on, or malformed.
    #[error("event header {name:?} is not allowed: {error}")]
    InvalidHeader { name: String, error: HeaderError },
    /// The stream name is not valid.
    #[error("event stream name {name:?} is invalid: {error}")]
    InvalidStream {
        name: String,
        error: StreamNameError,
    },
    /// The id is not valid.
    #[error("event id is invalid: {0}")]
    InvalidId(HeaderError),
    /// The key is not valid.
    #[error("event key is invalid: {0}")]
    InvalidKey(HeaderError),
}

/// Checks an own header (one that is not sluice's) as it may travel in a message:
/// a valid name, neither sluice's (any case) nor a broker's, no line break in the
/// value. Values are not length-checked here: sluice's own dead-letter headers (the
/// reason) may be long, and the broker bounds the message.
pub fn check_own_header(name: &str, value: &str) -> Result<(), EncodeError> {
    if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) || name.eq_ignore_ascii_case(BATCH) {
        return Err(EncodeError::ReservedHeader { name: quote(name) });
    }
    let invalid = |error| EncodeError::InvalidHeader {
        name: quote(name),
        error,
    };
    validate_header_name(name).map_err(invalid)?;
    // sluice's own namespace is open to sluice (dead-letter headers); a broker's is not.
    if is_reserved_header(name)
        && !name
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("sluice-"))
    {
        return Err(invalid(HeaderError::Reserved));
    }
    if let Some(at) = value.find(['\r', '\n']) {
        return Err(invalid(HeaderError::BadValueChar {
            ch: value[at..].chars().next().expect("found a char there"),
            at,
        }));
    }
    Ok(())
}

/// Checks that `event` can be encoded (see the module invariants).
pub fn check_event(event: &Event) -> Result<(), EncodeError> {
    validate_stream_name(&event.stream).map_err(|error| EncodeError::InvalidStream {
        name: quote(&event.stream),
        error,
    })?;
    validate_event_id(&event.id).map_err(EncodeError::InvalidId)?;
    if let Some(k) = &event.key {
        validate_key(k).map_err(EncodeError::InvalidKey)?;
    }
    for (name, value) in &event.headers {
        check_own_header(name, value)?;
    }
    Ok(())
}

/// The first of the event's own headers that uses a reserved name, if any.
pub fn reserved_header(event: &Event) -> Option<&str> {
    event
        .headers
        .iter()
        .map(|(k, _)| k.as_str())
        .find(|k| RESERVED.iter().any(|r| k.eq_ignore_ascii_case(r)))
}

/// The headers of `event`, sluice's own first, then the event's. Call
/// [`check_event`] first: this writes what it is given.
pub fn headers(event: &Event) -> Vec<(&str, Cow<'_, str>)> {
    let mut h = Vec::with_capacity(4 + event.headers.len());
    h.push((ID, Cow::Borrowed(event.id.as_str())));
    h.push((STREAM, Cow::Borrowed(&*event.stream)));
    h.push((
        RECEIVED_AT,
        Cow::Owned(event.received_at_unix_nanos.to_string()),
    ));
    if let Some(t) = event.timestamp_unix_nanos {
        h.push((TIMESTAMP, Cow::Owned(t.to_string())));
    }
    if let Some(k) = &event.key {
        h.push((KEY, Cow::Borrowed(k.as_str())));
    }
    h.extend(
        event
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_str()))),
    );
    h
}

/// Rebuilds the event from a message's headers (in any order) and payload. Headers
/// sluice does not own, except those the broker itself adds (`skip`), become the
/// event's headers. Refuses rather than guesses: see the module invariants.
pub fn decode<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    skip: impl Fn(&str) -> bool,
    payload: Bytes,
) -> Result<Event, DecodeError> {
    let mut seen = [None::<&'a str>; 5];
    let mut own = Vec::new();
    for (name, value) in headers {
        if let Some(i) = RESERVED.iter().position(|r| name.eq_ignore_ascii_case(r)) {
            if seen[i].is_some() || name != RESERVED[i] {
                return Err(DecodeError::Duplicate(RESERVED[i]));
            }
            seen[i] = Some(value);
        } else if !skip(name) {
            check_own_header(name, value).map_err(|e| match e {
                EncodeError::InvalidHeader { name, error } => DecodeError::Header { name, error },
                _ => DecodeError::Header {
                    name: quote(name),
                    error: HeaderError::Reserved,
                },
            })?;
            own.push((name.to_string(), value.to_string()));
        }
    }
    let [id, stream, received, timestamp, key] = seen;
    let invalid = |name: &'static str, value: &str, reason: String| DecodeError::Invalid {
        name,
        value: quote(value),
        reason,
    };
    let number = |name: &'static str, v: &str| {
        v.parse::<i64>()
            .map_err(|_| invalid(name, v, "not a decimal integer".into()))
    };
    let id = id.ok_or(DecodeError::Missing(ID))?;
    let id = EventId::parse(id).map_err(|e| invalid(ID, id, e.to_string()))?;
    let stream = stream.ok_or(DecodeError::Missing(STREAM))?;
    validate_stream_name(stream).map_err(|e| invalid(STREAM, stream, e.to_string()))?;
    if let Some(k) = key {
        validate_key(k).map_err(|e| invalid(KEY, k, e.to_string()))?;
    }
    let received_at_unix_nanos = number(
        RECEIVED_AT,
        received.ok_or(DecodeError::Missing(RECEIVED_AT))?,
    )?;
    let timestamp_unix_nanos = timestamp.map(|t| number(TIMESTAMP, t)).transpose()?;
    crate::body::validate_payload(&payload, 1).map_err(|e| DecodeError::Payload(e.message))?;
    Ok(Event {
        id,
        stream: Arc::from(stream),
        key: key.map(str::to_string),
        received_at_unix_nanos,
        timestamp_unix_nanos,
        headers: own,
        payload,
    })
}

/// The events of a batch message's payload (see the module docs), each checked as
/// [`decode`] checks one message: a valid stream (`stream`, the message's, for
/// every event), id and key, own headers that break no rule, a JSON object payload.
/// Any failure refuses the whole message.
pub fn decode_batch(stream: &str, payload: Bytes) -> Result<Vec<Event>, DecodeError> {
    let events = crate::record::decode(payload).map_err(|e| DecodeError::Batch(e.to_string()))?;
    if events.is_empty() {
        return Err(DecodeError::Batch("no events".into()));
    }
    for (i, e) in events.iter().enumerate() {
        let at = |why: String| DecodeError::Batch(format!("event {}: {why}", i + 1));
        if *e.stream != *stream {
            return Err(at(format!(
                "stream {:?} is not the message's {:?}",
                quote(&e.stream),
                quote(stream)
            )));
        }
        check_event(e).map_err(|err| at(err.to_string()))?;
        crate::body::validate_payload(&e.payload, 1).map_err(|err| at(err.message))?;
    }
    Ok(events)
}

/// The events of a message whose headers are `headers`: a batch message's (its only
/// headers are [`BATCH`] = [`BATCH_VERSION`] and [`STREAM`], once each, besides
/// those the broker adds, `skip`), or the one event of any other ([`decode`]).
pub fn decode_messages(
    headers: &[(&str, &str)],
    skip: impl Fn(&str) -> bool,
    payload: Bytes,
) -> Result<Vec<Event>, DecodeError> {
    if !headers.iter().any(|(name, _)| *name == BATCH) {
        return decode(headers.iter().copied(), skip, payload).map(|e| vec![e]);
    }
    let (mut version, mut stream) = (None, None);
    for &(name, value) in headers {
        let slot = match name {
            BATCH => &mut version,
            STREAM => &mut stream,
            n if skip(n) => continue,
            n => {
                return Err(DecodeError::Batch(format!(
                    "unexpected header {:?}",
                    quote(n)
                )))
            }
        };
        if slot.replace(value).is_some() {
            return Err(DecodeError::Duplicate(if name == BATCH {
                BATCH
            } else {
                STREAM
            }));
        }
    }
    if version != Some(BATCH_VERSION) {
        return Err(DecodeError::Batch(format!(
            "layout version {:?} is not {BATCH_VERSION}",
            quote(version.unwrap_or(""))
        )));
    }
    let stream = stream.ok_or(DecodeError::Missing(STREAM))?;
    decode_batch(stream, payload)
}

/// What a queue hands the dead-letter sink for a message [`decode`] refused: a fresh
/// id, stream [`QUARANTINE_STREAM`], received now, the message's headers escaped
/// (Rust string escapes, at most 4 KiB) in one [`QUARANTINED_HEADERS`] header, and
/// its payload verbatim if it is a JSON object, else wrapped as
/// `{"unreadable_payload": "<the bytes as lossy UTF-8>"}`.
pub fn quarantine<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    payload: Bytes,
) -> Event {
    let pairs: Vec<(&str, &str)> = headers.into_iter().collect();
    let mut escaped = format!("{pairs:?}");
    if escaped.len() > 4096 {
        let mut end = 4096;
        while !escaped.is_char_boundary(end) {
            end -= 1;
        }
        escaped.truncate(end);
        escaped.push_str("...");
    }
    let payload = match crate::body::validate_payload(&payload, 1) {
        Ok(()) => payload,
        Err(_) => Bytes::from(
            serde_json::json!({ "unreadable_payload": String::from_utf8_lossy(&payload) })
                .to_string(),
        ),
    };
    let mut e = Event::new(QUARANTINE_STREAM, payload);
    e.headers.push((QUARANTINED_HEADERS.into(), escaped));
    e
}

/// A bounded, escaped excerpt of a producer's value for an error message.
fn quote(value: &str) -> String {
    let mut end = value.len().min(QUOTE_LEN);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let mut q = value[..end].escape_debug().to_string();
    if end < value.len() {
        q.push_str("...");
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_of(events: Vec<Event>) -> Bytes {
        let mut out = Vec::new();
        crate::record::encode(&sluice_core::Batch::new(events), &mut out);
        Bytes::from(out)
    }

    #[test]
    fn batches_round_trip_and_a_crafted_one_is_refused_whole() {
        let mut e = Event::new("clicks", Bytes::from_static(b"{\"n\":1}"));
        e.key = Some("k".into());
        e.headers = vec![("trace".into(), "t1".into())];
        let good = vec![e.clone(), Event::new("clicks", Bytes::from_static(b"{}"))];
        assert_eq!(
            decode_batch("clicks", record_of(good.clone())).unwrap(),
            good
        );

        let refused = |events: Vec<Event>| decode_batch("clicks", record_of(events)).unwrap_err();
        // Another stream than the message's, an invalid one, a reserved header, a
        // payload that is not a JSON object: each refuses the whole message.
        let mut other = good.clone();
        other[1].stream = "other".into();
        assert!(refused(other).to_string().contains("event 2"));
        let mut bad = good.clone();
        bad[1].stream = "../x".into();
        assert!(matches!(refused(bad), DecodeError::Batch(_)));
        for name in ["sluice-batch", "Sluice-Stream", "Nats-Msg-Id"] {
            let mut h = good.clone();
            h[0].headers.push((name.into(), "1".into()));
            assert!(matches!(refused(h), DecodeError::Batch(_)), "{name}");
        }
        let mut p = good.clone();
        p[0].payload = Bytes::from_static(b"[1]");
        assert!(matches!(refused(p), DecodeError::Batch(_)));
        assert!(decode_batch("clicks", Bytes::from_static(b"{\"n\":1}")).is_err());
        assert!(refused(Vec::new()).to_string().contains("no events"));
        // An event of one's own may not carry the batch header either.
        let mut own = e.clone();
        own.headers = vec![("sluice-batch".into(), "1".into())];
        assert!(check_event(&own).is_err());
    }

    #[test]
    fn round_trips_every_field() {
        let mut e = Event::new("clicks.eu", &br#"{"a":1}"#[..]);
        e.key = Some("user-7".into());
        e.timestamp_unix_nanos = Some(1_700_000_000_123_000_000);
        e.headers = vec![("trace".into(), "abc".into())];
        let h = headers(&e);
        let back = decode(
            h.iter().map(|(k, v)| (*k, v.as_ref())),
            |_| false,
            e.payload.clone(),
        )
        .unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn broker_headers_are_skipped_and_missing_ones_named() {
        let e = Event::new("s", &b"{}"[..]);
        let mut h: Vec<(&str, String)> = headers(&e)
            .into_iter()
            .map(|(k, v)| (k, v.into_owned()))
            .collect();
        h.push(("Nats-Msg-Id", e.id.to_string()));
        let back = decode(
            h.iter().map(|(k, v)| (*k, v.as_str())),
            |n| n.starts_with("Nats-"),
            e.payload.clone(),
        )
        .unwrap();
        assert!(back.headers.is_empty());
        let err = decode([(ID, "x")], |_| false, Bytes::new()).unwrap_err();
        assert_eq!(err, DecodeError::Missing(STREAM));
        let err = decode(
            [(ID, "x"), (STREAM, "s"), (RECEIVED_AT, "soon")],
            |_| false,
            Bytes::new(),
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { .. }));
        let readable = [(ID, "x"), (STREAM, "s"), (RECEIVED_AT, "1")];
        for bad in [&b"{\"n\":"[..], b"[1]", b"", b"\xff"] {
            let err = decode(readable, |_| false, Bytes::from_static(bad)).unwrap_err();
            assert!(matches!(err, DecodeError::Payload(_)), "{bad:?}: {err}");
        }
        assert!(decode(readable, |_| false, Bytes::from_static(b" {} ")).is_ok());
    }

    fn pairs(e: &Event) -> Vec<(String, String)> {
        headers(e)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_owned()))
            .collect()
    }

    fn decode_pairs(h: &[(String, String)]) -> Result<Event, DecodeError> {
        decode(
            h.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            |_| false,
            Bytes::from_static(b"{}"),
        )
    }

    fn owned(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_second_sluice_header_is_refused_not_taken() {
        let e = Event::new("web.clicks", &b"{}"[..]);
        for name in ["sluice-stream", "SLUICE-STREAM", "Sluice-Stream"] {
            let mut h = pairs(&e);
            h.push((name.into(), "../../x".into()));
            assert_eq!(
                decode_pairs(&h),
                Err(DecodeError::Duplicate(STREAM)),
                "{name}"
            );
        }
        let mut h = pairs(&e);
        h.push((ID.into(), "other".into()));
        assert_eq!(decode_pairs(&h), Err(DecodeError::Duplicate(ID)));
        // A case variant alone is not sluice's header either.
        let h = owned(&[("Sluice-Id", "a"), (STREAM, "s"), (RECEIVED_AT, "1")]);
        assert_eq!(decode_pairs(&h), Err(DecodeError::Duplicate(ID)));
    }

    #[test]
    fn stream_id_and_key_read_back_are_validated() {
        let e = Event::new("s", &b"{}"[..]);
        let with = |name: &'static str, value: &str| {
            let mut h: Vec<(String, String)> =
                pairs(&e).into_iter().filter(|(k, _)| k != name).collect();
            h.push((name.into(), value.to_string()));
            decode_pairs(&h)
        };
        for bad in ["../x", "../../x", "/etc", "a/b", "..", ".", ""] {
            let err = with(STREAM, bad).unwrap_err();
            assert!(
                matches!(err, DecodeError::Invalid { name: STREAM, .. }),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            with(ID, "").unwrap_err(),
            DecodeError::Invalid { name: ID, .. }
        ));
        assert!(matches!(
            with(ID, &"i".repeat(129)).unwrap_err(),
            DecodeError::Invalid { name: ID, .. }
        ));
        assert!(matches!(
            with(KEY, "a\u{1b}[2J").unwrap_err(),
            DecodeError::Invalid { name: KEY, .. }
        ));
        assert!(matches!(
            with(KEY, &"k".repeat(257)).unwrap_err(),
            DecodeError::Invalid { name: KEY, .. }
        ));
        let long = with(STREAM, &"/".repeat(10_000)).unwrap_err().to_string();
        assert!(long.len() < 300, "error quotes a bounded excerpt: {long}");
        assert_eq!(with(KEY, "user-7").unwrap().key.as_deref(), Some("user-7"));
    }

    #[test]
    fn broker_control_headers_are_refused_both_ways() {
        let e = Event::new("s", &b"{}"[..]);
        for name in [
            "Nats-Rollup",
            "NATS-ROLLUP",
            "Nats-Expected-Last-Sequence",
            "KV-Operation",
        ] {
            let mut h = pairs(&e);
            h.push((name.into(), "all".into()));
            assert!(
                matches!(decode_pairs(&h), Err(DecodeError::Header { .. })),
                "{name}"
            );
            let mut bad = e.clone();
            bad.headers = vec![(name.into(), "all".into())];
            assert!(
                matches!(check_event(&bad), Err(EncodeError::InvalidHeader { .. })),
                "{name}"
            );
        }
        let mut bad = e.clone();
        bad.headers = vec![("SLUICE-STREAM".into(), "x".into())];
        assert_eq!(
            check_event(&bad),
            Err(EncodeError::ReservedHeader {
                name: "SLUICE-STREAM".into()
            })
        );
        bad.headers = vec![("t".into(), "a\r\nNats-Rollup: all".into())];
        assert!(check_event(&bad).is_err());
        bad.headers = vec![("a:b".into(), "v".into())];
        assert!(check_event(&bad).is_err());
        bad.headers = vec![];
        bad.stream = "../x".into();
        assert!(matches!(
            check_event(&bad),
            Err(EncodeError::InvalidStream { .. })
        ));
        // sluice's own dead-letter headers pass.
        let mut dl = e.clone();
        dl.headers = vec![("sluice-dead-letter-reason".into(), "sink said no".into())];
        assert_eq!(check_event(&dl), Ok(()));
        let back = decode(
            pairs(&dl).iter().map(|(k, v)| (k.as_str(), v.as_str())),
            |_| false,
            dl.payload.clone(),
        )
        .unwrap();
        assert_eq!(back, dl);
    }

    #[test]
    fn quarantine_events_are_safe_to_write_anywhere() {
        let q = quarantine(
            [(STREAM, "../../x"), ("t", "a\nb")],
            Bytes::from_static(b"not json\n"),
        );
        assert_eq!(&*q.stream, QUARANTINE_STREAM);
        assert_eq!(check_event(&q), Ok(()));
        let v: serde_json::Value = serde_json::from_slice(&q.payload).unwrap();
        assert_eq!(v["unreadable_payload"], "not json\n");
        assert!(q.headers[0].1.contains("../../x"), "{:?}", q.headers);
        let q = quarantine([], Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(&q.payload[..], b"{\"a\":1}");
    }
}
