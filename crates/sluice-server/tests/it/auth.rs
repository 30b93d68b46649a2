//! API keys and rate limits, over HTTP and gRPC: the auth matrix (no key, wrong key,
//! a key for another stream, the right key) and limits that answer 429 /
//! RESOURCE_EXHAUSTED and then recover.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use sluice_proto::v1::{Event, IngestRequest};
use sluice_server::NodeOptions;
use tonic::Code;

use crate::support::*;

struct TestKey {
    key: String,
    toml: String,
}

fn key(name: &str, streams: &[&str], extra: &str) -> TestKey {
    let (key, toml) = key_toml(name, streams, extra);
    TestKey { key, toml }
}

/// A node whose config file holds `toml`.
async fn node_with(toml: &str) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[]);
    auth_from_toml(&mut config, dir.path(), toml);
    start_config(config, dir, NodeOptions::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_auth_matrix() {
    let a = key("team-a", &["a.*"], "");
    let b = key("team-b", &["b"], "");
    let node = node_with(&format!("{}{}", a.toml, b.toml)).await;
    let http = Http::h1();
    let bearer_a = format!("Bearer {}", a.key);
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        ("a.x", vec![JSON], StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            "a.x",
            vec![JSON, ("authorization", "Bearer sk_not_a_key")],
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "a.x",
            vec![JSON, ("x-api-key", "sk_not_a_key")],
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "b",
            vec![JSON, ("authorization", &bearer_a)],
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "a.x",
            vec![JSON, ("authorization", &bearer_a)],
            StatusCode::ACCEPTED,
            "",
        ),
        (
            "b",
            vec![JSON, ("x-api-key", &b.key)],
            StatusCode::ACCEPTED,
            "",
        ),
    ];
    for (stream, headers, status, code) in cases {
        let r = http
            .post(&node.events_url(stream), &headers, "{\"hello\":1}")
            .await;
        assert_eq!(r.status, status, "{stream} {headers:?}: {:?}", r.body);
        if !code.is_empty() {
            assert_eq!(r.json()["error"]["code"], code);
        }
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            sink_lines(&node.out_dir("a.x")).len() == 1 && sink_lines(&node.out_dir("b")).len() == 1
        })
        .await
    );
    let m = node.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_ingest_rejected_requests_total{reason=\"unauthorized\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "sluice_ingest_rejected_requests_total{reason=\"forbidden\"}"
        ),
        1.0
    );
}

fn request(stream: &str, events: &[&str]) -> IngestRequest {
    IngestRequest {
        stream: stream.into(),
        events: events
            .iter()
            .map(|e| Event {
                payload: e.to_string().into(),
                ..Default::default()
            })
            .collect(),
        return_ids: false,
    }
}

fn with_key(req: IngestRequest, header: &str, value: &str) -> tonic::Request<IngestRequest> {
    let mut r = tonic::Request::new(req);
    r.metadata_mut().insert(
        header
            .to_string()
            .parse::<tonic::metadata::MetadataKey<_>>()
            .unwrap(),
        value.parse().unwrap(),
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_auth_matrix() {
    let a = key("team-a", &["a.*"], "");
    let node = node_with(&a.toml).await;
    let mut client = grpc_client(node.node.http_addr);
    let bearer = format!("Bearer {}", a.key);

    let err = client.ingest(request("a.x", &["{}"])).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = client
        .ingest(with_key(request("a.x", &["{}"]), "x-api-key", "sk_wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = client
        .ingest(with_key(request("b", &["{}"]), "authorization", &bearer))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // An event naming another stream is checked too.
    let mut sneaky = request("a.x", &["{\"n\":1}", "{\"n\":2}"]);
    sneaky.events[1].stream = "b".into();
    let err = client
        .ingest(with_key(sneaky, "authorization", &bearer))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("event 2"), "{err:?}");

    let ok = client
        .ingest(with_key(
            request("a.x", &["{\"ok\":1}"]),
            "x-api-key",
            &a.key,
        ))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().accepted, 1);
    assert!(
        wait_until(Duration::from_secs(10), || sink_lines(&node.out_dir("a.x"))
            .len()
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink_lines(&node.out_dir("b")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rate_limit_answers_429_then_recovers() {
    let node = node_with("[limits]\nevents_per_s = 200\n").await;
    let http = Http::h1();
    let url = node.events_url("rl");
    let body: String = (0..100).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let mut accepted = 0;
    let mut limited = None;
    for _ in 0..10 {
        let r = http.post(&url, &[NDJSON], body.clone()).await;
        match r.status {
            StatusCode::ACCEPTED => accepted += 100,
            StatusCode::TOO_MANY_REQUESTS => {
                limited = Some(r);
                break;
            }
            s => panic!("unexpected {s}"),
        }
    }
    let r = limited.expect("the limit was hit");
    assert!(
        (200..=400).contains(&accepted),
        "{accepted} passed the limit first"
    );
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = http.post(&url, &[NDJSON], body.clone()).await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "recovered after {:?}",
        started.elapsed()
    );
    let m = node.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_ingest_rejected_requests_total{reason=\"rate_limited\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rate_limit_is_resource_exhausted_over_grpc_and_spares_other_keys() {
    let slow = key("slow", &["*"], "bytes_per_s = \"1 KiB\"");
    let fast = key("fast", &["*"], "");
    let node = node_with(&format!("{}{}", slow.toml, fast.toml)).await;
    let mut client = grpc_client(node.node.http_addr);
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(600));
    let mut refused = None;
    for _ in 0..10 {
        match client
            .ingest(with_key(request("k", &[&big]), "x-api-key", &slow.key))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the key's limit was hit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("key slow"), "{err:?}");
    // Another key is not limited by it.
    client
        .ingest(with_key(request("k", &[&big]), "x-api-key", &fast.key))
        .await
        .unwrap();
    let wait = sluice_server::error::retry_after_ms(&err);
    assert!(wait > 0 && wait <= 1000, "{wait} ms");
    tokio::time::sleep(Duration::from_millis(wait + 20)).await;
    client
        .ingest(with_key(request("k", &[&big]), "x-api-key", &slow.key))
        .await
        .expect("the limit recovers after the retry delay");
}
