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

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use sluice_core::Event;

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

/// Why a broker message is not a sluice event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A required header is absent.
    #[error("broker message has no {0} header")]
    Missing(&'static str),
    /// A header is not what sluice writes.
    #[error("broker message header {name} is invalid: {value:?}")]
    Invalid { name: &'static str, value: String },
}

/// The names sluice writes itself; an event's own header may not use one (the
/// decoder could not tell it from sluice's).
pub const RESERVED: [&str; 5] = [ID, STREAM, RECEIVED_AT, TIMESTAMP, KEY];

/// The first of the event's own headers that uses a reserved name, if any.
pub fn reserved_header(event: &Event) -> Option<&str> {
    event
        .headers
        .iter()
        .map(|(k, _)| k.as_str())
        .find(|k| RESERVED.contains(k))
}

/// The headers of `event`, sluice's own first, then the event's.
pub fn headers(event: &Event) -> Vec<(&str, Cow<'_, str>)> {
    let mut h = Vec::with_capacity(4 + event.headers.len());
    h.push((ID, Cow::Borrowed(event.id.as_str())));
    h.push((STREAM, Cow::Borrowed(&*event.stream)));
    h.push((
        RECEIVED_AT,
        Cow::Owned(event.received_at_unix_nanos.to_string()),
    ));
    if event.timestamp_unix_nanos != 0 {
        h.push((
            TIMESTAMP,
            Cow::Owned(event.timestamp_unix_nanos.to_string()),
        ));
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
/// event's headers.
pub fn decode<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    skip: impl Fn(&str) -> bool,
    payload: Bytes,
) -> Result<Event, DecodeError> {
    let (mut id, mut stream, mut received, mut timestamp, mut key) = (None, None, None, 0, None);
    let mut own = Vec::new();
    let number = |name: &'static str, v: &str| {
        v.parse::<i64>().map_err(|_| DecodeError::Invalid {
            name,
            value: v.to_string(),
        })
    };
    for (name, value) in headers {
        match name {
            ID => id = Some(value.to_string()),
            STREAM => stream = Some(Arc::<str>::from(value)),
            RECEIVED_AT => received = Some(number(RECEIVED_AT, value)?),
            TIMESTAMP => timestamp = number(TIMESTAMP, value)?,
            KEY => key = Some(value.to_string()),
            other if skip(other) => {}
            other => own.push((other.to_string(), value.to_string())),
        }
    }
    Ok(Event {
        id: id.ok_or(DecodeError::Missing(ID))?,
        stream: stream.ok_or(DecodeError::Missing(STREAM))?,
        key,
        received_at_unix_nanos: received.ok_or(DecodeError::Missing(RECEIVED_AT))?,
        timestamp_unix_nanos: timestamp,
        headers: own,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let mut e = Event::new("clicks.eu", &br#"{"a":1}"#[..]);
        e.key = Some("user-7".into());
        e.timestamp_unix_nanos = 1_700_000_000_123_000_000;
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
        let e = Event::new("s", &b"1"[..]);
        let mut h: Vec<(&str, String)> = headers(&e)
            .into_iter()
            .map(|(k, v)| (k, v.into_owned()))
            .collect();
        h.push(("Nats-Msg-Id", e.id.clone()));
        let back = decode(
            h.iter().map(|(k, v)| (*k, v.as_str())),
            |n| n.starts_with("Nats-"),
            e.payload.clone(),
        )
        .unwrap();
        assert!(back.headers.is_empty());
        let err = decode([(ID, "x")], |_| false, Bytes::new()).unwrap_err();
        assert_eq!(err, DecodeError::Missing(STREAM));
        let err = decode([(RECEIVED_AT, "soon")], |_| false, Bytes::new()).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { .. }));
    }
}
