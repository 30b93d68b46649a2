//! `sluice load`: a load generator for sluice's HTTP and gRPC APIs.
//!
//! Two models:
//! - **open** (`--rate R`): requests are due at fixed times, `R` per second, whether
//!   or not earlier ones have finished; a request's latency is measured from when it
//!   was *due*, not from when a worker got around to sending it, so a stalled server
//!   shows up in the latencies instead of silently lowering the load (no coordinated
//!   omission, as in wrk2).
//! - **closed** (no `--rate`): `--concurrency` workers each send their next request
//!   as soon as the previous one finished: the maximum throughput.
//!
//! Workers share one pooled client of `--connections` connections (HTTP/1.1: one
//! request per connection at a time; HTTP/2 and gRPC: multiplexed, round-robin).
//! Requests sent during `--warmup` are counted apart and left out of every figure.
//! Once a second a progress line goes to stderr; at the end a table goes to stdout,
//! and optionally a JSON report (`--json`, see [`Report`]) and an HTML page with
//! charts (`--html`).

mod html;
mod recorder;
mod report;
mod shooter;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

pub use report::{LatencyMs, Report, TimelinePoint};

use sluice_client::{BuildError, Client, ClientError, Protocol, RetryPolicy};
use sluice_core::units::parse_duration_or_secs;

use recorder::{Recorder, Sample};
use shooter::{Payload, Shared, Shooter};

/// What one request is and how it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// HTTP/1.1 POSTs (TLS when the URL is https).
    Http1,
    /// HTTP/2 POSTs: h2c prior knowledge, or ALPN h2 over TLS.
    Http2,
    /// Unary gRPC `Ingest` calls.
    GrpcUnary,
    /// Client-streaming `IngestStream` calls of `--messages` messages each.
    GrpcStream,
    /// Messages on long-lived `IngestBidi` streams (one per worker), each until its ack.
    GrpcBidi,
}

/// `sluice load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base URL of the node (http://host:port or https://host:port).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The stream to write to.
    #[arg(long, default_value = "load")]
    pub stream: String,
    /// Protocol and call shape.
    #[arg(long, value_enum, default_value_t = Mode::Http1)]
    pub mode: Mode,
    /// Connections to open (all up front).
    #[arg(long, short = 'c', default_value_t = 16)]
    pub connections: usize,
    /// Requests in flight at once [default: --connections].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long to measure, after the warm-up (e.g. 10s, 1m).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration_or_secs)]
    pub duration: Duration,
    /// Stop after this many events instead of after --duration.
    #[arg(long)]
    pub events: Option<u64>,
    /// Open model: this many requests per second. Without it: closed model, max throughput.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Events per request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Bytes per generated event (a JSON object padded to this size).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// NDJSON file whose lines are used as the events (cycled) instead of generated ones.
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// grpc-stream: messages per call.
    #[arg(long, default_value_t = 10)]
    pub messages: usize,
    /// Send for this long before measuring (e.g. 2s).
    #[arg(long, default_value = "0s", value_parser = parse_duration_or_secs)]
    pub warmup: Duration,
    /// Give up on a request after this long (counted as a `timeout` error).
    #[arg(long, default_value = "10s", value_parser = parse_duration_or_secs)]
    pub timeout: Duration,
    /// API key (`authorization: Bearer KEY`).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Trust this CA bundle (PEM) for https URLs instead of the system's.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML page with latency charts here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Runtime worker threads [default: the number of CPUs].
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

impl LoadArgs {
    /// The defaults, for `url` (what tests and examples start from).
    pub fn new(url: impl Into<String>) -> LoadArgs {
        LoadArgs {
            url: url.into(),
            stream: "load".into(),
            mode: Mode::Http1,
            connections: 16,
            concurrency: None,
            duration: Duration::from_secs(10),
            events: None,
            rate: None,
            batch: 1,
            size: 100,
            template: None,
            messages: 10,
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(10),
            api_key: None,
            ca: None,
            json: None,
            html: None,
            threads: None,
            quiet: false,
        }
    }
}

