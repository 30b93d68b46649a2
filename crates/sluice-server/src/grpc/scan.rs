//! A walk over the protobuf wire bytes of one `IngestRequest`, before it is decoded.
//!
//! Decoding allocates per event (an `Event`, its strings, its header map), and a
//! repeated empty `Event` takes 2 bytes on the wire: 10 MiB of message would become
//! five million events. The walk counts events and header entries without
//! allocating and stops at the one past the limit; it also finds text fields that
//! are not UTF-8 and names the event (prost only says "invalid string value").
//!
//! ```text
//! IngestRequest: 1 stream (LEN, UTF-8) | 2 events (LEN, Event, repeated) | 3 return_ids (VARINT)
//! Event:         1 id | 2 stream | 3 key (LEN, UTF-8) | 4 timestamp (VARINT)
//!                | 5 headers (LEN, entry: 1 name | 2 value, UTF-8) | 6 payload (LEN)
//! ```
//!
//! Unknown fields are skipped as protobuf allows; groups (wire types 3 and 4) and
//! lengths past the end are refused as malformed.

/// What the message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub events: usize,
    pub headers: usize,
}

/// Why the message is refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// More than `max` events; `at` is the first one too many.
    TooManyEvents { max: usize },
    /// More than `max` header entries in the message; `event` holds the one too many.
    TooManyHeaders { max: usize, event: usize },
    /// A text field is not UTF-8; `event` is 1-based, `None` for the request's own.
    NotUtf8 {
        event: Option<usize>,
        field: &'static str,
    },
    /// Not a well-formed protobuf message.
    Malformed { what: &'static str },
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// One field: number, wire type, and its bytes when length-delimited.
type Field<'a> = (u64, u8, &'a [u8]);

/// The fields of a message, in order.
struct Fields<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, ScanError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.b.get(self.i) else {
                return Err(ScanError::Malformed {
                    what: "truncated varint",
                });
            };
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ScanError::Malformed {
            what: "varint longer than 10 bytes",
        })
    }

    fn skip(&mut self, n: u64) -> Result<&'a [u8], ScanError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.i.checked_add(n))
            .filter(|&e| e <= self.b.len())
            .ok_or(ScanError::Malformed {
                what: "field length past the end of the message",
            })?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }

    /// The next field: (number, wire type, bytes of a LEN field).
    fn next(&mut self) -> Result<Option<Field<'a>>, ScanError> {
        if self.i >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        let data = match wire {
            VARINT => {
                self.varint()?;
                &[][..]
            }
            I64 => self.skip(8)?,
            I32 => self.skip(4)?,
            LEN => {
                let n = self.varint()?;
                self.skip(n)?
            }
            _ => {
                return Err(ScanError::Malformed {
                    what: "unsupported wire type (groups are not used by sluice.v1)",
                })
            }
        };
        Ok(Some((number, wire, data)))
    }
}

fn fields(b: &[u8]) -> Fields<'_> {
    Fields { b, i: 0 }
}

fn utf8(data: &[u8], event: Option<usize>, field: &'static str) -> Result<(), ScanError> {
    match std::str::from_utf8(data) {
        Ok(_) => Ok(()),
        Err(_) => Err(ScanError::NotUtf8 { event, field }),
    }
}

fn expect_len(wire: u8) -> Result<(), ScanError> {
    if wire == LEN {
        Ok(())
    } else {
        Err(ScanError::Malformed {
            what: "a string or message field with a non-length wire type",
        })
    }
}

/// Walks `msg` (an `IngestRequest`), allowing at most `max` events and `max` header
/// entries in all.
pub fn scan(msg: &[u8], max: usize) -> Result<Counts, ScanError> {
    let mut counts = Counts {
        events: 0,
        headers: 0,
    };
    let mut top = fields(msg);
    while let Some((number, wire, data)) = top.next()? {
        match number {
            1 => {
                expect_len(wire)?;
                utf8(data, None, "IngestRequest.stream")?;
            }
            2 => {
                expect_len(wire)?;
                counts.events += 1;
                if counts.events > max {
                    return Err(ScanError::TooManyEvents { max });
                }
                scan_event(data, counts.events, &mut counts.headers, max)?;
            }
            _ => {}
        }
    }
    Ok(counts)
}

