//! Whole-segment analysis: every run of valid frames and every bad byte range,
//! found by resynchronizing after a bad frame.
//!
//! Recovery and repair must tell a torn tail (a bad frame with nothing valid after
//! it: bytes that were never acked) from corruption (a bad frame followed by valid
//! frames, which may have been acked). After a bad frame at offset `x`, every later
//! offset `y` is tried as a frame start; a candidate is valid when its length fits
//! in the file and its CRC (which covers the length bytes) checks.
//!
//! Checking each candidate by hashing its payload would cost O(n²) on a segment of
//! small length fields. Instead the CRC of any byte range is derived in O(1) from
//! prefix CRCs, using CRC linearity: `crc(A ++ B) = shift(crc(A), |B|) ^ crc(B)`,
//! where `shift` multiplies by `x^(8·|B|)` modulo the CRC32C polynomial. Prefix CRCs
//! are kept every [`STRIDE`] bytes (n/16 bytes of memory) and `shift` is four
//! table lookups and five carry-less multiplications, so a full resync is O(n).
//!
//! Frame size limits come from the format only (a u32 length that must fit in the
//! file), never from today's `max_record_bytes`: a frame written under a larger
//! limit stays valid.

use std::sync::OnceLock;

use crate::frame::{self, Damage, FrameHead, HeaderProblem, FRAME_OVERHEAD, HEADER_LEN};

/// Bytes between two stored prefix CRCs.
const STRIDE: usize = 64;

/// CRC32C polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;

/// A run of consecutive valid frames: file offsets `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub end: u64,
    pub records: u64,
}

/// Bytes that are not part of any valid frame: file offsets `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub start: u64,
    pub end: u64,
    pub reason: Damage,
}

/// What a whole segment holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub file_len: u64,
    /// Why the segment header was refused, if it was.
    pub header_problem: Option<HeaderProblem>,
    /// Valid frame runs, in file order.
    pub runs: Vec<Run>,
    /// Bad ranges, in file order, interleaved with `runs`. A bad header is the range `0..32` (or more).
    pub bad: Vec<Bad>,
}

impl Analysis {
    /// The first bad range that has a valid frame after it: corruption, not a torn tail.
    pub fn corruption(&self) -> Option<(&Bad, u64)> {
        let first = self.bad.first()?;
        let next = self.runs.iter().find(|r| r.start >= first.end)?;
        Some((first, next.start))
    }

    /// The bad range at the end with nothing valid after it, if any (a torn tail).
    pub fn torn_tail(&self) -> Option<&Bad> {
        let last = self.bad.last()?;
        (last.end == self.file_len && self.runs.iter().all(|r| r.end <= last.start)).then_some(last)
    }

    pub fn records(&self) -> u64 {
        self.runs.iter().map(|r| r.records).sum()
    }
}

/// Analyzes the segment file `data` whose name says it starts at `base`.
pub fn analyze(data: &[u8], base: u64) -> Analysis {
    let file_len = data.len() as u64;
    let mut a = Analysis {
        file_len,
        header_problem: None,
        runs: Vec::new(),
        bad: Vec::new(),
    };
    let mut resync = Resync::new(data);
    let mut off = HEADER_LEN;
    let header_problem =
        match <&[u8; HEADER_LEN as usize]>::try_from(data.get(..32).unwrap_or(data)) {
            Ok(h) => frame::check_header(h, base).err(),
            Err(_) => Some(HeaderProblem::Short(data.len())),
        };
    if let Some(problem) = header_problem {
        a.header_problem = Some(problem);
        let end = resync.next_valid(HEADER_LEN).unwrap_or(file_len);
        a.bad.push(Bad {
            start: 0,
            end,
            reason: Damage::Header(problem),
        });
        off = end;
    }
    while off < file_len {
        let start = off;
        let mut records = 0;
        while let Ok(len) = frame_at(data, off) {
            off += len;
            records += 1;
        }
        if records > 0 {
            a.runs.push(Run {
                start,
                end: off,
                records,
            });
        }
        if off >= file_len {
            break;
        }
        let reason = frame_at(data, off).expect_err("the chain stopped here");
        let end = resync.next_valid(off + 1).unwrap_or(file_len);
        a.bad.push(Bad {
            start: off,
            end,
            reason,
        });
        off = end;
    }
    a
}

