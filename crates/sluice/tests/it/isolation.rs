//! Stream isolation on the broker queues: producer headers are data, never control
//! (issue #14, point 3). Real `nats-server -js` / tansu, real gRPC calls, real files;
//! each node's data dir sits two levels below a temp root, so a path escaping `out/`
//! would land inside the root, where the tests look for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use sluice_proto::v1::{Event, IngestRequest};
use sluice_server::NodeOptions;
use tonic::Code;

use crate::brokers::{Broker, NatsServer};
use crate::kafka::Tansu;
use crate::support::*;

/// A node in `<root>/a/b/data` with the API keys of `keys_toml` and `flags`.
async fn node_in(root: &Path, keys_toml: &str, flags: &[(&str, &str)]) -> TestNode {
    let data = root.join("a").join("b").join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut config = test_config(&data, flags);
    if !keys_toml.is_empty() {
        auth_from_toml(&mut config, root, keys_toml);
    }
    // The caller's root owns the files; the temp dir only keeps the type happy.
    start_config(config, tempfile::tempdir().unwrap(), NodeOptions::default()).await
}

fn data_dir(root: &Path) -> PathBuf {
    root.join("a").join("b").join("data")
}

/// A key for `streams`: (bearer token, its TOML).
fn api_key(name: &str, streams: &[&str]) -> (String, String) {
    let (key, toml) = key_toml(name, streams, "");
    (format!("Bearer {key}"), toml)
}

fn authed<T>(msg: T, bearer: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    r
}

fn event(n: u32, headers: &[(&str, &str)]) -> Event {
    Event {
        payload: format!("{{\"n\":{n}}}").into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn request(stream: &str, events: Vec<Event>) -> IngestRequest {
    IngestRequest {
        stream: stream.into(),
        events,
        return_ids: false,
    }
}

/// Every file under `dir`, recursively (directories are not listed).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        match p.is_dir() {
            true => out.extend(files(&p)),
            false => out.push(p),
        }
    }
    out.sort();
    out
}

/// Files under `root` outside the node's data dir, and directories under the data
/// dir's `out/` other than `allowed`.
fn escaped(root: &Path, allowed: &[&str]) -> Vec<PathBuf> {
    let data = data_dir(root);
    let mut bad: Vec<PathBuf> = files(root)
        .into_iter()
        .filter(|p| !p.starts_with(&data) && !p.ends_with("keys.toml"))
        .collect();
    if let Ok(rd) = std::fs::read_dir(data.join("out")) {
        bad.extend(
            rd.map(|e| e.unwrap().path())
                .filter(|p| !allowed.iter().any(|a| p.ends_with(a))),
        );
    }
    bad
}

/// The reserved and malformed producer headers that must be refused, each on its
/// own, naming the header.
const HOSTILE: &[(&str, &str)] = &[
    ("sluice-stream", "../../x"),
    ("sluice-stream", "other"),
    ("Sluice-Stream", "other"),
    ("SLUICE-STREAM", "other"),
    ("sluice-id", "x"),
    ("sluice-key", "x"),
    ("Nats-Expected-Last-Sequence", "1"),
    ("Nats-Rollup", "all"),
    ("NATS-ROLLUP", "all"),
    ("Nats-Msg-Id", "x"),
    ("Nats-Expected-Stream", "OTHER"),
    ("KV-Operation", "PURGE"),
    ("trace", "a\r\nsluice-stream: other"),
    ("a:b", "v"),
];

