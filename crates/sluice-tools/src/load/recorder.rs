//! Where the workers put their measurements: a few mutex-guarded shards (a worker
//! always uses the same one), each with an HDR histogram of the whole measured run
//! and one of the current one-second interval. Latencies are in microseconds, 1 µs
//! to 1 h at 3 significant digits. Requests sent during warm-up are only counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The highest latency a histogram holds (higher values are clamped).
const MAX_US: u64 = 3_600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// One shard's measurements.
pub struct Shard {
    pub total: Histogram<u64>,
    pub interval: Histogram<u64>,
    pub interval_errors: u64,
    pub errors: BTreeMap<String, u64>,
}

/// Counters and histograms shared by all workers.
pub struct Recorder {
    shards: Box<[Mutex<Shard>]>,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub events: AtomicU64,
    pub bytes: AtomicU64,
    pub warmup_ok: AtomicU64,
    pub warmup_errors: AtomicU64,
    pub warmup_events: AtomicU64,
}

/// One finished request.
pub struct Sample<'a> {
    pub latency: Duration,
    pub measured: bool,
    pub outcome: Result<(u64, u64), &'a sluice_client::ClientError>,
}

impl Recorder {
    pub fn new(shards: usize) -> Recorder {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| {
                    Mutex::new(Shard {
                        total: histogram(),
                        interval: histogram(),
                        interval_errors: 0,
                        errors: BTreeMap::new(),
                    })
                })
                .collect(),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            warmup_ok: AtomicU64::new(0),
            warmup_errors: AtomicU64::new(0),
            warmup_events: AtomicU64::new(0),
        }
    }

    /// Records one request from worker `worker`.
    pub fn record(&self, worker: usize, s: Sample<'_>) {
        if !s.measured {
            match s.outcome {
                Ok((events, _)) => {
                    self.warmup_ok.fetch_add(1, Ordering::Relaxed);
                    self.warmup_events.fetch_add(events, Ordering::Relaxed);
                }
                Err(_) => {
                    self.warmup_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        let us = (s.latency.as_micros() as u64).clamp(1, MAX_US);
        let mut shard = self.shards[worker % self.shards.len()]
            .lock()
            .expect("not poisoned");
        shard.total.saturating_record(us);
        shard.interval.saturating_record(us);
        match s.outcome {
            Ok((events, bytes)) => {
                drop(shard);
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.events.fetch_add(events, Ordering::Relaxed);
                self.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                shard.interval_errors += 1;
                *shard.errors.entry(e.kind()).or_default() += 1;
                drop(shard);
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes the interval histograms of every shard (and their error counts).
    pub fn take_interval(&self) -> (Histogram<u64>, u64) {
        let mut h = histogram();
        let mut errors = 0;
        for s in self.shards.iter() {
            let mut s = s.lock().expect("not poisoned");
            h.add(&s.interval).expect("same bounds");
            s.interval.reset();
            errors += std::mem::take(&mut s.interval_errors);
        }
        (h, errors)
    }

    /// The whole run's histogram and errors by kind.
    pub fn totals(&self) -> (Histogram<u64>, BTreeMap<String, u64>) {
        let mut h = histogram();
        let mut errors = BTreeMap::new();
        for s in self.shards.iter() {
            let s = s.lock().expect("not poisoned");
            h.add(&s.total).expect("same bounds");
            for (k, v) in &s.errors {
                *errors.entry(k.clone()).or_default() += v;
            }
        }
        (h, errors)
    }
}
