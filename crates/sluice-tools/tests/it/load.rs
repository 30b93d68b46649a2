//! The load generator against real nodes: the open model holds its rate, the
//! report's counts are the server's, every mode delivers its events.

use std::time::Duration;

use sluice_tools::load::{self, LoadArgs, Mode};

use crate::support::*;

fn args(node: &TestNode, mode: Mode) -> LoadArgs {
    LoadArgs {
        mode,
        connections: 4,
        quiet: true,
        ..LoadArgs::new(&node.base)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_model_holds_its_rate() {
    let node = start_fast(&[]).await;
    let a = LoadArgs {
        rate: Some(400.0),
        duration: Duration::from_secs(5),
        concurrency: Some(16),
        ..args(&node, Mode::Http1)
    };
    let r = load::run(&a).await.unwrap();
    assert_eq!(r.errors, 0, "{:?}", r.errors_by_kind);
    let off = (r.requests_per_s - 400.0).abs() / 400.0;
    assert!(
        off < 0.02,
        "{} req/s is {:.1} % off 400",
        r.requests_per_s,
        off * 100.0
    );
    assert!(
        (r.requests as i64 - 2000).abs() <= 2,
        "{} requests",
        r.requests
    );
    assert_eq!(node.counter(REQUESTS).await, r.requests);
    assert_eq!(r.model, "open");
    assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.p50 <= r.latency_ms.p99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_counts_what_the_server_counted() {
    let node = start(&[]).await; // the default durable WAL queue and file sink
    let out = tempfile::tempdir().unwrap();
    let (json, html) = (out.path().join("r.json"), out.path().join("r.html"));
    let a = LoadArgs {
        events: Some(3000),
        batch: 10,
        concurrency: Some(8),
        json: Some(json.clone()),
        html: Some(html.clone()),
        ..args(&node, Mode::Http2)
    };
    let r = load::run(&a).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let page = node.metrics().await;
    assert_eq!(v["requests"].as_u64().unwrap(), metric(&page, REQUESTS));
    assert_eq!(v["events"].as_u64().unwrap(), metric(&page, EVENTS));
    assert_eq!(v["events"].as_u64().unwrap(), 3000);
    assert_eq!(v["errors"].as_u64().unwrap(), 0);
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_ms"][k].as_f64().unwrap() > 0.0, "latency_ms.{k}");
    }
    assert!(v["requests_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["events_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r.requests, 300);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("Latency distribution"));
    assert!(page.contains("Latency over time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_delivers_its_events() {
    let node = start_fast(&[]).await;
    let mut expected = 0;
    for mode in [
        Mode::Http1,
        Mode::Http2,
        Mode::GrpcUnary,
        Mode::GrpcStream,
        Mode::GrpcBidi,
    ] {
        let a = LoadArgs {
            events: Some(500),
            batch: 5,
            messages: 4,
            stream: format!("mode-{mode:?}").to_lowercase(),
            ..args(&node, mode)
        };
        let r = load::run(&a).await.unwrap();
        assert_eq!(r.errors, 0, "{mode:?}: {:?}", r.errors_by_kind);
        assert_eq!(r.events, 500, "{mode:?}");
        expected += 500;
        assert_eq!(
            node.counter(EVENTS).await,
            expected,
            "{mode:?}: the server's count"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_errors_by_kind() {
    let node = start_fast(&[("limits.events_per_s", "50")]).await;
    let a = LoadArgs {
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(200),
        ..args(&node, Mode::Http1)
    };
    let r = load::run(&a).await.unwrap();
    assert!(r.errors > 0);
    assert_eq!(r.errors_by_kind.get("http_429").copied(), Some(r.errors));
    assert!(r.warmup.requests + r.warmup.errors > 0, "warm-up was sent");
    // What the server accepted during both phases.
    assert_eq!(node.counter(REQUESTS).await, r.requests + r.warmup.requests);
}
