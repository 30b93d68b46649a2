//! The embedded write-ahead log as a [`Queue`]: each appended [`Batch`] is one WAL
//! record (encoded by `sluice_proto::record`), so a request is atomic on disk.
//!
//! Appends go to the WAL's writer thread and resolve when its callback fires (after
//! the group's fdatasync with `ack = "fsync"`). Consumers read from the durable end
//! only, track deliveries with a [`CommitTracker`] and checkpoint the committed prefix
//! at most every `checkpoint_interval` (and on flush), which is also when fully
//! consumed segments are deleted.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_core::units::{ByteSize, HumanDuration};
use sluice_core::{
    AppendError, Batch, BoxFuture, Committed, ConsumeError, Consumer, Delivery, Event, OptionError,
    Queue, QueueStats, Unhealthy,
};
use sluice_wal::{Reader, Recovery, SyncMode, Wal, WalObserver, WalOptions};
use tokio::sync::{oneshot, Notify};

use crate::handoff::Handoff;
use crate::tracker::CommitTracker;

/// When an append counts as done, i.e. when the producer gets its 202.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After fdatasync: survives a power loss or kernel crash.
    Fsync,
    /// After write(2): survives a sluice crash, not a power loss.
    Write,
}

/// `[queue]` with `kind = "wal"`: the embedded write-ahead log under
/// `<data_dir>/wal`, as the config file writes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// `fsync` (default) or `write`; see the README's ack contract.
    pub ack: AckMode,
    /// Most bytes on disk; appends past it get 429. Default `1 GiB`.
    pub max_bytes: ByteSize,
    /// Segment size; fully consumed segments are deleted. At most half of
    /// `max_bytes`. Default `64 MiB`.
    pub segment_bytes: ByteSize,
    /// How often the processor's position is checkpointed; a crash replays at most
    /// this much. Default `100ms`.
    pub checkpoint_interval: HumanDuration,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            ack: AckMode::Fsync,
            max_bytes: ByteSize(1 << 30),
            segment_bytes: ByteSize(64 << 20),
            checkpoint_interval: HumanDuration(Duration::from_millis(100)),
        }
    }
}

impl WalConfig {
    /// The bounds [`WalQueue::open`] needs.
    pub fn validate(&self) -> Result<(), OptionError> {
        for (key, got, least) in [
            ("max_bytes", self.max_bytes, ByteSize(1 << 20)),
            ("segment_bytes", self.segment_bytes, ByteSize(64 << 10)),
        ] {
            if got < least {
                return Err(OptionError::new(
                    key,
                    got,
                    format!("must be at least {least}"),
                ));
            }
        }
        if self.segment_bytes.0.saturating_mul(2) > self.max_bytes.0 {
            // The active segment is never deleted, so a log of fewer than two
            // segments could fill up and never free space.
            return Err(OptionError::new(
                "segment_bytes",
                self.segment_bytes,
                format!("must be at most half of max_bytes ({})", self.max_bytes),
            ));
        }
        Ok(())
    }

    /// The largest record: half a segment (a request must fit in one).
    pub fn max_record_bytes(&self) -> u64 {
        self.segment_bytes.0 / 2
    }

    /// The queue's options, with `observer` told about every group commit.
    pub fn options(&self, observer: Option<Arc<dyn WalObserver>>) -> WalQueueOptions {
        WalQueueOptions {
            wal: WalOptions {
                segment_bytes: self.segment_bytes.0,
                max_bytes: self.max_bytes.0,
                max_record_bytes: self.max_record_bytes(),
                sync: match self.ack {
                    AckMode::Fsync => SyncMode::Fsync,
                    AckMode::Write => SyncMode::Write,
                },
                observer,
            },
            checkpoint_interval: self.checkpoint_interval.0,
            ..WalQueueOptions::default()
        }
    }
}

/// Settings of the WAL queue beyond the WAL's own.
#[derive(Clone)]
pub struct WalQueueOptions {
    /// The WAL's segment size, byte bound, sync mode and observer.
    pub wal: WalOptions,
    /// How often a consumer's committed position is checkpointed to disk. A crash
    /// redelivers at most this much (at-least-once); default 100 ms.
    pub checkpoint_interval: Duration,
    /// The most bytes of records one poll reads; default 1 MiB.
    pub max_poll_bytes: usize,
    /// What a producer refused by a full log is told to wait; default 1 s.
    pub retry_after: Duration,
}

