//! NATS JetStream as the queue and as a sink, against a real `nats-server -js`.

use std::time::Duration;

use futures_util::StreamExt;
use hyper::StatusCode;
use sluice_brokers::nats::{NatsOptions, NatsQueue};
use sluice_core::units::HumanDuration;
use sluice_core::{Batch, Event, Queue};

use crate::brokers::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_through_jetstream_to_files() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    ingest_to_file(&nats, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_restarted_under_load_loses_no_acked_event() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    broker_restart_under_load(&mut nats, &[("queue.publish_timeout", "1s")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_two_processors_one_killed() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A short ack wait, so the killed processor's deliveries come back quickly.
    let conf = dir.path().join("sluice.toml");
    std::fs::write(&conf, "[queue]\nack_wait = \"3s\"\n").unwrap();
    scale_out(&nats, &["--config", conf.to_str().unwrap()]).await;
}

/// A deliver-never-commit consumer sees the same events again after `ack_wait`, with
/// the delivery count going up: what `processor.max_deliveries` acts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_deliveries_come_back_counted() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let q = NatsQueue::connect(NatsOptions {
        url: nats.url(),
        ack_wait: HumanDuration(Duration::from_secs(1)),
        ..Default::default()
    })
    .await
    .unwrap();
    let events: Vec<Event> = (0..10)
        .map(|i| Event::new("s", format!("{{\"i\":{i}}}")))
        .collect();
    q.append(Batch::new(events.clone())).await.unwrap();
    let c = q.consumer("g").unwrap();
    // Longer than ack_wait: the poll must not hand out a redelivery of its own events.
    let first = c.poll(100, Duration::from_secs(2)).await.unwrap().unwrap();
    assert_eq!(first.events, events);
    assert_eq!(first.attempts, vec![1; 10]);
    drop(c);
    let c = q.consumer("g").unwrap();
    // Polls end within ack_wait / 2, so wait for the redelivery across several.
    let mut again = None;
    for _ in 0..20 {
        again = c.poll(100, Duration::from_secs(5)).await.unwrap();
        if again.is_some() {
            break;
        }
    }
    let again = again.expect("redelivered after ack_wait");
    assert_eq!(again.events, events, "redelivered after ack_wait");
    assert_eq!(again.attempts, vec![2; 10]);
    c.commit(again.token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(c
        .poll(100, Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
}

/// The NATS sink against a server whose `max_payload` is 2 KiB: the two events over
/// it land in the dead-letter files with the reason; the others are in JetStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_nats_sink_refuses_are_dead_lettered() {
    let (Some(queue), Some(sink)) = (
        NatsServer::start().await,
        NatsServer::start_with("max_payload: 2048").await,
    ) else {
        return;
    };
    let (qurl, surl) = (queue.url(), sink.url());
    let node = start(
        &[
            ("queue.kind", "nats"),
            ("queue.url", &qurl),
            ("sink.kind", "nats"),
            ("sink.url", &surl),
            ("sink.stream", "OUT"),
        ],
        Default::default(),
    )
    .await;
    let big = "x".repeat(4000);
    let body: String = (0..23)
        .map(|i| match i % 8 {
            7 => format!("{{\"k\":\"big-{i}\",\"pad\":\"{big}\"}}\n"),
            _ => format!("{{\"k\":\"ok-{i}\"}}\n"),
        })
        .collect();
    let a = Http::h1()
        .post(&node.events_url("load"), &[NDJSON], body)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let dead_dir = node.dir.path().join("dead").join("load");
    assert!(wait_until(Duration::from_secs(30), || sink_lines(&dead_dir).len() >= 2).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dead = sink_lines(&dead_dir);
    let keys: Vec<String> = dead
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let reason = v["headers"]["sluice-dead-letter-reason"].as_str().unwrap();
            assert!(reason.contains("max payload"), "{reason}");
            assert_eq!(v["headers"]["sluice-dead-letter-sink"], "nats");
            v["data"]["k"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(keys, ["big-7", "big-15"], "exactly the oversized events");
    // The rest are in the sink's stream, each once.
    let client = async_nats::connect(surl.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("OUT").await.unwrap();
    assert!(
        wait_until_async(Duration::from_secs(10), || {
            let mut s = stream.clone();
            async move { s.info().await.unwrap().state.messages == 21 }
        })
        .await
    );
    assert_eq!(stream.info().await.unwrap().state.messages, 21);
    let page = node.metrics().await;
    assert_eq!(
        metric(&page, "sluice_dead_lettered_events_total{sink=\"nats\"}"),
        2.0
    );
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut msgs = consumer.fetch().max_messages(50).messages().await.unwrap();
    let mut n = 0;
    while let Some(m) = msgs.next().await {
        let m = m.unwrap();
        assert!(m.subject.as_str() == "sluice.out.load");
        n += 1;
    }
    assert_eq!(n, 21);
    node.node.shutdown();
    node.node.wait().await;
}

/// An append of many events travels as batch messages: one JetStream message for a
/// 500-event request, several when it passes the server's `max_payload` (each
/// within it), and a consumer gets every event back in order, once; committing acks
/// them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_many_events_is_one_message_or_a_few() {
    let Some(nats) = NatsServer::start_with("max_payload: 65536").await else {
        return;
    };
    let q = NatsQueue::connect(NatsOptions {
        url: nats.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    let url = nats.url();
    // ~40 KB: one message.
    let small: Vec<Event> = (0..500)
        .map(|i| Event::new("web", format!("{{\"i\":{i}}}")))
        .collect();
    q.append(Batch::new(small.clone())).await.unwrap();
    assert_eq!(stored_messages(&url).await, 1);
    // ~260 KB of events: past 64 KiB, so split, each message within the limit.
    let pad = "p".repeat(200);
    let big: Vec<Event> = (0..1000)
        .map(|i| Event::new("web", format!("{{\"i\":{i},\"pad\":\"{pad}\"}}")))
        .collect();
    q.append(Batch::new(big.clone())).await.unwrap();
    let messages = stored_messages(&url).await;
    assert!((1 + 5..=1 + 6).contains(&messages), "{messages} messages");
    let c = q.consumer("g").unwrap();
    let got = drain(&*c, 1500).await;
    let want: Vec<Event> = small.into_iter().chain(big).collect();
    assert_eq!(got, want, "every event, in order, once");
    assert!(
        wait_until_async(Duration::from_secs(5), || {
            let url = url.clone();
            async move { stored_messages(&url).await == 0 }
        })
        .await,
        "committing acked every message"
    );
}

/// Concurrent single-event appends share messages (group commit for the broker):
/// 200 at once are acked, stored in fewer messages than events, and read back each
/// once; an append of a bad event among them fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_event_appends_share_messages() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let q = std::sync::Arc::new(
        NatsQueue::connect(NatsOptions {
            url: nats.url(),
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move {
                let stream = if i.is_multiple_of(2) { "a" } else { "b" };
                let mut e = Event::new(stream, format!("{{\"i\":{i}}}"));
                if i == 7 {
                    e.headers = vec![("Nats-Rollup".into(), "all".into())];
                }
                (i, q.append(Batch::new(vec![e])).await)
            })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(r.is_err(), i == 7, "append {i}: {r:?}");
    }
    let messages = stored_messages(&nats.url()).await;
    assert!(messages < 199, "{messages} messages for 199 events");
    let c = q.consumer("g").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for e in drain(&*c, 199).await {
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        let i = v["i"].as_u64().unwrap();
        assert_eq!(&*e.stream, if i.is_multiple_of(2) { "a" } else { "b" });
        assert!(seen.insert(i), "event {i} once");
    }
    assert!(!seen.contains(&7));
}

/// Messages JetStream holds in sluice's stream now.
async fn stored_messages(url: &str) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let mut stream = js.get_stream("SLUICE").await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Polls and commits until `n` events came back (each on its first delivery).
async fn drain(c: &dyn sluice_core::Consumer, n: usize) -> Vec<Event> {
    let mut got = Vec::new();
    while got.len() < n {
        let d = c
            .poll(5000, Duration::from_secs(2))
            .await
            .unwrap()
            .expect("events");
        assert_eq!(d.attempts.len(), d.events.len());
        assert!(d.attempts.iter().all(|&a| a == 1));
        got.extend(d.events);
        c.commit(d.token).await.unwrap();
    }
    got
}

/// The NATS queue's own options from the config reach the server: a seed list whose
/// first server is down, an authentication token and a stream name. Without the
/// token the node does not start, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_list_and_a_token_reach_a_secured_server() {
    let Some(nats) = NatsServer::start_with("authorization { token: \"s3cret-token\" }").await
    else {
        return;
    };
    let dead = free_addr();
    let seeds = format!("nats://{dead},{}", nats.url());
    let dir = tempfile::tempdir().unwrap();
    let refused = sluice_server::Node::start(
        test_config(dir.path(), &[("queue.kind", "nats"), ("queue.url", &seeds)]),
        Default::default(),
    )
    .await
    .err()
    .expect("no token, no start")
    .to_string();
    assert!(refused.contains("connecting to NATS"), "{refused}");
    assert!(!refused.contains("s3cret"), "{refused}");

    let node = start(
        &[
            ("queue.kind", "nats"),
            ("queue.url", &seeds),
            ("queue.token", "s3cret-token"),
            ("queue.stream", "AUTHED"),
            ("queue.subject_prefix", "authed.events"),
        ],
        Default::default(),
    )
    .await;
    let a = Http::h1()
        .post(&node.events_url("web"), &[JSON], "{\"k\":1}")
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    let out = node.dir.path().join("out").join("web");
    assert!(wait_until(Duration::from_secs(20), || sink_lines(&out).len() == 1).await);
    // The stream is the configured one, on the configured subjects.
    let client = async_nats::ConnectOptions::with_token("s3cret-token".into())
        .connect(nats.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("AUTHED").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, ["authed.events.>"]);
    node.node.shutdown();
    node.node.wait().await;
}

/// `sluice process` binds no ingest listener, so a `listen` off loopback without
/// API keys (the container image's default) does not stop it; `sluice ingest` with
/// the same config refuses to serve ingest open to the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_roles_that_serve_ingest_check_the_open_listener() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let url = nats.url();
    let flags = [
        ("queue.kind", "nats"),
        ("queue.url", url.as_str()),
        ("listen", "0.0.0.0:0"),
    ];
    let start = |role| {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path(), &flags);
        async move {
            let r = sluice_server::Node::start(
                config,
                sluice_server::NodeOptions {
                    role,
                    ..Default::default()
                },
            )
            .await;
            drop(dir);
            r
        }
    };
    let refused = start(sluice_server::Role::Ingest)
        .await
        .err()
        .expect("ingest open without keys");
    let why = anyhow_chain(&refused);
    assert!(why.contains("is not a loopback address"), "{why}");
    let node = start(sluice_server::Role::Process)
        .await
        .expect("process serves no listen");
    node.shutdown();
    node.wait().await;
}

/// An error and its sources, as `sluice` prints them.
fn anyhow_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}
