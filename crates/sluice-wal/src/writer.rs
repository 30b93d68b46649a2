//! The writer thread: drains the queue, writes each group with as few writes as
//! possible, syncs once per group, rolls segments, then runs the callbacks.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error};

use crate::error::{AppendError, CloseError};
use crate::frame::{self, FRAME_OVERHEAD, HEADER_LEN};
use crate::options::SyncMode;
use crate::recovery::Active;
use crate::segment;
use crate::wal::{lock, Appended, Pending, Shared, WalFailure};

/// Flush the group buffer to the file once it holds this much.
const WRITE_CHUNK: usize = 4 << 20;

pub(crate) fn spawn(
    shared: Arc<Shared>,
    active: Active,
) -> io::Result<JoinHandle<Result<(), CloseError>>> {
    std::thread::Builder::new()
        .name("sluice-wal-writer".to_owned())
        .spawn(move || {
            if let Err(e) = crate::sched::batch_current_thread() {
                debug!(error = %e, "wal writer stays under the default scheduling policy");
            }
            Writer {
                shared,
                active,
                buf: Vec::new(),
            }
            .run()
        })
}

/// A failed I/O step: which one and on which file.
struct Failure {
    op: &'static str,
    file: String,
    source: io::Error,
}

struct Writer {
    shared: Arc<Shared>,
    active: Active,
    buf: Vec<u8>,
}

struct Group {
    items: VecDeque<Pending>,
}

/// What [`Writer::write_group`] did.
struct Written {
    positions: Vec<u64>,
    frame_bytes: u64,
    header_bytes: u64,
    sync: Option<Duration>,
}

impl Writer {
    fn run(mut self) -> Result<(), CloseError> {
        loop {
            let group = {
                let mut q = lock(&self.shared.queue);
                while q.items.is_empty() && !q.closed {
                    q = self
                        .shared
                        .wake_writer
                        .wait(q)
                        .unwrap_or_else(|e| e.into_inner());
                }
                if q.items.is_empty() {
                    break;
                }
                Group {
                    items: mem::take(&mut q.items),
                }
            };
            match self.write_group(&group) {
                Ok(done) => self.publish(group, done),
                Err(failure) => {
                    return Err(CloseError::Failed {
                        reason: self.fail(group, failure),
                    })
                }
            }
        }
        // Closed and drained: a final sync makes write-mode acks durable too.
        if self.shared.limits.sync == SyncMode::Write {
            if let Err(source) = self.active.file.sync_data() {
                let file = self.file_name(self.active.base);
                error!(segment = %file, error = %source, "final wal sync failed");
                return Err(CloseError::Io {
                    op: "fdatasync",
                    file,
                    source,
                });
            }
        }
        debug!(end = self.end(), "wal writer stopped");
        Ok(())
    }

    fn end(&self) -> u64 {
        self.active.base + (self.active.len - HEADER_LEN)
    }

    fn file_name(&self, base: u64) -> String {
        self.shared.describe(&frame::segment_name(base))
    }

    /// Writes and syncs one group.
    fn write_group(&mut self, group: &Group) -> Result<Written, Failure> {
        let records = group.items.len();
        let mut positions = Vec::with_capacity(records);
        let mut frame_bytes = 0u64;
        let mut header_bytes = 0u64;
        let mut buf_start = self.active.len;
        self.buf.clear();
        for item in &group.items {
            let len = item.record.len() as u64 + FRAME_OVERHEAD;
            if self.active.records > 0 && self.active.len + len > self.shared.limits.segment_bytes {
                self.flush(buf_start)?;
                self.roll()?;
                header_bytes += HEADER_LEN;
                buf_start = self.active.len;
            }
            positions.push(self.end());
            frame::encode_frame(&item.record, &mut self.buf);
            self.active.len += len;
            self.active.records += 1;
            frame_bytes += len;
            if self.buf.len() >= WRITE_CHUNK {
                buf_start = self.flush(buf_start)?;
            }
        }
        buf_start = self.flush(buf_start)?;
        debug_assert_eq!(
            buf_start, self.active.len,
            "every frame of the group was written"
        );
        let sync = match self.shared.limits.sync {
            SyncMode::Fsync => {
                let t = Instant::now();
                self.active.file.sync_data().map_err(|source| Failure {
                    op: "fdatasync",
                    file: self.file_name(self.active.base),
                    source,
                })?;
                Some(t.elapsed())
            }
            SyncMode::Write => None,
        };
        Ok(Written {
            positions,
            frame_bytes,
            header_bytes,
            sync,
        })
    }