/// The first offset `>= from` in `data` (a segment file's bytes) where a valid
/// frame starts, in O(n).
pub fn next_valid(data: &[u8], from: u64) -> Option<u64> {
    Resync::new(data).next_valid(from)
}

/// Checks the frame at `off` directly; returns its total length.
pub fn frame_at(data: &[u8], off: u64) -> Result<u64, Damage> {
    let file_len = data.len() as u64;
    if off + FRAME_OVERHEAD > file_len {
        let left = file_len.saturating_sub(off);
        return Err(Damage::ShortFrameHeader { left });
    }
    let o = off as usize;
    let head = FrameHead::decode(data[o..o + 8].try_into().expect("8 bytes"));
    if off + head.frame_len() > file_len {
        let (len, left) = (head.frame_len(), file_len - off);
        return Err(Damage::PastEnd { len, left });
    }
    if !head.verify(&data[o + 8..o + 8 + head.len as usize]) {
        return Err(Damage::Crc);
    }
    Ok(head.frame_len())
}

/// Finds valid frames at arbitrary offsets in O(1) each.
struct Resync<'a> {
    data: &'a [u8],
    /// `prefix[k]` = crc32c of `data[..k * STRIDE]`; built on first use.
    prefix: Vec<u32>,
}

impl<'a> Resync<'a> {
    fn new(data: &'a [u8]) -> Resync<'a> {
        Resync {
            data,
            prefix: Vec::new(),
        }
    }

    /// The first offset `>= from` holding a valid frame.
    fn next_valid(&mut self, from: u64) -> Option<u64> {
        if self.prefix.is_empty() {
            let mut crc = 0;
            self.prefix.reserve(self.data.len() / STRIDE + 1);
            self.prefix.push(0);
            for chunk in self.data.chunks_exact(STRIDE) {
                crc = crc32c::crc32c_append(crc, chunk);
                self.prefix.push(crc);
            }
        }
        let n = self.data.len() as u64;
        (from..n.saturating_sub(FRAME_OVERHEAD - 1)).find(|&y| self.valid_at(y))
    }

    /// crc32c of `data[..p]`.
    fn crc_upto(&self, p: usize) -> u32 {
        let k = p / STRIDE;
        crc32c::crc32c_append(self.prefix[k], &self.data[k * STRIDE..p])
    }

    fn valid_at(&self, y: u64) -> bool {
        let n = self.data.len() as u64;
        let o = y as usize;
        let head = FrameHead::decode(self.data[o..o + 8].try_into().expect("8 bytes"));
        if y + head.frame_len() > n {
            return false;
        }
        let a = o + 8;
        let b = a + head.len as usize;
        // crc(len ++ payload) = shift(crc(len), L) ^ crc(payload), and
        // crc(payload) = crc(..b) ^ shift(crc(..a), L).
        let len_crc = crc32c::crc32c(&head.len.to_le_bytes());
        let crc = shift(len_crc ^ self.crc_upto(a), head.len) ^ self.crc_upto(b);
        debug_assert!(
            head.len > 4096 || (crc == head.crc) == head.verify(&self.data[a..b]),
            "fast and direct crc agree"
        );
        crc == head.crc
    }
}

/// `a · b` modulo the polynomial (reflected bit order; `1 << 31` is `x^0`).
fn mulmod(a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    let mut m = 1u32 << 31;
    while m != 0 {
        if a & m != 0 {
            p ^= b;
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `TABLES[j][i]` = `x^(8 · i · 256^j)` modulo the polynomial.
fn tables() -> &'static [[u32; 256]; 4] {
    static TABLES: OnceLock<Box<[[u32; 256]; 4]>> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = Box::new([[0u32; 256]; 4]);
        // x^8: x^0 times x, eight times.
        let mut unit = 1u32 << 31;
        for _ in 0..8 {
            unit = mulmod(unit, 1 << 30);
        }
        for row in t.iter_mut() {
            row[0] = 1 << 31;
            for i in 1..256 {
                row[i] = mulmod(row[i - 1], unit);
            }
            unit = mulmod(row[255], unit);
        }
        t
    })
}

/// The CRC of `A` extended by `len` zero bytes' worth of shifting: the `shift`
/// in `crc(A ++ B) = shift(crc(A), |B|) ^ crc(B)`.
fn shift(crc: u32, len: u32) -> u32 {
    let t = tables();
    let [b0, b1, b2, b3] = len.to_le_bytes();
    let m = mulmod(
        mulmod(t[0][b0 as usize], t[1][b1 as usize]),
        mulmod(t[2][b2 as usize], t[3][b3 as usize]),
    );
    mulmod(m, crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]], base: u64) -> Vec<u8> {
        let mut v = frame::encode_header(base).to_vec();
        for p in payloads {
            frame::encode_frame(p, &mut v);
        }
        v
    }

    #[test]
    fn shift_matches_crc_combine() {
        for len in [0usize, 1, 7, 64, 255, 256, 1000, 70_000] {
            let a = b"some prefix bytes";
            let b: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let whole = crc32c::crc32c_append(crc32c::crc32c(a), &b);
            let got = shift(crc32c::crc32c(a), len as u32) ^ crc32c::crc32c(&b);
            assert_eq!(got, whole, "len {len}");
            assert_eq!(
                crc32c::crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(&b), len),
                whole
            );
        }
    }

    #[test]
    fn flipped_first_frame_is_corruption_with_the_rest_found() {
        let mut v = frames(&[b"first record", b"second", b"third one"], 0);
        v[32 + 8 + 2] ^= 0x10;
        let a = analyze(&v, 0);
        let (bad, next) = a.corruption().expect("corruption");
        assert_eq!(bad.start, 32);
        assert_eq!(next, 32 + 8 + 12);
        assert_eq!(a.records(), 2);
        assert!(a.torn_tail().is_none());
    }

    #[test]
    fn flipped_length_resyncs_at_the_next_frame() {
        let mut v = frames(&[b"aaaa", b"bbbbbbbb", b"cc"], 0);
        v[32 + 12] ^= 0x80; // length of the second frame
        let a = analyze(&v, 0);
        assert_eq!(a.runs.len(), 2);
        assert_eq!(a.records(), 2);
        assert_eq!(a.bad[0].start, 32 + 12);
        assert_eq!(a.bad[0].end, 32 + 12 + 16);
    }

    #[test]
    fn cut_last_frame_is_a_torn_tail() {
        let v = frames(&[b"aaaa", b"bbbbbbbb"], 0);
        let a = analyze(&v[..v.len() - 3], 0);
        assert!(a.corruption().is_none());
        assert_eq!(a.torn_tail().unwrap().start, 32 + 12);
        assert_eq!(a.records(), 1);
    }

    #[test]
    fn pathological_lengths_stay_linear() {
        // Every offset declares a length that fits: a naive resync is quadratic.
        let mut v = frame::encode_header(0).to_vec();
        v.extend_from_slice(&[0xff; 8]);
        for _ in 0..(1 << 20) / 4 {
            v.extend_from_slice(&[0, 0, 1, 0]);
        }
        let t = std::time::Instant::now();
        let a = analyze(&v, 0);
        assert!(a.runs.is_empty());
        assert!(a.torn_tail().is_some());
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
    }
}