impl Default for WalQueueOptions {
    fn default() -> Self {
        WalQueueOptions {
            wal: WalOptions::default(),
            checkpoint_interval: Duration::from_millis(100),
            max_poll_bytes: 1 << 20,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// The WAL-backed queue.
#[derive(Clone)]
pub struct WalQueue {
    inner: Arc<Inner>,
}

struct Inner {
    wal: Wal,
    readable: Arc<Notify>,
    opts: WalQueueOptions,
    appended_events: AtomicU64,
    committed_events: Arc<AtomicU64>,
    /// Acks reach their requests through a runtime task (see `handoff`).
    acks: Handoff<Result<sluice_wal::Appended, sluice_wal::AppendError>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.acks.close();
    }
}

/// Wakes readers when the durable end moves, then forwards to the caller's observer.
struct Wake {
    readable: Arc<Notify>,
    next: Option<Arc<dyn WalObserver>>,
}

impl WalObserver for Wake {
    fn on_group_commit(&self, records: usize, bytes: u64, sync: Option<Duration>) {
        if let Some(n) = &self.next {
            n.on_group_commit(records, bytes, sync);
        }
    }
    fn on_durable(&self, durable_end: u64) {
        self.readable.notify_waiters();
        if let Some(n) = &self.next {
            n.on_durable(durable_end);
        }
    }
    fn on_failure(&self, op: &'static str, error: &std::io::Error) {
        if let Some(n) = &self.next {
            n.on_failure(op, error);
        }
    }
}

impl WalQueue {
    /// Opens (or creates) the log in `dir`, recovering a torn tail.
    pub fn open(
        dir: &Path,
        opts: WalQueueOptions,
    ) -> Result<(WalQueue, Recovery), sluice_wal::OpenError> {
        let readable = Arc::new(Notify::new());
        let mut wal_opts = opts.wal.clone();
        wal_opts.observer = Some(Arc::new(Wake {
            readable: readable.clone(),
            next: opts.wal.observer.clone(),
        }));
        let (wal, recovery) = Wal::open(dir, wal_opts)?;
        let q = WalQueue {
            inner: Arc::new(Inner {
                wal,
                readable,
                opts,
                appended_events: AtomicU64::new(0),
                committed_events: Arc::new(AtomicU64::new(0)),
                acks: Handoff::new(),
            }),
        };
        Ok((q, recovery))
    }

    /// The underlying log (for stats and the CLI).
    pub fn wal(&self) -> &Wal {
        &self.inner.wal
    }
}

impl Queue for WalQueue {
    fn append(&self, batch: Batch) -> BoxFuture<'_, Result<Committed, AppendError>> {
        Box::pin(async move {
            let n = batch.len() as u64;
            let mut record = Vec::new();
            sluice_proto::record::encode(&batch, &mut record);
            let (tx, rx) = oneshot::channel();
            self.inner.acks.ensure_running();
            let ack = self.inner.acks.sender();
            let queued = self
                .inner
                .wal
                .append(record, Box::new(move |r| ack.send(tx, r)));
            if let Err(e) = queued {
                return Err(map_append_error(e, batch, self.inner.opts.retry_after));
            }
            match rx.await {
                Ok(Ok(a)) => {
                    self.inner.appended_events.fetch_add(n, Ordering::Relaxed);
                    Ok(Committed {
                        group_appends: u32::try_from(a.group_records).unwrap_or(u32::MAX),
                        group_bytes: a.group_bytes,
                        sync: a.sync,
                    })
                }
                Ok(Err(e)) => Err(AppendError::Backend {
                    message: e.to_string(),
                }),
                Err(_) => Err(AppendError::Backend {
                    message: "the WAL writer stopped before acknowledging".into(),
                }),
            }
        })
    }

    fn consumer(&self, name: &str) -> Result<Box<dyn Consumer>, ConsumeError> {
        let wal = &self.inner.wal;
        let start = wal
            .committed(name)
            .unwrap_or_else(|| wal.start())
            .max(wal.start());
        Ok(Box::new(WalConsumer {
            name: name.to_string(),
            wal: wal.clone(),
            readable: self.inner.readable.clone(),
            reader: Mutex::new(wal.reader(start)),
            state: Mutex::new(ConsumerState {
                tracker: CommitTracker::new(start),
                events: std::collections::HashMap::new(),
                checkpointed: start,
                last_checkpoint: Instant::now(),
            }),
            checkpointing: tokio::sync::Mutex::new(()),
            committed_events: self.inner.committed_events.clone(),
            bytes_per_event: AtomicU64::new(0),
            opts: self.inner.opts.clone(),
        }))
    }

    /// `Err` once a WAL write or fsync failed: the log refuses appends until the
    /// node is restarted, and the message says what failed and what to do.
    fn health(&self) -> Result<(), Unhealthy> {
        match self.inner.wal.failure() {
            Some(failure) => Err(Unhealthy::Failed(failure.to_string())),
            None => Ok(()),
        }
    }

    fn stats(&self) -> QueueStats {
        let s = self.inner.wal.stats();
        let appended = self.inner.appended_events.load(Ordering::Relaxed);
        let committed = self.inner.committed_events.load(Ordering::Relaxed);
        QueueStats {
            depth_events: appended.saturating_sub(committed),
            depth_bytes: s.bytes_on_disk + s.pending_bytes,
            capacity_bytes: s.max_bytes,
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            let wal = self.inner.wal.clone();
            let r = tokio::task::spawn_blocking(move || wal.close()).await;
            self.inner.readable.notify_waiters();
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ConsumeError::Backend {
                    message: e.to_string(),
                }),
                Err(e) => Err(ConsumeError::Backend {
                    message: e.to_string(),
                }),
            }
        })
    }
}

