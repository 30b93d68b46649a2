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
//!
//! Dead letters: an event the sink refuses for good ([`SinkError::Permanent`] or
//! [`SinkError::Rejected`]), one still failing after `max_attempts`, or one the queue
//! has handed out more than `max_deliveries` times goes to the dead-letter sink, with
//! the reason in its `sluice-dead-letter-*` headers, before the delivery is committed.
//! Nothing else leaves the pipeline undelivered; without a dead-letter sink such
//! events are retried forever. A message the queue cannot read as a sluice event (a
//! foreign publish or a tampered header on a broker) never reaches the main sink: it
//! goes to the dead-letter sink, or, without one (a library user's choice: a node
//! always has one), is dropped with an error log and counted in
//! `dropped_unreadable_events`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    validate_stream_name, ConsumeError, Consumer, Event, Queue, Sink, SinkError, QUARANTINE_STREAM,
};
use sluice_telemetry::DeliveryTrace;
use tokio_util::sync::CancellationToken;

use crate::Backoff;

/// How the processor runs.
#[derive(Debug, Clone)]
pub struct ProcessorOptions {
    /// Concurrent deliveries; default [`default_workers`] (two per core, at least four).
    pub workers: usize,
    /// Most events per delivery; default 5,000.
    pub batch_max_events: usize,
    /// Longest a worker waits for a delivery to fill up to `batch_max_events` before
    /// it delivers what it has; default 20 ms. Under load batches fill at once; at a
    /// trickle this is the added delivery latency, traded for fewer sink writes and
    /// fsyncs.
    pub batch_max_wait: Duration,
    /// First retry delay of a failing sink; default 100 ms.
    pub retry_initial: Duration,
    /// Largest retry delay, also the cap on a sink's `Retry-After`; default 30 s.
    pub retry_max: Duration,
    /// The queue consumer (group) name; default `processor`.
    pub consumer: String,
    /// Drain the queue before stopping (for the non-durable memory queue, whose
    /// contents a stop would otherwise lose).
    pub drain_on_shutdown: bool,
    /// Sink attempts for one delivery before its events are dead-lettered; 0 (the
    /// default) retries a passing failure forever, holding back the queue.
    pub max_attempts: u32,
    /// Times the queue may hand out one event (JetStream counts redeliveries after an
    /// ack timeout or a processor crash) before it is dead-lettered unseen by the sink;
    /// 0 means no limit. Default 10.
    pub max_deliveries: u32,
}

/// Concurrent deliveries when none are configured: two per core, at least four.
///
/// A delivery spends much of its time waiting on its sink (the file sink's
/// `fdatasync`, a broker's ack, an HTTP answer), during which a worker per core would
/// leave its core idle; more workers overlap one delivery's wait with the next one's
/// reading and formatting. Measured with the server pinned to one core (NDJSON
/// bodies, file sink): 1 worker delivered ~830k events/s with the core 74 % busy,
/// 4 workers ~1.1M (bench/RESULTS.md).
pub fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).max(4)
}

