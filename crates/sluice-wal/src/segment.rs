//! Segment files: creating them, reading frames through a small cache, and
//! scanning one frame by frame (recovery and `inspect`).

use std::io;

use bytes::{Bytes, BytesMut};

use crate::frame::{self, Damage, FrameHead, HeaderProblem, FRAME_OVERHEAD, HEADER_LEN};
use crate::storage::{Storage, StorageFile};

/// Bytes fetched per refill of a [`CachedFile`].
const CHUNK: usize = 1 << 20;

/// Positional reads through a one-chunk cache.
///
/// Only bytes below the `limit` given at refill time are cached; callers pass the
/// durable end (or the file length), and bytes below it never change, so the cache
/// never goes stale. A chunk is shared (`Bytes`): [`get_bytes`](Self::get_bytes)
/// hands out slices of it without copying, and a refill starts a new chunk.
pub struct CachedFile {
    file: Box<dyn StorageFile>,
    buf: Bytes,
    buf_off: u64,
}

impl CachedFile {
    pub fn new(file: Box<dyn StorageFile>) -> CachedFile {
        CachedFile {
            file,
            buf: Bytes::new(),
            buf_off: 0,
        }
    }

    /// Returns `n` bytes at `off`, or fewer when the file (or `limit`) ends first.
    pub fn get(&mut self, off: u64, n: usize, limit: u64) -> io::Result<&[u8]> {
        let range = self.fill(off, n, limit)?;
        Ok(&self.buf[range])
    }

    /// [`get`](Self::get) as a slice of the shared chunk, without a copy.
    pub fn get_bytes(&mut self, off: u64, n: usize, limit: u64) -> io::Result<Bytes> {
        let range = self.fill(off, n, limit)?;
        Ok(self.buf.slice(range))
    }

    fn fill(&mut self, off: u64, n: usize, limit: u64) -> io::Result<std::ops::Range<usize>> {
        let have = off >= self.buf_off && off + n as u64 <= self.buf_off + self.buf.len() as u64;
        if !have {
            let want = (n.max(CHUNK) as u64)
                .min(limit.saturating_sub(off))
                .max(n as u64);
            let mut buf = BytesMut::zeroed(want as usize);
            let got = self.file.read_full_at(off, &mut buf)?;
            buf.truncate(got);
            self.buf = buf.freeze();
            self.buf_off = off;
        }
        let start = (off - self.buf_off) as usize;
        let end = (start + n).min(self.buf.len());
        Ok(start.min(end)..end)
    }

    pub fn file(&self) -> &dyn StorageFile {
        &*self.file
    }
}

/// Where a frame-by-frame scan stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanProblem {
    /// File offset of the first bad byte (a frame start, or 0 for the header).
    pub offset: u64,
    pub reason: Damage,
    /// File offset of the first valid frame after the bad bytes, if any: then this
    /// is corruption (`sluice wal repair` keeps every valid frame); `None` means a
    /// torn tail (never acked; open cuts it after copying it aside).
    pub resumes_at: Option<u64>,
}

/// Result of scanning one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// File offset right after the last good frame (`HEADER_LEN` when none; 0 when the header is bad).
    pub valid_end: u64,
    pub records: u64,
    pub file_len: u64,
    pub problem: Option<ScanProblem>,
}

/// Why a frame at `offset` cannot be read, if it cannot. `limit` is the file
/// offset where this segment's data ends. On success returns the frame head.
pub fn check_frame(
    file: &mut CachedFile,
    offset: u64,
    limit: u64,
    max_record_bytes: u64,
) -> io::Result<Result<FrameHead, Damage>> {
    let head = file.get(offset, FRAME_OVERHEAD as usize, limit)?;
    if head.len() < FRAME_OVERHEAD as usize || offset + FRAME_OVERHEAD > limit {
        let left = limit.saturating_sub(offset);
        return Ok(Err(Damage::ShortFrameHeader { left }));
    }
    let head = FrameHead::decode(head.try_into().expect("8 bytes"));
    if u64::from(head.len) > max_record_bytes {
        let (len, max) = (head.len, max_record_bytes);
        return Ok(Err(Damage::TooLong { len, max }));
    }
    if offset + head.frame_len() > limit {
        let (len, left) = (head.frame_len(), limit - offset);
        return Ok(Err(Damage::PastEnd { len, left }));
    }
    let payload = file.get(offset + FRAME_OVERHEAD, head.len as usize, limit)?;
    if payload.len() != head.len as usize {
        return Ok(Err(Damage::ShortPayload));
    }
    if !head.verify(payload) {
        return Ok(Err(Damage::Crc));
    }
    Ok(Ok(head))
}

/// Reads and checks the header of the segment starting at `base`.
pub fn read_header(
    file: &mut CachedFile,
    base: u64,
    file_len: u64,
) -> io::Result<Result<(), Damage>> {
    let bytes = file.get(0, HEADER_LEN as usize, file_len)?;
    let Ok(h) = <&[u8; HEADER_LEN as usize]>::try_from(bytes) else {
        return Ok(Err(Damage::Header(HeaderProblem::Short(bytes.len()))));
    };
    Ok(frame::check_header(h, base).map_err(Damage::Header))
}

/// Frame lengths allowed when reading: whatever the format can hold. The size
/// limit of today's config applies to appends only, so a frame written under a
/// bigger `max_record_bytes` stays readable.
pub const FORMAT_MAX_RECORD: u64 = u32::MAX as u64;

/// Scans a whole segment frame by frame and stops at the first bad frame.
/// Whether valid frames follow it is for [`analysis`](crate::analysis) to say.
pub fn scan(file: &mut CachedFile, base: u64) -> io::Result<ScanOutcome> {
    let file_len = file.file().len()?;
    if let Err(reason) = read_header(file, base, file_len)? {
        return Ok(ScanOutcome {
            valid_end: 0,
            records: 0,
            file_len,
            problem: Some(ScanProblem {
                offset: 0,
                reason,
                resumes_at: None,
            }),
        });
    }
    let mut offset = HEADER_LEN;
    let mut records = 0;
    let mut problem = None;
    while offset < file_len {
        match check_frame(file, offset, file_len, FORMAT_MAX_RECORD)? {
            Ok(head) => {
                offset += head.frame_len();
                records += 1;
            }
            Err(reason) => {
                problem = Some(ScanProblem {
                    offset,
                    reason,
                    resumes_at: None,
                });
                break;
            }
        }
    }
    debug_assert!(offset <= file_len);
    Ok(ScanOutcome {
        valid_end: offset,
        records,
        file_len,
        problem,
    })
}

/// Creates the segment starting at `base`: header written and synced, directory synced.
pub fn create(storage: &dyn Storage, base: u64) -> io::Result<Box<dyn StorageFile>> {
    let name = frame::segment_name(base);
    let file = storage.open(&name, true)?;
    file.set_len(0)?;
    file.write_all_at(0, &frame::encode_header(base))?;
    file.sync_data()?;
    storage.sync_dir()?;
    Ok(file)
}

/// Reads a whole file into memory.
pub fn read_all(file: &dyn StorageFile) -> io::Result<Vec<u8>> {
    let len = file.len()?;
    let mut buf = vec![0u8; len as usize];
    let got = file.read_full_at(0, &mut buf)?;
    buf.truncate(got);
    Ok(buf)
}

impl CachedFile {
    /// The file, without the cache.
    pub fn into_inner(self) -> Box<dyn StorageFile> {
        self.file
    }
}