/// A key limited to `web.*`, on the NATS queue: every hostile header is refused with
/// INVALID_ARGUMENT naming it and the event, on all three calls, counted; nothing of
/// those requests is written anywhere; a plain header still passes as data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_control_headers_are_refused_on_every_grpc_call() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (bearer, toml) = api_key("web", &["web.*"]);
    let url = nats.url();
    let node = node_in(
        root.path(),
        &toml,
        &[("queue.kind", "nats"), ("queue.url", &url)],
    )
    .await;
    let mut client = grpc_client(node.node.http_addr);
    for (name, value) in HOSTILE {
        let req = request(
            "web.clicks",
            vec![event(1, &[]), event(2, &[(name, value)])],
        );
        let err = client.ingest(authed(req, &bearer)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().contains("event 2") && err.message().contains(name),
            "{name}: {err:?}"
        );
    }
    // The same over the two streaming calls.
    let bad = || {
        request(
            "web.clicks",
            vec![event(3, &[("sluice-stream", "../../x")])],
        )
    };
    let err = client
        .ingest_stream(authed(futures_util::stream::iter(vec![bad()]), &bearer))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("sluice-stream"), "{err:?}");
    let mut acks = client
        .ingest_bidi(authed(futures_util::stream::iter(vec![bad()]), &bearer))
        .await
        .unwrap()
        .into_inner();
    let ack = acks.next().await.unwrap().unwrap();
    assert_eq!(ack.accepted, 0);
    assert!(
        ack.error.contains("InvalidArgument") && ack.error.contains("sluice-stream"),
        "{ack:?}"
    );
    // A plain header is data: delivered, in its own stream.
    let ok = request("web.clicks", vec![event(9, &[("trace", "abc")])]);
    client.ingest(authed(ok, &bearer)).await.unwrap();
    let out = data_dir(root.path()).join("out").join("web.clicks");
    assert!(wait_until(Duration::from_secs(20), || !sink_lines(&out).is_empty()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = sink_lines(&out);
    assert_eq!(lines.len(), 1, "only the good event: {lines:?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["stream"], "web.clicks");
    assert_eq!(v["headers"]["trace"], "abc");
    assert_eq!(v["data"]["n"], 9);
    assert_eq!(escaped(root.path(), &["web.clicks"]), Vec::<PathBuf>::new());
    let m = node.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_ingest_rejected_requests_total{reason=\"invalid_header\"}"
        ),
        (HOSTILE.len() + 2) as f64
    );
    node.node.shutdown();
    node.node.wait().await;
}

/// Two producers (two keys, two streams) send the same explicit event id through
/// the NATS queue: both events are delivered. (JetStream's duplicate window once
/// dropped the second, after its 202.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_from_two_producers_is_delivered_twice() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (a, a_toml) = api_key("a", &["a.*"]);
    let (b, b_toml) = api_key("b", &["b.*"]);
    let url = nats.url();
    let node = node_in(
        root.path(),
        &format!("{a_toml}{b_toml}"),
        &[("queue.kind", "nats"), ("queue.url", &url)],
    )
    .await;
    let mut client = grpc_client(node.node.http_addr);
    for (bearer, stream, n) in [
        (&a, "a.orders", 1),
        (&b, "b.orders", 2),
        (&a, "a.orders", 3),
    ] {
        let mut e = event(n, &[]);
        e.id = "order-17".into();
        let r = client
            .ingest(authed(request(stream, vec![e]), bearer))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted, 1);
    }
    let out = data_dir(root.path()).join("out");
    let count =
        || sink_lines(&out.join("a.orders")).len() + sink_lines(&out.join("b.orders")).len();
    wait_until(Duration::from_secs(15), || count() >= 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_lines = sink_lines(&out.join("b.orders"));
    assert_eq!(
        b_lines.len(),
        1,
        "producer b's event is not suppressed by a's id"
    );
    let a_lines = sink_lines(&out.join("a.orders"));
    assert_eq!(a_lines.len(), 2, "nor a's second request by its first");
    for l in a_lines.iter().chain(&b_lines) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(
            v["id"], "order-17",
            "the producer's id still travels as sluice-id"
        );
    }
    node.node.shutdown();
    node.node.wait().await;
}

