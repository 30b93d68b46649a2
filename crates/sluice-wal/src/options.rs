//! Options of a WAL and the observer hook.

use std::sync::Arc;
use std::time::Duration;

use crate::error::OpenError;
use crate::frame::{FRAME_OVERHEAD, HEADER_LEN};

const MIB: u64 = 1024 * 1024;

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// After `fdatasync`: survives power loss. One sync per group commit.
    #[default]
    Fsync,
    /// After `write(2)`: the data is in the page cache, survives a process crash
    /// but not a power loss. Segments are still synced when they roll and on close.
    Write,
}

/// Hooks called from the writer thread; keep them short (no blocking I/O).
pub trait WalObserver: Send + Sync {
    /// After each group commit: how many records and frame bytes it wrote, and how
    /// long the `fdatasync` took (`None` in [`SyncMode::Write`]).
    fn on_group_commit(&self, records: usize, bytes: u64, sync: Option<Duration>) {
        let _ = (records, bytes, sync);
    }
    /// After the durable end advanced, once the group's callbacks ran.
    fn on_durable(&self, durable_end: u64) {
        let _ = durable_end;
    }
    /// Once, when a write or sync failed and the WAL stopped taking appends. `op`
    /// is `write`, `fdatasync` or `create segment`.
    fn on_failure(&self, op: &'static str, error: &std::io::Error) {
        let _ = (op, error);
    }
}

/// How a WAL is sized and synced.
#[derive(Clone)]
pub struct WalOptions {
    /// Roll to a new segment when the active one would pass this many bytes (the
    /// header included); a segment holds at least one record. Default 64 MiB.
    pub segment_bytes: u64,
    /// Bound on bytes on disk plus pending appends; appends past it get
    /// [`AppendError::Full`](crate::AppendError::Full). At least twice
    /// `segment_bytes`, so a fully consumed segment can always be deleted to make room.
    /// Default 1 GiB.
    pub max_bytes: u64,
    /// Biggest record accepted; at most `segment_bytes`. Default 32 MiB.
    pub max_record_bytes: u64,
    /// When an append is acked. Default [`SyncMode::Fsync`].
    pub sync: SyncMode,
    /// Told about every group commit; `None` by default.
    pub observer: Option<Arc<dyn WalObserver>>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * MIB,
            max_bytes: 1024 * MIB,
            max_record_bytes: 32 * MIB,
            sync: SyncMode::Fsync,
            observer: None,
        }
    }
}

impl std::fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_bytes", &self.segment_bytes)
            .field("max_bytes", &self.max_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("sync", &self.sync)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl WalOptions {
    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        let invalid = |message: String| Err(OpenError::InvalidOptions { message });
        let min_segment = HEADER_LEN + FRAME_OVERHEAD + 1;
        if self.segment_bytes < min_segment {
            return invalid(format!(
                "wal.segment_bytes must be at least {min_segment}; got {}",
                self.segment_bytes
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > self.segment_bytes {
            return invalid(format!(
                "wal.max_record_bytes must be between 1 and wal.segment_bytes ({}); got {}",
                self.segment_bytes, self.max_record_bytes
            ));
        }
        if self.max_record_bytes > u64::from(u32::MAX) - FRAME_OVERHEAD {
            return invalid(format!(
                "wal.max_record_bytes must be below 4 GiB; got {}",
                self.max_record_bytes
            ));
        }
        if self.max_bytes < self.segment_bytes.saturating_mul(2) {
            return invalid(format!(
                "wal.max_bytes must be at least twice wal.segment_bytes ({}); got {}",
                self.segment_bytes, self.max_bytes
            ));
        }
        Ok(())
    }
}