    /// Writes the buffered frames at `at` (the file offset of the first one);
    /// returns the offset after them.
    fn flush(&mut self, at: u64) -> Result<u64, Failure> {
        if self.buf.is_empty() {
            return Ok(at);
        }
        self.active
            .file
            .write_all_at(at, &self.buf)
            .map_err(|source| Failure {
                op: "write",
                file: self.file_name(self.active.base),
                source,
            })?;
        let next = at + self.buf.len() as u64;
        self.buf.clear();
        Ok(next)
    }

    /// Syncs the full segment and starts the next one at the current end.
    fn roll(&mut self) -> Result<(), Failure> {
        let old = self.active.base;
        self.active.file.sync_data().map_err(|source| Failure {
            op: "fdatasync",
            file: self.file_name(old),
            source,
        })?;
        let base = self.end();
        let file = segment::create(&*self.shared.storage, base).map_err(|source| Failure {
            op: "create segment",
            file: self.file_name(base),
            source,
        })?;
        let old_len = self.active.len;
        self.active = Active {
            base,
            file,
            len: HEADER_LEN,
            records: 0,
        };
        let mut segs = self
            .shared
            .segments
            .write()
            .unwrap_or_else(|e| e.into_inner());
        segs.insert(old, old_len);
        segs.insert(base, HEADER_LEN);
        drop(segs);
        debug!(segment = %self.file_name(base), previous_bytes = old_len, "rolled wal segment");
        Ok(())
    }

    /// Makes the group visible and acks it: durable end, accounting, callbacks, observer.
    fn publish(&self, group: Group, written: Written) {
        let Written {
            positions,
            frame_bytes,
            header_bytes,
            sync,
        } = written;
        let end = self.end();
        self.shared
            .segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.active.base, self.active.len);
        {
            let mut q = lock(&self.shared.queue);
            debug_assert!(q.pending_bytes >= frame_bytes);
            q.pending_bytes -= frame_bytes;
            q.bytes_on_disk += frame_bytes + header_bytes;
        }
        debug_assert!(end >= self.shared.durable_end.load(Ordering::Relaxed));
        self.shared.durable_end.store(end, Ordering::Release);
        let records = group.items.len();
        for (item, position) in group.items.into_iter().zip(positions) {
            (item.done)(Ok(Appended {
                position,
                group_records: records,
                group_bytes: frame_bytes,
                sync,
            }));
        }
        if let Some(obs) = &self.shared.observer {
            obs.on_group_commit(records, frame_bytes, sync);
            obs.on_durable(end);
        }
    }

    /// Poisons the WAL after a failed write or sync; fails the group in flight and
    /// everything queued. Returns the reason.
    fn fail(&mut self, group: Group, failure: Failure) -> String {
        let info = WalFailure::new(failure.op, failure.file.clone(), &failure.source);
        let reason = info.to_string();
        error!(op = failure.op, file = %failure.file, error = %failure.source, "wal write failed, refusing further appends until restart");
        let queued = {
            let mut q = lock(&self.shared.queue);
            q.failed = Some(info);
            let items = mem::take(&mut q.items);
            q.pending_bytes = 0;
            items
        };
        if let Some(obs) = &self.shared.observer {
            obs.on_failure(failure.op, &failure.source);
        }
        for item in group.items {
            let source = io::Error::new(failure.source.kind(), failure.source.to_string());
            (item.done)(Err(AppendError::Io {
                op: failure.op,
                file: failure.file.clone(),
                source,
            }));
        }
        for item in queued {
            (item.done)(Err(AppendError::Failed {
                record: item.record,
                reason: reason.clone(),
            }));
        }
        reason
    }
}
