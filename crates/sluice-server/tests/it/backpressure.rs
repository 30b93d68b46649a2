//! A troubled sink: while it is stalled the full queue answers 429 with
//! Retry-After, memory stays flat, and everything accepted before is delivered once
//! it resumes; while it fails, deliveries are retried until they succeed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use sluice_core::{BoxFuture, Event, Sink, SinkError};
use sluice_pipeline::sinks::FileSink;
use sluice_server::NodeOptions;
use tokio::sync::watch;

use crate::support::*;

/// The real file sink behind a gate that the test opens and closes.
struct GatedSink {
    inner: FileSink,
    open: watch::Receiver<bool>,
}

impl Sink for GatedSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn deliver<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut open = self.open.clone();
            let _ = open.wait_for(|o| *o).await;
            self.inner.deliver(events).await
        })
    }
}

/// A node with a 1 MiB log (64 KiB bodies) whose real file sink stays stalled until
/// `true` is sent on the returned gate.
pub(crate) async fn small_log_with_gated_sink() -> (TestNode, watch::Sender<bool>) {
    let dir = tempfile::tempdir().unwrap();
    let (gate, open) = watch::channel(false);
    let sink = Arc::new(GatedSink {
        inner: FileSink::new(dir.path().join("out"), 64 << 20),
        open,
    });
    let node = start_in(
        dir,
        &[
            ("queue.max_bytes", "1 MiB"),
            ("queue.segment_bytes", "256 KiB"),
            ("http.max_body_bytes", "64 KiB"),
            ("http.max_events_per_request", "300"),
            ("queue.checkpoint_interval", "10ms"),
        ],
        NodeOptions {
            sink: Some(sink),
            ..Default::default()
        },
    )
    .await;
    (node, gate)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_sheds_with_429_and_delivers_everything_after() {
    let (node, gate) = small_log_with_gated_sink().await;
    let http = Http::h1();
    let url = node.events_url("bp");
    let mut next = 0u64;
    let mut accepted = BTreeSet::new();
    let body = |from: u64| -> String {
        (from..from + 100)
            .map(|n| format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "p".repeat(200)))
            .collect()
    };

    // Fill the log until it refuses.
    let mut refused = None;
    for _ in 0..200 {
        let a = http.post(&url, &[NDJSON], body(next)).await;
        match a.status {
            StatusCode::ACCEPTED => accepted.extend(next..next + 100),
            StatusCode::TOO_MANY_REQUESTS => {
                refused = Some(a);
                break;
            }
            other => panic!("unexpected {other}: {:?}", a.body),
        }
        next += 100;
    }
    let refused = refused.expect("a 1 MiB log must fill up within 200 requests of 25 KiB");
    assert_eq!(refused.json()["error"]["code"], "queue_full");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert!(!accepted.is_empty());
    let ready = http.get(&format!("{}/readyz", node.admin)).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while full"
    );

    // Keep pushing: every request is refused and memory stays flat.
    let before = rss_kib();
    for i in 0..300 {
        let a = http.post(&url, &[NDJSON], body(1_000_000 + i * 100)).await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "RSS grew by {grown} KiB while shedding load"
    );

    // Resume the sink: everything accepted is delivered, then the log takes more.
    gate.send(true).unwrap();
    let out = node.out_dir("bp");
    let delivered = |lines: &[String]| -> BTreeSet<u64> {
        lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(raw_data(l)).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || delivered(&sink_lines(&out))
            .len()
            >= accepted.len())
        .await,
        "only {} of {} accepted events delivered",
        delivered(&sink_lines(&out)).len(),
        accepted.len()
    );
    assert_eq!(
        delivered(&sink_lines(&out)),
        accepted,
        "exactly the accepted events"
    );
    let mut took = false;
    for _ in 0..100 {
        if http.post(&url, &[NDJSON], body(2_000_000)).await.status == StatusCode::ACCEPTED {
            took = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(took, "the log frees space once the processor has committed");
    node.node.shutdown();
    assert!(node.node.wait().await);
}

/// The real file sink, failing its first `failures` deliveries.
struct FlakySink {
    inner: FileSink,
    failures: std::sync::atomic::AtomicU32,
}

impl Sink for FlakySink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn deliver<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        use std::sync::atomic::Ordering;
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Box::pin(std::future::ready(Err(SinkError::retryable(
                "disk on fire",
            ))));
        }
        self.inner.deliver(events)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sink_is_retried_until_everything_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(FlakySink {
        inner: FileSink::new(dir.path().join("out"), 64 << 20),
        failures: std::sync::atomic::AtomicU32::new(5),
    });
    let node = start_in(
        dir,
        &[
            ("processor.retry_initial", "10ms"),
            ("processor.retry_max", "50ms"),
        ],
        NodeOptions {
            sink: Some(sink),
            ..Default::default()
        },
    )
    .await;
    let http = Http::h1();
    let body: String = (0..50).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let a = http.post(&node.events_url("flaky"), &[NDJSON], body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let out = node.out_dir("flaky");
    assert!(wait_until(Duration::from_secs(10), || sink_lines(&out).len() >= 50).await);
    let ns: BTreeSet<u64> = sink_lines(&out)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(raw_data(l)).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns, (0..50).collect::<BTreeSet<u64>>(), "nothing skipped");
    let page = node.metrics().await;
    assert_eq!(
        metric(&page, "sluice_sink_errors_total{sink=\"file\"}"),
        5.0
    );
    assert_eq!(
        metric(&page, "sluice_sink_delivered_events_total{sink=\"file\"}"),
        50.0
    );
}
