//! The binary encoding of a [`Batch`] as one queue record.
//!
//! ```text
//! record  := version:u8 (= 1) | count:u32 | event * count
//! event   := id:str | stream:str | has_key:u8 | key:str if has_key = 1
//!          | received_at_unix_nanos:i64 | timestamp_unix_nanos:i64
//!          | header_count:u32 | (name:str | value:str) * header_count
//!          | payload:bytes
//! str     := len:u32 | UTF-8 bytes
//! bytes   := len:u32 | bytes
//! ```
//!
//! All integers are little-endian. Invariants: a record decodes to exactly the batch
//! that was encoded; decoding never reads past the record and consumes all of it
//! (trailing bytes are an error). The queue frames and checksums records; this codec
//! only checks structure.

use bytes::{Buf, Bytes};
use sluice_core::{Batch, Event};

const VERSION: u8 = 1;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is shorter than its fields say.
    #[error("record truncated at byte {at} while reading {field}")]
    Truncated { at: usize, field: &'static str },
    /// A text field is not UTF-8.
    #[error("record field {field} is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    /// An unknown version byte.
    #[error("record version {got} is not supported (expected {VERSION})")]
    Version { got: u8 },
    /// An event id that sluice would never have accepted.
    #[error("record holds an invalid event id: {0}")]
    Id(sluice_core::HeaderError),
    /// Bytes left after the last event.
    #[error("record has {extra} trailing bytes")]
    Trailing { extra: usize },
}

/// Bytes [`encode`] will produce for this batch.
pub fn encoded_len(batch: &Batch) -> usize {
    5 + batch.events.iter().map(event_len).sum::<usize>()
}

/// Bytes one event takes in a record (the record's own 5-byte header aside).
pub fn event_len(e: &Event) -> usize {
    4 + e.id.len()
        + 4
        + e.stream.len()
        + 1
        + e.key.as_ref().map_or(0, |k| 4 + k.len())
        + 16
        + 4
        + e.headers
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>()
        + 4
        + e.payload.len()
}

/// Appends the encoding of `batch` to `out`.
pub fn encode(batch: &Batch, out: &mut Vec<u8>) {
    encode_events(&batch.events, out);
}

/// Appends the encoding of a batch of these events to `out`.
pub fn encode_events<'a, I>(events: I, out: &mut Vec<u8>)
where
    I: IntoIterator<Item = &'a Event>,
    I::IntoIter: ExactSizeIterator + Clone,
{
    let events = events.into_iter();
    out.reserve(5 + events.clone().map(event_len).sum::<usize>());
    out.push(VERSION);
    put_u32(out, events.len());
    for e in events {
        put_bytes(out, e.id.as_bytes());
        put_bytes(out, e.stream.as_bytes());
        match &e.key {
            Some(k) => {
                out.push(1);
                put_bytes(out, k.as_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&e.received_at_unix_nanos.to_le_bytes());
        out.extend_from_slice(&e.timestamp_unix_nanos.unwrap_or(0).to_le_bytes());
        put_u32(out, e.headers.len());
        for (k, v) in &e.headers {
            put_bytes(out, k.as_bytes());
            put_bytes(out, v.as_bytes());
        }
        put_bytes(out, &e.payload);
    }
}

/// Decodes a record; payloads are zero-copy slices of `record`.
pub fn decode(record: Bytes) -> Result<Vec<Event>, DecodeError> {
    let mut events = Vec::new();
    decode_into(record, &mut events)?;
    Ok(events)
}

/// Decodes a record onto the end of `events`, so that a reader gathering many
/// records fills one vector instead of moving each record's events again. On an
/// error, `events` is left as it was.
pub fn decode_into(record: Bytes, events: &mut Vec<Event>) -> Result<(), DecodeError> {
    let before = events.len();
    let result = decode_onto(record, events);
    if result.is_err() {
        events.truncate(before);
    }
    result
}

fn decode_onto(record: Bytes, events: &mut Vec<Event>) -> Result<(), DecodeError> {
    let total = record.len();
    let first = events.len();
    let mut r = Reader { buf: record, total };
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(DecodeError::Version { got: version });
    }
    let count = r.u32("count")? as usize;
    events.reserve(count.min(total / 30 + 1));
    for _ in 0..count {
        let id = sluice_core::EventId::parse(r.string("id")?).map_err(DecodeError::Id)?;
        let stream_bytes = r.bytes("stream")?;
        // A batch is almost always one stream: share the previous event's name.
        let stream = match events[first..].last() {
            Some(prev) if prev.stream.as_bytes() == &stream_bytes[..] => prev.stream.clone(),
            _ => std::str::from_utf8(&stream_bytes)
                .map_err(|_| DecodeError::NotUtf8 { field: "stream" })?
                .into(),
        };
        let key = match r.u8("has_key")? {
            0 => None,
            _ => Some(r.string("key")?),
        };
        let received_at_unix_nanos = r.i64("received_at")?;
        let timestamp_unix_nanos = sluice_core::producer_timestamp(r.i64("timestamp")?);
        let n = r.u32("header_count")? as usize;
        let mut headers = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            headers.push((r.string("header name")?, r.string("header value")?));
        }
        let payload = r.bytes("payload")?;
        events.push(Event {
            id,
            stream,
            key,
            received_at_unix_nanos,
            timestamp_unix_nanos,
            headers,
            payload,
        });
    }
    if r.buf.has_remaining() {
        return Err(DecodeError::Trailing {
            extra: r.buf.remaining(),
        });
    }
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("field longer than 4 GiB");
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

struct Reader {
    buf: Bytes,
    total: usize,
}

impl Reader {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated {
                at: self.total - self.buf.remaining(),
                field,
            });
        }
        Ok(())
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32_le())
    }
    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_i64_le())
    }
    fn bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u32(field)? as usize;
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes(field)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::NotUtf8 { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Batch {
        let mut a = Event::new("clicks", Bytes::from_static(b"{\"a\":1}"));
        a.key = Some("user-7".into());
        a.headers = vec![("h".into(), "v".into())];
        a.timestamp_unix_nanos = Some(42);
        let b = Event::new("clicks", Bytes::from_static(b"{}"));
        Batch::new(vec![a, b])
    }

    #[test]
    fn round_trip() {
        let batch = sample();
        let mut buf = Vec::new();
        encode(&batch, &mut buf);
        assert_eq!(buf.len(), encoded_len(&batch));
        let events = decode(Bytes::from(buf)).unwrap();
        assert_eq!(events, batch.events);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        for n in 0..buf.len() {
            assert!(decode(Bytes::copy_from_slice(&buf[..n])).is_err(), "{n}");
        }
        buf.push(0);
        assert_eq!(
            decode(Bytes::from(buf)),
            Err(DecodeError::Trailing { extra: 1 })
        );
    }

    /// A record holding an id sluice would never have accepted (a control character)
    /// is refused, not turned into an event.
    #[test]
    fn an_invalid_id_is_a_decode_error() {
        let batch = sample();
        let mut buf = Vec::new();
        encode(&batch, &mut buf);
        let id = batch.events[0].id.as_bytes();
        let at = buf.windows(id.len()).position(|w| w == id).unwrap();
        buf[at + 3] = 0x01;
        assert!(matches!(
            decode(Bytes::from(buf)),
            Err(DecodeError::Id(
                sluice_core::HeaderError::BadValueChar { .. }
            ))
        ));
    }
}
