//! Targets over `sluice-proto`: the JSON validator, the body splitters, the queue
//! record, the broker message layout and the gRPC request.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use serde_json::value::RawValue;
use sluice_core::Event;
use sluice_proto::{body, json as validator, v1};

/// The JSON validator gives serde_json's verdict on every input, except that it
/// refuses nesting deeper than [`validator::MAX_DEPTH`] (serde_json's `RawValue`
/// has no depth limit).
pub fn json(data: &[u8]) {
    let ours = validator::validate(data);
    let serde = serde_json::from_slice::<&RawValue>(data);
    if matches!(ours, Err(e) if e.what.starts_with("nesting deeper")) {
        return;
    }
    assert_eq!(
        ours.is_ok(),
        serde.is_ok(),
        "validator says {ours:?}, serde_json says {:?}",
        serde.err()
    );
    if let Err(e) = ours {
        assert!(e.at <= data.len(), "error position {} past the end", e.at);
    }
}

fn blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// `split_ndjson` agrees with a plain line-by-line split, payload for payload, and
/// every payload is a zero-copy slice of the body.
pub fn ndjson(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let got = body::split_ndjson(&body);
    let want: Result<Vec<&[u8]>, usize> = match std::str::from_utf8(data) {
        Err(e) => Err(data[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1),
        Ok(text) => text
            .split('\n')
            .enumerate()
            .map(|(i, line)| (i + 1, line.trim_matches(blank)))
            .filter(|(_, line)| !line.is_empty())
            .map(|(n, line)| {
                let ok = line.starts_with('{') && validator::validate_str(line).is_ok();
                if ok {
                    Ok(line.as_bytes())
                } else {
                    Err(n)
                }
            })
            .collect(),
    };
    match (got, want) {
        (Ok(got), Ok(want)) => {
            assert_eq!(got, want, "payloads differ from a line-by-line split");
            assert!(!got.is_empty(), "an empty body was accepted");
            for p in &got {
                assert_slice_of(&body, p);
            }
        }
        (Err(e), Ok(want)) => {
            assert!(want.is_empty(), "refused a valid body: {e}");
            assert_eq!(e.code, "empty_body");
        }
        (Err(e), Err(line)) => assert_eq!(e.line, Some(line), "wrong line for {e}"),
        (Ok(got), Err(line)) => panic!("accepted {} payloads; line {line} is bad", got.len()),
    }
}

/// `split_json` returns valid objects sliced out of the body, one per array element;
/// `validate_payload` accepts exactly whitespace-trimmed objects the validator accepts.
pub fn json_body(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    match body::split_json(&body) {
        Ok(payloads) => {
            assert!(!payloads.is_empty());
            // RawValue: serde_json's Value refuses numbers an f64 cannot hold.
            let want = match serde_json::from_slice::<Vec<&RawValue>>(data) {
                Ok(items) => items.len(),
                Err(_) => 1,
            };
            assert_eq!(payloads.len(), want, "one payload per element");
            for p in &payloads {
                assert_slice_of(&body, p);
                assert_eq!(p.first(), Some(&b'{'));
                assert_eq!(p.last(), Some(&b'}'));
                serde_json::from_slice::<&RawValue>(p).expect("each payload is JSON");
                // TODO(lead): also `validator::validate(p)` once array elements are
                // held to the same depth limit (finding F2 in bench/RELIABILITY.md).
            }
        }
        Err(e) => {
            assert!(
                matches!(e.code, "invalid_json" | "not_an_object" | "empty_body"),
                "unknown code {}",
                e.code
            );
        }
    }
    let blank = |c: &u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let from = data.iter().position(|c| !blank(c)).unwrap_or(data.len());
    let to = data.iter().rposition(|c| !blank(c)).map_or(from, |i| i + 1);
    let trimmed = &data[from..to];
    let want = trimmed.first() == Some(&b'{') && validator::validate(trimmed).is_ok();
    let got = body::validate_payload(data, 1);
    assert_eq!(got.is_ok(), want, "validate_payload: {got:?}");
}

fn assert_slice_of(body: &Bytes, p: &[u8]) {
    let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
    let at = p.as_ptr() as usize;
    assert!(
        at >= start && at + p.len() <= end,
        "payload is not a slice of the body"
    );
}

/// A decoded record re-encodes to a record that decodes to the same events, and
/// the encoded length is what `encoded_len` predicts.
pub fn record(data: &[u8]) {
    use sluice_proto::record;
    let Ok(events) = record::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let batch = sluice_core::Batch::new(events.clone());
    let mut out = Vec::new();
    record::encode(&batch, &mut out);
    assert_eq!(out.len(), record::encoded_len(&batch));
    assert!(out.len() <= data.len(), "re-encoding grew the record");
    let again = record::decode(Bytes::from(out)).expect("a re-encoded record decodes");
    assert_eq!(again, events);
    // decode_into leaves what was there on error and appends on success.
    let mut into = vec![Event::new("keep", &b"{}"[..])];
    let truncated = Bytes::copy_from_slice(&data[..data.len() / 2]);
    if record::decode_into(truncated, &mut into).is_err() {
        assert_eq!(into.len(), 1, "a failed decode_into left events behind");
    }
}

/// Broker headers (name, value chunks) and a payload: a decoded event, written
/// back as headers, decodes to itself.
pub fn broker(data: &[u8]) {
    use sluice_proto::broker;
    let mut parts = crate::chunks(data);
    let payload = Bytes::copy_from_slice(parts.next().unwrap_or_default());
    let texts: Vec<String> = parts
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let headers: Vec<(&str, &str)> = texts
        .chunks_exact(2)
        .map(|p| (p[0].as_str(), p[1].as_str()))
        .collect();
    let skip = |n: &str| n.starts_with("Nats-");
    let Ok(event) = broker::decode(headers.iter().copied(), skip, payload.clone()) else {
        return;
    };
    assert_eq!(event.payload, payload);
    assert!(
        broker::reserved_header(&event).is_none(),
        "a reserved name became an event header"
    );
    assert!(event.headers.iter().all(|(k, _)| !skip(k)));
    let written = broker::headers(&event);
    let back = broker::decode(written.iter().map(|(k, v)| (*k, v.as_ref())), skip, payload)
        .expect("headers written by sluice decode");
    assert_eq!(back, event);
}

/// An `IngestRequest` as the server receives it: decoded by prost, each payload
/// checked, then written again both by prost and by `wire::encode_ingest_request`
/// (the gateway's path); both decode to the same request.
// TODO(lead): once grpc.rs counts bytes and events while decoding (issue #14 item
// 1), point this target at that decoder as well.
pub fn grpc_request(data: &[u8]) {
    let Ok(req) = v1::IngestRequest::decode(data) else {
        return;
    };
    for (i, e) in req.events.iter().enumerate() {
        let _ = body::validate_payload(&e.payload, i + 1);
    }
    let again = v1::IngestRequest::decode(req.encode_to_vec().as_slice())
        .expect("prost's own encoding decodes");
    assert_eq!(again, req);

    // An Event holds only ids sluice accepts; requests with others stop here.
    let Ok(ids) = req
        .events
        .iter()
        .map(|e| sluice_core::EventId::parse(e.id.clone()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let events: Vec<Event> = req
        .events
        .iter()
        .zip(ids)
        .map(|(e, id)| Event {
            id,
            stream: Arc::from(if e.stream.is_empty() {
                req.stream.as_str()
            } else {
                e.stream.as_str()
            }),
            key: (!e.key.is_empty()).then(|| e.key.clone()),
            received_at_unix_nanos: 0,
            timestamp_unix_nanos: sluice_core::producer_timestamp(e.timestamp_unix_nanos),
            headers: e
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            payload: Bytes::copy_from_slice(&e.payload),
        })
        .collect();
    let wire = sluice_proto::wire::encode_ingest_request(&req.stream, events.iter());
    let back = v1::IngestRequest::decode(wire).expect("wire's encoding decodes");
    assert_eq!(back.stream, req.stream);
    assert_eq!(back.events.len(), req.events.len());
    for (b, (e, orig)) in back.events.iter().zip(events.iter().zip(&req.events)) {
        let stream = if b.stream.is_empty() {
            &back.stream
        } else {
            &b.stream
        };
        assert_eq!(stream.as_str(), &*e.stream);
        assert_eq!(b.id, orig.id);
        assert_eq!(b.key, orig.key);
        assert_eq!(b.timestamp_unix_nanos, orig.timestamp_unix_nanos);
        assert_eq!(b.payload, orig.payload);
        let want: HashMap<&String, &String> = orig.headers.iter().collect();
        let got: HashMap<&String, &String> = b.headers.iter().collect();
        assert_eq!(got, want);
    }
}
