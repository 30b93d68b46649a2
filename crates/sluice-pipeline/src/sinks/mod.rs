//! Sinks: where delivered events go.
//!
//! - [`FileSink`]: NDJSON envelopes, one directory per stream, rotated by size,
//!   fsynced before the delivery counts.
//! - [`HttpSink`]: NDJSON envelopes POSTed to a URL in size-bounded chunks, over
//!   pooled keep-alive connections; refused events are found by bisection.
//! - [`StdoutSink`]: NDJSON envelopes on standard output.
//! - [`BlackholeSink`]: counts and drops (benchmarks).
//!
//! The broker sinks (NATS JetStream, Kafka) live in `sluice-brokers`, beside the
//! broker queues whose message layout they share.

mod file;
mod http;

pub use self::http::{HttpSink, HttpSinkOptions};
pub use file::{FileSink, FileSinkOptions};

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_core::{BoxFuture, Event, Sink, SinkError};

/// Envelopes for `events`, one per line.
pub(crate) fn envelopes<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        sluice_proto::envelope::write_line(e, &mut out);
    }
    out
}

/// Writes envelopes to standard output.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn deliver<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        let buf = envelopes(events);
        Box::pin(async move {
            sluice_core::blocking::run(sluice_core::blocking::Kind::Stdout, move || {
                let mut out = std::io::stdout().lock();
                out.write_all(&buf).and_then(|()| out.flush())
            })
            .await
            .map_err(|e| SinkError::retryable(e.to_string()))?
            .map_err(|e| SinkError::retryable(format!("writing to stdout failed: {e}")))
        })
    }
}

/// Counts events and drops them.
#[derive(Debug, Default)]
pub struct BlackholeSink {
    events: AtomicU64,
}

impl BlackholeSink {
    /// Events dropped so far.
    pub fn count(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

impl Sink for BlackholeSink {
    fn name(&self) -> &'static str {
        "blackhole"
    }

    fn deliver<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        self.events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(())))
    }
}
