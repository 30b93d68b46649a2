//! HTTP ingest end to end: bodies in every accepted shape land in the file sink
//! verbatim with their ids; every error answers its status and writes nothing.

use std::io::Write;
use std::time::Duration;

use hyper::{Method, StatusCode};
use sluice_server::NodeOptions;

use crate::support::*;

async fn delivered(node: &TestNode, stream: &str, n: usize) -> Vec<String> {
    let dir = node.out_dir(stream);
    assert!(
        wait_until(Duration::from_secs(10), || sink_lines(&dir).len() >= n).await,
        "expected {n} events in {}, found {}",
        dir.display(),
        sink_lines(&dir).len()
    );
    sink_lines(&dir)
}

/// The ids of a `?ids=true` answer.
fn ids_of(a: &Answer) -> Vec<String> {
    a.json()["ids"]
        .as_array()
        .expect("ids requested")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_shape_lands_verbatim_with_its_id() {
    let node = start(&[], NodeOptions::default()).await;
    let http = Http::h1();
    let url = format!("{}?ids=true", node.events_url("clicks"));

    let single = r#"{"kind": "single",  "n": 1}"#;
    let a = http.post(&url, &[JSON], single).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(a.json()["accepted"], 1);
    let mut ids = ids_of(&a);

    let array = r#"[{"kind":"array","n":2}, {"kind":"array","n":3}]"#;
    let a = http.post(&url, &[JSON], array).await;
    assert_eq!(a.json()["accepted"], 2);
    ids.extend(ids_of(&a));

    let ndjson = "{\"kind\":\"ndjson\",\"n\":4}\n\n{\"kind\":\"ndjson\", \"n\":5}\n";
    let a = http.post(&url, &[NDJSON], ndjson).await;
    assert_eq!(a.json()["accepted"], 2);
    ids.extend(ids_of(&a));

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"{\"kind\":\"gzip\",\"n\":6}\n{\"kind\":\"gzip\",\"n\":7}\n")
        .unwrap();
    let a = http
        .post(
            &url,
            &[NDJSON, ("content-encoding", "gzip")],
            gz.finish().unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    ids.extend(ids_of(&a));

    let zst = zstd::encode_all(&b"[{\"kind\":\"zstd\",\"n\":8}]"[..], 3).unwrap();
    let a = http
        .post(&url, &[JSON, ("content-encoding", "zstd")], zst)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    ids.extend(ids_of(&a));

    let lines = delivered(&node, "clicks", 8).await;
    assert_eq!(lines.len(), 8, "{lines:#?}");
    let expected = [
        r#"{"kind": "single",  "n": 1}"#,
        r#"{"kind":"array","n":2}"#,
        r#"{"kind":"array","n":3}"#,
        r#"{"kind":"ndjson","n":4}"#,
        r#"{"kind":"ndjson", "n":5}"#,
        r#"{"kind":"gzip","n":6}"#,
        r#"{"kind":"gzip","n":7}"#,
        r#"{"kind":"zstd","n":8}"#,
    ];
    let mut got: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["stream"], "clicks");
            assert!(v["key"].is_null());
            assert!(v["received_at"].as_str().unwrap().ends_with('Z'));
            (
                v["id"].as_str().unwrap().to_string(),
                raw_data(l).to_string(),
            )
        })
        .collect();
    got.sort_by_key(|(_, d)| serde_json::from_str::<serde_json::Value>(d).unwrap()["n"].as_u64());
    for (i, (id, data)) in got.iter().enumerate() {
        assert_eq!(data, expected[i], "payload kept byte for byte");
        assert_eq!(id, &ids[i], "the id in the 202 is the id delivered");
    }
    node.node.shutdown();
    assert!(node.node.wait().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_on_the_same_port() {
    let node = start(&[], NodeOptions::default()).await;
    let a = Http::h2()
        .post(&node.events_url("h2"), &[JSON], r#"{"over":"h2c"}"#)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let lines = delivered(&node, "h2", 1).await;
    assert_eq!(raw_data(&lines[0]), r#"{"over":"h2c"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_answer_precisely_and_write_nothing() {
    let node = start(&[("http.max_body_bytes", "64 KiB")], NodeOptions::default()).await;
    let http = Http::h1();
    let url = node.events_url("errs");

    let a = http
        .post(
            &url,
            &[NDJSON],
            "{\"ok\":1}\n{\"ok\":2}\n{\"broken\":\n{\"ok\":4}\n",
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["code"], "invalid_json");
    assert_eq!(a.json()["error"]["line"], 3);

    let a = http.post(&url, &[JSON], "[{\"a\":1}, 7]").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["code"], "not_an_object");

    let a = http
        .post(&format!("{}/v1/nope", node.base), &[JSON], "{}")
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["error"]["code"], "not_found");

    let a = http.request(Method::GET, &url, &[], "").await.unwrap();
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["allow"], "POST");

    let a = http
        .post(&node.events_url("bad%20name"), &[JSON], "{}")
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["code"], "invalid_stream");
    let long = "x".repeat(129);
    let a = http.post(&node.events_url(&long), &[JSON], "{}").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let a = http
        .post(&url, &[("content-type", "text/csv")], "a,b")
        .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(a.json()["error"]["code"], "unsupported_media_type");

    let a = http
        .post(&url, &[JSON, ("content-encoding", "br")], "{}")
        .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(a.json()["error"]["code"], "unsupported_encoding");

    let a = http
        .post(&url, &[JSON, ("content-encoding", "gzip")], "not gzip")
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["code"], "invalid_encoding");

    // Too large as sent.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let a = http.post(&url, &[JSON], big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json()["error"]["code"], "payload_too_large");

    // A gzip bomb: 2 KiB compressed, 16 MiB inflated; cut off at the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1 << 20];
    gz.write_all(b"{\"a\":1}").unwrap();
    for _ in 0..16 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 64 * 1024);
    let a = http
        .post(&url, &[JSON, ("content-encoding", "gzip")], bomb)
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("decompressed"));

    let zbomb = zstd::encode_all(&vec![b' '; 8 << 20][..], 19).unwrap();
    let a = http
        .post(&url, &[JSON, ("content-encoding", "zstd")], zbomb)
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Nothing of any of that was accepted or written, and the server still serves.
    let a = http.post(&url, &[JSON], "{\"fine\":true}").await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let lines = delivered(&node, "errs", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink_lines(&node.out_dir("errs")).len(), 1, "{lines:?}");
    let page = node.metrics().await;
    assert_eq!(metric(&page, "sluice_ingest_events_total"), 1.0);
    assert_eq!(
        metric(
            &page,
            "sluice_ingest_rejected_requests_total{reason=\"invalid_json\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &page,
            "sluice_ingest_rejected_requests_total{reason=\"not_an_object\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &page,
            "sluice_ingest_rejected_requests_total{reason=\"payload_too_large\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(&page, "sluice_sink_delivered_events_total{sink=\"file\"}"),
        1.0
    );
    assert_eq!(
        http.get(&format!("{}/healthz", node.admin)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.get(&format!("{}/readyz", node.admin)).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_queue_and_write_ack_deliver_too() {
    for flags in [[("queue.kind", "memory")], [("queue.ack", "write")]] {
        let node = start(&flags, NodeOptions::default()).await;
        let http = Http::h1();
        let body: String = (0..100).map(|i| format!("{{\"i\":{i}}}\n")).collect();
        let a = http.post(&node.events_url("m"), &[NDJSON], body).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{flags:?}");
        assert_eq!(delivered(&node, "m", 100).await.len(), 100, "{flags:?}");
        node.node.shutdown();
        assert!(node.node.wait().await);
    }
}
