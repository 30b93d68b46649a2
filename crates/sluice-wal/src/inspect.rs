//! Offline checks of a WAL directory: every segment scanned frame by frame.

use std::fmt;
use std::path::Path;

use crate::checkpoint;
use crate::error::InspectError;
use crate::frame::{self, HEADER_LEN};
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
    /// Set when this segment's data does not end where the next one starts.
    pub gap: Option<String>,
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
                (Some(p), _) => format!("CORRUPT at offset {}: {}", p.offset, p.reason),
                (None, Some(gap)) => format!("GAP: {gap}"),
                (None, None) => "ok".to_owned(),
            };
            writeln!(
                f,
                "{:<26} {:>20} {:>12} {:>10}  {status}",
                s.file, s.base, s.size, s.records
            )?;
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
    inspect_storage(&storage, u64::from(u32::MAX))
}

/// [`inspect`] over any storage; frames longer than `max_record_bytes` count as corrupt.
pub fn inspect_storage(
    storage: &dyn Storage,
    max_record_bytes: u64,
) -> Result<Inspection, InspectError> {
    let io = |op: &'static str, file: &str| {
        let file = format!("{}/{file}", storage.describe());
        move |source| InspectError::Io { op, file, source }
    };
    let mut names = storage.list().map_err(io("list", ""))?;
    names.sort();
    let mut segments: Vec<SegmentReport> = Vec::new();
    let mut consumers = Vec::new();
    for name in &names {
        if let Some(base) = frame::parse_segment_name(name) {
            let file = storage.open(name, false).map_err(io("open", name))?;
            let mut cached = CachedFile::new(file);
            let scan =
                segment::scan(&mut cached, base, max_record_bytes).map_err(io("read", name))?;
            segments.push(SegmentReport {
                file: name.clone(),
                base,
                size: scan.file_len,
                records: scan.records,
                corruption: scan.problem,
                gap: None,
            });
        } else if let Some(consumer) = checkpoint::parse_file_name(name) {
            let pos = checkpoint::read(storage, name).map_err(io("read", name))?;
            consumers.push((consumer.to_owned(), pos));
        }
    }
    for i in 1..segments.len() {
        let prev = &segments[i - 1];
        let data_end = prev.base + prev.size.saturating_sub(HEADER_LEN);
        let next = segments[i].base;
        if data_end != next {
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
