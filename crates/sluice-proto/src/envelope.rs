//! The envelope text sinks write for each event, one JSON object per line:
//!
//! ```text
//! {"id":"0193…","stream":"clicks","received_at":"2026-11-27T19:00:00.123Z","key":null,"data":{…}}
//! ```
//!
//! `data` is the producer's payload verbatim, except that line breaks (which a valid
//! payload can only have as whitespace between tokens) become blanks so that every
//! envelope is one line. `headers` is added as an object when the event has any.

use sluice_core::{format_rfc3339_millis, Event};

/// Remembers the last formatted `received_at`: the events of one request share it,
/// so a delivery formats each distinct millisecond once.
#[derive(Debug, Default)]
pub struct TimeCache {
    millis: Option<i64>,
    text: Vec<u8>,
}

impl TimeCache {
    fn format(&mut self, unix_nanos: i64) -> &[u8] {
        let ms = unix_nanos.div_euclid(1_000_000);
        if self.millis != Some(ms) {
            self.text.clear();
            format_rfc3339_millis(unix_nanos, &mut self.text);
            self.millis = Some(ms);
        }
        &self.text
    }
}

/// Appends the envelope of `event` and a newline to `out`.
pub fn write_line(event: &Event, out: &mut Vec<u8>) {
    write_line_cached(event, out, &mut TimeCache::default());
}

/// [`write_line`] reusing the formatted time of the previous event when it is the same
/// millisecond.
pub fn write_line_cached(event: &Event, out: &mut Vec<u8>, time: &mut TimeCache) {
    out.extend_from_slice(b"{\"id\":");
    write_str(&event.id, out);
    out.extend_from_slice(b",\"stream\":");
    write_str(&event.stream, out);
    out.extend_from_slice(b",\"received_at\":\"");
    out.extend_from_slice(time.format(event.received_at_unix_nanos));
    out.extend_from_slice(b"\",\"key\":");
    match &event.key {
        Some(k) => write_str(k, out),
        None => out.extend_from_slice(b"null"),
    }
    if !event.headers.is_empty() {
        out.extend_from_slice(b",\"headers\":{");
        for (i, (k, v)) in event.headers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(k, out);
            out.push(b':');
            write_str(v, out);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b",\"data\":");
    let data = &event.payload[..];
    if memchr::memchr2(b'\n', b'\r', data).is_none() {
        out.extend_from_slice(data);
    } else {
        // A pretty-printed payload: its line breaks can only be whitespace between
        // tokens (JSON strings cannot hold raw control characters), so blanks keep
        // the same JSON on one line.
        out.extend(
            data.iter()
                .map(|&c| if c == b'\n' || c == b'\r' { b' ' } else { c }),
        );
    }
    out.extend_from_slice(b"}\n");
}

/// Writes `s` as a JSON string literal.
fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Ids and stream names almost never need escaping: one fast scan first.
    if crate::scan::string_special(bytes, 0) == bytes.len() {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn pretty_printed_payload_stays_on_one_line() {
        let e = Event::new("s", "{\r\n  \"a\": \"x\\ny\",\n  \"b\": 1\n}");
        let mut out = Vec::new();
        write_line(&e, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["data"]["a"], "x\ny",
            "escaped newlines in strings are kept"
        );
        assert_eq!(v["data"]["b"], 1);
    }

    #[test]
    fn envelope_is_json_with_verbatim_data() {
        let mut e = Event::new("clicks", Bytes::from_static(b"{\"x\": [1, 2] }"));
        // Quotes and backslashes are the characters an id may hold that JSON escapes.
        e.id = sluice_core::EventId::parse("id-\"1\"\\").unwrap();
        e.received_at_unix_nanos = 1_795_806_000_123_000_000;
        let mut out = Vec::new();
        write_line(&e, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\"data\":{\"x\": [1, 2] }}\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], "id-\"1\"\\");
        assert_eq!(v["stream"], "clicks");
        assert_eq!(v["received_at"], "2026-11-27T19:00:00.123Z");
        assert!(v["key"].is_null());
        assert_eq!(v["data"]["x"][1], 2);

        e.key = Some("k\u{1}".into());
        e.headers = vec![("a".into(), "b".into())];
        let mut out = Vec::new();
        write_line(&e, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["key"], "k\u{1}");
        assert_eq!(v["headers"]["a"], "b");
    }
}