impl Default for ProcessorOptions {
    fn default() -> Self {
        ProcessorOptions {
            workers: default_workers(),
            batch_max_events: 5000,
            batch_max_wait: Duration::from_millis(20),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            consumer: "processor".into(),
            drain_on_shutdown: false,
            max_attempts: 0,
            max_deliveries: 10,
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
    /// Events handed to the dead-letter sink.
    pub dead_lettered_events: AtomicU64,
    /// Unreadable queue messages dropped because there is no dead-letter sink.
    pub dropped_unreadable_events: AtomicU64,
}

/// The processor.
pub struct Processor {
    queue: Arc<dyn Queue>,
    sink: Arc<dyn Sink>,
    dead_letter: Option<Arc<dyn Sink>>,
    opts: ProcessorOptions,
    stats: Arc<ProcessorStats>,
}

impl Processor {
    /// A processor moving events from `queue` to `sink`.
    pub fn new(queue: Arc<dyn Queue>, sink: Arc<dyn Sink>, opts: ProcessorOptions) -> Processor {
        Processor {
            queue,
            sink,
            dead_letter: None,
            opts,
            stats: Arc::new(ProcessorStats::default()),
        }
    }

    /// Sends events that can never be delivered to `sink` (see the module docs).
    pub fn with_dead_letter(mut self, sink: Arc<dyn Sink>) -> Processor {
        self.dead_letter = Some(sink);
        self
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
                    Sinks {
                        main: self.sink.clone(),
                        dead: self.dead_letter.clone(),
                    },
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
    sinks: Sinks,
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
                let w = Worker {
                    id,
                    sinks: &sinks,
                    stats: &stats,
                    opts: &opts,
                    trace: DeliveryTrace::start(&d.events),
                };
                deliver(&w, &d.events, &d.attempts).await;
                // Messages the queue could not read go to the dead-letter sink only.
                to_dead_letter(&w, d.unreadable, "queue").await;
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

/// The main sink and the dead-letter sink.
#[derive(Clone)]
struct Sinks {
    main: Arc<dyn Sink>,
    dead: Option<Arc<dyn Sink>>,
}

/// What a worker delivers one delivery with.
struct Worker<'a> {
    id: usize,
    sinks: &'a Sinks,
    stats: &'a ProcessorStats,
    opts: &'a ProcessorOptions,
    /// The delivery's traced events' contexts; `None` when tracing is off.
    trace: Option<DeliveryTrace>,
}

impl Worker<'_> {
    /// One attempt at `sink`, inside its span when the delivery is traced; returns
    /// the outcome and the trace id for log lines.
    async fn attempt(
        &self,
        sink: &dyn Sink,
        events: &[Event],
        attempt: u32,
    ) -> (Result<(), SinkError>, Option<String>) {
        let Some(trace) = &self.trace else {
            return (sink.deliver(events).await, None);
        };
        let span = trace.attempt(sink.name(), events.len(), attempt);
        let r = span.instrument(sink.deliver(events)).await;
        let trace_id = span.trace_id();
        match &r {
            Ok(()) => span.end("delivered", None),
            Err(e @ (SinkError::Rejected(_) | SinkError::Permanent { .. })) => {
                span.end("refused", Some(e.to_string()))
            }
            Err(e) => span.end("failed", Some(e.to_string())),
        }
        (r, Some(trace_id))
    }
}

/// Delivers `events` with retries until the sink has taken each of them or it has
/// gone to the dead-letter sink. `attempts` are the queue's per-event handout counts
/// (empty when the queue does not count).
async fn deliver(w: &Worker<'_>, events: &[Event], attempts: &[u32]) {
    let (sinks, opts) = (w.sinks, w.opts);
    if events.is_empty() {
        return;
    }
    let mut dead: Vec<(Event, String)> = Vec::new();
    let overdue = |i: usize| {
        opts.max_deliveries > 0 && attempts.get(i).is_some_and(|&n| n > opts.max_deliveries)
    };
    let fresh: Vec<Event>;
    let todo: &[Event] = if sinks.dead.is_some() && (0..events.len()).any(overdue) {
        let (mut keep, mut over) = (Vec::new(), Vec::new());
        for (i, e) in events.iter().enumerate() {
            if overdue(i) {
                let reason = format!(
                    "handed out {} times without being committed (max_deliveries = {})",
                    attempts[i], opts.max_deliveries
                );
                over.push((e.clone(), reason));
            } else {
                keep.push(e.clone());
            }
        }
        dead = over;
        fresh = keep;
        &fresh
    } else {
        events
    };
    if !todo.is_empty() {
        dead.extend(to_sink(w, todo).await);
    }
    if !dead.is_empty() {
        to_dead_letter(w, dead, sinks.main.name()).await;
    }
}

/// Delivers to the main sink; returns the events it refused for good, with reasons.
async fn to_sink(w: &Worker<'_>, events: &[Event]) -> Vec<(Event, String)> {
    let (id, sinks, stats, opts) = (w.id, w.sinks, w.stats, w.opts);
    let sink = sinks.main.as_ref();
    let mut backoff = Backoff::new(opts.retry_initial, opts.retry_max);
    loop {
        let (result, trace_id) = w.attempt(sink, events, backoff.attempts() + 1).await;
        let refused: Vec<(Event, String)> = match result {
            Ok(()) => Vec::new(),
            Err(SinkError::Rejected(list)) if sinks.dead.is_some() => list
                .into_iter()
                .filter_map(|r| Some((events.get(r.index)?.clone(), r.reason)))
                .collect(),
            Err(SinkError::Permanent { message }) if sinks.dead.is_some() => events
                .iter()
                .map(|e| (e.clone(), message.clone()))
                .collect(),
            Err(e) => {
                stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                let tried = backoff.attempts() + 1;
                if sinks.dead.is_some() && opts.max_attempts > 0 && tried >= opts.max_attempts {
                    let reason = format!("gave up after {tried} attempts: {e}");
                    return events
                        .iter()
                        .map(|ev| (ev.clone(), reason.clone()))
                        .collect();
                }
                let mut delay = backoff.next_delay();
                if let SinkError::Retryable {
                    retry_after: Some(at_least),
                    ..
                } = &e
                {
                    // The sink's `Retry-After` is honoured up to `retry_max`: a
                    // downstream cannot park a worker (and the queue) for hours.
                    delay = delay.max((*at_least).min(opts.retry_max));
                }
                tracing::warn!(
                    worker = id,
                    sink = sink.name(),
                    attempt = tried,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    trace_id,
                    "delivery failed, retrying"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let n = (events.len() - refused.len()) as u64;
        stats.delivered_events.fetch_add(n, Ordering::Relaxed);
        if let Some(last) = events.last() {
            stats
                .last_delivered_received_at
                .fetch_max(last.received_at_unix_nanos.max(0) as u64, Ordering::Relaxed);
        }
        return refused;
    }
}

/// Hands refused events to the dead-letter sink, each with `sluice-dead-letter-reason`
/// and `sluice-dead-letter-sink` (`from`) headers, retrying until it takes them: a
/// dead letter is never dropped. One whose stream name is invalid is filed under
/// [`QUARANTINE_STREAM`], the name (escaped) in `sluice-dead-letter-stream`.
async fn to_dead_letter(w: &Worker<'_>, dead: Vec<(Event, String)>, from: &'static str) {
    let (id, sinks, stats, opts) = (w.id, w.sinks, w.stats, w.opts);
    if dead.is_empty() {
        return;
    }
    let Some(dl) = sinks.dead.as_deref() else {
        // Only the queue's unreadable messages get here without a dead-letter sink
        // (sink refusals are retried instead): they must not reach the main sink.
        for (e, reason) in &dead {
            tracing::error!(worker = id, id = %e.id, %reason, "unreadable queue message dropped: no dead-letter sink is configured");
        }
        stats
            .dropped_unreadable_events
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        return;
    };
    let events: Vec<Event> = dead
        .into_iter()
        .map(|(mut e, reason)| {
            tracing::warn!(worker = id, sink = from, id = %e.id, stream = ?e.stream, %reason, "event dead-lettered");
            if validate_stream_name(&e.stream).is_err() {
                let shown: String = e.stream.escape_debug().take(256).collect();
                e.headers.push(("sluice-dead-letter-stream".into(), shown));
                e.stream = QUARANTINE_STREAM.into();
            }
            let reason = reason.replace(char::is_control, " ");
            e.headers.push(("sluice-dead-letter-reason".into(), reason));
            e.headers.push(("sluice-dead-letter-sink".into(), from.into()));
            e
        })
        .collect();
    let mut backoff = Backoff::new(opts.retry_initial, opts.retry_max);
    loop {
        let (result, trace_id) = w.attempt(dl, &events, backoff.attempts() + 1).await;
        match result {
            Ok(()) => {
                stats
                    .dead_lettered_events
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay();
                tracing::error!(
                    worker = id,
                    sink = dl.name(),
                    attempt = backoff.attempts(),
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    trace_id,
                    "dead-letter delivery failed, retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}
