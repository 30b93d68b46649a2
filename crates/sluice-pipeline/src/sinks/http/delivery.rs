//! One delivery of the HTTP sink: its events cut into POSTs of at most
//! `max_request_bytes`, each refused POST bisected down to the events the server
//! refuses, and the outcomes folded into one [`SinkError`].

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use sluice_core::{BoxFuture, Rejection, SinkError};

use super::HttpSink;

/// One `deliver` call in progress.
pub(super) struct Delivery<'a> {
    pub(super) sink: &'a HttpSink,
    /// Every event's envelope line, in order.
    pub(super) lines: Bytes,
    /// `ends[i]`: where event i's line ends in `lines`.
    pub(super) ends: Vec<usize>,
    /// Set by the first passing failure: the delivery will be retried as a whole, so
    /// POSTs not started yet are not sent.
    pub(super) stop: AtomicBool,
}

impl Delivery<'_> {
    /// The lines of `events`.
    fn body(&self, events: &Range<usize>) -> Bytes {
        let start = if events.start == 0 {
            0
        } else {
            self.ends[events.start - 1]
        };
        self.lines.slice(start..self.ends[events.end - 1])
    }

    /// POSTs `events`, bisecting on refusal down to the single events refused.
    pub(super) fn send(&self, events: Range<usize>) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            if events.is_empty() || self.stop.load(Ordering::Relaxed) {
                return Outcome::default();
            }
            match self.sink.post(self.body(&events)).await {
                Answer::Taken => Outcome::default(),
                Answer::Retry {
                    message,
                    retry_after,
                } => {
                    self.stop.store(true, Ordering::Relaxed);
                    Outcome {
                        failure: Some((message, retry_after)),
                        failures: 1,
                        ..Outcome::default()
                    }
                }
                Answer::Refused { reason } if events.len() == 1 => Outcome {
                    refused: vec![Rejection {
                        index: events.start,
                        reason,
                    }],
                    ..Outcome::default()
                },
                Answer::Refused { reason } => {
                    tracing::debug!(
                        url = %self.sink.shown,
                        events = events.len(),
                        %reason,
                        "http sink bisecting a refused post"
                    );
                    let mid = events.start + events.len() / 2;
                    let (a, b) =
                        tokio::join!(self.send(events.start..mid), self.send(mid..events.end));
                    a.merge(b)
                }
            }
        })
    }
}

/// What became of some of a delivery's events.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Events the server refused for good.
    pub(super) refused: Vec<Rejection>,
    /// The first passing failure's message, and the longest `Retry-After` seen.
    pub(super) failure: Option<(String, Option<Duration>)>,
    /// POSTs that failed in passing.
    pub(super) failures: usize,
}

impl Outcome {
    pub(super) fn merge(mut self, other: Outcome) -> Outcome {
        self.refused.extend(other.refused);
        self.failures += other.failures;
        self.failure = match (self.failure, other.failure) {
            (Some((m, a)), Some((_, b))) => Some((m, a.max(b))),
            (a, b) => a.or(b),
        };
        self
    }

    pub(super) fn into_result(mut self) -> Result<(), SinkError> {
        if let Some((message, retry_after)) = self.failure {
            let message = match self.failures {
                0 | 1 => message,
                n => format!("{message} (and {} more failed POSTs)", n - 1),
            };
            return Err(SinkError::Retryable {
                message,
                retry_after,
            });
        }
        if self.refused.is_empty() {
            return Ok(());
        }
        self.refused.sort_by_key(|r| r.index);
        Err(SinkError::Rejected(self.refused))
    }
}

/// The server's answer to one POST.
#[derive(Debug)]
pub(super) enum Answer {
    Taken,
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    Refused {
        reason: String,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Taken,
    Retry,
    Refused,
}

/// What a status says about the events posted.
pub(super) fn verdict(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Taken,
        // Overload, a slow client, a server error: try again later.
        408 | 429 | 500..=599 => Verdict::Retry,
        // Wrong credentials or a wrong URL are no event's fault: bisecting would only
        // dead-letter every event. Wait for the operator (or `max_attempts`).
        401 | 403 | 404 | 405 | 407 => Verdict::Retry,
        400..=499 => Verdict::Refused,
        // 1xx and 3xx (redirects are not followed): a misconfigured URL.
        _ => Verdict::Retry,
    }
}

/// Splits events (their line ends) into runs of at most `max` bytes; an event larger
/// than `max` alone is a run of its own.
pub(super) fn chunks(ends: &[usize], max: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut start_byte) = (0, 0);
    for (i, &end) in ends.iter().enumerate() {
        if i > start && end - start_byte > max {
            out.push(start..i);
            start = i;
            start_byte = ends[i - 1];
        }
    }
    if start < ends.len() {
        out.push(start..ends.len());
    }
    out
}
