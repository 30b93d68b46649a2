//! The file sink.
//!
//! ```text
//! <root>/<stream>/0000000001.ndjson   one envelope per line, oldest file first
//! <root>/<stream>/0000000002.ndjson   started once the previous one passed max_file_bytes
//! ```
//!
//! Invariants: nothing is ever written outside `<root>`: a stream's directory is
//! built only from a name that passes [`validate_stream_name`] *and* is exactly one
//! normal path component (no `..`, no `/`, not absolute, not empty or `.`), checked
//! here again whatever the queue says; an event with any other stream is refused alone
//! ([`SinkError::Rejected`], to the dead-letter sink). A delivery's lines are written
//! and fdatasync'ed before `deliver` returns; files only ever end in a complete line
//! once synced. A crash, or a write that failed half way (ENOSPC: the kernel wrote
//! what fitted), can leave a partial last line (never synced, hence never committed):
//! reopening the stream truncates it, and the queue redelivers those events. The
//! warning says which of the two it was: a failed write of this process, or an
//! earlier run's.
//!
//! Once synced, a delivery's pages are clean and sluice never reads them again, so
//! the sink tells the kernel to drop them (`POSIX_FADV_DONTNEED`), as PostgreSQL
//! does for WAL segments it is done with. Without that, the output grows the page
//! cache by its whole write rate, evicting what other processes (and the WAL's
//! reader) use; on a VM whose free memory goes back to the host, every write then
//! lands in pages the host must fault in again, which measured 3-10x slower than
//! reusing a page (bench/RESULTS.md). `keep_page_cache` turns it off for a reader
//! that tails the files.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::path::Component;

use serde::{Deserialize, Serialize};
use sluice_core::units::ByteSize;
use sluice_core::{
    validate_stream_name, BoxFuture, Event, OptionError, Rejection, Sink, SinkError,
    StreamNameError,
};

/// Writes envelopes to `<root>/<stream>/NNNNNNNNNN.ndjson`.
#[derive(Clone)]
pub struct FileSink {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    max_file_bytes: u64,
    keep_page_cache: bool,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
}

/// One stream's output: the open file, and how far it is known to be on disk.
#[derive(Default)]
struct Stream {
    slot: Mutex<Slot>,
    /// Held while an fdatasync runs: one at a time, others wait to see if it covered them.
    sync: Mutex<()>,
    /// Bytes (counted since the sink started) known to be on disk.
    durable: AtomicU64,
    /// Bytes up to here were written through a file that then failed.
    failed: AtomicU64,
}

#[derive(Default)]
struct Slot {
    file: Option<StreamFile>,
    /// Bytes written to the stream since the sink started (over every file).
    logical: u64,
    /// The file was dropped after a failed write or fdatasync: the next open may
    /// find that write's partial line (not a crash's).
    after_failure: bool,
}

struct StreamFile {
    dir: PathBuf,
    file: Arc<File>,
    index: u64,
    size: u64,
}

/// `[sink]` (or `[dead_letter]`) with `kind = "file"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkOptions {
    /// The output directory; default `<data_dir>/out` (`<data_dir>/dead` for dead
    /// letters).
    pub dir: Option<PathBuf>,
    /// A stream's file is closed and a new one started past this size. Default
    /// `128 MiB`.
    pub max_file_bytes: ByteSize,
    /// Keep written pages in the page cache (for a local reader tailing the files)
    /// instead of dropping them once synced. Default false.
    pub keep_page_cache: bool,
}

impl Default for FileSinkOptions {
    fn default() -> Self {
        FileSinkOptions {
            dir: None,
            max_file_bytes: ByteSize(128 << 20),
            keep_page_cache: false,
        }
    }
}

impl FileSinkOptions {
    pub fn validate(&self) -> Result<(), OptionError> {
        if self.max_file_bytes < ByteSize(4 << 10) {
            return Err(OptionError::new(
                "max_file_bytes",
                self.max_file_bytes,
                "must be at least 4 KiB",
            ));
        }
        Ok(())
    }

    /// The sink, under `dir` or else `default_dir`.
    pub fn open(&self, default_dir: &Path) -> FileSink {
        let dir = self.dir.as_deref().unwrap_or(default_dir);
        FileSink::new(dir, self.max_file_bytes.0).keep_page_cache(self.keep_page_cache)
    }
}

