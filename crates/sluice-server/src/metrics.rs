//! Prometheus metrics. Counters and histograms are updated on the hot path; gauges
//! (queue depth, processor lag, sink totals) are read from their owners at scrape time.
//!
//! Names follow `sluice_<thing>_<unit>`; labels are bounded (a reason code, a sink
//! name, an HTTP status class); the one user string, a stream name, only in
//! [`Tenants`], under a cap.

mod runtime;
mod tenants;

pub use tenants::{Tenants, MAX_TENANT_SERIES};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sluice_core::{now_unix_nanos, Queue};
use sluice_pipeline::ProcessorStats;
use sluice_wal::WalObserver;

type Label = [(&'static str, &'static str); 1];
type Label2 = [(&'static str, &'static str); 2];

/// Every metric sluice exports.
pub struct Metrics {
    registry: Registry,
    /// Events accepted (acked) by ingest.
    pub events_accepted: Counter,
    /// Payload bytes accepted by ingest.
    pub bytes_accepted: Counter,
    /// Requests accepted.
    pub requests_accepted: Counter,
    /// Requests rejected, by reason code (`invalid_json`, `payload_too_large`, ...).
    pub rejected: Family<Label, Counter>,
    /// Events, bytes and rejections by stream and API key (bounded).
    pub tenants: Tenants,
    /// The async runtime: workers, busy time, tasks (read at scrape time).
    runtime: runtime::RuntimeMetrics,
    /// Ingest request latency, seconds, by status class.
    pub request_seconds: Family<Label, Histogram>,
    /// WAL fdatasync latency, seconds.
    pub fsync_seconds: Histogram,
    /// Records written per WAL group commit.
    pub group_commit_records: Histogram,
    /// 1 once a WAL write or fsync failed and the log refuses appends (until restart).
    pub wal_failed: Gauge,
    /// WAL write and sync errors, by operation (`write`, `fdatasync`, `create segment`).
    pub wal_io_errors: Family<Label, Counter>,
    /// Connections open, by listener.
    pub connections_open: Family<Label, Gauge>,
    /// Connections closed or refused by the server, by listener and reason
    /// (`header_timeout`, `idle_timeout`, `tls_handshake`, `max_connections`).
    pub connections_closed: Family<Label2, Counter>,
    /// Successful and failed TLS certificate reloads.
    pub tls_reloads: Family<Label, Counter>,
    /// Gateway: upstreams in rotation.
    pub gateway_upstreams_healthy: Gauge,
    /// Gateway: batches sent to another upstream after a failed attempt.
    pub gateway_retries: Counter,
    /// Gateway: upstreams taken out of rotation.
    pub gateway_ejections: Counter,
    /// Gateway: calls to upstreams (first attempts; retries are counted apart).
    pub gateway_calls: Counter,
    /// Gateway: producer requests that shared an upstream call with others.
    pub gateway_merged_requests: Counter,
    queue_depth_events: Gauge,
    queue_depth_bytes: Gauge,
    queue_capacity_bytes: Gauge,
    processor_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    processor_in_flight: Gauge,
    sink_delivered: Family<Label, Counter>,
    sink_errors: Family<Label, Counter>,
    dead_lettered: Family<Label, Counter>,
    /// Serialises scrapes: the sink counters are advanced from the processor's totals.
    render_lock: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let events_accepted = Counter::default();
        r.register(
            "sluice_ingest_events",
            "Events accepted (acked) by ingest",
            events_accepted.clone(),
        );
        let bytes_accepted = Counter::default();
        r.register(
            "sluice_ingest_bytes",
            "Payload bytes accepted by ingest",
            bytes_accepted.clone(),
        );
        let requests_accepted = Counter::default();
        r.register(
            "sluice_ingest_requests",
            "Ingest requests accepted",
            requests_accepted.clone(),
        );
        let tenants = Tenants::register(&mut r);
        let runtime = runtime::RuntimeMetrics::register(&mut r);
        let rejected = Family::<Label, Counter>::default();
        r.register(
            "sluice_ingest_rejected_requests",
            "Ingest requests rejected, by reason",
            rejected.clone(),
        );
        let request_seconds = Family::<Label, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        r.register(
            "sluice_http_request_duration_seconds",
            "Ingest request latency by status class",
            request_seconds.clone(),
        );
        let fsync_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        r.register(
            "sluice_wal_fsync_duration_seconds",
            "WAL fdatasync latency",
            fsync_seconds.clone(),
        );
        let connections_open = Family::<Label, Gauge>::default();
        r.register(
            "sluice_connections_open",
            "Client connections open, by listener",
            connections_open.clone(),
        );
        let connections_closed = Family::<Label2, Counter>::default();
        r.register(
            "sluice_connections_closed",
            "Client connections the server closed or refused, by listener and reason",
            connections_closed.clone(),
        );
        let tls_reloads = Family::<Label, Counter>::default();
        r.register(
            "sluice_tls_reloads",
            "TLS certificate reloads, by result",
            tls_reloads.clone(),
        );
        let gateway_upstreams_healthy = Gauge::default();
        r.register(
            "sluice_gateway_upstreams_healthy",
            "Gateway upstreams in rotation",
            gateway_upstreams_healthy.clone(),
        );
        let gateway_retries = Counter::default();
        r.register(
            "sluice_gateway_retries",
            "Gateway batches retried on another upstream",
            gateway_retries.clone(),
        );
        let gateway_ejections = Counter::default();
        r.register(
            "sluice_gateway_ejections",
            "Gateway upstreams ejected after consecutive failures",
            gateway_ejections.clone(),
        );
        let gateway_calls = Counter::default();
        r.register(
            "sluice_gateway_upstream_calls",
            "Gateway calls to upstreams (retries counted apart)",
            gateway_calls.clone(),
        );
        let gateway_merged_requests = Counter::default();
        r.register(
            "sluice_gateway_merged_requests",
            "Gateway producer requests that shared an upstream call with others",
            gateway_merged_requests.clone(),
        );
        let group_commit_records = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        r.register(
            "sluice_wal_group_commit_records",
            "Records written per WAL group commit",
            group_commit_records.clone(),
        );
        let wal_failed = Gauge::default();
        r.register(
            "sluice_wal_failed",
            "1 once a WAL write or fsync failed and the log refuses appends until restart",
            wal_failed.clone(),
        );
        let wal_io_errors = Family::<Label, Counter>::default();
        r.register(
            "sluice_wal_io_errors",
            "WAL write and sync errors, by operation",
            wal_io_errors.clone(),
        );
        let queue_depth_events = Gauge::default();
        r.register(
            "sluice_queue_depth_events",
            "Events in the queue not yet committed by the processor",
            queue_depth_events.clone(),
        );
        let queue_depth_bytes = Gauge::default();
        r.register(
            "sluice_queue_depth_bytes",
            "Bytes held by the queue",
            queue_depth_bytes.clone(),
        );
        let queue_capacity_bytes = Gauge::default();
        r.register(
            "sluice_queue_capacity_bytes",
            "Bytes at which the queue refuses appends",
            queue_capacity_bytes.clone(),
        );
        let processor_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        r.register(
            "sluice_processor_lag_seconds",
            "Age of the newest delivered event while a backlog exists",
            processor_lag_seconds.clone(),
        );
        let processor_in_flight = Gauge::default();
        r.register(
            "sluice_processor_in_flight_deliveries",
            "Deliveries held by workers",
            processor_in_flight.clone(),
        );
        let sink_delivered = Family::<Label, Counter>::default();
        r.register(
            "sluice_sink_delivered_events",
            "Events delivered by the sink",
            sink_delivered.clone(),
        );
        let sink_errors = Family::<Label, Counter>::default();
        r.register(
            "sluice_sink_errors",
            "Failed delivery attempts (each retried)",
            sink_errors.clone(),
        );
        let dead_lettered = Family::<Label, Counter>::default();
        r.register(
            "sluice_dead_lettered_events",
            "Events the sink refused for good (or that ran out of attempts), sent to the dead-letter sink",
            dead_lettered.clone(),
        );
        Metrics {
            registry: r,
            events_accepted,
            bytes_accepted,
            requests_accepted,
            rejected,
            tenants,
            runtime,
            request_seconds,
            fsync_seconds,
            group_commit_records,
            wal_failed,
            wal_io_errors,
            connections_open,
            connections_closed,
            tls_reloads,
            gateway_upstreams_healthy,
            gateway_retries,
            gateway_ejections,
            gateway_calls,
            gateway_merged_requests,
            queue_depth_events,
            queue_depth_bytes,
            queue_capacity_bytes,
            processor_lag_seconds,
            processor_in_flight,
            sink_delivered,
            sink_errors,
            dead_lettered,
            render_lock: std::sync::Mutex::new(()),
        }
    }

    /// Counts a rejected request.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    /// Renders the text exposition, refreshing the gauges from their owners.
    pub fn render(
        &self,
        queue: &dyn Queue,
        processor: &ProcessorStats,
        sink: &'static str,
    ) -> String {
        let _one = self.render_lock.lock().unwrap_or_else(|e| e.into_inner());
        let q = queue.stats();
        self.queue_depth_events.set(q.depth_events as i64);
        self.queue_depth_bytes.set(q.depth_bytes as i64);
        self.queue_capacity_bytes.set(q.capacity_bytes as i64);
        let last = processor.last_delivered_received_at.load(Ordering::Relaxed) as i64;
        let lag = if q.depth_events > 0 && last > 0 {
            Duration::from_nanos((now_unix_nanos() - last).max(0) as u64).as_secs_f64()
        } else {
            0.0
        };
        self.processor_lag_seconds.set(lag);
        self.processor_in_flight
            .set(processor.in_flight.load(Ordering::Relaxed) as i64);
        self.runtime.refresh();
        advance(
            &self.sink_delivered.get_or_create(&[("sink", sink)]),
            processor.delivered_events.load(Ordering::Relaxed),
        );
        advance(
            &self.sink_errors.get_or_create(&[("sink", sink)]),
            processor.delivery_errors.load(Ordering::Relaxed),
        );
        advance(
            &self.dead_lettered.get_or_create(&[("sink", sink)]),
            processor.dead_lettered_events.load(Ordering::Relaxed),
        );
        let mut out = String::with_capacity(8192);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Moves a counter up to a total kept elsewhere.
fn advance(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// [`advance`] for a counter of seconds.
fn advance_seconds(counter: &Counter<f64, std::sync::atomic::AtomicU64>, total: f64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// Feeds WAL group commits into the histograms.
pub struct WalMetrics(pub Arc<Metrics>);

impl WalObserver for WalMetrics {
    fn on_group_commit(&self, records: usize, _bytes: u64, sync: Option<Duration>) {
        self.0.group_commit_records.observe(records as f64);
        if let Some(d) = sync {
            self.0.fsync_seconds.observe(d.as_secs_f64());
        }
    }

    fn on_failure(&self, op: &'static str, _error: &std::io::Error) {
        self.0.wal_io_errors.get_or_create(&[("op", op)]).inc();
        self.0.wal_failed.set(1);
    }
}
