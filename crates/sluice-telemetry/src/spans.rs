//! The spans sluice makes: a request, its group commit, its time in the queue, and
//! each delivery attempt. See the crate docs for the tree.

use std::borrow::Cow;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use sluice_core::{Committed, Event};

use crate::context::{format_traceparent, parse_traceparent, TRACEPARENT};

/// Distinct request contexts one delivery follows: the first is the delivery
/// span's parent, up to this many more are its links, and each gets a `queued`
/// span. Events of further requests in the same delivery are delivered untraced.
pub const MAX_LINKS: usize = 128;

/// What a `traceparent` event header adds to a WAL record: the 11-byte name, the
/// 55-byte value and two 4-byte lengths.
pub const STAMP_BYTES_PER_EVENT: u64 = 74;

/// At most this many bytes of `traceparent` headers are added to one request's
/// events (its first 14,169 events; the rest travel untraced), so tracing raises
/// the largest WAL record by at most this much (see `http.max_events_per_request`).
pub const STAMP_MAX_BYTES: u64 = 1 << 20;

/// The server span of one sampled ingest request (HTTP) or call (gRPC).
pub struct RequestSpan {
    cx: Context,
    /// The value stamped on the request's events.
    traceparent: String,
}

impl RequestSpan {
    /// Starts the span, as a child of the producer's `traceparent` when `headers`
    /// carry a valid one (a malformed one is ignored: the span starts a new trace).
    /// `None` when tracing is off, and when the sampler drops the trace: nothing of
    /// an unsampled request would be exported, so nothing more is made for it.
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        headers: &http::HeaderMap,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<RequestSpan> {
        let tracer = crate::tracer()?;
        let parent = match headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &parent);
        if !span.span_context().is_sampled() {
            return None;
        }
        span.set_attributes(attributes());
        let traceparent = format_traceparent(span.span_context());
        let cx = parent.with_span(span);
        Some(RequestSpan { cx, traceparent })
    }

    /// Sets an attribute on the request span.
    pub fn set(&self, attribute: KeyValue) {
        self.cx.span().set_attribute(attribute);
    }

    /// Keeps the request's context with each event as a `traceparent` event header,
    /// so whoever delivers it can link back; at most [`STAMP_MAX_BYTES`] worth. An
    /// event that already carries a valid one keeps it: its context was set before
    /// this hop (by a `sluice gateway` in front, or per event by the producer), and
    /// the delivery belongs in that trace.
    pub fn stamp(&self, events: &mut [Event]) {
        let tp = &self.traceparent;
        let most = (STAMP_MAX_BYTES / STAMP_BYTES_PER_EVENT) as usize;
        for e in events.iter_mut().take(most) {
            match e.headers.iter().position(|(k, _)| k == TRACEPARENT) {
                Some(i) if parse_traceparent(&e.headers[i].1).is_some() => {}
                Some(i) => e.headers[i].1.clone_from(tp),
                None => e.headers.push((TRACEPARENT.into(), tp.clone())),
            }
        }
    }

    /// Records the append the request waited for, from `started` until now: the
    /// group commit's size and fsync time, or the error.
    pub fn appended(&self, started: SystemTime, events: usize, outcome: Result<&Committed, &str>) {
        let Some(tracer) = crate::tracer() else {
            return;
        };
        let mut attributes = Vec::with_capacity(4);
        attributes.push(KeyValue::new(
            "sluice.events",
            i64::try_from(events).unwrap_or(i64::MAX),
        ));
        if let Ok(c) = outcome {
            if c.group_appends > 0 {
                attributes.push(KeyValue::new(
                    "sluice.group.appends",
                    i64::from(c.group_appends),
                ));
                attributes.push(KeyValue::new(
                    "sluice.group.bytes",
                    i64::try_from(c.group_bytes).unwrap_or(i64::MAX),
                ));
            }
            if let Some(sync) = c.sync {
                attributes.push(KeyValue::new("sluice.fsync_ms", millis(sync)));
            }
        }
        let mut span = tracer
            .span_builder("append")
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(tracer, &self.cx);
        if let Err(e) = outcome {
            span.set_status(Status::error(e.to_string()));
        }
        span.end();
    }

    /// Ends the span with its final attributes. A refusal's code goes in
    /// `error.type`; the span's status is an error only for the server's own
    /// failures (`fault`: 5xx, not a client's 4xx), as OpenTelemetry's HTTP and RPC
    /// conventions ask.
    pub fn end(self, attributes: Vec<KeyValue>, refusal: Option<&'static str>, fault: bool) {
        let span = self.cx.span();
        span.set_attributes(attributes);
        if let Some(code) = refusal {
            span.set_attribute(KeyValue::new("error.type", code));
            if fault {
                span.set_status(Status::error(code));
            }
        }
        span.end();
    }
}