fn map_append_error(
    e: sluice_wal::AppendError,
    batch: Batch,
    retry_after: Duration,
) -> AppendError {
    match e {
        sluice_wal::AppendError::Full { .. } => AppendError::Full {
            batch: Box::new(batch),
            reason: "write-ahead log at queue.max_bytes".into(),
            retry_after,
        },
        sluice_wal::AppendError::TooLarge { len, max } => AppendError::TooLarge {
            bytes: len as usize,
            limit: max as usize,
        },
        sluice_wal::AppendError::Closed { .. } => AppendError::ShuttingDown,
        other => AppendError::Backend {
            message: other.to_string(),
        },
    }
}

struct WalConsumer {
    name: String,
    wal: Wal,
    readable: Arc<Notify>,
    reader: Mutex<Reader>,
    state: Mutex<ConsumerState>,
    /// One checkpoint at a time.
    checkpointing: tokio::sync::Mutex<()>,
    committed_events: Arc<AtomicU64>,
    /// Log bytes per event in the last read (0 until the first), for batch filling.
    bytes_per_event: AtomicU64,
    opts: WalQueueOptions,
}

struct ConsumerState {
    tracker: CommitTracker,
    /// Events per outstanding delivery token, for the depth figure.
    events: std::collections::HashMap<u64, u64>,
    checkpointed: u64,
    last_checkpoint: Instant,
}

impl WalConsumer {
    /// Bytes of log that hold about `max_events` events (by the sizes seen so far),
    /// capped at `max_poll_bytes`: a poll with this much available delivers at once.
    fn fill_bytes(&self, max_events: usize) -> u64 {
        let per_event = self.bytes_per_event.load(Ordering::Relaxed);
        per_event
            .saturating_mul(max_events as u64)
            .min(self.opts.max_poll_bytes as u64)
    }

    /// Reads and decodes whole records holding up to about `max_events` events.
    ///
    /// Inline, not on the blocking pool: records come from the page cache (they were
    /// just written) and a poll is bounded by max_poll_bytes (default 1 MiB, ~100 us
    /// of copying), while a hop to the blocking pool costs two context switches.
    /// Workers poll concurrently, so the reader lock is held until the delivery is
    /// registered: the tracker sees deliveries in log order.
    fn read(&self, max_events: usize) -> Result<Option<Delivery>, ConsumeError> {
        let mut reader = self.reader.lock().expect("wal reader lock poisoned");
        let reader_start = reader.position();
        let (events, end) = read_records(&mut reader, max_events, self.opts.max_poll_bytes)
            .map_err(|message| ConsumeError::Backend { message })?;
        let Some(end) = end else { return Ok(None) };
        if !events.is_empty() {
            let read = end - reader_start;
            self.bytes_per_event
                .store((read / events.len() as u64).max(1), Ordering::Relaxed);
        }
        let mut st = self.state.lock().expect("consumer state poisoned");
        st.tracker.handed_out(end);
        st.events.insert(end, events.len() as u64);
        drop(st);
        drop(reader);
        // A delivery may be empty when only corrupt records were read: the caller
        // commits it like any other, which moves the watermark past them.
        Ok(Some(Delivery::new(events, end)))
    }

