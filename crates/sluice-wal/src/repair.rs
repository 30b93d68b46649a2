//! `sluice wal repair`: keeps every valid frame, moves unreadable bytes aside.
//!
//! # Layout after a repair
//!
//! Every valid frame keeps its logical position, so consumer checkpoints (which
//! are positions) stay meaningful. A segment with bad bytes is split at them:
//!
//! ```text
//! before   00000000000000000000.wal   [hdr][f1][f2][ bad ][f4][f5][torn]
//! after    00000000000000000000.wal   [hdr][f1][f2]
//!          00000000000000000000.wal.quarantine-<off of bad>    the bad bytes, as found
//!          000000000000000000<pos f4>.wal   [hdr][f4][f5]      new segment named by f4's position
//!          000000000000000000<pos f4>.wal.quarantine-<off>     the torn bytes, as found
//! ```
//!
//! The bad ranges become holes in the position space: the reader steps from the
//! end of one segment's data to the next segment's base, and a checkpoint that
//! points into a hole resumes at the next segment. `inspect` accepts a hole only
//! where a quarantine file accounts for it.
//!
//! A checkpoint file that does not hold a valid checkpoint is renamed to
//! `<consumer>.ckpt.quarantine` (a number appended if that name is taken): its
//! consumer restarts at the oldest record on disk, so the damage costs
//! redelivered duplicates, never a skipped record.
//!
//! Order of writes, so an interrupted repair can simply be run again: quarantine
//! files (synced), new segments (synced), directory sync, then the original
//! segment is cut (synced), directory sync. Re-running rewrites identical files.
//! Run it only while no node uses the directory.

use std::fmt;
use std::io;
use std::path::Path;

use tracing::warn;

use crate::analysis::{self, Analysis};
use crate::checkpoint;
use crate::error::RepairError;
use crate::frame::{self, Damage, HEADER_LEN};
use crate::segment;
use crate::storage::{FsStorage, Storage};

/// Marks a quarantine file: `<segment file>.quarantine-<file offset>`.
pub const QUARANTINE: &str = ".quarantine-";

/// Appended to an unreadable checkpoint file's name when it is moved aside.
pub const CHECKPOINT_QUARANTINE: &str = ".quarantine";

/// `stem`, or `stem.N` for the first N that names no file yet.
fn free_name(storage: &dyn Storage, stem: &str) -> io::Result<String> {
    let mut name = stem.to_owned();
    for n in 1.. {
        match storage.open(&name, false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
            Ok(_) => name = format!("{stem}.{n}"),
        }
    }
    Ok(name)
}

/// Bytes moved out of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The quarantine file (name inside the directory).
    pub file: String,
    /// File offset in the original segment where the bytes started.
    pub offset: u64,
    pub bytes: u64,
    pub reason: Damage,
}

/// What was done to one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRepair {
    pub segment: String,
    /// Valid records kept (in this segment and the new ones split from it).
    pub kept_records: u64,
    pub quarantined: Vec<Quarantined>,
    /// Segments created for the valid runs after a bad range.
    pub new_segments: Vec<String>,
}

/// What [`repair`] did; empty when every segment and checkpoint was clean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    pub dir: String,
    pub segments: Vec<SegmentRepair>,
    /// Unreadable checkpoint files moved aside: (consumer, new file name).
    pub checkpoints: Vec<(String, String)>,
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() && self.checkpoints.is_empty() {
            return write!(
                f,
                "wal {}: every segment and checkpoint is clean, nothing to repair",
                self.dir
            );
        }
        writeln!(f, "wal {}", self.dir)?;
        for (consumer, file) in &self.checkpoints {
            writeln!(
                f,
                "checkpoint of consumer {consumer} was unreadable: moved to {file}; it restarts at the oldest record (duplicates, no loss)"
            )?;
        }
        for s in &self.segments {
            writeln!(
                f,
                "segment {}: kept {} valid records at their positions",
                s.segment, s.kept_records
            )?;
            for q in &s.quarantined {
                writeln!(
                    f,
                    "  moved {} bytes from offset {} ({}) to {}",
                    q.bytes, q.offset, q.reason, q.file
                )?;
            }
            for n in &s.new_segments {
                writeln!(f, "  records after the bad bytes are now in {n}")?;
            }
        }
        write!(
            f,
            "repaired {} segment(s), {} checkpoint(s)",
            self.segments.len(),
            self.checkpoints.len()
        )
    }
}

/// Repairs the WAL in `dir`. Idempotent.
pub fn repair(dir: &Path) -> Result<RepairReport, RepairError> {
    let storage = FsStorage::new(dir).map_err(|source| RepairError::Io {
        op: "open directory",
        file: dir.display().to_string(),
        source,
    })?;
    repair_storage(&storage)
}