/// The trace contexts of one delivery's events (those that carry a sampled
/// `traceparent`): the parent and links of its attempt spans.
pub struct DeliveryTrace {
    parent: Context,
    links: Vec<Link>,
}

impl DeliveryTrace {
    /// Reads the events' contexts and records each request's `queued` span (from
    /// the earliest receive time of its events here until now). `None` when tracing
    /// is off or no event is traced: an untraced event costs one header scan.
    pub fn start(events: &[Event]) -> Option<DeliveryTrace> {
        let tracer = crate::tracer()?;
        // (context, earliest receive time, events, a stream of them)
        let mut seen: Vec<(SpanContext, i64, i64, &str)> = Vec::new();
        let mut last: Option<(&str, SpanContext)> = None;
        for e in events {
            let Some(tp) = e
                .headers
                .iter()
                .find(|(k, _)| k == TRACEPARENT)
                .map(|(_, v)| v.as_str())
            else {
                continue;
            };
            // A request's events sit together: most share the previous one's value.
            let sc = match &last {
                Some((v, sc)) if *v == tp => sc.clone(),
                _ => match parse_traceparent(tp) {
                    Some(sc) => sc,
                    None => continue,
                },
            };
            last = Some((tp, sc.clone()));
            if let Some(s) = seen.iter_mut().find(|s| s.0 == sc) {
                s.1 = s.1.min(e.received_at_unix_nanos);
                s.2 += 1;
            } else if seen.len() <= MAX_LINKS {
                seen.push((sc, e.received_at_unix_nanos, 1, &e.stream));
            }
        }
        if seen.is_empty() {
            return None;
        }
        let now = SystemTime::now();
        for (sc, received, n, stream) in &seen {
            let parent = Context::new().with_remote_span_context(sc.clone());
            let mut span = tracer
                .span_builder("queued")
                .with_kind(SpanKind::Internal)
                .with_start_time(unix_nanos(*received))
                .with_attributes([
                    KeyValue::new("sluice.stream", stream.to_string()),
                    KeyValue::new("sluice.events", *n),
                ])
                .start_with_context(tracer, &parent);
            span.end_with_timestamp(now);
        }
        let parent = Context::new().with_remote_span_context(seen[0].0.clone());
        let links = seen[1..]
            .iter()
            .map(|(sc, ..)| Link::with_context(sc.clone()))
            .collect();
        Some(DeliveryTrace { parent, links })
    }

    /// Starts the span of one attempt to hand `events` events to `sink`.
    pub fn attempt(&self, sink: &str, events: usize, attempt: u32) -> AttemptSpan {
        let tracer = crate::tracer().expect("a DeliveryTrace exists only with a tracer");
        let span = tracer
            .span_builder(format!("deliver {sink}"))
            .with_kind(SpanKind::Client)
            .with_links(self.links.clone())
            .with_attributes([
                KeyValue::new("sluice.sink", sink.to_string()),
                KeyValue::new("sluice.events", i64::try_from(events).unwrap_or(i64::MAX)),
                KeyValue::new("sluice.attempt", i64::from(attempt)),
                KeyValue::new("sluice.requests", self.links.len() as i64 + 1),
            ])
            .start_with_context(tracer, &self.parent);
        AttemptSpan {
            cx: self.parent.with_span(span),
        }
    }
}

/// One delivery attempt's span.
pub struct AttemptSpan {
    cx: Context,
}

impl AttemptSpan {
    /// Runs `f` (the sink's delivery) with this span as the current context, so an
    /// HTTP sink sends its `traceparent` ([`current_traceparent`]).
    pub fn instrument<F: Future>(&self, f: F) -> WithContext<F> {
        f.with_context(self.cx.clone())
    }

    /// The trace id, for log lines.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// Ends the span: `outcome` is `delivered`, `retry`, `dead_letter` or
    /// `partly_refused`, `error` the sink's error when it failed.
    pub fn end(self, outcome: &'static str, error: Option<String>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("sluice.outcome", outcome));
        if let Some(e) = error {
            span.set_status(Status::error(e));
        }
        span.end();
    }
}

/// The `traceparent` of the current context (a delivery attempt a sink runs in),
/// when tracing is on and it is sampled.
pub fn current_traceparent() -> Option<String> {
    if !crate::enabled() {
        return None;
    }
    let cx = Context::current();
    let span = cx.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| format_traceparent(sc))
}

fn unix_nanos(n: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n.max(0) as u64)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
