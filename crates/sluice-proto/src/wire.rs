//! An `IngestRequest` written straight from queue events, and a gRPC codec that
//! sends such pre-encoded bytes.
//!
//! The gateway forwards events it already holds as [`Event`]s. Building the
//! generated [`v1::IngestRequest`] first would copy every id, build a header map per
//! event, take a reference on every payload, and do it all again for a retry (the
//! message is consumed by each call). [`encode_ingest_request`] writes the protobuf
//! wire format once, from borrowed events, into one buffer; a retry sends the same
//! [`Bytes`] again through [`PreEncoded`]. The bytes decode as the generated message
//! (tested below), so the node on the other side cannot tell the difference.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use sluice_core::Event;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::v1;

/// Field numbers of `proto/sluice/v1/ingest.proto`.
mod field {
    pub const REQUEST_STREAM: u32 = 1;
    pub const REQUEST_EVENTS: u32 = 2;
    pub const ID: u32 = 1;
    pub const STREAM: u32 = 2;
    pub const KEY: u32 = 3;
    pub const TIMESTAMP: u32 = 4;
    pub const HEADERS: u32 = 5;
    pub const PAYLOAD: u32 = 6;
    pub const ENTRY_KEY: u32 = 1;
    pub const ENTRY_VALUE: u32 = 2;
}

/// Bytes of a length-delimited field of `len` bytes with a one-byte key (fields < 16).
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Writes a length-delimited field, skipping it when empty (proto3 defaults).
fn put_delimited(tag: u32, value: &[u8], buf: &mut BytesMut) {
    if value.is_empty() {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

fn opt_len(value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        delimited_len(value.len())
    }
}

/// The encoded size of one header map entry's body.
fn entry_len(k: &str, v: &str) -> usize {
    opt_len(k.as_bytes()) + opt_len(v.as_bytes())
}

/// The encoded size of one `Event` message's body.
fn event_len(e: &Event, stream: &str) -> usize {
    let mut n = opt_len(e.id.as_bytes());
    if *e.stream != *stream {
        n += opt_len(e.stream.as_bytes());
    }
    n += opt_len(e.key.as_deref().unwrap_or_default().as_bytes());
    if let Some(t) = e.timestamp_unix_nanos {
        n += 1 + encoded_len_varint(t as u64);
    }
    for (k, v) in &e.headers {
        n += delimited_len(entry_len(k, v));
    }
    n + opt_len(&e.payload)
}

/// One `IngestRequest` of `events`, with `stream` as the request's stream (an event
/// of another stream names its own), as protobuf bytes (`return_ids` unset).
pub fn encode_ingest_request<'a>(
    stream: &str,
    events: impl Iterator<Item = &'a Event> + Clone,
) -> Bytes {
    let total: usize = opt_len(stream.as_bytes())
        + events
            .clone()
            .map(|e| delimited_len(event_len(e, stream)))
            .sum::<usize>();
    let mut buf = BytesMut::with_capacity(total);
    put_delimited(field::REQUEST_STREAM, stream.as_bytes(), &mut buf);
    for e in events {
        encode_key(field::REQUEST_EVENTS, WireType::LengthDelimited, &mut buf);
        encode_varint(event_len(e, stream) as u64, &mut buf);
        put_delimited(field::ID, e.id.as_bytes(), &mut buf);
        if *e.stream != *stream {
            put_delimited(field::STREAM, e.stream.as_bytes(), &mut buf);
        }
        put_delimited(
            field::KEY,
            e.key.as_deref().unwrap_or_default().as_bytes(),
            &mut buf,
        );
        if let Some(t) = e.timestamp_unix_nanos {
            encode_key(field::TIMESTAMP, WireType::Varint, &mut buf);
            encode_varint(t as u64, &mut buf);
        }
        for (k, v) in &e.headers {
            encode_key(field::HEADERS, WireType::LengthDelimited, &mut buf);
            encode_varint(entry_len(k, v) as u64, &mut buf);
            put_delimited(field::ENTRY_KEY, k.as_bytes(), &mut buf);
            put_delimited(field::ENTRY_VALUE, v.as_bytes(), &mut buf);
        }
        put_delimited(field::PAYLOAD, &e.payload, &mut buf);
    }
    debug_assert_eq!(
        buf.len(),
        total,
        "the size computed first is the size written"
    );
    buf.freeze()
}

/// A gRPC codec whose requests are already protobuf bytes (from
/// [`encode_ingest_request`]) and whose responses are `IngestResponse`s.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = v1::IngestResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = v1::IngestResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        v1::IngestResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable IngestResponse: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn event(stream: &str, n: usize) -> Event {
        let mut e = Event::new(stream, Bytes::from(format!("{{\"n\":{n}}}")));
        if n.is_multiple_of(2) {
            e.key = Some(format!("k{n}"));
            e.timestamp_unix_nanos = sluice_core::producer_timestamp(-5 + n as i64);
            e.headers = vec![("a".into(), "1".into()), ("b".into(), String::new())];
        }
        e
    }

    #[test]
    fn decodes_as_the_generated_message() {
        let events: Vec<Event> = (0..6)
            .map(|n| event(if n == 3 { "other" } else { "main" }, n))
            .collect();
        let bytes = encode_ingest_request("main", events.iter());
        let req = v1::IngestRequest::decode(bytes).unwrap();
        assert_eq!(req.stream, "main");
        assert!(!req.return_ids);
        assert_eq!(req.events.len(), events.len());
        for (got, want) in req.events.iter().zip(&events) {
            assert_eq!(got.id, want.id.as_str());
            let stream = if got.stream.is_empty() {
                "main"
            } else {
                &got.stream
            };
            assert_eq!(Arc::<str>::from(stream), want.stream);
            assert_eq!(got.key, want.key.clone().unwrap_or_default());
            assert_eq!(
                sluice_core::producer_timestamp(got.timestamp_unix_nanos),
                want.timestamp_unix_nanos
            );
            let mut headers: Vec<_> = got.headers.clone().into_iter().collect();
            headers.sort();
            assert_eq!(headers, want.headers);
            assert_eq!(got.payload, want.payload);
        }
        assert_eq!(req.events[3].stream, "other", "a foreign stream is named");
        assert_eq!(req.events[1].stream, "", "the request's stream is implied");
    }

    #[test]
    fn an_empty_request_is_empty_bytes() {
        assert!(encode_ingest_request("", std::iter::empty()).is_empty());
    }
}
