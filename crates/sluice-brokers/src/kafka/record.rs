//! One [`Event`] as one Kafka record, and back. The layout is drawn in the docs of
//! the parent module: it is a public contract, shared by the Kafka queue and the Kafka
//! sink of `sluice-pipeline`.

use bytes::Bytes;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sluice_core::Event;
use sluice_proto::broker;
pub use sluice_proto::broker::{DecodeError, EncodeError, ID as HEADER_ID, KEY as HEADER_KEY};

/// Checks that `event` can be encoded ([`broker::check_event`]: no header of its own
/// uses a reserved name in any case, none is malformed, and the stream name, id and
/// key are valid).
pub fn validate_event(event: &Event) -> Result<(), EncodeError> {
    broker::check_event(event)
}

/// The Kafka record key of `event`: its key if it has one, else its id. The default
/// partitioner hashes it, so the events of one key stay in order in one partition.
pub fn record_key(event: &Event) -> &str {
    event.key.as_deref().unwrap_or(&event.id)
}

/// `event` as a record for `topic`, borrowing its key and payload; the headers are
/// [`sluice_proto::broker::headers`].
pub fn encode_record<'a>(
    topic: &'a str,
    event: &'a Event,
) -> Result<FutureRecord<'a, str, [u8]>, EncodeError> {
    validate_event(event)?;
    let fields = broker::headers(event);
    let mut headers = OwnedHeaders::new_with_capacity(fields.len());
    for (name, value) in &fields {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_ref()),
        });
    }
    Ok(FutureRecord::to(topic)
        .key(record_key(event))
        .payload(&event.payload[..])
        .timestamp(event.received_at_unix_nanos.div_euclid(1_000_000))
        .headers(headers))
}

/// Rebuilds the event that [`encode_record`] wrote. The payload is copied; the Kafka
/// key and timestamp are not read (the headers carry the exact values). A record
/// that does not decode is [`quarantine`]d by the consumer.
pub fn decode_record<M: Message>(message: &M) -> Result<Event, DecodeError> {
    let mut pairs = Vec::new();
    if let Some(h) = message.headers() {
        for i in 0..h.count() {
            let Some(Header { key, value }) = h.try_get(i) else {
                break;
            };
            let value = std::str::from_utf8(value.unwrap_or_default()).map_err(|_| {
                DecodeError::Invalid {
                    name: "(a header)",
                    value: key.chars().take(64).collect(),
                    reason: "its value is not UTF-8".into(),
                }
            })?;
            pairs.push((key, value));
        }
    }
    broker::decode(
        pairs,
        |_| false,
        Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    )
}

/// The dead-letter form of a record [`decode_record`] refused
/// ([`broker::quarantine`]); header values that are not UTF-8 are read lossily.
pub fn quarantine<M: Message>(message: &M) -> Event {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if let Some(h) = message.headers() {
        for i in 0..h.count() {
            let Some(Header { key, value }) = h.try_get(i) else {
                break;
            };
            pairs.push((
                key,
                String::from_utf8_lossy(value.unwrap_or_default()).into_owned(),
            ));
        }
    }
    broker::quarantine(
        pairs.iter().map(|(k, v)| (*k, v.as_str())),
        Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    )
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
        e.timestamp_unix_nanos = Some(1_700_000_000_123_456_789);
        e.headers = vec![
            ("trace".into(), "abc".into()),
            ("trace".into(), "again".into()),
            ("empty".into(), String::new()),
        ];
        e
    }

    #[test]
    fn events_round_trip_identical() {
        let bare = Event::new("s", Bytes::from_static(b"{}"));
        let mut key_is_id = Event::new("s", Bytes::from_static(b"{\"x\":1}"));
        key_is_id.key = Some(key_is_id.id.to_string());
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
    fn control_headers_and_bad_streams_are_refused_both_ways() {
        let mut e = Event::new("s", Bytes::new());
        for name in [
            "SLUICE-STREAM",
            "Nats-Rollup",
            "nats-expected-last-sequence",
        ] {
            e.headers = vec![(name.into(), "x".into())];
            assert!(encode_record("t", &e).is_err(), "{name}");
        }
        e.headers.clear();
        let mut m = as_read(encode_record("t", &e).unwrap());
        let extra = m.detach_headers().unwrap().insert(Header {
            key: "sluice-stream",
            value: Some("../../x"),
        });
        let m = m.replace_headers(Some(extra));
        assert_eq!(
            decode_record(&m),
            Err(DecodeError::Duplicate(broker::STREAM))
        );
        let q = quarantine(&m);
        assert_eq!(&*q.stream, sluice_core::QUARANTINE_STREAM);
        assert!(q.headers[0].1.contains("../../x"));
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
        assert_eq!(decode_record(&m), Err(DecodeError::Missing(HEADER_ID)));
    }
}