/// Messages published straight to the queue's JetStream subjects with a path for a
/// stream, a second `sluice-stream`, or no sluice headers at all are dead-lettered
/// under `_quarantine` with the reason, counted, and acked; nothing is written
/// outside `out/` (nor in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_jetstream_messages_are_dead_lettered_not_written() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let url = nats.url();
    let node = node_in(
        root.path(),
        "",
        &[("queue.kind", "nats"), ("queue.url", &url)],
    )
    .await;
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let publish = |pairs: &[(&str, &str)], payload: &'static str| {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, *v);
        }
        let js = js.clone();
        async move {
            js.publish_with_headers("sluice.events.x", h, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let base = [
        ("sluice-id", "t-1"),
        ("sluice-received-at", "1700000000000000000"),
    ];
    publish(&[base[0], base[1], ("sluice-stream", "../x")], "{\"n\":1}").await;
    publish(
        &[
            base[0],
            base[1],
            ("sluice-stream", "web"),
            ("sluice-stream", "../../y"),
        ],
        "{\"n\":2}",
    )
    .await;
    publish(&[], "not json").await;
    // Every header right, but a payload the file sink would write as a broken line.
    publish(&[base[0], base[1], ("sluice-stream", "web")], "{\"n\":").await;
    // Batch messages: a payload that is no record, a layout version there is not, a
    // batch header with another header beside it.
    let batch = [("sluice-batch", "1"), ("sluice-stream", "web")];
    publish(&batch, "{\"n\":3}").await;
    publish(&[("sluice-batch", "2"), ("sluice-stream", "web")], "{}").await;
    publish(&[batch[0], batch[1], ("trace", "x")], "{}").await;
    let dead = data_dir(root.path()).join("dead").join("_quarantine");
    assert!(
        wait_until(Duration::from_secs(20), || sink_lines(&dead).len() >= 7).await,
        "quarantined: {:?}",
        files(root.path())
    );
    let reasons: Vec<String> = sink_lines(&dead)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["headers"]["sluice-dead-letter-sink"], "queue");
            v["headers"]["sluice-dead-letter-reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for needle in [
        "sluice-stream is invalid",
        "more than once",
        "no sluice-id",
        "payload is refused",
        "batch message is refused: record",
        "layout version",
        "unexpected header",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{needle}: {reasons:?}"
        );
    }
    assert_eq!(escaped(root.path(), &[]), Vec::<PathBuf>::new());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, "sluice_dead_lettered_events_total{sink=\"file\"}"),
        7.0
    );
    // Acked: a fresh consumer of the same group finds nothing left.
    node.node.shutdown();
    node.node.wait().await;
    let stream = js.get_stream("SLUICE").await.unwrap();
    let acked = wait_until_async(Duration::from_secs(5), || {
        let mut s = stream.clone();
        async move { s.info().await.unwrap().state.messages == 0 }
    })
    .await;
    assert!(acked, "the quarantined messages were acked");
}

/// The same on the Kafka queue: a record produced straight to the topic with a path
/// for a stream goes to the dead-letter sink, never under `out/..`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_kafka_records_are_dead_lettered_not_written() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let url = format!("kafka://{}", tansu.brokers());
    let node = node_in(
        root.path(),
        "",
        &[("queue.kind", "kafka"), ("queue.url", &url)],
    )
    .await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .create()
        .unwrap();
    let produce = |headers: &[(&str, &str)], payload: &[u8]| {
        let headers = headers
            .iter()
            .fold(OwnedHeaders::new(), |h, &(key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value),
                })
            });
        let record = FutureRecord::to("sluice-events")
            .key("k")
            .payload(payload)
            .headers(headers);
        let sent = producer.send_result(record).map_err(|(e, _)| e).unwrap();
        async move { sent.await.unwrap().unwrap() }
    };
    let base = [
        ("sluice-id", "t-1"),
        ("sluice-received-at", "1700000000000000000"),
    ];
    for stream in ["../x", "../../y"] {
        produce(&[base[0], ("sluice-stream", stream), base[1]], b"{\"n\":1}").await;
    }
    // Batch records: a value that is no record, a layout version there is not, a
    // batch header with another header beside it, and a real record of stream
    // "web" under a header naming another stream.
    let batch = [("sluice-batch", "1"), ("sluice-stream", "web")];
    produce(&batch, b"{\"n\":3}").await;
    produce(&[("sluice-batch", "2"), batch[1]], b"{}").await;
    produce(&[batch[0], batch[1], ("trace", "x")], b"{}").await;
    let events: Vec<sluice_core::Event> = (0..2)
        .map(|n| sluice_core::Event::new("web", format!("{{\"n\":{n}}}")))
        .collect();
    let mut record = Vec::new();
    sluice_proto::record::encode_events(&events, &mut record);
    produce(&[batch[0], ("sluice-stream", "other")], &record).await;
    let dead = data_dir(root.path()).join("dead").join("_quarantine");
    assert!(
        wait_until(Duration::from_secs(25), || sink_lines(&dead).len() >= 6).await,
        "quarantined: {:?}",
        files(root.path())
    );
    let reasons: Vec<String> = sink_lines(&dead)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let reason = v["headers"]["sluice-dead-letter-reason"].as_str().unwrap();
            reason.to_string()
        })
        .collect();
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    for (needle, count) in [
        ("sluice-stream is invalid", 2),
        ("batch message is refused: record", 1),
        ("layout version", 1),
        ("unexpected header", 1),
        ("is not the message's", 1),
    ] {
        let n = reasons.iter().filter(|r| r.contains(needle)).count();
        assert_eq!(n, count, "{needle}: {reasons:?}");
    }
    assert_eq!(escaped(root.path(), &[]), Vec::<PathBuf>::new());
    node.node.shutdown();
    node.node.wait().await;
}