/// [`repair`] over any storage.
pub fn repair_storage(storage: &dyn Storage) -> Result<RepairReport, RepairError> {
    let io = |op: &'static str, file: &str| {
        let file = format!("{}/{file}", storage.describe());
        move |source| RepairError::Io { op, file, source }
    };
    let names = storage.list().map_err(io("list", ""))?;
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| frame::parse_segment_name(n))
        .collect();
    bases.sort_unstable();
    let mut report = RepairReport {
        dir: storage.describe(),
        segments: Vec::new(),
        checkpoints: Vec::new(),
    };
    for name in &names {
        let Some(consumer) = checkpoint::parse_file_name(name) else {
            continue;
        };
        if checkpoint::read(storage, name)
            .map_err(io("read", name))?
            .is_some()
        {
            continue;
        }
        let moved = free_name(storage, &format!("{name}{CHECKPOINT_QUARANTINE}"))
            .map_err(io("open", name))?;
        storage.rename(name, &moved).map_err(io("rename", name))?;
        storage.sync_dir().map_err(io("fsync directory", ""))?;
        warn!(checkpoint = %name, to = %moved, "moved an unreadable checkpoint aside; its consumer restarts at the oldest record");
        report.checkpoints.push((consumer.to_owned(), moved));
    }
    for base in bases {
        let name = frame::segment_name(base);
        let file = storage.open(&name, false).map_err(io("open", &name))?;
        let data = segment::read_all(&*file).map_err(io("read", &name))?;
        let a = analysis::analyze(&data, base);
        if a.bad.is_empty() {
            continue;
        }
        let mut done = SegmentRepair {
            segment: name.clone(),
            kept_records: a.records(),
            quarantined: Vec::new(),
            new_segments: Vec::new(),
        };
        for bad in a.bad.iter().filter(|b| b.end > b.start) {
            let bytes = &data[bad.start as usize..bad.end as usize];
            let q =
                quarantine(storage, &name, bad.start, bytes).map_err(io("quarantine", &name))?;
            done.quarantined.push(Quarantined {
                file: q,
                offset: bad.start,
                bytes: bytes.len() as u64,
                reason: bad.reason,
            });
        }
        for run in a.runs.iter().filter(|r| r.start != HEADER_LEN) {
            let pos = base + (run.start - HEADER_LEN);
            let piece = frame::segment_name(pos);
            let f = segment::create(storage, pos).map_err(io("create segment", &piece))?;
            f.write_all_at(HEADER_LEN, &data[run.start as usize..run.end as usize])
                .and_then(|()| f.sync_data())
                .map_err(io("write", &piece))?;
            done.new_segments.push(piece);
        }
        storage.sync_dir().map_err(io("fsync directory", ""))?;
        cut(&*file, &a, base).map_err(io("truncate", &name))?;
        storage.sync_dir().map_err(io("fsync directory", ""))?;
        warn!(segment = %name, kept_records = done.kept_records, quarantined = done.quarantined.len(), "repaired wal segment");
        report.segments.push(done);
    }
    Ok(report)
}

/// Cuts the original segment after its first run (when it starts right after the
/// header) and rewrites a bad header.
fn cut(file: &dyn crate::storage::StorageFile, a: &Analysis, base: u64) -> io::Result<()> {
    let keep = match a.runs.first() {
        Some(r) if r.start == HEADER_LEN => r.end,
        _ => HEADER_LEN,
    };
    if a.header_problem.is_some() {
        file.write_all_at(0, &frame::encode_header(base))?;
    }
    file.set_len(keep)?;
    file.sync_data()
}

/// Copies `bytes`, found at `offset` in segment `segment`, to a quarantine file
/// and syncs it; the caller syncs the directory. Returns the file's name. A file
/// of that name with other content is kept: a numbered name is used instead.
pub(crate) fn quarantine(
    storage: &dyn Storage,
    segment: &str,
    offset: u64,
    bytes: &[u8],
) -> io::Result<String> {
    let stem = format!("{segment}{QUARANTINE}{offset}");
    let mut name = stem.clone();
    for n in 1.. {
        match storage.open(&name, false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
            Ok(f) if segment::read_all(&*f)? == bytes => break,
            Ok(_) => name = format!("{stem}.{n}"),
        }
    }
    let f = storage.open(&name, true)?;
    f.set_len(0)?;
    f.write_all_at(0, bytes)?;
    f.sync_data()?;
    Ok(name)
}

/// Parses a quarantine file name into (segment base, file offset).
pub(crate) fn parse_quarantine_name(name: &str) -> Option<(u64, u64)> {
    let (seg, rest) = name.split_once(QUARANTINE)?;
    let offset = rest.split('.').next()?.parse().ok()?;
    Some((frame::parse_segment_name(seg)?, offset))
}
