//! Opening a WAL: loading checkpoints, listing segments, and truncating a torn
//! tail of the last segment.

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::analysis;
use crate::checkpoint;
use crate::error::OpenError;
use crate::frame::{self, Damage, HEADER_LEN};
use crate::repair;
use crate::segment::{self, CachedFile};
use crate::storage::{Storage, StorageFile};

/// What [`Wal::open`](crate::Wal::open) found and repaired.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Bytes cut from the end of the last segment: a torn tail (a bad frame with
    /// nothing valid after it, so never acked).
    pub truncated_bytes: u64,
    /// Why the tail was cut, when it was.
    pub truncate_reason: Option<Damage>,
    /// File offset in the last segment where the cut tail started.
    pub truncated_at: Option<u64>,
    /// Where the cut bytes were copied before the cut (a file in the WAL directory).
    pub quarantine_file: Option<String>,
    /// Segment files after recovery.
    pub segments: usize,
    /// Valid records in the last segment (the one that was scanned).
    pub records_in_tail: u64,
    /// Position of the oldest record on disk.
    pub start: u64,
    /// Position where the next append goes.
    pub end: u64,
    /// Consumers with a checkpoint.
    pub consumers: usize,
    /// Stale temporary checkpoint files removed.
    pub removed_temp_files: usize,
}

/// The active segment handed to the writer thread.
pub(crate) struct Active {
    pub base: u64,
    pub file: Box<dyn StorageFile>,
    /// File length (header included).
    pub len: u64,
    pub records: u64,
}

pub(crate) struct Recovered {
    pub recovery: Recovery,
    pub segments: BTreeMap<u64, u64>,
    pub checkpoints: BTreeMap<String, u64>,
    pub bytes_on_disk: u64,
    pub active: Active,
}

