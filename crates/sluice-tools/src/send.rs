//! `sluice send`: NDJSON from a file or stdin to a stream, in batches.
//!
//! Each non-empty line is one event. Lines go through a [`Batcher`] (sent when
//! `--batch` lines are buffered or `--linger` passed, so a slow producer such as
//! `tail -f app.log | sluice send` still gets its events delivered promptly). Once a
//! second a progress line goes to stderr; at the end a summary goes to stdout, and
//! [`SendError::Rejected`] is returned if any batch was rejected (the server rejects
//! a whole batch when one of its lines is bad).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use sluice_client::batch::BatchStats;
use sluice_client::{
    BatchOptions, BatchSummary, Batcher, BuildError, Client, ClientError, Protocol, RetryPolicy,
};
use sluice_core::units::{parse_duration_or_secs, ByteSize};

/// `sluice send [--url URL] [--stream S] [--batch N] [FILE|-]`
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// Base URL of a sluice node.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The stream to write to.
    #[arg(long, default_value = "events")]
    pub stream: String,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Send a partial batch after this long (e.g. 100ms, 1s).
    #[arg(long, default_value = "100ms", value_parser = parse_duration_or_secs)]
    pub linger: Duration,
    /// HTTP version: http1, http2 or auto.
    #[arg(long, value_enum, default_value_t = HttpVersion::Auto)]
    pub protocol: HttpVersion,
    /// API key (sent as `authorization: Bearer KEY`).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Trust this CA bundle (PEM) for https URLs instead of the system's.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Retries per batch on 429/503 (each waits at least the server's Retry-After).
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    /// The NDJSON file; `-` or nothing for stdin.
    pub file: Option<PathBuf>,
}

/// `--protocol`: the client's [`Protocol`], as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpVersion {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: prior knowledge (h2c) over TCP, ALPN `h2` over TLS.
    Http2,
    /// HTTP/1.1 over TCP; over TLS whatever ALPN picks (h2 first).
    Auto,
}

impl From<HttpVersion> for Protocol {
    fn from(v: HttpVersion) -> Protocol {
        match v {
            HttpVersion::Http1 => Protocol::Http1,
            HttpVersion::Http2 => Protocol::Http2,
            HttpVersion::Auto => Protocol::Auto,
        }
    }
}

/// Why `sluice send` failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("configuring the client")]
    Build(#[from] BuildError),
    #[error("reading {input}")]
    Read {
        input: String,
        #[source]
        source: std::io::Error,
    },
    /// Some batches were rejected; the others were delivered.
    #[error("{rejected} of {total} events were rejected (first error: {first})")]
    Rejected {
        rejected: u64,
        total: u64,
        first: Box<ClientError>,
    },
}

/// Reads the input, sends it and prints the summary. Needs a tokio runtime.
pub async fn run(args: &SendArgs) -> Result<BatchSummary, SendError> {
    let mut b = Client::builder(&args.url)
        .protocol(args.protocol.into())
        .retry(RetryPolicy {
            max_retries: args.retries,
            ..Default::default()
        })
        .max_connections(1);
    if let Some(k) = &args.api_key {
        b = b.api_key(k);
    }
    if let Some(ca) = &args.ca {
        b = b.ca_file(ca);
    }
    let client = b.build()?;
    let endpoint = client.endpoint(&args.stream)?;
    let (input, reader): (String, Box<dyn AsyncRead + Unpin + Send>) = match &args.file {
        Some(p) if p.as_os_str() != "-" => {
            let f = tokio::fs::File::open(p)
                .await
                .map_err(|source| SendError::Read {
                    input: p.display().to_string(),
                    source,
                })?;
            (p.display().to_string(), Box::new(f))
        }
        _ => ("stdin".to_string(), Box::new(tokio::io::stdin())),
    };
    let batcher = Batcher::new(
        client,
        endpoint,
        BatchOptions {
            max_events: args.batch.max(1),
            max_wait: args.linger,
            ..BatchOptions::default()
        },
    );
    let stats = batcher.stats();
    let start = Instant::now();
    let mut reader = BufReader::with_capacity(256 << 10, reader);
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut line = Vec::with_capacity(1024);
    let mut read_events = 0u64;
    loop {
        line.clear();
        let n = tokio::select! {
            n = reader.read_until(b'\n', &mut line) => n.map_err(|source| SendError::Read {
                input: input.clone(),
                source,
            })?,
            _ = ticker.tick() => {
                if !args.quiet {
                    progress(&stats, start, read_events);
                }
                continue;
            }
        };
        if n == 0 {
            break;
        }
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        read_events += 1;
        if batcher.push(Bytes::copy_from_slice(trimmed)).await.is_err() {
            break;
        }
    }
    let summary = batcher.close().await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {} events in {} batches ({}) in {:.2}s: {} accepted, {} rejected, {:.0} events/s",
        read_events,
        summary.batches,
        ByteSize(summary.bytes_sent).approx(),
        secs,
        summary.events_accepted,
        summary.events_rejected,
        summary.events_accepted as f64 / secs.max(1e-9),
    );
    if summary.events_rejected > 0 {
        let mut summary = summary;
        let first = summary.errors.remove(0).1;
        return Err(SendError::Rejected {
            rejected: summary.events_rejected,
            total: read_events,
            first: Box::new(first),
        });
    }
    Ok(summary)
}

/// Runs [`run`] on its own runtime (what the binary calls).
pub fn main(args: &SendArgs) -> Result<BatchSummary, SendError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| SendError::Read {
            input: "the async runtime".into(),
            source,
        })?
        .block_on(run(args))
}

fn progress(stats: &BatchStats, start: Instant, read: u64) {
    let accepted = stats.events_accepted.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let _ = writeln!(
        std::io::stderr(),
        "{:>5.0}s  read {read}  accepted {accepted}  rejected {}  {}  {:.0} events/s",
        secs,
        stats.events_rejected.load(Ordering::Relaxed),
        ByteSize(stats.bytes_sent.load(Ordering::Relaxed)).approx(),
        accepted as f64 / secs.max(1e-9),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        send: SendArgs,
    }

    #[test]
    fn flags_parse_as_documented() {
        use clap::Parser;
        let a = Cli::try_parse_from([
            "send",
            "--linger",
            "250ms",
            "--protocol",
            "http2",
            "f.ndjson",
        ])
        .unwrap()
        .send;
        assert_eq!(a.linger, Duration::from_millis(250));
        assert_eq!(Protocol::from(a.protocol), Protocol::Http2);
        assert_eq!(a.file.as_deref(), Some(std::path::Path::new("f.ndjson")));
        let d = Cli::try_parse_from(["send"]).unwrap().send;
        assert_eq!(
            (d.linger, d.protocol, d.batch, d.retries),
            (Duration::from_millis(100), HttpVersion::Auto, 500, 5)
        );
    }
}
