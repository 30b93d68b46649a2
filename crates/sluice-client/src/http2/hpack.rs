//! HPACK (RFC 7541): a full decoder for response header blocks, and the few
//! literal encodings requests need.
//!
//! Requests never touch the server's dynamic table: each field is a literal
//! "without indexing" (or "never indexed" for credentials) whose name is a static
//! table index, so a request's header block is the same bytes every time and can
//! be built once per endpoint. Responses are decoded in full, dynamic table and
//! Huffman strings included, because the table's state depends on every block.

use std::collections::VecDeque;

use super::huffman;

/// The static table (RFC 7541 Appendix A); index 1 is element 0.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Static table indexes requests use.
pub mod index {
    pub const AUTHORITY: usize = 1;
    pub const METHOD_POST: usize = 3;
    pub const PATH: usize = 4;
    pub const SCHEME_HTTP: usize = 6;
    pub const SCHEME_HTTPS: usize = 7;
    pub const AUTHORIZATION: usize = 23;
    pub const CONTENT_TYPE: usize = 31;
}

/// The table size both sides start with (SETTINGS_HEADER_TABLE_SIZE's default),
/// which is also the most we allow: we never raise it.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// A malformed header block: a connection error (COMPRESSION_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// Decodes header blocks, keeping the dynamic table between them.
pub struct Decoder {
    /// Newest first: dynamic index 62 is `table[0]`.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            name: Vec::new(),
            value: Vec::new(),
        }
    }
}

impl Decoder {
    /// Decodes one whole header block, calling `field(name, value)` for each field.
    pub fn decode(
        &mut self,
        mut src: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), DecodeError> {
        let mut first = true;
        while let Some(&b) = src.first() {
            if b & 0x80 != 0 {
                // Indexed field.
                let i = integer(&mut src, 7)?;
                let (n, v) = self.get(i)?;
                field(n, v);
            } else if b & 0xc0 == 0x40 {
                // Literal with incremental indexing.
                let i = integer(&mut src, 6)?;
                self.literal(&mut src, i)?;
                field(&self.name, &self.value);
                self.insert();
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update: only at the start of a block.
                if !first {
                    return Err(DecodeError("table size update after a field"));
                }
                let size = integer(&mut src, 5)?;
                if size > DEFAULT_TABLE_SIZE {
                    return Err(DecodeError("table size update above our limit"));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                let i = integer(&mut src, 4)?;
                self.literal(&mut src, i)?;
                field(&self.name, &self.value);
            }
            first = false;
        }
        Ok(())
    }

    /// The field at `index` (1-based; static, then dynamic newest first).
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        match index {
            0 => Err(DecodeError("index 0")),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(DecodeError("index past the dynamic table")),
        }
    }

    /// Reads a literal's name (indexed when `index > 0`) and value into scratch.
    fn literal(&mut self, src: &mut &[u8], index: usize) -> Result<(), DecodeError> {
        self.name.clear();
        if index == 0 {
            string(src, &mut self.name)?;
        } else {
            let (n, _) = self.get(index)?;
            let n = n.to_vec();
            self.name = n;
        }
        self.value.clear();
        string(src, &mut self.value)
    }