pub(crate) fn recover(storage: &dyn Storage) -> Result<Recovered, OpenError> {
    let io = |op: &'static str, file: &str| {
        let file = format!("{}/{file}", storage.describe());
        move |source| OpenError::Io { op, file, source }
    };
    let mut recovery = Recovery::default();
    let names = storage.list().map_err(io("list", ""))?;

    let mut checkpoints = BTreeMap::new();
    let mut bases = Vec::new();
    for name in &names {
        if name.ends_with(checkpoint::TMP_SUFFIX) {
            storage.remove(name).map_err(io("remove", name))?;
            recovery.removed_temp_files += 1;
        } else if let Some(consumer) = checkpoint::parse_file_name(name) {
            let pos = checkpoint::read(storage, name)
                .map_err(io("read", name))?
                .ok_or_else(|| OpenError::CorruptCheckpoint {
                    file: format!("{}/{name}", storage.describe()),
                    dir: storage.describe(),
                })?;
            checkpoints.insert(consumer.to_owned(), pos);
        } else if let Some(base) = frame::parse_segment_name(name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    let max_checkpoint = checkpoints.values().copied().max();

    let mut segments = BTreeMap::new();
    for &base in bases.iter().rev().skip(1) {
        let name = frame::segment_name(base);
        let len = storage
            .open(&name, false)
            .and_then(|f| f.len())
            .map_err(io("stat", &name))?;
        segments.insert(base, len);
    }

    let mut active = match bases.last() {
        Some(&base) => recover_tail(storage, base, &mut recovery)?,
        None => {
            let base = max_checkpoint.unwrap_or(0);
            let name = frame::segment_name(base);
            let file = segment::create(storage, base).map_err(io("create segment", &name))?;
            info!(dir = %storage.describe(), base, "created wal");
            Active {
                base,
                file,
                len: HEADER_LEN,
                records: 0,
            }
        }
    };

    // Positions never go backwards: if consumers committed past what survived
    // (write mode and a power loss), continue after their checkpoints.
    let end = active.base + (active.len - HEADER_LEN);
    if let Some(cp) = max_checkpoint.filter(|&cp| cp > end) {
        warn!(
            end,
            checkpoint = cp,
            "consumer checkpoint is past the end of the log, starting a new segment there"
        );
        active
            .file
            .sync_data()
            .map_err(io("fdatasync", &frame::segment_name(active.base)))?;
        segments.insert(active.base, active.len);
        let name = frame::segment_name(cp);
        let file = segment::create(storage, cp).map_err(io("create segment", &name))?;
        active = Active {
            base: cp,
            file,
            len: HEADER_LEN,
            records: 0,
        };
    }
    segments.insert(active.base, active.len);

    recovery.segments = segments.len();
    recovery.start = *segments.keys().next().expect("at least the active segment");
    recovery.end = active.base + (active.len - HEADER_LEN);
    recovery.records_in_tail = active.records;
    recovery.consumers = checkpoints.len();
    let bytes_on_disk = segments.values().sum();
    info!(
        dir = %storage.describe(),
        start = recovery.start,
        end = recovery.end,
        segments = recovery.segments,
        consumers = recovery.consumers,
        truncated_bytes = recovery.truncated_bytes,
        "wal opened"
    );
    Ok(Recovered {
        recovery,
        segments,
        checkpoints,
        bytes_on_disk,
        active,
    })
}

/// Scans the last segment; cuts a torn tail after copying it aside, and refuses
/// to cut anything that has a valid frame after it.
fn recover_tail(
    storage: &dyn Storage,
    base: u64,
    recovery: &mut Recovery,
) -> Result<Active, OpenError> {
    let name = frame::segment_name(base);
    let file_name = format!("{}/{name}", storage.describe());
    let io = |op: &'static str| {
        let file = file_name.clone();
        move |source| OpenError::Io { op, file, source }
    };
    let mut cached = CachedFile::new(storage.open(&name, false).map_err(io("open"))?);
    let scan = segment::scan(&mut cached, base).map_err(io("read"))?;
    let file = cached.into_inner();
    if scan.problem.is_none() {
        return Ok(Active {
            base,
            file,
            len: scan.valid_end,
            records: scan.records,
        });
    }
    // Something is bad: look at the whole segment to tell a torn tail from corruption.
    let data = segment::read_all(&*file).map_err(io("read"))?;
    let found = analysis::analyze(&data, base);
    if let Some((bad, next_valid)) = found.corruption() {
        return Err(OpenError::Corrupt {
            segment: file_name,
            offset: bad.start,
            reason: bad.reason,
            next_valid,
            dir: storage.describe(),
        });
    }
    let Some(tail) = found.torn_tail() else {
        // The streaming scan and the analysis apply the same checks, so this is
        // unreachable; a clean analysis means nothing to cut.
        debug_assert!(found.bad.is_empty(), "{found:?}");
        return Ok(Active {
            base,
            file,
            len: found.file_len.max(HEADER_LEN),
            records: found.records(),
        });
    };
    let cut_at = tail.start;
    let dropped = found.file_len - cut_at;
    let mut quarantine_file = None;
    if dropped > 0 {
        let q = repair::quarantine(storage, &name, cut_at, &data[cut_at as usize..])
            .map_err(io("copy torn tail to a quarantine file"))?;
        storage
            .sync_dir()
            .map_err(io("fsync directory after quarantine"))?;
        quarantine_file = Some(format!("{}/{q}", storage.describe()));
    }
    warn!(
        segment = %file_name,
        offset = cut_at,
        truncated_bytes = dropped,
        reason = %tail.reason,
        quarantine = quarantine_file.as_deref().unwrap_or("-"),
        "torn wal tail (nothing valid after it, so never acked): copied aside and truncated"
    );
    recovery.truncated_bytes = dropped;
    recovery.truncate_reason = Some(tail.reason);
    recovery.truncated_at = Some(cut_at);
    recovery.quarantine_file = quarantine_file;
    if found.header_problem.is_some() {
        // Bad header and no frame: the segment was being created when the crash came.
        file.set_len(0).map_err(io("truncate"))?;
        file.write_all_at(0, &frame::encode_header(base))
            .map_err(io("write header"))?;
    } else {
        file.set_len(cut_at).map_err(io("truncate"))?;
    }
    file.sync_data().map_err(io("fdatasync"))?;
    let len = cut_at.max(HEADER_LEN);
    debug_assert!(len <= found.file_len.max(HEADER_LEN));
    Ok(Active {
        base,
        file,
        len,
        records: found.records(),
    })
}
