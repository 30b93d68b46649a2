//! The [`Wal`] handle: shared state, appends, commits, stats and close.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::{JoinHandle, ThreadId};

use tracing::{debug, warn};

use crate::checkpoint;
use crate::error::{AppendError, CloseError, CommitError, OpenError};
use crate::frame::{self, FRAME_OVERHEAD};
use crate::options::{SyncMode, WalObserver, WalOptions};
use crate::reader::Reader;
use crate::recovery::{self, Recovery};
use crate::storage::{FsStorage, Storage};

/// Called exactly once from the writer thread with the record's position and its
/// group commit, or the error that kept it from becoming durable.
pub type AppendCallback = Box<dyn FnOnce(Result<Appended, AppendError>) + Send>;

/// A durable append: where its record is, and the group commit that made it durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's position.
    pub position: u64,
    /// Records in the group (this one included).
    pub group_records: usize,
    /// Frame bytes the group wrote.
    pub group_bytes: u64,
    /// The group's sync (`fdatasync`) time; `None` with [`SyncMode::Write`].
    pub sync: Option<std::time::Duration>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One queued append.
pub(crate) struct Pending {
    pub record: Vec<u8>,
    pub done: AppendCallback,
}

/// What appenders and the writer share under one lock.
pub(crate) struct Queue {
    pub items: VecDeque<Pending>,
    /// Frame bytes of `items` plus the group the writer is writing.
    pub pending_bytes: u64,
    /// Sum of segment file sizes.
    pub bytes_on_disk: u64,
    pub closed: bool,
    /// Set once a write or sync failed; no append is taken after that.
    pub failed: Option<WalFailure>,
}

pub(crate) struct Limits {
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub max_record_bytes: u64,
    pub sync: SyncMode,
}

/// State shared by the handle, the writer thread and readers.
pub(crate) struct Shared {
    pub storage: Arc<dyn Storage>,
    pub limits: Limits,
    pub observer: Option<Arc<dyn WalObserver>>,
    pub queue: Mutex<Queue>,
    pub wake_writer: Condvar,
    pub durable_end: AtomicU64,
    pub start: AtomicU64,
    /// Segment base position → file length (the active segment's length is updated per group).
    pub segments: RwLock<BTreeMap<u64, u64>>,
    /// Consumer → committed position; its lock also serializes commits.
    pub checkpoints: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub fn describe(&self, name: &str) -> String {
        format!("{}/{name}", self.storage.describe())
    }
}

struct Handle {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<Result<(), CloseError>>>>,
    writer_id: ThreadId,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(error) = close(&self.shared, &self.writer, self.writer_id) {
            warn!(%error, "wal close on drop failed");
        }
    }
}

/// A segmented write-ahead log. Cheap to clone; the last clone dropped closes it.
#[derive(Clone)]
pub struct Wal {
    handle: Arc<Handle>,
}

/// The write or sync failure that stopped the WAL taking appends.
///
/// Its `Display` says what failed, where, and what the operator must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFailure {
    /// `write`, `fdatasync` or `create segment`.
    pub op: &'static str,
    /// The file it failed on.
    pub file: String,
    /// The I/O error, as text.
    pub error: String,
    /// Whether the error was "no space left on device".
    pub disk_full: bool,
}

impl WalFailure {
    pub(crate) fn new(op: &'static str, file: String, error: &std::io::Error) -> WalFailure {
        WalFailure {
            op,
            file,
            error: error.to_string(),
            disk_full: error.kind() == std::io::ErrorKind::StorageFull
                || error.raw_os_error() == Some(28),
        }
    }
}

impl std::fmt::Display for WalFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "write-ahead log {} failed on {}: {}; ",
            self.op, self.file, self.error
        )?;
        if self.op == "fdatasync" {
            f.write_str("a failed fsync cannot be retried safely, so appends are refused until the node is restarted (it recovers the log from disk; every acked record is kept)")
        } else if self.disk_full {
            f.write_str("the disk is full: free space on the file system of the wal directory, then restart the node (every acked record is kept)")
        } else {
            f.write_str("appends are refused until the node is restarted; check the disk (every acked record is kept)")
        }
    }
}

/// A snapshot of the WAL's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalStats {
    pub start: u64,
    pub durable_end: u64,
    pub bytes_on_disk: u64,
    pub pending_bytes: u64,
    pub pending_records: usize,
    pub segments: usize,
    pub max_bytes: u64,
    pub consumers: usize,
    pub closed: bool,
    pub failed: bool,
}

