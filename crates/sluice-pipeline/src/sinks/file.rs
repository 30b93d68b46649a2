//! The file sink.
//!
//! ```text
//! <root>/<stream>/0000000001.ndjson   one envelope per line, oldest file first
//! <root>/<stream>/0000000002.ndjson   started once the previous one passed max_file_bytes
//! ```
//!
//! Invariants: a delivery's lines are written and fdatasync'ed before `deliver`
//! returns; files only ever end in a complete line once synced. A crash can leave a
//! partial last line (never synced, hence never committed): reopening the stream
//! truncates it, and the queue redelivers those events.
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
use std::sync::{Arc, Mutex};

use sluice_core::{BoxFuture, Event, Sink, SinkError};

/// Writes envelopes to `<root>/<stream>/NNNNNNNNNN.ndjson`.
#[derive(Clone)]
pub struct FileSink {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    max_file_bytes: u64,
    keep_page_cache: bool,
    streams: Mutex<HashMap<String, Arc<Mutex<Option<StreamFile>>>>>,
}

struct StreamFile {
    dir: PathBuf,
    file: File,
    index: u64,
    size: u64,
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

    /// The directory holding a stream's files.
    pub fn stream_dir(&self, stream: &str) -> PathBuf {
        self.inner.root.join(stream)
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
        for e in events {
            let buf = match groups.iter_mut().find(|(s, _)| *s == e.stream) {
                Some((_, buf)) => buf,
                None => {
                    groups.push((e.stream.clone(), Vec::with_capacity(events.len() * 256)));
                    &mut groups.last_mut().expect("just pushed").1
                }
            };
            sluice_proto::envelope::write_line_cached(e, buf, &mut time);
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                for (stream, buf) in groups {
                    inner.write(&stream, &buf)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| SinkError::retryable(e.to_string()))?
        })
    }
}

impl Inner {
    fn write(&self, stream: &str, buf: &[u8]) -> Result<(), SinkError> {
        let slot = self
            .streams
            .lock()
            .expect("file sink lock poisoned")
            .entry(stream.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().expect("file sink stream lock poisoned");
        let dir = self.root.join(stream);
        let retry = |what: &str, e: std::io::Error| {
            SinkError::retryable(format!("file sink: {what} under {}: {e}", dir.display()))
        };
        if slot.is_none() {
            *slot = Some(StreamFile::open(&dir).map_err(|e| retry("opening", e))?);
        }
        let f = slot.as_mut().expect("opened above");
        let written = f.file.write_all(buf).and_then(|()| f.file.sync_data());
        if let Err(e) = written {
            // Drop the handle: reopening truncates whatever partial line we left.
            *slot = None;
            return Err(retry("writing", e));
        }
        if !self.keep_page_cache {
            // Advice only: a failure costs memory, never data.
            let _ = rustix::fs::fadvise(
                &f.file,
                f.size,
                std::num::NonZeroU64::new(buf.len() as u64),
                rustix::fs::Advice::DontNeed,
            );
        }
        f.size += buf.len() as u64;
        if f.size >= self.max_file_bytes {
            let next = StreamFile::create(&dir, f.index + 1).map_err(|e| retry("rotating", e))?;
            *slot = Some(next);
        }
        Ok(())
    }
}

impl StreamFile {
    /// Opens the newest file of the stream for appending (truncating a partial last
    /// line left by a crash), or creates the first one.
    fn open(dir: &Path) -> std::io::Result<StreamFile> {
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
            tracing::warn!(
                dir = %dir.display(),
                dropped_bytes = file.metadata()?.len() - size,
                "file sink dropped a partial last line left by a crash"
            );
            file.set_len(size)?;
            file.sync_data()?;
        }
        Ok(StreamFile {
            dir: dir.to_path_buf(),
            file,
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
            file,
            index,
            size,
        })
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
    use super::*;
    use crate::sinks::read_lines;
    use bytes::Bytes;

    #[tokio::test]
    async fn writes_rotates_and_truncates_partial_line() {
        let root = tempfile::tempdir().unwrap();
        let sink = FileSink::new(root.path(), 300);
        let events: Vec<Event> = (0..6)
            .map(|i| Event::new("clicks", Bytes::from(format!("{{\"n\":{i}}}"))))
            .collect();
        sink.deliver(&events[..3]).await.unwrap();
        sink.deliver(&events[3..]).await.unwrap();
        let dir = sink.stream_dir("clicks");
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert!(files >= 2, "rotated by size: {files} files");
        let lines = read_lines(&dir);
        assert_eq!(lines.len(), 6);
        for (i, l) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["data"]["n"], i, "{l}");
            assert_eq!(v["stream"], "clicks");
        }
        // A crash mid-write leaves a partial line; a new sink truncates it.
        let newest = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap()
            .write_all(b"{\"id\":\"torn")
            .unwrap();
        let sink = FileSink::new(root.path(), 1 << 20);
        sink.deliver(&events[..1]).await.unwrap();
        let lines = read_lines(&dir);
        assert_eq!(lines.len(), 7);
        assert!(lines
            .iter()
            .all(|l| l.starts_with("{\"id\":\"") && l.ends_with('}')));
    }
}
