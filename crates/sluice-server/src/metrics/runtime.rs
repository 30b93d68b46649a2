//! The async runtime seen from inside, read at scrape time from the runtime that
//! serves the scrape (the node's): its workers, how busy each is, how many tasks are
//! alive and how many wait in the shared queue. A worker busy ~100 % of the time
//! with a growing queue is a node short of CPU; busy workers with few tasks, one
//! task hogging a worker. And the blocking pool's work by kind
//! (`sluice_core::blocking`): jobs running, jobs done, time they waited for a thread.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Worker = [(&'static str, String); 1];
type BlockingKind = [(&'static str, &'static str); 1];

/// The runtime's gauges and per-worker counters.
pub struct RuntimeMetrics {
    workers: Gauge,
    alive_tasks: Gauge,
    global_queue: Gauge,
    busy_seconds: Family<Worker, Counter<f64, AtomicU64>>,
    parks: Family<Worker, Counter>,
    blocking_running: Family<BlockingKind, Gauge>,
    blocking_jobs: Family<BlockingKind, Counter>,
    blocking_wait_seconds: Family<BlockingKind, Counter<f64, AtomicU64>>,
}

impl RuntimeMetrics {
    pub(super) fn register(r: &mut Registry) -> RuntimeMetrics {
        let m = RuntimeMetrics {
            workers: Gauge::default(),
            alive_tasks: Gauge::default(),
            global_queue: Gauge::default(),
            busy_seconds: Family::default(),
            parks: Family::default(),
            blocking_running: Family::default(),
            blocking_jobs: Family::default(),
            blocking_wait_seconds: Family::default(),
        };
        r.register(
            "sluice_runtime_workers",
            "Worker threads of the async runtime",
            m.workers.clone(),
        );
        r.register(
            "sluice_runtime_alive_tasks",
            "Tasks alive in the async runtime (connections, requests, pipeline tasks)",
            m.alive_tasks.clone(),
        );
        r.register(
            "sluice_runtime_global_queue_depth",
            "Tasks waiting in the runtime's shared queue for a worker",
            m.global_queue.clone(),
        );
        r.register(
            "sluice_runtime_worker_busy_seconds",
            "Time each runtime worker spent running tasks",
            m.busy_seconds.clone(),
        );
        r.register(
            "sluice_runtime_worker_parks",
            "Times each runtime worker went idle",
            m.parks.clone(),
        );
        r.register(
            "sluice_blocking_running",
            "Jobs on the blocking pool now, by kind (file sink writes and fsyncs, large body decoding, ...)",
            m.blocking_running.clone(),
        );
        r.register(
            "sluice_blocking_jobs",
            "Jobs the blocking pool finished, by kind",
            m.blocking_jobs.clone(),
        );
        r.register(
            "sluice_blocking_wait_seconds",
            "Time blocking jobs waited for a blocking-pool thread, by kind",
            m.blocking_wait_seconds.clone(),
        );
        m
    }

    /// Reads the current runtime, if the scrape runs on one.
    pub(super) fn refresh(&self) {
        for b in sluice_core::blocking::snapshot() {
            let label = [("kind", b.kind.name())];
            self.blocking_running
                .get_or_create(&label)
                .set((b.started - b.finished) as i64);
            super::advance(&self.blocking_jobs.get_or_create(&label), b.finished);
            super::advance_seconds(
                &self.blocking_wait_seconds.get_or_create(&label),
                b.waited_seconds,
            );
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rt = handle.metrics();
        self.workers.set(rt.num_workers() as i64);
        self.alive_tasks.set(rt.num_alive_tasks() as i64);
        self.global_queue.set(rt.global_queue_depth() as i64);
        for w in 0..rt.num_workers() {
            let label = [("worker", w.to_string())];
            super::advance_seconds(
                &self.busy_seconds.get_or_create(&label),
                rt.worker_total_busy_duration(w).as_secs_f64(),
            );
            super::advance(&self.parks.get_or_create(&label), rt.worker_park_count(w));
        }
    }
}
