//! [`Batcher`]: collects events and sends them as one NDJSON request when
//! `max_events` are buffered, `max_bytes` would be passed, or `max_wait` has passed
//! since the first buffered event, whichever comes first.
//!
//! A background task owns the buffer and sends one batch at a time (with the
//! client's retries); [`Batcher::push`] waits when the hand-off channel is full, so
//! a producer faster than the server slows down instead of growing memory.
//! [`Batcher::close`] flushes what is left and returns the [`BatchSummary`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Body, Client, Endpoint};
use crate::error::ClientError;

/// When a batch is sent.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Send when this many events are buffered. Default 500.
    pub max_events: usize,
    /// Send before the body would pass this many bytes. Default 1 MiB.
    pub max_bytes: usize,
    /// Send this long after the first buffered event at the latest. Default 100 ms.
    pub max_wait: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_events: 500,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(100),
        }
    }
}

/// Live counters of a [`Batcher`] (for progress lines).
#[derive(Debug, Default)]
pub struct BatchStats {
    pub batches: AtomicU64,
    pub events_accepted: AtomicU64,
    pub events_rejected: AtomicU64,
    pub bytes_sent: AtomicU64,
}

/// What a closed [`Batcher`] did.
#[derive(Debug, Default)]
pub struct BatchSummary {
    pub batches: u64,
    pub events_accepted: u64,
    pub events_rejected: u64,
    pub bytes_sent: u64,
    /// Each rejected batch's error with the number of events it held (the first 100).
    pub errors: Vec<(usize, ClientError)>,
}

/// Buffers events and sends them in batches.
pub struct Batcher {
    tx: mpsc::Sender<Bytes>,
    task: JoinHandle<BatchSummary>,
    stats: Arc<BatchStats>,
}

impl Batcher {
    /// Starts the batching task (needs a tokio runtime).
    pub fn new(client: Client, endpoint: Endpoint, options: BatchOptions) -> Batcher {
        let (tx, rx) = mpsc::channel(options.max_events.max(1));
        let stats = Arc::new(BatchStats::default());
        let task = tokio::spawn(run(client, endpoint, options, rx, stats.clone()));
        Batcher { tx, task, stats }
    }

    /// Queues one event (one JSON object, no trailing newline needed).
    pub async fn push(&self, event: Bytes) -> Result<(), Closed> {
        self.tx.send(event).await.map_err(|_| Closed)
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<BatchStats> {
        self.stats.clone()
    }

    /// Sends what is buffered and stops.
    pub async fn close(self) -> BatchSummary {
        drop(self.tx);
        self.task.await.unwrap_or_default()
    }
}

/// The batching task stopped (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the batcher has stopped")]
pub struct Closed;

/// The batching task's state: the buffered body and where it goes.
struct Pending {
    client: Client,
    endpoint: Endpoint,
    stats: Arc<BatchStats>,
    summary: BatchSummary,
    buf: BytesMut,
    count: usize,
}

async fn run(
    client: Client,
    endpoint: Endpoint,
    options: BatchOptions,
    mut rx: mpsc::Receiver<Bytes>,
    stats: Arc<BatchStats>,
) -> BatchSummary {
    let mut p = Pending {
        client,
        endpoint,
        stats,
        summary: BatchSummary::default(),
        buf: BytesMut::new(),
        count: 0,
    };
    let mut deadline: Option<Instant> = None;
    loop {
        let next = match deadline {
            Some(d) => tokio::select! {
                e = rx.recv() => e.map(Some),
                _ = tokio::time::sleep_until(d) => Some(None),
            },
            None => rx.recv().await.map(Some),
        };
        let Some(next) = next else {
            p.flush().await;
            return p.summary;
        };
        let Some(event) = next else {
            // max_wait has passed since the first buffered event.
            p.flush().await;
            deadline = None;
            continue;
        };
        let line = event.len() + usize::from(!event.ends_with(b"\n"));
        if p.count > 0 && p.buf.len() + line > options.max_bytes {
            p.flush().await;
        }
        if p.count == 0 {
            deadline = Some(Instant::now() + options.max_wait);
        }
        p.buf.put_slice(&event);
        if !event.ends_with(b"\n") {
            p.buf.put_u8(b'\n');
        }
        p.count += 1;
        if p.count >= options.max_events {
            p.flush().await;
            deadline = None;
        }
    }
}

impl Pending {
    /// Sends the buffered events as one request (with the client's retries).
    async fn flush(&mut self) {
        if self.count == 0 {
            return;
        }
        let body = Body::ndjson(self.buf.split().freeze());
        let n = std::mem::take(&mut self.count);
        let (summary, stats) = (&mut self.summary, &self.stats);
        summary.batches += 1;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        match self.client.send(&self.endpoint, &body).await {
            Ok(a) => {
                summary.events_accepted += a.accepted;
                summary.bytes_sent += body.bytes.len() as u64;
                stats
                    .events_accepted
                    .fetch_add(a.accepted, Ordering::Relaxed);
                stats
                    .bytes_sent
                    .fetch_add(body.bytes.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(stream = self.endpoint.stream(), events = n, error = %e, "batch rejected");
                summary.events_rejected += n as u64;
                stats.events_rejected.fetch_add(n as u64, Ordering::Relaxed);
                if summary.errors.len() < 100 {
                    summary.errors.push((n, e));
                }
            }
        }
    }
}
