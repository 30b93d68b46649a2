//! Reading records back, never past the durable end.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{error, warn};

use crate::analysis;
use crate::error::ReadError;
use crate::frame::{self, Damage, FRAME_OVERHEAD, HEADER_LEN};
use crate::segment::{self, CachedFile};
use crate::wal::Shared;

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position of the record's frame.
    pub pos: u64,
    /// Position right after this record: what a consumer commits once it is done with it.
    pub next: u64,
    /// The payload: a slice of the reader's chunk, shared, not copied.
    pub data: Bytes,
}

/// A cursor over the log. Independent of other readers; cheap to create.
pub struct Reader {
    shared: Arc<Shared>,
    pos: u64,
    /// The open segment: its base and file.
    seg: Option<(u64, CachedFile)>,
}

/// Which segment holds `pos` and where its data ends.
struct Span {
    base: u64,
    /// Logical position where reading this segment must stop.
    limit: u64,
    /// The next segment's base, when this is not the last segment.
    next: Option<u64>,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>, pos: u64) -> Reader {
        Reader {
            shared,
            pos,
            seg: None,
        }
    }

    /// Where the next [`read`](Self::read) starts.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Reads whole records from [`position`](Self::position), never past the durable
    /// end; an empty `Vec` means nothing new. Stops after `max_records` records or
    /// once `max_bytes` of payload were returned, but returns at least one record
    /// when one is available.
    ///
    /// A frame that fails its checks gives [`ReadError::Corrupt`] (records read
    /// before it are returned first, by the previous call); the reader has then
    /// moved to the next valid frame (or the next segment), so keep reading.
    pub fn read(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>, ReadError> {
        let end = self.shared.durable_end.load(Ordering::Acquire);
        let mut out: Vec<Record> = Vec::new();
        let mut bytes = 0usize;
        while self.pos < end && (out.is_empty() || (out.len() < max_records && bytes < max_bytes)) {
            match self.read_one(end) {
                Ok(Some(record)) => {
                    bytes += record.data.len();
                    self.pos = record.next;
                    out.push(record);
                }
                Ok(None) => {}
                Err(e) if out.is_empty() => return Err(self.skip(e)),
                // Hand back what was read; the next call reports the problem.
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Reads the record at `self.pos`; `Ok(None)` when the position was moved
    /// (clamped to a later start).
    fn read_one(&mut self, end: u64) -> Result<Option<Record>, Problem> {
        let start = self.shared.start.load(Ordering::Acquire);
        if self.pos < start {
            warn!(
                position = self.pos,
                start, "reader position was deleted, moving to the start"
            );
            self.pos = start;
            self.seg = None;
            return Ok(None);
        }
        let span = self.span(end);
        if let Some(next) = span.next.filter(|&n| self.pos >= span.limit && n <= end) {
            // A hole left by `repair` (its bytes are in a quarantine file).
            warn!(
                position = self.pos,
                next,
                "reader position is in a repaired hole of the log, moving to the next segment"
            );
            self.pos = next;
            self.seg = None;
            return Ok(None);
        }
        let opened = matches!(&self.seg, Some((base, _)) if *base == span.base);
        if !opened {
            match self.open(span.base) {
                Ok(Some(file)) => self.seg = Some((span.base, file)),
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.with_span(span)),
            }
        }
        let (base, file) = self.seg.as_mut().expect("opened above");
        let base = *base;
        let offset = HEADER_LEN + (self.pos - base);
        let limit = HEADER_LEN + (span.limit - base);
        let max = segment::FORMAT_MAX_RECORD;
        let head = segment::check_frame(file, offset, limit, max)
            .map_err(|e| Problem::Io(e, frame::segment_name(base)))?
            .map_err(|reason| Problem::Corrupt {
                base,
                limit: span.limit,
                offset,
                reason,
            })?;
        let data = file
            .get_bytes(offset + FRAME_OVERHEAD, head.len as usize, limit)
            .map_err(|e| Problem::Io(e, frame::segment_name(base)))?;
        let next = self.pos + head.frame_len();
        debug_assert!(next <= span.limit);
        Ok(Some(Record {
            pos: self.pos,
            next,
            data,
        }))
    }

    /// The segment holding `self.pos`, and the end of its readable data.
    fn span(&self, end: u64) -> Span {
        let segs = self
            .shared
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let base = segs
            .range(..=self.pos)
            .next_back()
            .map(|(b, _)| *b)
            .unwrap_or(self.pos);
        let next = segs.range(self.pos + 1..).next().map(|(b, _)| *b);
        // A segment that is not the last one may end before the next one starts
        // (a hole left by `repair`): its data ends at its file length.
        let data_end = segs
            .get(&base)
            .map_or(u64::MAX, |len| base + len.saturating_sub(HEADER_LEN));
        Span {
            base,
            limit: next.map_or(end, |n| n.min(end).min(data_end)),
            next,
        }
    }

    /// Opens the segment at `base` and checks its header. `Ok(None)` when it was
    /// deleted meanwhile (the position is then clamped on the next round).
    fn open(&mut self, base: u64) -> Result<Option<CachedFile>, Problem> {
        let name = frame::segment_name(base);
        let file = match self.shared.storage.open(&name, false) {
            Ok(f) => f,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && self.pos < self.shared.start.load(Ordering::Acquire) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Problem::Io(e, name)),
        };
        let mut file = CachedFile::new(file);
        match segment::read_header(&mut file, base, HEADER_LEN)
            .map_err(|e| Problem::Io(e, name.clone()))?
        {
            Ok(()) => Ok(Some(file)),
            Err(reason) => Err(Problem::BadHeader { base, reason }),
        }
    }

    /// The position of the first valid frame after the bad one at file `offset`,
    /// before `limit`; `None` when there is none or the segment cannot be read.
    fn next_valid(&self, base: u64, offset: u64, limit: u64) -> Option<u64> {
        let file = self
            .shared
            .storage
            .open(&frame::segment_name(base), false)
            .ok()?;
        let len = HEADER_LEN + (limit - base);
        let mut data = vec![0u8; len as usize];
        let got = file.read_full_at(0, &mut data).ok()?;
        data.truncate(got);
        // Frames start after the header, even when the bad bytes are in it.
        let y = analysis::next_valid(&data, (offset + 1).max(HEADER_LEN))?;
        Some(base + (y - HEADER_LEN))
    }

    /// Turns a problem into the error to return, moving past the bad bytes.
    fn skip(&mut self, problem: Problem) -> ReadError {
        match problem {
            Problem::Io(source, name) => ReadError::Io {
                op: "read",
                file: self.shared.describe(&name),
                source,
            },
            Problem::Corrupt {
                base,
                limit,
                offset,
                reason,
            } => {
                let name = frame::segment_name(base);
                // Skip only the bad bytes: resume at the next valid frame of this
                // segment, or at its end when there is none. A bad header makes
                // the whole segment unreadable (its base cannot be trusted), and a
                // resume point that does not move forward would read the same bad
                // bytes forever: both skip to the segment's end.
                let resume = if offset < HEADER_LEN {
                    limit
                } else {
                    self.next_valid(base, offset, limit)
                        .filter(|&r| r > self.pos)
                        .unwrap_or(limit)
                };
                let skipped_bytes = resume - self.pos;
                let err = ReadError::Corrupt {
                    segment: self.shared.describe(&name),
                    offset,
                    pos: self.pos,
                    skipped_bytes,
                    reason,
                };
                error!(segment = %name, offset, position = self.pos, skipped_bytes, error = %err, "corrupt wal frame, skipping to the next valid frame (run `sluice wal repair` while the node is stopped)");
                self.pos = resume;
                self.seg = None;
                err
            }
            Problem::BadHeader { .. } => unreachable!("converted by with_span"),
        }
    }
}

enum Problem {
    Io(io::Error, String),
    Corrupt {
        base: u64,
        limit: u64,
        offset: u64,
        reason: Damage,
    },
    BadHeader {
        base: u64,
        reason: Damage,
    },
}

impl Problem {
    fn with_span(self, span: Span) -> Problem {
        match self {
            Problem::BadHeader { base, reason } => Problem::Corrupt {
                base,
                limit: span.limit,
                offset: 0,
                reason,
            },
            other => other,
        }
    }
}
