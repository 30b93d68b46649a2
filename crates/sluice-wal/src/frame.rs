//! Frame and segment-header codec: pure functions over byte slices, no I/O.
//!
//! See the crate docs for the drawing of both formats.

/// Bytes in front of every payload: length (u32 LE) + CRC32C (u32 LE).
pub const FRAME_OVERHEAD: u64 = 8;

/// Size of the header at the start of every segment file.
pub const HEADER_LEN: u64 = 32;

/// First eight bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"SLUICEWL";

/// On-disk format version written by this build.
pub const VERSION: u32 = 1;

/// CRC32C of a frame: covers the length bytes and the payload, so a flipped
/// length is caught as surely as a flipped payload byte.
pub fn frame_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&len_bytes);
    crc32c::crc32c_append(crc, payload)
}

/// Appends one encoded frame for `payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("record length checked against max_record_bytes");
    let len_bytes = len.to_le_bytes();
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&frame_crc(len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The 8-byte prefix of a frame, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub len: u32,
    pub crc: u32,
}

impl FrameHead {
    pub fn decode(bytes: &[u8; 8]) -> FrameHead {
        FrameHead {
            len: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            crc: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    /// Whether `payload` (which must be `len` bytes long) matches the CRC.
    pub fn verify(&self, payload: &[u8]) -> bool {
        debug_assert_eq!(payload.len() as u64, u64::from(self.len));
        frame_crc(self.len.to_le_bytes(), payload) == self.crc
    }

    /// Total bytes of the frame on disk.
    pub fn frame_len(&self) -> u64 {
        FRAME_OVERHEAD + u64::from(self.len)
    }
}

/// Encodes the header of a segment whose first data byte has logical position `base`.
pub fn encode_header(base: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    // 12..16 reserved (flags), zero
    h[16..24].copy_from_slice(&base.to_le_bytes());
    // 24..28 reserved, zero
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    #[error("short ({0} bytes)")]
    Short(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("header checksum mismatch")]
    BadCrc,
    #[error("unsupported version {0}")]
    UnsupportedVersion(u32),
    #[error("header names base position {found}, file name another")]
    WrongBase { found: u64 },
}

/// What is wrong with the bytes at a place in a segment: the reason every
/// corruption report (open, read, repair, inspect) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("bad segment header: {0}")]
    Header(HeaderProblem),
    #[error("short frame header ({left} bytes left)")]
    ShortFrameHeader { left: u64 },
    #[error("frame length {len} exceeds max_record_bytes {max}")]
    TooLong { len: u32, max: u64 },
    #[error("frame of {len} bytes runs past the end of the data ({left} bytes left)")]
    PastEnd { len: u64, left: u64 },
    #[error("short frame payload")]
    ShortPayload,
    #[error("crc mismatch")]
    Crc,
}

/// Checks a segment header against the base position taken from the file name.
pub fn check_header(h: &[u8; HEADER_LEN as usize], base: u64) -> Result<(), HeaderProblem> {
    if h[0..8] != MAGIC {
        return Err(HeaderProblem::BadMagic);
    }
    let crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if crc32c::crc32c(&h[0..28]) != crc {
        return Err(HeaderProblem::BadCrc);
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != VERSION {
        return Err(HeaderProblem::UnsupportedVersion(version));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[16..24]);
    let found = u64::from_le_bytes(b);
    if found != base {
        return Err(HeaderProblem::WrongBase { found });
    }
    Ok(())
}

/// File name of the segment starting at logical position `base`.
pub fn segment_name(base: u64) -> String {
    format!("{base:020}.wal")
}

/// Parses a segment file name back into its base position.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // No log reaches 2^62 bytes (see `checkpoint::MAX_POSITION`): a name past it is
    // not a segment sluice wrote, and positions there would overflow (finding F5).
    digits
        .parse()
        .ok()
        .filter(|&base| base <= crate::checkpoint::MAX_POSITION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_crc_covers_length() {
        let mut buf = Vec::new();
        encode_frame(b"hello", &mut buf);
        assert_eq!(buf.len() as u64, FRAME_OVERHEAD + 5);
        let head = FrameHead::decode(buf[..8].try_into().unwrap());
        assert_eq!(head.len, 5);
        assert!(head.verify(&buf[8..]));
        let mut flipped = head;
        flipped.len ^= 1 << 2; // length 1, different crc input
        assert_ne!(frame_crc(flipped.len.to_le_bytes(), b"h"), head.crc);
    }

    #[test]
    fn zeroed_frame_is_not_valid() {
        let head = FrameHead::decode(&[0; 8]);
        assert!(!head.verify(&[]));
    }

    #[test]
    fn header_round_trip_and_rejections() {
        let h = encode_header(4096);
        assert_eq!(check_header(&h, 4096), Ok(()));
        assert_eq!(
            check_header(&h, 0),
            Err(HeaderProblem::WrongBase { found: 4096 })
        );
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(check_header(&bad, 4096), Err(HeaderProblem::BadMagic));
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(check_header(&bad, 4096), Err(HeaderProblem::BadCrc));
    }

    #[test]
    fn segment_names_sort_by_position() {
        assert_eq!(segment_name(0), "00000000000000000000.wal");
        let highest = crate::checkpoint::MAX_POSITION;
        assert_eq!(parse_segment_name(&segment_name(highest)), Some(highest));
        assert_eq!(parse_segment_name(&segment_name(highest + 1)), None);
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), None);
        assert_eq!(parse_segment_name("123.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000000.tmp"), None);
    }
}