    async fn checkpoint(&self, force: bool) -> Result<(), ConsumeError> {
        let _one = self.checkpointing.lock().await;
        let pos = {
            let st = self.state.lock().expect("consumer state poisoned");
            let due = force || st.last_checkpoint.elapsed() >= self.opts.checkpoint_interval;
            if !due || st.tracker.watermark() == st.checkpointed {
                return Ok(());
            }
            st.tracker.watermark()
        };
        let wal = self.wal.clone();
        let name = self.name.clone();
        let r = sluice_core::blocking::run(sluice_core::blocking::Kind::WalCheckpoint, move || {
            wal.commit(&name, pos)
        })
        .await
        .map_err(|e| ConsumeError::Backend {
            message: e.to_string(),
        })?;
        r.map_err(|e| ConsumeError::Backend {
            message: e.to_string(),
        })?;
        let mut st = self.state.lock().expect("consumer state poisoned");
        st.checkpointed = pos;
        st.last_checkpoint = Instant::now();
        Ok(())
    }
}

impl Consumer for WalConsumer {
    fn poll(
        &self,
        max_events: usize,
        max_wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Delivery>, ConsumeError>> {
        Box::pin(async move {
            self.checkpoint(false).await?;
            let deadline = tokio::time::Instant::now() + max_wait;
            loop {
                let notified = self.readable.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let pos = self
                    .reader
                    .lock()
                    .expect("wal reader lock poisoned")
                    .position();
                let available = self.wal.durable_end().saturating_sub(pos);
                // Deliver a full batch at once, a partial one when the wait is over
                // (the clock is read only when the batch is not full).
                let full = available > 0 && available >= self.fill_bytes(max_events);
                let expired = !full && tokio::time::Instant::now() >= deadline;
                if full || (available > 0 && expired) {
                    if let Some(d) = self.read(max_events.max(1))? {
                        return Ok(Some(d));
                    }
                }
                if expired {
                    return Ok(None);
                }
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
        })
    }

    fn commit(&self, token: u64) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            {
                let mut st = self.state.lock().expect("consumer state poisoned");
                if let Some(n) = st.events.remove(&token) {
                    self.committed_events.fetch_add(n, Ordering::Relaxed);
                }
                st.tracker.done(token);
            }
            self.checkpoint(false).await
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(self.checkpoint(true))
    }
}

/// Reads whole records holding up to about `max_events` events (a delivery passes it
/// by less than one record) and decodes them; returns the events and the position
/// after the last record read.
fn read_records(
    reader: &mut Reader,
    max_events: usize,
    max_bytes: usize,
) -> Result<(Vec<Event>, Option<u64>), String> {
    // Sized for a full delivery up front: growing it would move every event again.
    let mut events: Vec<Event> = Vec::with_capacity(max_events.min(1 << 16));
    let mut end = None;
    let mut bytes = 0;
    // Whole records only, so a delivery may pass max_events by less than one
    // record: read one record first, then as many as its size suggests fit.
    let mut per_record = 0;
    while events.len() < max_events && bytes < max_bytes {
        let want = match per_record {
            0 => 1,
            per => ((max_events - events.len()) / per).max(1),
        };
        let records = match reader.read(want, max_bytes - bytes) {
            Ok(r) => r,
            Err(e @ sluice_wal::ReadError::Corrupt { .. }) => {
                tracing::error!(
                    error = %e,
                    "corrupt record in the write-ahead log; skipping the rest of the segment"
                );
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        if records.is_empty() {
            break;
        }
        let before = events.len();
        for r in &records {
            bytes += r.data.len();
        }
        for r in records {
            end = Some(r.next);
            match sluice_proto::record::decode_into(r.data, &mut events) {
                Ok(()) => {}
                Err(e) => tracing::error!(
                    pos = r.pos,
                    error = %e,
                    "undecodable record in the write-ahead log; skipping it"
                ),
            }
        }
        per_record = per_record.max((events.len() - before).div_ceil(want).max(1));
    }
    Ok((events, end))
}
