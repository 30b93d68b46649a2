//! One [`Event`] as one Kafka record, and back. The layout is drawn in the docs of
//! the parent module: it is a public contract, shared by the Kafka queue and the Kafka
//! sink of `sluice-pipeline`.

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sluice_core::Event;

/// Header carrying [`Event::id`].
pub const HEADER_ID: &str = "sluice-id";
/// Header carrying [`Event::stream`].
pub const HEADER_STREAM: &str = "sluice-stream";
/// Header carrying [`Event::received_at_unix_nanos`] in decimal.
pub const HEADER_RECEIVED_AT: &str = "sluice-received-at";
/// Header carrying [`Event::timestamp_unix_nanos`] in decimal; only when non-zero.
pub const HEADER_TIMESTAMP: &str = "sluice-timestamp";
/// Header carrying [`Event::key`]; only when the event has one.
pub const HEADER_KEY: &str = "sluice-key";

/// The header names sluice writes itself. An event may not carry a header of its own
/// with one of these names: the decoder could not tell it from sluice's.
pub const RESERVED_HEADERS: [&str; 5] = [
    HEADER_ID,
    HEADER_STREAM,
    HEADER_RECEIVED_AT,
    HEADER_TIMESTAMP,
    HEADER_KEY,
];

/// Why an event cannot be written as a record. Permanent: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// One of the event's own headers uses a name sluice reserves.
    #[error("event header {name:?} uses a name reserved for sluice's own Kafka record headers")]
    ReservedHeader { name: String },
}

/// Why a record is not a sluice event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A header sluice always writes is missing or out of place.
    #[error("record has no {name:?} header where sluice puts it")]
    MissingHeader { name: &'static str },
    /// A header's value is not what sluice writes.
    #[error("record header {name:?} is invalid: {reason}")]
    BadHeader { name: String, reason: String },
}

/// Checks that `event` can be encoded (no header uses a reserved name). Ingest can
/// call it to refuse such events up front.
pub fn validate_event(event: &Event) -> Result<(), EncodeError> {
    match event
        .headers
        .iter()
        .find(|(name, _)| RESERVED_HEADERS.contains(&name.as_str()))
    {
        Some((name, _)) => Err(EncodeError::ReservedHeader { name: name.clone() }),
        None => Ok(()),
    }
}

/// The Kafka record key of `event`: its key if it has one, else its id. The default
/// partitioner hashes it, so the events of one key stay in order in one partition.
pub fn record_key(event: &Event) -> &str {
    event.key.as_deref().unwrap_or(&event.id)
}

/// `event` as a record for `topic`, borrowing its key and payload.
pub fn encode_record<'a>(
    topic: &'a str,
    event: &'a Event,
) -> Result<FutureRecord<'a, str, [u8]>, EncodeError> {
    validate_event(event)?;
    let mut headers = OwnedHeaders::new_with_capacity(5 + event.headers.len())
        .insert(header(HEADER_ID, &event.id))
        .insert(header(HEADER_STREAM, &event.stream))
        .insert(header(
            HEADER_RECEIVED_AT,
            &event.received_at_unix_nanos.to_string(),
        ));
    if event.timestamp_unix_nanos != 0 {
        headers = headers.insert(header(
            HEADER_TIMESTAMP,
            &event.timestamp_unix_nanos.to_string(),
        ));
    }
    if let Some(key) = &event.key {
        headers = headers.insert(header(HEADER_KEY, key));
    }
    for (name, value) in &event.headers {
        headers = headers.insert(header(name, value));
    }
    Ok(FutureRecord::to(topic)
        .key(record_key(event))
        .payload(&event.payload[..])
        .timestamp(event.received_at_unix_nanos.div_euclid(1_000_000))
        .headers(headers))
}

fn header<'a>(name: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key: name,
        value: Some(value),
    }
}

