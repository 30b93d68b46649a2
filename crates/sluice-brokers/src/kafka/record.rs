//! [`Event`]s as Kafka records, and back: one event as one record (the sink, a lone
//! event of the queue), or the events of one stream and key together as one batch
//! record (the queue). The layouts are drawn in the docs of the parent module: a
//! public contract.

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

/// The records of an append: its events grouped by stream and key, in the order
/// each group first appears (the events of one key stay in one partition, in their
/// order), each group cut into runs whose record encoding fits in `limit` bytes (an
/// event larger than that is a run of its own: the producer refuses it).
pub fn batch_runs(events: &[Event], limit: usize) -> Vec<Vec<&Event>> {
    let mut groups: Vec<(usize, Vec<&Event>)> = Vec::new();
    let mut open: std::collections::HashMap<(&str, Option<&str>), usize> = Default::default();
    for e in events {
        let len = sluice_proto::record::event_len(e);
        let slot = (&*e.stream, e.key.as_deref());
        let fits = open.get(&slot).filter(|&&g| groups[g].0 + len <= limit);
        match fits {
            Some(&g) => {
                groups[g].0 += len;
                groups[g].1.push(e);
            }
            None => {
                open.insert(slot, groups.len());
                groups.push((5 + len, vec![e]));
            }
        }
    }
    groups.into_iter().map(|(_, run)| run).collect()
}

/// A run of [`batch_runs`] (two events or more, checked by the caller) as one
/// record: `payload` receives the record encoding, the key is the events' key or
/// the first event's id, the timestamp the first event's receive time, and the
/// headers are [`broker::BATCH`] and [`broker::STREAM`].
pub fn encode_batch_record<'a>(
    topic: &'a str,
    run: &[&'a Event],
    payload: &'a mut Vec<u8>,
) -> FutureRecord<'a, str, [u8]> {
    let first = run[0];
    sluice_proto::record::encode_events(run.iter().copied(), payload);
    let headers = OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: broker::BATCH,
            value: Some(broker::BATCH_VERSION),
        })
        .insert(Header {
            key: broker::STREAM,
            value: Some(&*first.stream),
        });
    FutureRecord::to(topic)
        .key(record_key(first))
        .payload(&payload[..])
        .timestamp(first.received_at_unix_nanos.div_euclid(1_000_000))
        .headers(headers)
}

/// Rebuilds the events [`encode_record`] or [`encode_batch_record`] wrote. Payloads
/// are copied; the Kafka key and timestamp are not read (the headers and the record
/// encoding carry the exact values). A record that does not decode is
/// [`quarantine`]d by the consumer.
pub fn decode_records<M: Message>(message: &M) -> Result<Vec<Event>, DecodeError> {
    let pairs = header_pairs(message)?;
    broker::decode_messages(
        &pairs,
        |_| false,
        Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    )
}

/// Rebuilds the event that [`encode_record`] wrote (a batch record is an error: see
/// [`decode_records`]).
pub fn decode_record<M: Message>(message: &M) -> Result<Event, DecodeError> {
    let pairs = header_pairs(message)?;
    broker::decode(
        pairs,
        |_| false,
        Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    )
}

/// The record's headers, which must be UTF-8.
fn header_pairs<M: Message>(message: &M) -> Result<Vec<(&str, &str)>, DecodeError> {
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
    Ok(pairs)
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

    fn keyed(stream: &str, key: Option<&str>, n: usize) -> Event {
        let mut e = Event::new(stream, format!("{{\"n\":{n}}}"));
        e.key = key.map(str::to_string);
        e
    }

    #[test]
    fn batch_runs_keep_each_stream_and_key_together_in_order() {
        let events = vec![
            keyed("a", None, 0),
            keyed("a", Some("k1"), 1),
            keyed("b", None, 2),
            keyed("a", None, 3),
            keyed("a", Some("k1"), 4),
            keyed("a", Some("k2"), 5),
        ];
        let runs = batch_runs(&events, MAX);
        let ns: Vec<Vec<&str>> = runs
            .iter()
            .map(|r| {
                r.iter()
                    .map(|e| &*e.payload)
                    .map(|p| std::str::from_utf8(p).unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(
            ns,
            [
                vec!["{\"n\":0}", "{\"n\":3}"],
                vec!["{\"n\":1}", "{\"n\":4}"],
                vec!["{\"n\":2}"],
                vec!["{\"n\":5}"],
            ]
        );
        // A limit of about two events cuts a group into runs, in order.
        let same: Vec<Event> = (0..5).map(|n| keyed("a", Some("k"), n)).collect();
        let two = 5 + 2 * sluice_proto::record::event_len(&same[0]);
        let runs = batch_runs(&same, two);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let flat: Vec<&Event> = runs.into_iter().flatten().collect();
        assert!(flat.iter().zip(&same).all(|(a, b)| a.id == b.id));
    }

    const MAX: usize = 1 << 20;

    #[test]
    fn a_batch_record_round_trips_and_is_keyed_like_its_events() {
        let mut events: Vec<Event> = (0..3).map(|n| keyed("clicks", Some("user-7"), n)).collect();
        events[1] = full_event();
        let runs = batch_runs(&events, MAX);
        assert_eq!(runs.len(), 1);
        let mut payload = Vec::new();
        let m = as_read(encode_batch_record("t", &runs[0], &mut payload));
        assert_eq!(m.key(), Some(&b"user-7"[..]));
        let names: Vec<&str> = m.headers().unwrap().iter().map(|h| h.key).collect();
        assert_eq!(names, ["sluice-batch", "sluice-stream"]);
        assert_eq!(decode_records(&m).unwrap(), events);
        assert!(
            decode_record(&m).is_err(),
            "a batch record is not one event"
        );
        // One event: the one-event layout reads back through decode_records too.
        let one = as_read(encode_record("t", &events[0]).unwrap());
        assert_eq!(decode_records(&one).unwrap(), vec![events[0].clone()]);
    }

    #[test]
    fn a_crafted_batch_record_is_refused_whole() {
        let events: Vec<Event> = (0..2).map(|n| keyed("a", None, n)).collect();
        let runs = batch_runs(&events, MAX);
        let mut payload = Vec::new();
        let good = as_read(encode_batch_record("t", &runs[0], &mut payload));
        // Another stream in the header than in the events, an extra header, a layout
        // version there is not: each refuses the whole record.
        for (name, value) in [
            ("sluice-stream", "b"),
            ("trace", "x"),
            ("sluice-batch", "2"),
        ] {
            let mut m = good.clone();
            let kept = m
                .detach_headers()
                .unwrap()
                .iter()
                .filter(|h| h.key != name)
                .fold(OwnedHeaders::new(), |h, x| h.insert(x));
            let m = m.replace_headers(Some(kept.insert(Header {
                key: name,
                value: Some(value),
            })));
            assert!(decode_records(&m).is_err(), "{name}: {value}");
        }
        let truncated = OwnedMessage::new(
            Some(payload[..payload.len() - 3].to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            good.headers().cloned(),
        );
        assert!(decode_records(&truncated).is_err());
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
