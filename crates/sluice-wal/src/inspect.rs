//! Offline checks of a WAL directory: every segment scanned frame by frame.

use std::fmt;
use std::path::Path;

use crate::analysis;
use crate::checkpoint;
use crate::error::InspectError;
use crate::frame::{self, HEADER_LEN};
use crate::repair;
use crate::segment::{self, CachedFile, ScanProblem};
use crate::storage::{FsStorage, Storage};

/// One segment as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub file: String,
    /// Logical position of the segment's first data byte.
    pub base: u64,
    /// File size in bytes, header included.
    pub size: u64,
    /// Valid records before the first problem.
    pub records: u64,
    /// First bad frame (file offset and reason), if any.
    pub corruption: Option<ScanProblem>,
    /// Set when this segment's data does not end where the next one starts and no
    /// quarantine file accounts for the hole.
    pub gap: Option<String>,
    /// Quarantine files of this segment (bytes `repair` or open moved aside).
    pub quarantined: Vec<String>,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub dir: String,
    pub segments: Vec<SegmentReport>,
    /// Consumer → checkpoint; `None` when the checkpoint file is unreadable.
    pub consumers: Vec<(String, Option<u64>)>,
}

impl Inspection {
    /// No corrupt frame, no gap between segments, every checkpoint readable.
    ///
    /// A corrupt tail of the *last* segment also counts: `Wal::open` would cut it.
    pub fn is_clean(&self) -> bool {
        self.segments
            .iter()
            .all(|s| s.corruption.is_none() && s.gap.is_none())
            && self.consumers.iter().all(|(_, p)| p.is_some())
    }

    /// Total records in all segments.
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "wal {}", self.dir)?;
        writeln!(
            f,
            "{:<26} {:>20} {:>12} {:>10}  status",
            "segment", "base", "bytes", "records"
        )?;
        for s in &self.segments {
            let status = match (&s.corruption, &s.gap) {
                (Some(p), _) => match p.resumes_at {
                    Some(next) => format!(
                        "CORRUPT at offset {}: {}; valid records resume at offset {next}: run `sluice wal repair`",
                        p.offset, p.reason
                    ),
                    None => format!(
                        "torn tail at offset {}: {} (nothing valid after it; the next start copies it aside and cuts it)",
                        p.offset, p.reason
                    ),
                },
                (None, Some(gap)) => format!("GAP: {gap}"),
                (None, None) => "ok".to_owned(),
            };
            writeln!(
                f,
                "{:<26} {:>20} {:>12} {:>10}  {status}",
                s.file, s.base, s.size, s.records
            )?;
            for q in &s.quarantined {
                writeln!(f, "  quarantined bytes kept in {q}")?;
            }
        }
        if self.consumers.is_empty() {
            writeln!(f, "no consumers")?;
        }
        for (name, pos) in &self.consumers {
            match pos {
                Some(p) => writeln!(f, "consumer {name}: {p}")?,
                None => writeln!(f, "consumer {name}: CORRUPT checkpoint")?,
            }
        }
        write!(
            f,
            "{}",
            if self.is_clean() {
                "clean"
            } else {
                "NOT CLEAN"
            }
        )
    }
}

/// Scans every segment and checkpoint in `dir` without modifying anything.
/// Do not run it on a directory a live WAL is writing to expect a clean last segment.
pub fn inspect(dir: &Path) -> Result<Inspection, InspectError> {
    let storage = FsStorage::new(dir).map_err(|source| InspectError::Io {
        op: "open directory",
        file: dir.display().to_string(),
        source,
    })?;
    inspect_storage(&storage)
}

/// [`inspect`] over any storage. Frame lengths are bounded by the format only.
pub fn inspect_storage(storage: &dyn Storage) -> Result<Inspection, InspectError> {
    let io = |op: &'static str, file: &str| {
        let file = format!("{}/{file}", storage.describe());
        move |source| InspectError::Io { op, file, source }
    };
    let mut names = storage.list().map_err(io("list", ""))?;
    names.sort();
    let mut segments: Vec<SegmentReport> = Vec::new();
    let mut consumers = Vec::new();
    // Position ranges accounted for by quarantine files.
    let mut holes: Vec<(u64, u64, String)> = Vec::new();
    for name in &names {
        if let Some(base) = frame::parse_segment_name(name) {
            let file = storage.open(name, false).map_err(io("open", name))?;
            let mut cached = CachedFile::new(file);
            let mut scan = segment::scan(&mut cached, base).map_err(io("read", name))?;
            if let Some(problem) = scan.problem.as_mut() {
                let data = segment::read_all(cached.file()).map_err(io("read", name))?;
                let found = analysis::analyze(&data, base);
                problem.resumes_at = found.corruption().map(|(_, next)| next);
            }
            segments.push(SegmentReport {
                file: name.clone(),
                base,
                size: scan.file_len,
                records: scan.records,
                corruption: scan.problem,
                gap: None,
                quarantined: Vec::new(),
            });
        } else if let Some((base, offset)) = repair::parse_quarantine_name(name) {
            let len = storage
                .open(name, false)
                .and_then(|f| f.len())
                .map_err(io("stat", name))?;
            // Saturating: the name is not trusted (fuzz finding F5: a hand-made
            // quarantine name near u64::MAX overflowed here).
            let start = base.saturating_add(offset.saturating_sub(HEADER_LEN));
            holes.push((start, start.saturating_add(len), name.clone()));
        } else if let Some(consumer) = checkpoint::parse_file_name(name) {
            let pos = checkpoint::read(storage, name).map_err(io("read", name))?;
            consumers.push((consumer.to_owned(), pos));
        }
    }
    for (start, _, name) in &holes {
        if let Some(s) = segments.iter_mut().rev().find(|s| s.base <= *start) {
            s.quarantined.push(name.clone());
        }
    }
    for i in 1..segments.len() {
        let prev = &segments[i - 1];
        let data_end = prev
            .base
            .saturating_add(prev.size.saturating_sub(HEADER_LEN));
        let next = segments[i].base;
        let accounted = holes.iter().any(|(s, e, _)| *s < next && *e > data_end);
        if data_end != next && !(data_end < next && accounted) {
            segments[i - 1].gap = Some(format!(
                "data ends at {data_end}, next segment starts at {next}"
            ));
        }
    }
    Ok(Inspection {
        dir: storage.describe(),
        segments,
        consumers,
    })
}