/// Rebuilds the event that [`encode_record`] wrote. The payload is copied; the Kafka
/// key and timestamp are not read (the headers carry the exact values).
pub fn decode_record<M: Message>(message: &M) -> Result<Event, DecodeError> {
    let mut headers = Vec::new();
    if let Some(h) = message.headers() {
        headers.reserve(h.count());
        for i in 0..h.count() {
            let Some(Header { key, value }) = h.try_get(i) else {
                break;
            };
            let value = std::str::from_utf8(value.unwrap_or_default()).map_err(|e| {
                DecodeError::BadHeader {
                    name: key.to_string(),
                    reason: format!("value is not UTF-8: {e}"),
                }
            })?;
            headers.push((key, value));
        }
    }
    // sluice's headers first, at fixed places; the optional ones in their order.
    let mut rest = headers.into_iter().peekable();
    let mut take = |name: &'static str| match rest.next() {
        Some((k, v)) if k == name => Ok(v),
        _ => Err(DecodeError::MissingHeader { name }),
    };
    let id = take(HEADER_ID)?.to_string();
    let stream: Arc<str> = Arc::from(take(HEADER_STREAM)?);
    let received_at_unix_nanos = parse_nanos(HEADER_RECEIVED_AT, take(HEADER_RECEIVED_AT)?)?;
    let timestamp_unix_nanos = match rest.next_if(|(k, _)| *k == HEADER_TIMESTAMP) {
        Some((_, v)) => parse_nanos(HEADER_TIMESTAMP, v)?,
        None => 0,
    };
    let key = rest
        .next_if(|(k, _)| *k == HEADER_KEY)
        .map(|(_, v)| v.to_string());
    let headers = rest.map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Ok(Event {
        id,
        stream,
        key,
        received_at_unix_nanos,
        timestamp_unix_nanos,
        headers,
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    })
}

fn parse_nanos(name: &str, value: &str) -> Result<i64, DecodeError> {
    value.parse().map_err(|e| DecodeError::BadHeader {
        name: name.to_string(),
        reason: format!("{value:?} is not a decimal integer: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};

    /// What a consumer would read back for `record` (no broker: the same fields).
    fn as_read(record: FutureRecord<'_, str, [u8]>) -> OwnedMessage {
        OwnedMessage::new(
            record.payload.map(<[u8]>::to_vec),
            record.key.map(|k| k.as_bytes().to_vec()),
            record.topic.to_string(),
            record
                .timestamp
                .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
            0,
            0,
            record.headers,
        )
    }

    fn full_event() -> Event {
        let mut e = Event::new("clicks", Bytes::from_static(b"{\"n\":1}"));
        e.key = Some("user-7".into());
        e.timestamp_unix_nanos = 1_700_000_000_123_456_789;
        e.headers = vec![
            ("trace".into(), "abc".into()),
            ("trace".into(), "again".into()),
            ("empty".into(), String::new()),
        ];
        e
    }

    #[test]
    fn events_round_trip_identical() {
        let bare = Event::new("s", Bytes::new());
        let mut key_is_id = Event::new("s", Bytes::from_static(b"x"));
        key_is_id.key = Some(key_is_id.id.clone());
        for event in [full_event(), bare, key_is_id] {
            let m = as_read(encode_record("t", &event).unwrap());
            assert_eq!(decode_record(&m).unwrap(), event);
        }
    }

    #[test]
    fn record_layout_is_the_documented_one() {
        let e = full_event();
        let m = as_read(encode_record("t", &e).unwrap());
        assert_eq!(m.key(), Some(&b"user-7"[..]));
        assert_eq!(m.payload(), Some(&b"{\"n\":1}"[..]));
        assert_eq!(
            m.timestamp(),
            Timestamp::CreateTime(e.received_at_unix_nanos / 1_000_000)
        );
        let names: Vec<&str> = m.headers().unwrap().iter().map(|h| h.key).collect();
        assert_eq!(
            names,
            [
                "sluice-id",
                "sluice-stream",
                "sluice-received-at",
                "sluice-timestamp",
                "sluice-key",
                "trace",
                "trace",
                "empty"
            ]
        );
        let bare = Event::new("s", Bytes::new());
        let m = as_read(encode_record("t", &bare).unwrap());
        assert_eq!(
            m.key(),
            Some(bare.id.as_bytes()),
            "no key: the id is the key"
        );
        assert_eq!(m.headers().unwrap().count(), 3);
    }

    #[test]
    fn reserved_header_names_are_refused() {
        let mut e = Event::new("s", Bytes::new());
        e.headers = vec![("sluice-key".into(), "k".into())];
        assert_eq!(
            encode_record("t", &e).err(),
            Some(EncodeError::ReservedHeader {
                name: "sluice-key".into()
            })
        );
    }

    #[test]
    fn foreign_records_are_decode_errors() {
        let m = OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        assert_eq!(
            decode_record(&m),
            Err(DecodeError::MissingHeader { name: HEADER_ID })
        );
    }
}