impl FileSink {
    /// A sink under `root`, rotating files once they pass `max_file_bytes`.
    pub fn new(root: impl Into<PathBuf>, max_file_bytes: u64) -> FileSink {
        FileSink {
            inner: Arc::new(Inner {
                root: root.into(),
                max_file_bytes: max_file_bytes.max(1),
                keep_page_cache: false,
                streams: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Keeps written pages in the page cache (for a reader tailing the files)
    /// instead of dropping them once synced.
    pub fn keep_page_cache(mut self, keep: bool) -> FileSink {
        Arc::get_mut(&mut self.inner)
            .expect("set before the sink is cloned")
            .keep_page_cache = keep;
        self
    }

    /// The directory holding a stream's files. Panics on a stream name the sink
    /// would refuse (for tests and tools reading the output).
    pub fn stream_dir(&self, stream: &str) -> PathBuf {
        stream_dir(&self.inner.root, stream).expect("a valid stream name")
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn deliver<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        // Group by stream, keeping each stream's order (a delivery is usually one stream).
        let mut groups: Vec<(std::sync::Arc<str>, Vec<u8>)> = Vec::new();
        let mut time = sluice_proto::envelope::TimeCache::default();
        let mut rejected = Vec::new();
        for (index, e) in events.iter().enumerate() {
            let buf = match groups.iter_mut().find(|(s, _)| *s == e.stream) {
                Some((_, buf)) => buf,
                None => {
                    // Checked once per stream of the delivery, not per event: a
                    // refused stream never gets a group, so its events come back here.
                    if let Err(invalid) = stream_dir(&self.inner.root, &e.stream) {
                        tracing::error!(stream = ?e.stream.chars().take(64).collect::<String>(), id = %e.id, "file sink refused an event with an invalid stream name");
                        let reason = invalid.to_string();
                        rejected.push(Rejection { index, reason });
                        continue;
                    }
                    groups.push((e.stream.clone(), Vec::with_capacity(events.len() * 256)));
                    &mut groups.last_mut().expect("just pushed").1
                }
            };
            sluice_proto::envelope::write_line_cached(e, buf, &mut time);
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            sluice_core::blocking::run(sluice_core::blocking::Kind::FileSink, move || {
                for (stream, buf) in groups {
                    inner.write(&stream, &buf)?;
                }
                match rejected.is_empty() {
                    true => Ok(()),
                    false => Err(SinkError::Rejected(rejected)),
                }
            })
            .await
            .map_err(|e| SinkError::retryable(e.to_string()))?
        })
    }
}

impl Inner {
    /// Appends `buf` to the stream's newest file and returns once it is on disk.
    ///
    /// Group commit: the write happens under the stream's file lock, the fdatasync
    /// outside it, one at a time, and one fdatasync covers every write finished
    /// before it began. Concurrent deliveries to one stream (the processor's
    /// workers) therefore share syncs instead of queueing one sync each behind the
    /// lock (measured, 203-byte events: delivered went from 422k to 566k events/s,
    /// median of 3, bench/RESULTS.md "Where the time goes").
    fn write(&self, stream: &str, buf: &[u8]) -> Result<(), SinkError> {
        let s = self
            .streams
            .lock()
            .expect("file sink lock poisoned")
            .entry(stream.to_string())
            .or_default()
            .clone();
        let dir = stream_dir(&self.root, stream).map_err(|e| SinkError::Permanent {
            message: e.to_string(),
        })?;
        let retry = |what: &str, e: std::io::Error| {
            SinkError::retryable(format!("file sink: {what} under {}: {e}", dir.display()))
        };
        // 1. Write, under the file lock.
        let (file, offset, end) = {
            let mut slot = s.slot.lock().expect("file sink stream lock poisoned");
            if slot.file.is_none() {
                let opening = match slot.after_failure {
                    true => Opening::AfterFailure,
                    false => Opening::First,
                };
                slot.file = Some(StreamFile::open(&dir, opening).map_err(|e| retry("opening", e))?);
                slot.after_failure = false;
            }
            let f = slot.file.as_mut().expect("opened above");
            let written = (&*f.file).write_all(buf);
            if let Err(e) = written {
                // Drop the handle: reopening truncates whatever partial line we left.
                s.reset(&mut slot);
                return Err(retry("writing", e));
            }
            let (file, offset) = (f.file.clone(), f.size);
            f.size += buf.len() as u64;
            let full = f.size >= self.max_file_bytes;
            let next = f.index + 1;
            slot.logical += buf.len() as u64;
            let end = slot.logical;
            if full {
                // The old file is synced whole before the new one takes writes, so
                // a sync of the new file covers everything written before it.
                if let Err(e) = file.sync_data() {
                    s.reset(&mut slot);
                    return Err(retry("writing", e));
                }
                s.durable.fetch_max(end, Ordering::AcqRel);
                match StreamFile::create(&dir, next) {
                    Ok(f) => slot.file = Some(f),
                    Err(e) => {
                        slot.file = None;
                        return Err(retry("rotating", e));
                    }
                }
            }
            (file, offset, end)
        };
        // 2. Sync, or find that a sync begun after the write covered it.
        s.sync_to(end).map_err(|e| retry("writing", e))?;
        if !self.keep_page_cache {
            // Advice only: a failure costs memory, never data.
            let _ = rustix::fs::fadvise(
                &*file,
                offset,
                std::num::NonZeroU64::new(buf.len() as u64),
                rustix::fs::Advice::DontNeed,
            );
        }
        Ok(())
    }
}

impl Stream {
    /// Returns once the stream's bytes up to `end` (counted since the sink started)
    /// are on disk, syncing the file if no sync covered them yet; `Err` if the sync
    /// that should have covered them, or a write before it, failed.
    fn sync_to(&self, end: u64) -> std::io::Result<()> {
        let _one_at_a_time = self.sync.lock().expect("file sink sync lock poisoned");
        if self.durable.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let failed = || std::io::Error::other("an earlier write or fdatasync of this file failed");
        if self.failed.load(Ordering::Acquire) >= end {
            return Err(failed());
        }
        let (file, upto) = {
            let slot = self.slot.lock().expect("file sink stream lock poisoned");
            match &slot.file {
                Some(f) => (f.file.clone(), slot.logical),
                // Reset since our write: the write's fate is unknown.
                None => return Err(failed()),
            }
        };
        match file.sync_data() {
            Ok(()) => {
                self.durable.fetch_max(upto, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                // Linux may drop the pages whose writeback failed: nothing written so
                // far is known to be on disk, and a later sync must not claim it is.
                let mut slot = self.slot.lock().expect("file sink stream lock poisoned");
                if slot
                    .file
                    .as_ref()
                    .is_some_and(|f| Arc::ptr_eq(&f.file, &file))
                {
                    self.reset(&mut slot);
                } else {
                    self.failed.fetch_max(upto, Ordering::AcqRel);
                }
                Err(e)
            }
        }
    }

    /// Drops the open file after a failure; every byte written through it so far
    /// counts as failed (reopening truncates a partial line, the queue redelivers).
    fn reset(&self, slot: &mut Slot) {
        slot.file = None;
        slot.after_failure = true;
        self.failed.fetch_max(slot.logical, Ordering::AcqRel);
    }
}

/// Why a stream's file is (re)opened, hence where a partial last line in it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Opening {
    /// The stream's first write since the sink started: an earlier run left it
    /// (a crash, or a write that failed before that process stopped).
    First,
    /// After this sink's own write or fdatasync failed (ENOSPC, EIO): that write's.
    AfterFailure,
}

impl StreamFile {
    /// Opens the newest file of the stream for appending (truncating a partial last
    /// line, see [`Opening`]), or creates the first one.
    fn open(dir: &Path, opening: Opening) -> std::io::Result<StreamFile> {
        std::fs::create_dir_all(dir)?;
        let newest = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".ndjson")?.parse::<u64>().ok()
            })
            .max();
        let Some(index) = newest else {
            return StreamFile::create(dir, 1);
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(dir.join(file_name(index)))?;
        let size = complete_len(&mut file)?;
        if size != file.metadata()?.len() {
            let dropped_bytes = file.metadata()?.len() - size;
            match opening {
                Opening::First => tracing::warn!(
                    dir = %dir.display(),
                    dropped_bytes,
                    "file sink dropped a partial last line left by an earlier run (a crash or a failed write)"
                ),
                Opening::AfterFailure => tracing::warn!(
                    dir = %dir.display(),
                    dropped_bytes,
                    "file sink dropped the partial line of its own failed write; the queue redelivers those events"
                ),
            }
            file.set_len(size)?;
            file.sync_data()?;
        }
        Ok(StreamFile {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            index,
            size,
        })
    }

    fn create(dir: &Path, index: u64) -> std::io::Result<StreamFile> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(dir.join(file_name(index)))?;
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        let size = file.metadata()?.len();
        Ok(StreamFile {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            index,
            size,
        })
    }
}