    /// Adds the scratch field to the dynamic table.
    fn insert(&mut self) {
        let size = self.name.len() + self.value.len() + 32;
        if size > self.max_size {
            // Larger than the whole table: empties it, is not stored (§4.4).
            self.evict(self.max_size);
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((
            self.name.clone().into_boxed_slice(),
            self.value.clone().into_boxed_slice(),
        ));
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

/// An integer with an `n`-bit prefix (§5.1).
fn integer(src: &mut &[u8], n: u32) -> Result<usize, DecodeError> {
    let (&first, rest) = src.split_first().ok_or(DecodeError("truncated integer"))?;
    let max = (1usize << n) - 1;
    let mut value = usize::from(first) & max;
    *src = rest;
    if value < max {
        return Ok(value);
    }
    // At most 4 continuation bytes: 28 bits is far beyond any sane length.
    for shift in (0..4).map(|i| i * 7) {
        let (&b, rest) = src.split_first().ok_or(DecodeError("truncated integer"))?;
        *src = rest;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError("integer too large"))
}

/// A string literal (§5.2), Huffman-decoded when flagged, appended to `out`.
fn string(src: &mut &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let huffman = src.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(src, 7)?;
    if src.len() < len {
        return Err(DecodeError("truncated string"));
    }
    let (s, rest) = src.split_at(len);
    *src = rest;
    if huffman {
        huffman::decode(s, out).map_err(DecodeError)
    } else {
        out.extend_from_slice(s);
        Ok(())
    }
}

/// Appends an integer with an `n`-bit prefix whose high bits are `flags`.
pub fn encode_integer(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `value` for the static table's name `index`, never added to the
/// server's table; `sensitive` marks it never-indexed (also by intermediaries).
pub fn encode_literal(out: &mut Vec<u8>, index: usize, value: &[u8], sensitive: bool) {
    encode_integer(out, if sensitive { 0x10 } else { 0x00 }, 4, index);
    encode_integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// Appends the static table's field `index`, name and value.
pub fn encode_indexed(out: &mut Vec<u8>, index: usize) {
    encode_integer(out, 0x80, 7, index);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::huffman::tests::hex;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })
        .unwrap();
        out
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman_and_the_dynamic_table() {
        let mut d = Decoder::default();
        let first = pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ]);
        assert_eq!(
            decode_all(&mut d, &hex("828684418cf1e3c2e5f23a6ba0ab90f4ff")),
            first
        );
        // The second block refers to :authority through the dynamic table (index 62).
        let mut second = first.clone();
        second.push(("cache-control".into(), "no-cache".into()));
        assert_eq!(decode_all(&mut d, &hex("828684be5886a8eb10649cbf")), second);
        let third = pairs(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]);
        assert_eq!(
            decode_all(
                &mut d,
                &hex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf")
            ),
            third
        );
        assert_eq!(d.size, 164, "three entries, as in RFC 7541 C.4.3");
    }

    #[test]
    fn eviction_and_size_updates_follow_the_limit() {
        let mut d = Decoder::default();
        // Size update to 64 bytes, then a literal with indexing of 10+22+32 = 64 bytes.
        let mut block = Vec::new();
        encode_integer(&mut block, 0x20, 5, 64);
        block.extend_from_slice(&[0x40, 10]);
        block.extend_from_slice(b"custom-key");
        block.push(22);
        block.extend_from_slice(b"0123456789012345678901");
        decode_all(&mut d, &block);
        assert_eq!((d.table.len(), d.size), (1, 64));
        // One byte more than the table holds: empties it, not stored.
        let mut big = vec![0x40, 10];
        big.extend_from_slice(b"custom-key");
        big.push(23);
        big.extend_from_slice(b"01234567890123456789012");
        decode_all(&mut d, &big);
        assert_eq!((d.table.len(), d.size), (0, 0));
        // A size update in the middle of a block, or above 4096, is an error.
        let mut late = vec![0x88];
        encode_integer(&mut late, 0x20, 5, 0);
        assert!(d.decode(&late, |_, _| {}).is_err());
        let mut huge = Vec::new();
        encode_integer(&mut huge, 0x20, 5, 8192);
        assert!(d.decode(&huge, |_, _| {}).is_err());
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        for bad in [
            &[0x80][..],                     // index 0
            &[0xbe],                         // empty dynamic table
            &[0xff, 0xff, 0xff, 0xff, 0xff], // endless integer
            &[0x00, 0x05, b'a'],             // truncated name
            &[0x0f],                         // truncated integer
        ] {
            assert!(
                Decoder::default().decode(bad, |_, _| {}).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn our_literals_decode_as_sent() {
        let mut block = Vec::new();
        encode_indexed(&mut block, index::METHOD_POST);
        encode_literal(&mut block, index::PATH, &[b'x'; 300], false);
        encode_literal(&mut block, index::AUTHORIZATION, b"Bearer k", true);
        let got = decode_all(&mut Decoder::default(), &block);
        assert_eq!(got[0], (":method".into(), "POST".into()));
        assert_eq!(got[1].1.len(), 300);
        assert_eq!(got[2], ("authorization".into(), "Bearer k".into()));
        assert_eq!(
            block[block.len() - 11],
            0x1f,
            "never indexed, index 23 ≥ 15"
        );
    }
}