impl Wal {
    /// Opens (creating when missing) the WAL in `dir` and recovers its tail.
    pub fn open(dir: impl AsRef<Path>, opts: WalOptions) -> Result<(Wal, Recovery), OpenError> {
        let dir = dir.as_ref();
        let storage = FsStorage::new(dir).map_err(|source| OpenError::Io {
            op: "create directory",
            file: dir.display().to_string(),
            source,
        })?;
        Wal::open_with_storage(storage, opts)
    }

    /// Opens the WAL on any [`Storage`] (tests use [`MemStorage`](crate::MemStorage)).
    pub fn open_with_storage(
        storage: impl Storage,
        opts: WalOptions,
    ) -> Result<(Wal, Recovery), OpenError> {
        opts.validate()?;
        let storage: Arc<dyn Storage> = Arc::new(storage);
        let recovered = recovery::recover(&*storage)?;
        let shared = Arc::new(Shared {
            storage,
            limits: Limits {
                segment_bytes: opts.segment_bytes,
                max_bytes: opts.max_bytes,
                max_record_bytes: opts.max_record_bytes,
                sync: opts.sync,
            },
            observer: opts.observer,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                pending_bytes: 0,
                bytes_on_disk: recovered.bytes_on_disk,
                closed: false,
                failed: None,
            }),
            wake_writer: Condvar::new(),
            durable_end: AtomicU64::new(recovered.recovery.end),
            start: AtomicU64::new(recovered.recovery.start),
            segments: RwLock::new(recovered.segments),
            checkpoints: Mutex::new(recovered.checkpoints),
        });
        let writer = crate::writer::spawn(shared.clone(), recovered.active)
            .map_err(|source| OpenError::Spawn { source })?;
        let writer_id = writer.thread().id();
        let wal = Wal {
            handle: Arc::new(Handle {
                shared,
                writer: Mutex::new(Some(writer)),
                writer_id,
            }),
        };
        Ok((wal, recovered.recovery))
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Queues `record` for the writer thread. See [`AppendError`] for what is
    /// refused at once; otherwise `done` is called exactly once from the writer
    /// thread when the record is durable per [`SyncMode`] (or failed).
    pub fn append(&self, record: Vec<u8>, done: AppendCallback) -> Result<(), AppendError> {
        let sh = self.shared();
        let max = sh.limits.max_record_bytes;
        if record.len() as u64 > max {
            return Err(AppendError::TooLarge {
                len: record.len() as u64,
                max,
            });
        }
        let frame_bytes = record.len() as u64 + FRAME_OVERHEAD;
        let mut q = lock(&sh.queue);
        if let Some(failure) = &q.failed {
            return Err(AppendError::Failed {
                record,
                reason: failure.to_string(),
            });
        }
        if q.closed {
            return Err(AppendError::Closed { record });
        }
        if q.bytes_on_disk + q.pending_bytes + frame_bytes > sh.limits.max_bytes {
            return Err(AppendError::Full {
                record,
                frame_bytes,
                bytes_on_disk: q.bytes_on_disk,
                pending_bytes: q.pending_bytes,
                max_bytes: sh.limits.max_bytes,
            });
        }
        q.pending_bytes += frame_bytes;
        let was_empty = q.items.is_empty();
        q.items.push_back(Pending { record, done });
        drop(q);
        if was_empty {
            sh.wake_writer.notify_one();
        }
        Ok(())
    }

    /// Appends and waits until the record is durable; returns its position.
    pub fn append_blocking(&self, record: Vec<u8>) -> Result<u64, AppendError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.append(
            record,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.recv()
            .expect("the writer calls every callback exactly once")
            .map(|a| a.position)
    }

    /// Position up to which data is durable per [`SyncMode`] and readable.
    pub fn durable_end(&self) -> u64 {
        self.shared().durable_end.load(Ordering::Acquire)
    }

    /// Position of the oldest record still on disk.
    pub fn start(&self) -> u64 {
        self.shared().start.load(Ordering::Acquire)
    }

    /// A reader at `from`, clamped to [`start`](Self::start).
    pub fn reader(&self, from: u64) -> Reader {
        Reader::new(self.shared().clone(), from.max(self.start()))
    }

    /// The last checkpointed position of `consumer`.
    pub fn committed(&self, consumer: &str) -> Option<u64> {
        lock(&self.shared().checkpoints).get(consumer).copied()
    }

    /// Every known consumer and its checkpoint.
    pub fn consumers(&self) -> BTreeMap<String, u64> {
        lock(&self.shared().checkpoints).clone()
    }

    /// Checkpoints `consumer` at `pos` (a record boundary: a [`Record::next`](crate::Record::next)),
    /// then deletes every segment lying entirely before the minimum checkpoint of all
    /// known consumers. The active segment is never deleted.
    pub fn commit(&self, consumer: &str, pos: u64) -> Result<(), CommitError> {
        let sh = self.shared();
        if !checkpoint::valid_consumer(consumer) {
            return Err(CommitError::InvalidConsumer {
                name: consumer.to_owned(),
            });
        }
        let durable_end = self.durable_end();
        if pos > durable_end {
            return Err(CommitError::BeyondEnd {
                consumer: consumer.to_owned(),
                pos,
                durable_end,
            });
        }
        let mut cps = lock(&sh.checkpoints);
        checkpoint::write(&*sh.storage, consumer, pos).map_err(|(op, file, source)| {
            CommitError::Io {
                op,
                file: sh.describe(&file),
                source,
            }
        })?;
        cps.insert(consumer.to_owned(), pos);
        let min = cps.values().copied().min().unwrap_or(pos);
        delete_before(sh, min)
    }

    /// Why the WAL refuses appends, once a write or sync failed; `None` while healthy.
    /// The failure is permanent for this process: the node must be restarted.
    pub fn failure(&self) -> Option<WalFailure> {
        lock(&self.shared().queue).failed.clone()
    }

    /// Counters for metrics and tests.
    pub fn stats(&self) -> WalStats {
        let sh = self.shared();
        let segments = sh.segments.read().unwrap_or_else(|e| e.into_inner()).len();
        let consumers = lock(&sh.checkpoints).len();
        let q = lock(&sh.queue);
        WalStats {
            start: self.start(),
            durable_end: self.durable_end(),
            bytes_on_disk: q.bytes_on_disk,
            pending_bytes: q.pending_bytes,
            pending_records: q.items.len(),
            segments,
            max_bytes: sh.limits.max_bytes,
            consumers,
            closed: q.closed,
            failed: q.failed.is_some(),
        }
    }

    /// Refuses new appends, lets the writer finish the queued ones (their callbacks
    /// run), syncs, and joins the writer thread. Idempotent: later calls return `Ok`.
    pub fn close(&self) -> Result<(), CloseError> {
        close(
            &self.handle.shared,
            &self.handle.writer,
            self.handle.writer_id,
        )
    }
}