fn scan_event(b: &[u8], n: usize, headers: &mut usize, max: usize) -> Result<(), ScanError> {
    let mut f = fields(b);
    while let Some((number, wire, data)) = f.next()? {
        let name = match number {
            1 => "id",
            2 => "stream",
            3 => "key",
            5 => {
                expect_len(wire)?;
                *headers += 1;
                if *headers > max {
                    return Err(ScanError::TooManyHeaders { max, event: n });
                }
                let mut entry = fields(data);
                while let Some((number, wire, data)) = entry.next()? {
                    let name = match number {
                        1 => "header name",
                        2 => "header value",
                        _ => continue,
                    };
                    expect_len(wire)?;
                    utf8(data, Some(n), name)?;
                }
                continue;
            }
            _ => continue,
        };
        expect_len(wire)?;
        utf8(data, Some(n), name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::prost::Message;
    use sluice_proto::v1::{Event, IngestRequest};

    fn encode(r: &IngestRequest) -> Vec<u8> {
        r.encode_to_vec()
    }

    #[test]
    fn counts_events_and_headers_of_a_real_message() {
        let mut e = Event {
            id: "a".into(),
            payload: "{}".into(),
            ..Default::default()
        };
        e.headers.insert("h".into(), "v".into());
        e.headers.insert("g".into(), String::new());
        let r = IngestRequest {
            stream: "s".into(),
            events: vec![e, Event::default(), Event::default()],
            return_ids: true,
        };
        let c = scan(&encode(&r), 10).unwrap();
        assert_eq!(
            c,
            Counts {
                events: 3,
                headers: 2
            }
        );
        assert_eq!(
            scan(&encode(&r), 2),
            Err(ScanError::TooManyEvents { max: 2 })
        );
        assert_eq!(
            scan(&encode(&r), 3).map(|c| c.events),
            Ok(3),
            "exactly at the limit is fine"
        );
    }

    #[test]
    fn repeated_empty_events_stop_at_the_limit() {
        let bomb: Vec<u8> = [0x12, 0x00].repeat(1_000_000);
        assert_eq!(
            scan(&bomb, 100_000),
            Err(ScanError::TooManyEvents { max: 100_000 })
        );
        // Empty header entries of one event: 2 bytes each.
        let mut event = Vec::new();
        for _ in 0..1000 {
            event.extend_from_slice(&[0x2a, 0x00]);
        }
        let mut msg = vec![0x12];
        msg.extend_from_slice(&[0xd0, 0x0f]); // 2000 as a varint
        msg.extend_from_slice(&event);
        assert_eq!(
            scan(&msg, 100),
            Err(ScanError::TooManyHeaders { max: 100, event: 1 })
        );
    }

    #[test]
    fn invalid_utf8_names_the_event_and_field() {
        // Event 2 has key = [0xff].
        let msg = [0x12, 0x00, 0x12, 0x03, 0x1a, 0x01, 0xff];
        assert_eq!(
            scan(&msg, 10),
            Err(ScanError::NotUtf8 {
                event: Some(2),
                field: "key"
            })
        );
        let msg = [0x0a, 0x01, 0xc3];
        assert_eq!(
            scan(&msg, 10),
            Err(ScanError::NotUtf8 {
                event: None,
                field: "IngestRequest.stream"
            })
        );
        // A header value of event 1.
        let msg = [0x12, 0x06, 0x2a, 0x04, 0x12, 0x02, 0xc3, 0x28];
        assert_eq!(
            scan(&msg, 10),
            Err(ScanError::NotUtf8 {
                event: Some(1),
                field: "header value"
            })
        );
    }

    #[test]
    fn malformed_input_is_refused_not_panicked_on() {
        for bad in [&[0x12][..], &[0x12, 0x05, 0x00], &[0x0b], &[0xff; 12]] {
            assert!(
                matches!(scan(bad, 10), Err(ScanError::Malformed { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(scan(&[], 10).unwrap().events, 0);
    }
}
