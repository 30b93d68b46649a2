//! The worker pool.
//!
//! ```text
//!           ┌──poll──── worker 1 ──deliver──▶ sink
//! queue ◀───┼──poll──── worker 2 ──deliver──▶ sink
//!           └──commit── (each worker commits its own delivery)
//! ```
//!
//! Workers pull: each polls the shared consumer only when it is free, so nothing is
//! read ahead of the sink and batches grow by themselves while the sink is slow.
//! Commits may arrive out of order; the queue persists only the committed prefix. On
//! shutdown workers stop polling (or, with `drain_on_shutdown`, first empty the
//! queue), finish and commit what they hold, and the consumer's position is flushed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{ConsumeError, Consumer, Delivery, Queue, Sink, SinkError};
use tokio_util::sync::CancellationToken;

use crate::Backoff;

/// How the processor runs.
#[derive(Debug, Clone)]
pub struct ProcessorOptions {
    /// Concurrent deliveries; default one per core.
    pub workers: usize,
    /// Most events per delivery; default 1,000.
    pub batch_max_events: usize,
    /// Longest a worker waits for a delivery to fill up to `batch_max_events` before
    /// it delivers what it has; default 20 ms. Under load batches fill at once; at a
    /// trickle this is the added delivery latency, traded for fewer sink writes and
    /// fsyncs.
    pub batch_max_wait: Duration,
    /// First retry delay of a failing sink; default 100 ms.
    pub retry_initial: Duration,
    /// Largest retry delay; default 30 s.
    pub retry_max: Duration,
    /// The queue consumer (group) name; default `processor`.
    pub consumer: String,
    /// Drain the queue before stopping (for the non-durable memory queue, whose
    /// contents a stop would otherwise lose).
    pub drain_on_shutdown: bool,
}

impl Default for ProcessorOptions {
    fn default() -> Self {
        ProcessorOptions {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_max_events: 5000,
            batch_max_wait: Duration::from_millis(20),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            consumer: "processor".into(),
            drain_on_shutdown: false,
        }
    }
}

/// Counters the admin endpoint reads.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    /// Events the sink accepted.
    pub delivered_events: AtomicU64,
    /// Failed delivery attempts (each retried).
    pub delivery_errors: AtomicU64,
    /// Deliveries in the hands of workers.
    pub in_flight: AtomicU64,
    /// Receive time (Unix nanos) of the newest delivered event, for lag.
    pub last_delivered_received_at: AtomicU64,
}

/// The processor.
pub struct Processor {
    queue: Arc<dyn Queue>,
    sink: Arc<dyn Sink>,
    opts: ProcessorOptions,
    stats: Arc<ProcessorStats>,
}

impl Processor {
    /// A processor moving events from `queue` to `sink`.
    pub fn new(queue: Arc<dyn Queue>, sink: Arc<dyn Sink>, opts: ProcessorOptions) -> Processor {
        Processor {
            queue,
            sink,
            opts,
            stats: Arc::new(ProcessorStats::default()),
        }
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<ProcessorStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled (and, with `drain_on_shutdown`, the queue is
    /// empty), lets every worker finish and commit its delivery, and flushes the
    /// consumer position.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumeError> {
        let consumer: Arc<dyn Consumer> = Arc::from(self.queue.consumer(&self.opts.consumer)?);
        let handles: Vec<_> = (0..self.opts.workers.max(1))
            .map(|id| {
                tokio::spawn(worker(
                    id,
                    consumer.clone(),
                    self.sink.clone(),
                    self.stats.clone(),
                    self.opts.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        for h in handles {
            if let Err(e) = h.await {
                tracing::error!(error = %e, "processor worker panicked");
            }
        }
        consumer.flush().await
    }
}

/// One worker: poll a delivery, deliver it (retrying), commit it, repeat. Workers
/// pull only when they are free, so while the sink is slow the next delivery grows
/// (up to `batch_max_events`) instead of queueing up small ones.
async fn worker(
    id: usize,
    consumer: Arc<dyn Consumer>,
    sink: Arc<dyn Sink>,
    stats: Arc<ProcessorStats>,
    opts: ProcessorOptions,
    shutdown: CancellationToken,
) {
    loop {
        // Polls are cancel-safe: a poll cut short by shutdown has handed nothing out.
        let polled = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !opts.drain_on_shutdown => return,
            p = consumer.poll(opts.batch_max_events, opts.batch_max_wait) => p,
        };
        match polled {
            Ok(Some(d)) => {
                stats.in_flight.fetch_add(1, Ordering::Relaxed);
                deliver(id, &d, sink.as_ref(), &stats, &opts).await;
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = consumer.commit(d.token).await {
                    tracing::error!(worker = id, error = %e, "commit failed; the delivery will be replayed");
                }
            }
            Ok(None) if shutdown.is_cancelled() => return,
            Ok(None) => {}
            Err(ConsumeError::Closed) => return,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "polling the queue failed, retrying");
                tokio::time::sleep(opts.retry_initial).await;
            }
        }
    }
}

/// Delivers with retries until the sink takes the events. Never gives up: skipping
/// would lose events (dead letters come with the broker sinks).
async fn deliver(
    id: usize,
    d: &Delivery,
    sink: &dyn Sink,
    stats: &ProcessorStats,
    opts: &ProcessorOptions,
) {
    if d.events.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(opts.retry_initial, opts.retry_max);
    loop {
        match sink.deliver(&d.events).await {
            Ok(()) => {
                let n = d.events.len() as u64;
                stats.delivered_events.fetch_add(n, Ordering::Relaxed);
                if let Some(last) = d.events.last() {
                    stats
                        .last_delivered_received_at
                        .fetch_max(last.received_at_unix_nanos.max(0) as u64, Ordering::Relaxed);
                }
                return;
            }
            Err(e) => {
                stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay();
                let permanent = matches!(e, SinkError::Permanent { .. });
                tracing::warn!(
                    worker = id,
                    sink = sink.name(),
                    attempt = backoff.attempts(),
                    permanent,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "delivery failed, retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}