fn close(
    shared: &Shared,
    writer: &Mutex<Option<JoinHandle<Result<(), CloseError>>>>,
    writer_id: ThreadId,
) -> Result<(), CloseError> {
    lock(&shared.queue).closed = true;
    shared.wake_writer.notify_all();
    if std::thread::current().id() == writer_id {
        // Called from a callback: the writer exits after this group on its own.
        return Ok(());
    }
    let Some(handle) = lock(writer).take() else {
        return Ok(());
    };
    handle.join().map_err(|_| CloseError::WriterPanicked)?
}

/// Deletes the segments whose data lies entirely before `min`, oldest first,
/// never the last one. The caller holds the checkpoints lock.
fn delete_before(sh: &Shared, min: u64) -> Result<(), CommitError> {
    let doomed: Vec<(u64, u64)> = {
        let segs = sh.segments.read().unwrap_or_else(|e| e.into_inner());
        let bases: Vec<u64> = segs.keys().copied().collect();
        bases
            .windows(2)
            .take_while(|w| w[1] <= min)
            .map(|w| (w[0], segs[&w[0]]))
            .collect()
    };
    if doomed.is_empty() {
        return Ok(());
    }
    {
        let mut segs = sh.segments.write().unwrap_or_else(|e| e.into_inner());
        for (base, _) in &doomed {
            segs.remove(base);
        }
        let first = *segs
            .keys()
            .next()
            .expect("the last segment is never deleted");
        debug_assert!(first <= min);
        sh.start.store(first, Ordering::Release);
    }
    for (base, len) in &doomed {
        let name = frame::segment_name(*base);
        sh.storage.remove(&name).map_err(|source| CommitError::Io {
            op: "remove",
            file: sh.describe(&name),
            source,
        })?;
        lock(&sh.queue).bytes_on_disk -= len;
        debug!(segment = %name, bytes = len, "deleted consumed segment");
    }
    sh.storage.sync_dir().map_err(|source| CommitError::Io {
        op: "fsync directory",
        file: sh.storage.describe(),
        source,
    })
}