/// Why the file sink makes no directory for a stream (the name shown is cut to 64
/// characters).
#[derive(Debug, thiserror::Error)]
enum InvalidStream {
    #[error("file sink: stream name {0:?} is invalid: {1}")]
    Name(String, StreamNameError),
    #[error("file sink: stream name {0:?} is invalid: not a single path component")]
    NotOneComponent(String),
}

/// `<root>/<stream>`, or why not: the only way the sink makes a directory path.
fn stream_dir(root: &Path, stream: &str) -> Result<PathBuf, InvalidStream> {
    let shown = || stream.chars().take(64).collect();
    validate_stream_name(stream).map_err(|e| InvalidStream::Name(shown(), e))?;
    let mut parts = Path::new(stream).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(name)), None) if name == stream => Ok(root.join(name)),
        _ => Err(InvalidStream::NotOneComponent(shown())),
    }
}

fn file_name(index: u64) -> String {
    format!("{index:010}.ndjson")
}

/// Length of the file up to and including its last newline.
fn complete_len(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = memrchr_newline(&chunk[..n]) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn memrchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().rposition(|&c| c == b'\n')
}

impl std::fmt::Debug for StreamFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.dir.display(), file_name(self.index))
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Metadata, Subscriber};

    use super::FileSink;

    /// Collects the messages of the events logged while it is the default subscriber.
    #[derive(Clone, Default)]
    struct Messages(Arc<Mutex<Vec<String>>>);

    impl Subscriber for Messages {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            struct Message(String);
            impl Visit for Message {
                fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// Regression: after ENOSPC the sink reopened the file, dropped its own failed
    /// write's partial line and logged "left by a crash" although nothing crashed
    /// (the chaos suite's disk-full scenario, bench/CHAOS.md).
    #[test]
    fn partial_line_of_a_failed_write_is_not_blamed_on_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path(), 1 << 20);
        sink.inner.write("s", b"{\"n\":1}\n").unwrap();
        // What a write cut short by ENOSPC leaves, as `Inner::write` handles it: the
        // part that fitted on disk, the stream's handle dropped.
        let stream = sink.inner.streams.lock().unwrap()["s"].clone();
        {
            let mut slot = stream.slot.lock().unwrap();
            let file = slot.file.as_ref().unwrap().file.clone();
            (&*file).write_all(b"{\"n\":").unwrap();
            stream.reset(&mut slot);
        }
        let messages = Messages::default();
        tracing::subscriber::with_default(messages.clone(), || {
            sink.inner.write("s", b"{\"n\":2}\n").unwrap();
        });
        let path = sink.stream_dir("s").join("0000000001.ndjson");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":1}\n{\"n\":2}\n");
        let logged = messages.0.lock().unwrap().clone();
        assert_eq!(
            logged,
            ["file sink dropped the partial line of its own failed write; the queue redelivers those events"]
        );

        // A partial line found by a new sink (a new process) is an earlier run's.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"n\"")
            .unwrap();
        let restarted = FileSink::new(dir.path(), 1 << 20);
        let messages = Messages::default();
        tracing::subscriber::with_default(messages.clone(), || {
            restarted.inner.write("s", b"{\"n\":3}\n").unwrap();
        });
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n"
        );
        let logged = messages.0.lock().unwrap().clone();
        assert_eq!(
            logged,
            ["file sink dropped a partial last line left by an earlier run (a crash or a failed write)"]
        );
    }
}