/// Why a load run could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("configuring the client")]
    Build(#[from] BuildError),
    #[error("--{flag} {value}: {message}")]
    Flag {
        flag: &'static str,
        value: String,
        message: &'static str,
    },
    #[error("reading the template {path}")]
    Template {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening {connections} connections")]
    Connect {
        connections: usize,
        #[source]
        source: ClientError,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// Builds a runtime, runs the load, prints the table and writes the reports.
pub fn main(args: &LoadArgs) -> Result<Report, LoadError> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build().map_err(LoadError::Runtime)?;
    let report = rt.block_on(run(args))?;
    print!("{}", report.table());
    Ok(report)
}

/// Runs the load and writes `--json` / `--html` (needs a multi-threaded runtime).
pub async fn run(args: &LoadArgs) -> Result<Report, LoadError> {
    let flag = |flag, value: String, message| LoadError::Flag {
        flag,
        value,
        message,
    };
    if args.connections == 0 {
        return Err(flag("connections", "0".into(), "must be at least 1"));
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(flag("rate", r.to_string(), "must be a positive number"));
        }
    }
    if args.batch == 0 {
        return Err(flag("batch", "0".into(), "must be at least 1"));
    }
    let concurrency = args.concurrency.unwrap_or(args.connections).max(1);
    raise_fd_limit(args.connections.max(concurrency), args.quiet);
    let lines = event_lines(args)?;
    let payload = Arc::new(Payload::new(&args.stream, &lines, args.batch));

    let mut b = Client::builder(&args.url)
        .protocol(match args.mode {
            Mode::Http1 => Protocol::Http1,
            _ => Protocol::Http2,
        })
        .max_connections(args.connections)
        .timeout(args.timeout)
        .retry(RetryPolicy::none());
    if let Some(k) = &args.api_key {
        b = b.api_key(k);
    }
    if let Some(ca) = &args.ca {
        b = b.ca_file(ca);
    }
    let connect_error = |source| LoadError::Connect {
        connections: args.connections,
        source,
    };
    let shared = match args.mode {
        Mode::Http1 | Mode::Http2 => {
            let c = b.build()?;
            let e = c.endpoint(&args.stream)?;
            c.warm(args.connections).await.map_err(connect_error)?;
            Shared::Http(c, e)
        }
        _ => {
            let c = b.build_grpc()?;
            c.warm(args.connections).await.map_err(connect_error)?;
            Shared::Grpc(c)
        }
    };

    let recorder = Arc::new(Recorder::new(16));
    let t0 = Instant::now();
    let plan = Arc::new(Plan {
        t0,
        measure_start: t0 + args.warmup,
        end: args
            .events
            .is_none()
            .then(|| t0 + args.warmup + args.duration),
        interval_ns: args.rate.map(|r| 1e9 / r),
        max_measured: args
            .events
            .map(|e| e.div_ceil(payload.events * per_request(args))),
        tickets: AtomicU64::new(0),
        measured: AtomicU64::new(0),
        last_done_ns: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let shooter = Shooter::new(args.mode, &shared, args.messages);
        workers.spawn(worker(
            w,
            shooter,
            payload.clone(),
            plan.clone(),
            recorder.clone(),
        ));
    }
    let mut timeline = Vec::new();
    let mut ticker = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    let mut last_tick = t0;
    loop {
        tokio::select! {
            done = workers.join_next() => {
                if done.is_none() {
                    break;
                }
            }
            now = ticker.tick() => {
                let (h, errors) = recorder.take_interval();
                if now <= plan.measure_start {
                    if !args.quiet {
                        eprintln!("[{:>4.0}s] warm-up: {} requests", (now - t0).as_secs_f64(), recorder.warmup_ok.load(Ordering::Relaxed));
                    }
                    last_tick = now;
                    continue;
                }
                let secs = (now - last_tick).as_secs_f64();
                let point = TimelinePoint::from_interval((now - plan.measure_start).as_secs_f64(), secs, &h, errors);
                if !args.quiet {
                    let _ = writeln!(
                        std::io::stderr(),
                        "[{:>4.0}s] {:>10.0} req/s  p99 {:>9.3} ms  errors {}",
                        point.t_s, point.requests_per_s, point.p99_ms, errors
                    );
                }
                timeline.push(point);
                last_tick = now;
            }
        }
    }
    let end_ns = plan.last_done_ns.load(Ordering::Relaxed);
    let measured_for = Duration::from_nanos(end_ns)
        .saturating_sub(plan.measure_start - t0)
        .max(Duration::from_micros(1));
    let (h, errors) = recorder.take_interval();
    if !h.is_empty() {
        let now = Instant::now();
        timeline.push(TimelinePoint::from_interval(
            (now - plan.measure_start).as_secs_f64(),
            (now - last_tick).as_secs_f64(),
            &h,
            errors,
        ));
    }
    let report = Report::build(
        args,
        concurrency,
        payload.bytes,
        measured_for,
        &recorder,
        timeline,
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("the report serializes");
        std::fs::write(path, text + "\n").map_err(|source| LoadError::Write {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::page(&report)).map_err(|source| LoadError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

/// gRPC stream calls carry several messages per request.
fn per_request(args: &LoadArgs) -> u64 {
    match args.mode {
        Mode::GrpcStream => args.messages.max(1) as u64,
        _ => 1,
    }
}

/// The schedule all workers follow.
struct Plan {
    t0: Instant,
    measure_start: Instant,
    /// Nothing is due at or after this (duration runs).
    end: Option<Instant>,
    /// Open model: nanoseconds between due times.
    interval_ns: Option<f64>,
    /// `--events` runs: how many measured requests to send.
    max_measured: Option<u64>,
    tickets: AtomicU64,
    measured: AtomicU64,
    /// When the last measured request finished, in ns after `t0`.
    last_done_ns: AtomicU64,
    stop: AtomicBool,
}

impl Plan {
    /// The next request's due time and whether it is measured; `None`: stop.
    fn next(&self) -> Option<(Instant, bool)> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let due = match self.interval_ns {
            Some(ns) => {
                let i = self.tickets.fetch_add(1, Ordering::Relaxed);
                self.t0 + Duration::from_nanos((i as f64 * ns) as u64)
            }
            None => Instant::now(),
        };
        if self.end.is_some_and(|end| due >= end) {
            return None;
        }
        let measured = due >= self.measure_start;
        if measured {
            if let Some(max) = self.max_measured {
                if self.measured.fetch_add(1, Ordering::Relaxed) >= max {
                    self.stop.store(true, Ordering::Relaxed);
                    return None;
                }
            }
        }
        Some((due, measured))
    }
}

async fn worker(
    id: usize,
    mut shooter: Shooter,
    payload: Arc<Payload>,
    plan: Arc<Plan>,
    recorder: Arc<Recorder>,
) {
    while let Some((due, measured)) = plan.next() {
        if plan.interval_ns.is_some() {
            tokio::time::sleep_until(due).await;
        }
        let outcome = shooter.shoot(&payload).await;
        let done = Instant::now();
        if measured {
            plan.last_done_ns
                .fetch_max((done - plan.t0).as_nanos() as u64, Ordering::Relaxed);
        }
        recorder.record(
            id,
            Sample {
                latency: done - due,
                measured,
                outcome: match &outcome {
                    Ok(events) => Ok((*events, payload.bytes * events / payload.events.max(1))),
                    Err(e) => Err(e),
                },
            },
        );
    }
}

/// The events to send: the template's lines, or one generated object of `--size`.
fn event_lines(args: &LoadArgs) -> Result<Vec<Bytes>, LoadError> {
    let Some(path) = &args.template else {
        return Ok(vec![Payload::sized_event(args.size)]);
    };
    let text = std::fs::read(path).map_err(|source| LoadError::Template {
        path: path.clone(),
        source,
    })?;
    let lines: Vec<Bytes> = text
        .split(|b| *b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty())
        .map(Bytes::copy_from_slice)
        .collect();
    if lines.is_empty() {
        return Err(LoadError::Template {
            path: path.clone(),
            source: std::io::Error::other("no event in the file"),
        });
    }
    Ok(lines)
}

/// Lifts the soft open-file limit so `connections` sockets fit.
fn raise_fd_limit(connections: usize, quiet: bool) {
    let want = connections as u64 + 1024;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want && !quiet => eprintln!(
            "warning: the open-file limit is {got}, below the {want} that {connections} connections need"
        ),
        Ok(_) => {}
        Err(e) if !quiet => eprintln!("warning: cannot raise the open-file limit: {e}"),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(args: &[&str]) -> LoadArgs {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
            .unwrap()
            .load
    }

    /// `LoadArgs::new`, which tests and examples start from, is what the flags default to.
    #[test]
    fn the_flag_defaults_are_load_args_new() {
        let flags = parse(&["--url", "http://h:1"]);
        assert_eq!(
            format!("{flags:?}"),
            format!("{:?}", LoadArgs::new("http://h:1"))
        );
    }

    #[test]
    fn duration_flags_take_the_config_grammar_and_bare_seconds() {
        let a = parse(&["-d", "1.5m", "--warmup", "3", "--timeout", "250ms"]);
        assert_eq!(a.duration, Duration::from_secs(90));
        assert_eq!(a.warmup, Duration::from_secs(3));
        assert_eq!(a.timeout, Duration::from_millis(250));
        assert_eq!(parse(&["-d", "1m 30s"]).duration, Duration::from_secs(90));
        use clap::Parser;
        let bad = Cli::try_parse_from(["load", "-d", "5 parsecs"])
            .err()
            .unwrap();
        assert!(bad.to_string().contains("is not a duration"), "{bad}");
    }

    #[test]
    fn generated_events_have_the_asked_size_and_are_json() {
        let e = Payload::sized_event(100);
        assert_eq!(e.len(), 100);
        serde_json::from_slice::<serde_json::Value>(&e).unwrap();
    }
}
