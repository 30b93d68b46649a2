//! The blocking work sluice hands to the runtime's blocking pool (writes and
//! fsyncs, decompressing and splitting large bodies, profiles), counted by kind so a
//! node shows what its blocking threads do: how many jobs run now, how many ran, and
//! how long they waited for a thread (a growing wait is a pool too small for the
//! disk or the bodies). Read at scrape time into `sluice_blocking_*` metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What a blocking job is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Decompressing, splitting and validating a large request body or gRPC message.
    IngestDecode,
    /// The file sink's writes and fdatasyncs.
    FileSink,
    /// The HTTP sink's gzip of a large delivery.
    HttpSinkCompress,
    /// The stdout sink's writes.
    Stdout,
    /// A WAL consumer checkpoint (write + fsync of the committed position).
    WalCheckpoint,
    /// A Kafka consumer's synchronous offset commit.
    KafkaCommit,
    /// A CPU or heap profile being taken or encoded.
    Profile,
}

impl Kind {
    /// Every kind, in metric order.
    pub const ALL: [Kind; 7] = [
        Kind::IngestDecode,
        Kind::FileSink,
        Kind::HttpSinkCompress,
        Kind::Stdout,
        Kind::WalCheckpoint,
        Kind::KafkaCommit,
        Kind::Profile,
    ];

    /// The `kind` label.
    pub fn name(self) -> &'static str {
        match self {
            Kind::IngestDecode => "ingest_decode",
            Kind::FileSink => "file_sink",
            Kind::HttpSinkCompress => "http_sink_compress",
            Kind::Stdout => "stdout_sink",
            Kind::WalCheckpoint => "wal_checkpoint",
            Kind::KafkaCommit => "kafka_commit",
            Kind::Profile => "profile",
        }
    }
}

struct Counts {
    started: AtomicU64,
    finished: AtomicU64,
    waited_nanos: AtomicU64,
}

impl Counts {
    const fn new() -> Counts {
        Counts {
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            waited_nanos: AtomicU64::new(0),
        }
    }
}

static COUNTS: [Counts; Kind::ALL.len()] = [const { Counts::new() }; Kind::ALL.len()];

/// Counts a job as finished when it ends, panicking or not.
struct Finish(&'static Counts);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `f` on the blocking pool (`tokio::task::spawn_blocking`), counted under
/// `kind`.
pub async fn run<F, R>(kind: Kind, f: F) -> Result<R, tokio::task::JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let queued = Instant::now();
    tokio::task::spawn_blocking(move || {
        let c = &COUNTS[kind as usize];
        c.waited_nanos
            .fetch_add(queued.elapsed().as_nanos() as u64, Ordering::Relaxed);
        c.started.fetch_add(1, Ordering::Relaxed);
        let _finish = Finish(c);
        f()
    })
    .await
}

/// One kind's counts: jobs started, jobs finished, seconds they waited for a thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub kind: Kind,
    pub started: u64,
    pub finished: u64,
    pub waited_seconds: f64,
}

/// The counts of every kind, as they stand.
pub fn snapshot() -> impl Iterator<Item = Snapshot> {
    Kind::ALL.into_iter().map(|kind| {
        let c = &COUNTS[kind as usize];
        // Finished first: a job counted finished is always counted started.
        let finished = c.finished.load(Ordering::Relaxed);
        Snapshot {
            kind,
            started: c.started.load(Ordering::Relaxed).max(finished),
            finished,
            waited_seconds: c.waited_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    })
}
