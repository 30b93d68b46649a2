//! One error enum per operation. Display texts name what failed and where;
//! they never repeat the `#[source]`.

use std::fmt;
use std::io;

use crate::frame::Damage;
use thiserror::Error;

/// Why [`Wal::open`](crate::Wal::open) failed.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The options cannot work together; `message` names the keys and values.
    #[error("invalid wal options: {message}")]
    InvalidOptions { message: String },
    /// An I/O call failed while opening or recovering.
    #[error("wal open: {op} failed on {file}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
    /// The last segment holds a bad frame with valid frames after it: corruption
    /// of data that may have been acked, not a torn tail. Open refuses to cut it;
    /// `sluice wal repair DIR` ([`repair`](crate::repair)) keeps every valid frame
    /// and moves the unreadable bytes to a quarantine file.
    #[error(
        "wal segment {segment} is corrupt at file offset {offset} ({reason}) and valid records follow at offset {next_valid}: they may have been acked, so the log is not cut; run `sluice wal repair {dir}` to keep every valid record and move the unreadable bytes to a quarantine file"
    )]
    Corrupt {
        segment: String,
        offset: u64,
        reason: Damage,
        next_valid: u64,
        dir: String,
    },
    /// A consumer checkpoint file does not hold a valid checkpoint. Open refuses:
    /// guessing a position could skip acked records. `sluice wal repair DIR` moves
    /// the file aside, and the consumer restarts at the oldest record on disk
    /// (redelivery, never loss).
    #[error(
        "wal open: checkpoint file {file} is corrupt; run `sluice wal repair {dir}` to move it aside (its consumer then restarts at the oldest record: duplicates, no loss)"
    )]
    CorruptCheckpoint { file: String, dir: String },
    /// The writer thread could not be started.
    #[error("wal open: cannot spawn the writer thread")]
    Spawn {
        #[source]
        source: io::Error,
    },
}

/// Why an append was refused or failed.
///
/// `Full`, `TooLarge`, `Closed` and `Failed` are returned at once by
/// [`Wal::append`](crate::Wal::append) (the callback is not called) and hand the
/// record back where they can. `Io` and `Failed` reach callbacks when a write or
/// sync failed; after that the WAL refuses every append (a failed fsync is not retryable).
#[derive(Error)]
pub enum AppendError {
    /// Bytes on disk plus pending appends would pass `max_bytes`; retry after consumers commit.
    #[error(
        "wal is full: {bytes_on_disk} bytes on disk + {pending_bytes} pending + {frame_bytes} for this record would pass wal.max_bytes = {max_bytes}"
    )]
    Full {
        record: Vec<u8>,
        frame_bytes: u64,
        bytes_on_disk: u64,
        pending_bytes: u64,
        max_bytes: u64,
    },
    /// The record is bigger than `max_record_bytes`.
    #[error("record of {len} bytes is larger than wal.max_record_bytes = {max}")]
    TooLarge { len: u64, max: u64 },
    /// [`Wal::close`](crate::Wal::close) was called.
    #[error("wal is closed")]
    Closed { record: Vec<u8> },
    /// An earlier write or sync failed; the WAL takes no more appends.
    #[error("wal refuses appends after an earlier i/o failure: {reason}")]
    Failed { record: Vec<u8>, reason: String },
    /// The write or sync of this record's group failed; the record may or may not be on disk.
    #[error("wal {op} failed on {file}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
}

impl AppendError {
    /// The refused record, for the variants that hand it back.
    pub fn into_record(self) -> Option<Vec<u8>> {
        match self {
            AppendError::Full { record, .. }
            | AppendError::Closed { record }
            | AppendError::Failed { record, .. } => Some(record),
            AppendError::TooLarge { .. } | AppendError::Io { .. } => None,
        }
    }
}

// Hand-written so a refused 32 MiB record is not dumped into logs.
impl fmt::Debug for AppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendError::Full {
                record,
                frame_bytes,
                bytes_on_disk,
                pending_bytes,
                max_bytes,
            } => f
                .debug_struct("Full")
                .field("record_len", &record.len())
                .field("frame_bytes", frame_bytes)
                .field("bytes_on_disk", bytes_on_disk)
                .field("pending_bytes", pending_bytes)
                .field("max_bytes", max_bytes)
                .finish(),
            AppendError::TooLarge { len, max } => f
                .debug_struct("TooLarge")
                .field("len", len)
                .field("max", max)
                .finish(),
            AppendError::Closed { record } => f
                .debug_struct("Closed")
                .field("record_len", &record.len())
                .finish(),
            AppendError::Failed { record, reason } => f
                .debug_struct("Failed")
                .field("record_len", &record.len())
                .field("reason", reason)
                .finish(),
            AppendError::Io { op, file, source } => f
                .debug_struct("Io")
                .field("op", op)
                .field("file", file)
                .field("source", source)
                .finish(),
        }
    }
}

/// Why [`Reader::read`](crate::Reader::read) failed.
#[derive(Debug, Error)]
pub enum ReadError {
    /// A frame before the durable end failed its header, length or CRC check. The
    /// reader already moved past the bad bytes (to the next valid frame of that
    /// segment, or the next segment); log it and keep reading.
    #[error(
        "corrupt frame in segment {segment} at file offset {offset} (position {pos}): {reason}; skipped {skipped_bytes} bytes"
    )]
    Corrupt {
        segment: String,
        offset: u64,
        pos: u64,
        skipped_bytes: u64,
        reason: Damage,
    },
    /// An I/O call failed; the reader's position is unchanged.
    #[error("wal read: {op} failed on {file}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
}

/// Why [`Wal::commit`](crate::Wal::commit) failed.
#[derive(Debug, Error)]
pub enum CommitError {
    /// Consumer names become file names: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with a dot.
    #[error(
        "invalid consumer name {name:?}: use 1 to 64 of [A-Za-z0-9_.-], not starting with '.'"
    )]
    InvalidConsumer { name: String },
    /// Nobody can have consumed past the durable end.
    #[error("consumer {consumer} cannot commit position {pos}: the durable end is {durable_end}")]
    BeyondEnd {
        consumer: String,
        pos: u64,
        durable_end: u64,
    },
    /// Writing the checkpoint or deleting a segment failed.
    #[error("wal commit: {op} failed on {file}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
}

/// Why [`Wal::close`](crate::Wal::close) failed.
#[derive(Debug, Error)]
pub enum CloseError {
    /// The WAL had already failed; appends after the failure were refused.
    #[error("wal had failed before close: {reason}")]
    Failed { reason: String },
    /// The final sync failed: data acked in write mode may not be durable.
    #[error("wal close: {op} failed on {file}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
    /// The writer thread panicked.
    #[error("wal writer thread panicked")]
    WriterPanicked,
}

/// Why [`repair`](crate::repair) failed.
#[derive(Debug, Error)]
pub enum RepairError {
    #[error("wal repair: {op} failed on {file}; the repair is idempotent, run it again once the cause is fixed")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
}

/// Why [`inspect`](crate::inspect) failed.
#[derive(Debug, Error)]
pub enum InspectError {
    #[error("wal inspect: {op} failed on {file}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
}
