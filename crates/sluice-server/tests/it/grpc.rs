//! The gRPC `IngestService` on the HTTP port, driven by the generated tonic client
//! over a real HTTP/2 connection: all three RPCs, their errors, and a bidi stream
//! that outruns the server's window.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sluice_core::{AppendError, Batch, BoxFuture, ConsumeError, Consumer, Queue, QueueStats};
use sluice_proto::v1::{Event, IngestRequest};
use sluice_server::NodeOptions;
use tokio::sync::watch;
use tonic::Code;

use crate::support::*;

fn event(n: u64) -> Event {
    Event {
        payload: format!("{{\"n\":{n}}}").into(),
        ..Default::default()
    }
}

fn request(stream: &str, ns: std::ops::Range<u64>) -> IngestRequest {
    IngestRequest {
        stream: stream.into(),
        events: ns.map(event).collect(),
        return_ids: false,
    }
}

/// The `n` of every delivered event of a stream (each must appear once: asserted).
fn delivered(node: &TestNode, stream: &str) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    for line in sink_lines(&node.out_dir(stream)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let n = v["data"]["n"].as_u64().unwrap();
        assert!(seen.insert(n), "event {n} delivered twice");
    }
    seen
}

async fn wait_delivered(node: &TestNode, stream: &str, count: usize) -> BTreeSet<u64> {
    wait_until(Duration::from_secs(20), || {
        delivered(node, stream).len() >= count
    })
    .await;
    delivered(node, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_ingest_is_delivered_with_ids_keys_and_headers() {
    let node = start(&[], NodeOptions::default()).await;
    let mut client = grpc_client(node.node.http_addr);
    let mut given = event(1);
    given.id = "producer-id-1".into();
    given.key = "user-7".into();
    given.timestamp_unix_nanos = 1_700_000_000_000_000_000;
    given.headers.insert("trace".into(), "abc".into());
    let mut other = event(2);
    other.stream = "other".into();
    let r = client
        .ingest(IngestRequest {
            stream: "grpc".into(),
            events: vec![given, other, event(3)],
            return_ids: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 3);
    assert_eq!(r.ids.len(), 3);
    assert_eq!(r.ids[0], "producer-id-1", "a producer's id is kept");
    assert_eq!(r.ids[1].len(), 36, "a UUID is assigned: {}", r.ids[1]);

    wait_delivered(&node, "grpc", 2).await;
    let lines = sink_lines(&node.out_dir("grpc"));
    assert_eq!(lines.len(), 2);
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["id"], "producer-id-1");
    assert_eq!(first["key"], "user-7");
    assert_eq!(first["headers"]["trace"], "abc");
    assert_eq!(raw_data(&lines[0]), "{\"n\":1}", "payload verbatim");
    assert_eq!(wait_delivered(&node, "other", 1).await, BTreeSet::from([2]));
    let m = node.metrics().await;
    assert_eq!(metric(&m, "sluice_ingest_events_total"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_errors_are_precise_statuses_and_nothing_is_written() {
    let node = start(&[], NodeOptions::default()).await;
    let mut client = grpc_client(node.node.http_addr);
    let cases: Vec<(IngestRequest, Code, &str)> = vec![
        (request("", 0..1), Code::InvalidArgument, "invalid_stream"),
        (
            request("bad/name", 0..1),
            Code::InvalidArgument,
            "invalid_stream",
        ),
        (request("s", 0..0), Code::InvalidArgument, "empty_body"),
        (
            IngestRequest {
                stream: "s".into(),
                events: vec![
                    event(1),
                    Event {
                        payload: "{\"n\":".into(),
                        ..Default::default()
                    },
                ],
                return_ids: false,
            },
            Code::InvalidArgument,
            "event 2: invalid JSON",
        ),
        (
            IngestRequest {
                stream: "s".into(),
                events: vec![Event {
                    payload: "[1,2]".into(),
                    ..Default::default()
                }],
                return_ids: false,
            },
            Code::InvalidArgument,
            "not a JSON object",
        ),
    ];
    for (req, code, needle) in cases {
        let err = client.ingest(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(needle), "{needle:?} in {err:?}");
    }
    // The server keeps serving, and nothing of the rejected requests was queued.
    client.ingest(request("s", 10..11)).await.unwrap();
    assert_eq!(wait_delivered(&node, "s", 1).await, BTreeSet::from([10]));
    let m = node.metrics().await;
    assert_eq!(metric(&m, "sluice_ingest_events_total"), 1.0);
    assert_eq!(
        metric(
            &m,
            "sluice_ingest_rejected_requests_total{reason=\"invalid_json\"}"
        ),
        1.0
    );
    // Per tenant: a call's stream is per message, so gRPC refusals count under
    // `_grpc`, by key; the accepted event under its stream.
    let tenant = |labels: &str| {
        metric(
            &m,
            &format!("sluice_stream_rejected_requests_total{labels}"),
        )
    };
    assert_eq!(
        tenant("{stream=\"_grpc\",key=\"_anonymous\",reason=\"invalid_stream\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "sluice_stream_events_total{stream=\"s\",key=\"_anonymous\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stream_sums_up_and_a_bad_message_ends_it_with_what_was_accepted() {
    let node = start(&[("grpc.window", "4")], NodeOptions::default()).await;
    let mut client = grpc_client(node.node.http_addr);

    let msgs: Vec<IngestRequest> = (0..50)
        .map(|i| request("cs", i * 20..i * 20 + 20))
        .collect();
    let r = client
        .ingest_stream(futures_util::stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1000);
    assert_eq!(wait_delivered(&node, "cs", 1000).await.len(), 1000);

    // Message 3 is bad: messages 1 and 2 are accepted (and say so), 4 and 5 are not.
    let mut msgs: Vec<IngestRequest> = (0..5)
        .map(|i| request("bad", i * 10..i * 10 + 10))
        .collect();
    msgs[2].events[4].payload = "{oops}".into();
    let err = client
        .ingest_stream(futures_util::stream::iter(msgs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("event 5"), "{err:?}");
    let md = err.metadata();
    assert_eq!(md.get("sluice-failed-message").unwrap(), "3");
    assert_eq!(md.get("sluice-accepted-events").unwrap(), "20");
    assert!(md.get("sluice-accepted-after-failure").is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        wait_delivered(&node, "bad", 20).await,
        (0..20).collect::<BTreeSet<u64>>(),
        "exactly the accepted prefix is delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_acks_every_message_in_order_and_rejects_only_the_bad_one() {
    let node = start(&[("grpc.window", "4")], NodeOptions::default()).await;
    let mut client = grpc_client(node.node.http_addr);
    let mut msgs: Vec<IngestRequest> = (0..100).map(|i| request("bd", i * 5..i * 5 + 5)).collect();
    msgs[41].stream = "no such/stream".into();
    let mut acks = client
        .ingest_bidi(futures_util::stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    let mut seq = 0;
    while let Some(ack) = acks.next().await {
        let ack = ack.unwrap();
        seq += 1;
        assert_eq!(ack.sequence, seq, "acks come in order");
        if seq == 42 {
            assert_eq!(ack.accepted, 0);
            assert!(ack.error.starts_with("InvalidArgument"), "{ack:?}");
        } else {
            assert_eq!(ack.accepted, 5, "{ack:?}");
            assert!(ack.error.is_empty(), "{ack:?}");
        }
    }
    assert_eq!(seq, 100);
    let want: BTreeSet<u64> = (0..500).filter(|n| n / 5 != 41).collect();
    assert_eq!(wait_delivered(&node, "bd", 495).await, want);
}

/// The real queue behind a gate: appends wait while it is closed, as they would on a
/// slow disk or broker.
struct GatedQueue {
    inner: Arc<dyn Queue>,
    open: watch::Receiver<bool>,
    appends_started: AtomicU64,
}

impl Queue for GatedQueue {
    fn append(&self, batch: Batch) -> BoxFuture<'_, Result<sluice_core::Committed, AppendError>> {
        Box::pin(async move {
            self.appends_started.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.clone();
            let _ = open.wait_for(|o| *o).await;
            self.inner.append(batch).await
        })
    }
    fn consumer(&self, name: &str) -> Result<Box<dyn Consumer>, ConsumeError> {
        self.inner.consumer(name)
    }
    fn stats(&self) -> QueueStats {
        self.inner.stats()
    }
    fn close(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.inner.close()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_that_outruns_the_window_is_held_back_and_loses_nothing() {
    const WINDOW: u64 = 4;
    const MESSAGES: u64 = 200;
    let (gate, open) = watch::channel(false);
    let gated: Arc<std::sync::OnceLock<Arc<GatedQueue>>> = Arc::default();
    let g = gated.clone();
    let opts = NodeOptions {
        wrap_queue: Some(Box::new(move |inner| {
            let q = Arc::new(GatedQueue {
                inner,
                open,
                appends_started: AtomicU64::new(0),
            });
            let _ = g.set(q.clone());
            q
        })),
        ..Default::default()
    };
    let node = start(&[("grpc.window", &WINDOW.to_string())], opts).await;
    let gated = gated.get().unwrap().clone();
    let mut client = grpc_client(node.node.http_addr);
    let pad = "x".repeat(50 << 10);
    let pulled = Arc::new(AtomicU64::new(0));
    let p = pulled.clone();
    // ~50 KiB messages, offered as fast as the connection takes them.
    let outbound = futures_util::stream::iter(0..MESSAGES).map(move |i| {
        p.fetch_add(1, Ordering::SeqCst);
        IngestRequest {
            stream: "win".into(),
            events: vec![Event {
                payload: format!("{{\"n\":{i},\"pad\":\"{pad}\"}}").into(),
                ..Default::default()
            }],
            return_ids: false,
        }
    });
    let mut acks = client.ingest_bidi(outbound).await.unwrap().into_inner();
    // The queue is stalled: the server takes `window` messages and then stops reading;
    // HTTP/2 flow control (about 1 MiB of buffers) then stops the client.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let started = gated.appends_started.load(Ordering::SeqCst);
    let held = pulled.load(Ordering::SeqCst);
    assert_eq!(
        started, WINDOW,
        "the server keeps exactly its window in flight"
    );
    assert!(
        held < MESSAGES / 4,
        "the client was not held back: {held} of {MESSAGES} messages taken"
    );
    gate.send(true).unwrap();
    let mut seq = 0;
    while let Some(ack) = acks.next().await {
        let ack = ack.unwrap();
        seq += 1;
        assert_eq!((ack.sequence, ack.accepted), (seq, 1), "{ack:?}");
    }
    assert_eq!(seq, MESSAGES);
    let got = wait_delivered(&node, "win", MESSAGES as usize).await;
    assert_eq!(got, (0..MESSAGES).collect::<BTreeSet<u64>>());
}

/// A sink that never finishes a delivery.
struct StalledSink;

impl sluice_core::Sink for StalledSink {
    fn name(&self) -> &'static str {
        "stalled"
    }
    fn deliver<'a>(
        &'a self,
        _events: &'a [sluice_core::Event],
    ) -> BoxFuture<'a, Result<(), sluice_core::SinkError>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_resource_exhausted_with_a_retry_delay() {
    use tonic_types::StatusExt;
    let node = start(
        &[("queue.kind", "memory"), ("queue.max_events", "20")],
        NodeOptions {
            sink: Some(Arc::new(StalledSink)),
            ..Default::default()
        },
    )
    .await;
    let mut client = grpc_client(node.node.http_addr);
    let mut refused = None;
    for i in 0..20 {
        match client.ingest(request("full", i * 5..i * 5 + 5)).await {
            Ok(r) => assert_eq!(r.into_inner().accepted, 5),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the queue filled up");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("queue_full"), "{err:?}");
    let delay = err
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo detail");
    assert!(delay >= Duration::from_secs(1), "{delay:?}");
    assert_eq!(err.metadata().get("retry-after").unwrap(), "1");
    let m = node.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_ingest_rejected_requests_total{reason=\"queue_full\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_messages_are_accepted_and_bombs_refused() {
    use tonic::codec::CompressionEncoding;
    let node = start(&[("http.max_body_bytes", "1 MiB")], NodeOptions::default()).await;
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut client = grpc_client(node.node.http_addr).send_compressed(encoding);
        let from = if encoding == CompressionEncoding::Gzip {
            0
        } else {
            100
        };
        let r = client.ingest(request("z", from..from + 100)).await.unwrap();
        assert_eq!(r.into_inner().accepted, 100);
        // 8 MiB of blanks inside one payload: a few KiB on the wire.
        let bomb = IngestRequest {
            stream: "z".into(),
            events: vec![Event {
                payload: format!("{{\"a\":1{}}}", " ".repeat(8 << 20)).into(),
                ..Default::default()
            }],
            return_ids: false,
        };
        let err = client.ingest(bomb).await.unwrap_err();
        // gRPC's convention for an oversized message; unlike back-pressure it carries
        // no RetryInfo, which is what tells a client not to retry it.
        use tonic_types::StatusExt;
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("size limit"), "{err:?}");
        assert!(err.get_details_retry_info().is_none(), "{err:?}");
    }
    assert_eq!(
        wait_delivered(&node, "z", 200).await,
        (0..200).collect::<BTreeSet<u64>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_into_a_full_queue_is_held_back_not_refused() {
    let (node, gate) = crate::backpressure::small_log_with_gated_sink().await;
    let mut client = grpc_client(node.node.http_addr);
    let pad = "p".repeat(1000);
    // ~2.2 MB in all: twice what the queue holds while the sink is stalled.
    let msgs: Vec<IngestRequest> = (0..100u64)
        .map(|m| IngestRequest {
            stream: "held".into(),
            events: (m * 20..m * 20 + 20)
                .map(|n| Event {
                    payload: format!("{{\"n\":{n},\"pad\":\"{pad}\"}}").into(),
                    ..Default::default()
                })
                .collect(),
            return_ids: false,
        })
        .collect();
    let call = tokio::spawn(async move {
        client
            .ingest_stream(futures_util::stream::iter(msgs))
            .await
            .map(|r| r.into_inner().accepted)
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!call.is_finished(), "the stream should be waiting for room");
    let m = node.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_ingest_rejected_requests_total{reason=\"queue_full\"}"
        ),
        0.0,
        "held back, not refused"
    );
    gate.send(true).unwrap();
    let accepted = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the stream finishes once the sink resumes")
        .unwrap()
        .unwrap();
    assert_eq!(accepted, 2000);
    assert_eq!(wait_delivered(&node, "held", 2000).await.len(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_into_a_full_log_are_refused_before_decoding() {
    let (node, _gate) = crate::backpressure::small_log_with_gated_sink().await;
    let mut client = grpc_client(node.node.http_addr);
    let pad = "p".repeat(1000);
    let big = |m: u64| IngestRequest {
        stream: "unary-full".into(),
        events: (0..20)
            .map(|n| Event {
                payload: format!("{{\"n\":{},\"pad\":\"{pad}\"}}", m * 20 + n).into(),
                ..Default::default()
            })
            .collect(),
        return_ids: false,
    };
    let mut refused = None;
    for m in 0..100 {
        if let Err(e) = client.ingest(big(m)).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("the log filled up");
    use tonic_types::StatusExt;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.get_details_retry_info().is_some(), "{err:?}");
    // Once full, every further call is refused up front, and counted: even a bad
    // message gets RESOURCE_EXHAUSTED, not INVALID_ARGUMENT, as it is never read.
    for m in 100..105 {
        let e = client.ingest(big(m)).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
    }
    let mut bad = big(0);
    bad.events[0].payload = "{not json".into();
    let e = client.ingest(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let m = node.metrics().await;
    assert!(
        metric(
            &m,
            "sluice_ingest_rejected_requests_total{reason=\"queue_full\"}"
        ) >= 6.0,
        "{m}"
    );
}
