//! The result of a load run: the JSON report (stable field names, so runs can be
//! compared), the table printed at the end.
//!
//! ```text
//! {
//!   "mode": "http2", "model": "open", "rate_target": 1000.0, ...
//!   "requests": 10000,            // accepted requests (measured phase)
//!   "events": 10000, "bytes": 1000000,
//!   "errors": 0, "errors_by_kind": {"http_429": 0, ...},
//!   "requests_per_s": 999.8, "events_per_s": 999.8, "bytes_per_s": ...,
//!   "latency_ms": {"p50":..,"p90":..,"p99":..,"p999":..,"max":..,"min":..,"mean":..},
//!   "warmup": {"requests":..,"events":..,"errors":..},
//!   "timeline": [{"t_s":1.0,"requests_per_s":..,"errors":..,"p50_ms":..,...}],
//!   "distribution": [{"percentile":50.0,"latency_ms":..}, ...]
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_core::units::ByteSize;

use super::recorder::Recorder;
use super::{LoadArgs, Mode};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub min: f64,
    pub mean: f64,
}

impl LatencyMs {
    fn of(h: &Histogram<u64>) -> LatencyMs {
        if h.is_empty() {
            return LatencyMs::default();
        }
        let ms = |us: u64| us as f64 / 1e3;
        LatencyMs {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            min: ms(h.min()),
            mean: h.mean() / 1e3,
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the measured phase started (end of the interval).
    pub t_s: f64,
    /// Requests finished in the interval (accepted or not), per second.
    pub requests_per_s: f64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl TimelinePoint {
    pub(super) fn from_interval(t_s: f64, secs: f64, h: &Histogram<u64>, errors: u64) -> Self {
        let l = LatencyMs::of(h);
        TimelinePoint {
            t_s,
            requests_per_s: h.len() as f64 / secs.max(1e-9),
            errors,
            p50_ms: l.p50,
            p90_ms: l.p90,
            p99_ms: l.p99,
            max_ms: l.max,
        }
    }
}

/// A point of the latency distribution.
#[derive(Debug, Clone, Serialize)]
pub struct DistributionPoint {
    pub percentile: f64,
    pub latency_ms: f64,
}

/// What was sent during warm-up (not part of any other figure).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Warmup {
    pub seconds: f64,
    pub requests: u64,
    pub events: u64,
    pub errors: u64,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    /// `open` (fixed rate) or `closed` (max throughput).
    pub model: &'static str,
    pub url: String,
    pub stream: String,
    pub connections: usize,
    pub concurrency: usize,
    /// Requests per second asked for (open model).
    pub rate_target: Option<f64>,
    /// Events per request (per message for grpc-stream).
    pub batch: usize,
    /// Bytes per event.
    pub event_bytes: u64,
    /// Length of the measured phase: from its start to the last measured answer.
    pub duration_s: f64,
    /// Requests the server accepted.
    pub requests: u64,
    pub events: u64,
    pub bytes: u64,
    /// Requests that failed (any kind).
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub requests_per_s: f64,
    pub events_per_s: f64,
    pub bytes_per_s: f64,
    /// Latency of every measured request, accepted or failed; in the open model
    /// from its due time.
    pub latency_ms: LatencyMs,
    pub warmup: Warmup,
    pub timeline: Vec<TimelinePoint>,
    pub distribution: Vec<DistributionPoint>,
}

impl Report {
    pub(super) fn build(
        args: &LoadArgs,
        concurrency: usize,
        payload_bytes: u64,
        measured_for: Duration,
        rec: &Recorder,
        timeline: Vec<TimelinePoint>,
    ) -> Report {
        let (h, errors_by_kind) = rec.totals();
        let secs = measured_for.as_secs_f64();
        let requests = rec.ok.load(Ordering::Relaxed);
        let events = rec.events.load(Ordering::Relaxed);
        let bytes = rec.bytes.load(Ordering::Relaxed);
        Report {
            mode: args.mode,
            model: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            url: args.url.clone(),
            stream: args.stream.clone(),
            connections: args.connections,
            concurrency,
            rate_target: args.rate,
            batch: args.batch,
            event_bytes: payload_bytes / args.batch.max(1) as u64,
            duration_s: secs,
            requests,
            events,
            bytes,
            errors: rec.errors.load(Ordering::Relaxed),
            errors_by_kind,
            requests_per_s: requests as f64 / secs,
            events_per_s: events as f64 / secs,
            bytes_per_s: bytes as f64 / secs,
            latency_ms: LatencyMs::of(&h),
            warmup: Warmup {
                seconds: args.warmup.as_secs_f64(),
                requests: rec.warmup_ok.load(Ordering::Relaxed),
                events: rec.warmup_events.load(Ordering::Relaxed),
                errors: rec.warmup_errors.load(Ordering::Relaxed),
            },
            timeline,
            distribution: distribution(&h),
        }
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sluice load: {:?} {} model, {} connections, concurrency {}, batch {}, {} B/event{}",
            self.mode,
            self.model,
            self.connections,
            self.concurrency,
            self.batch,
            self.event_bytes,
            self.rate_target
                .map(|r| format!(", target {r} req/s"))
                .unwrap_or_default()
        );
        let _ = writeln!(s, "  {:<14} {:>14.3} s", "duration", self.duration_s);
        let _ = writeln!(
            s,
            "  {:<14} {:>14} ({:.1} req/s)",
            "requests", self.requests, self.requests_per_s
        );
        let _ = writeln!(
            s,
            "  {:<14} {:>14} ({:.1} events/s)",
            "events", self.events, self.events_per_s
        );
        let _ = writeln!(
            s,
            "  {:<14} {:>14} ({}/s)",
            "bytes",
            ByteSize(self.bytes).approx(),
            ByteSize(self.bytes_per_s as u64).approx()
        );
        let _ = writeln!(s, "  {:<14} {:>14}", "errors", self.errors);
        for (k, v) in &self.errors_by_kind {
            let _ = writeln!(s, "    {k:<12} {v:>14}");
        }
        let _ = writeln!(s, "  latency (ms)");
        let l = &self.latency_ms;
        for (name, v) in [
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p99.9", l.p999),
            ("max", l.max),
        ] {
            let _ = writeln!(s, "    {name:<12} {v:>14.3}");
        }
        if self.warmup.seconds > 0.0 {
            let _ = writeln!(
                s,
                "  (warm-up: {} requests in {:.1} s, not counted above)",
                self.warmup.requests, self.warmup.seconds
            );
        }
        s
    }
}

/// The percentile spectrum: 0, 50, 75, 90, 95, 99, ... up to 99.999 %, then the max.
fn distribution(h: &Histogram<u64>) -> Vec<DistributionPoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<DistributionPoint> = (0..=50)
        .map(|k| {
            let q = 1.0 - 10f64.powf(-f64::from(k) / 10.0);
            DistributionPoint {
                percentile: q * 100.0,
                latency_ms: h.value_at_quantile(q) as f64 / 1e3,
            }
        })
        .collect();
    out.push(DistributionPoint {
        percentile: 100.0,
        latency_ms: h.max() as f64 / 1e3,
    });
    out
}
