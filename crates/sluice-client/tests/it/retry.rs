//! Retries wait at least the server's Retry-After, and stop at the budget.

use std::time::{Duration, Instant};

use sluice_client::{Body, Client, ClientError, RetryPolicy};
use sluice_proto::v1::{Event, IngestRequest};

use crate::support::*;

fn events(n: usize) -> Body {
    Body::ndjson("{\"e\":1}\n".repeat(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_retry_after() {
    // 10 events/s with a one-second burst: 20 events put the node ~1 s in debt.
    let node = start_fast(&[("limits.events_per_s", "10")]).await;
    let client = Client::builder(&node.base)
        .retry(RetryPolicy {
            max_retries: 3,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let ep = client.endpoint("limited").unwrap();
    client.send_once(&ep, &events(20)).await.unwrap();
    let err = client.send_once(&ep, &events(1)).await.unwrap_err();
    let ClientError::Rejected {
        status: 429,
        retry_after: Some(asked),
        ..
    } = err
    else {
        panic!("expected a 429 with Retry-After, got {err:?}");
    };
    assert!(asked >= Duration::from_secs(1));

    let start = Instant::now();
    let sent = client.send(&ep, &events(1)).await.unwrap();
    let took = start.elapsed();
    assert_eq!(sent.accepted, 1);
    assert!(sent.attempts >= 2, "{sent:?}");
    assert!(
        sent.retry_wait >= asked,
        "waited {:?} < Retry-After {asked:?}",
        sent.retry_wait
    );
    assert!(took >= asked, "took {took:?} < Retry-After {asked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_retry_budget() {
    // While draining, the node answers every request 503 with Retry-After: 1.
    let node = start_fast(&[("shutdown_drain_delay", "6s")]).await;
    let client = Client::builder(&node.base)
        .retry(RetryPolicy {
            max_retries: 2,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let ep = client.endpoint("draining").unwrap();
    client.send(&ep, &events(1)).await.unwrap();
    node.node.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let start = Instant::now();
    let err = client.send(&ep, &events(1)).await.unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err, ClientError::Rejected { status: 503, .. }),
        "{err:?}"
    );
    // Two retries, each at least Retry-After (1 s) later, plus at most 10 % jitter;
    // a third retry would have pushed it past 3 s.
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    assert!(
        took < Duration::from_millis(2900),
        "retried past the budget: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_the_time_budget_is_not_started() {
    // 1 event/s: 10 events put the node ~9 s in debt.
    let node = start_fast(&[("limits.events_per_s", "1")]).await;
    let client = Client::builder(&node.base)
        .retry(RetryPolicy {
            max_retries: 5,
            max_elapsed: Duration::from_secs(2),
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let ep = client.endpoint("limited").unwrap();
    client.send_once(&ep, &events(10)).await.unwrap();
    let start = Instant::now();
    let err = client.send(&ep, &events(1)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected { status: 429, .. }),
        "{err:?}"
    );
    assert!(err.retry_after().unwrap() > Duration::from_secs(2));
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resource_exhausted_is_retried_after_its_retry_info() {
    let node = start_fast(&[("limits.events_per_s", "10")]).await;
    let client = Client::builder(&node.base)
        .retry(RetryPolicy {
            max_retries: 3,
            ..RetryPolicy::default()
        })
        .build_grpc()
        .unwrap();
    let req = |n: usize| IngestRequest {
        stream: "grpc".into(),
        events: (0..n)
            .map(|_| Event {
                payload: bytes::Bytes::from_static(b"{\"g\":1}"),
                ..Default::default()
            })
            .collect(),
        return_ids: false,
    };
    client.ingest_once(&req(20)).await.unwrap();
    let err = client.ingest_once(&req(1)).await.unwrap_err();
    assert_eq!(err.kind(), "grpc_resource_exhausted", "{err:?}");
    let asked = err
        .retry_after()
        .expect("RetryInfo or retry-after metadata");

    let start = Instant::now();
    let ok = client.ingest(&req(1)).await.unwrap();
    assert_eq!(ok.response.accepted, 1);
    assert!(ok.attempts >= 2);
    assert!(
        start.elapsed() >= asked,
        "{:?} < {asked:?}",
        start.elapsed()
    );
}
