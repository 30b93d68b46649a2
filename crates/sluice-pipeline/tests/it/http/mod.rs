//! The HTTP sink against a real server on 127.0.0.1:0: chunking, `Retry-After`,
//! bisection, concurrency, gzip, timeouts, TLS with a private CA, bad options.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use sluice_core::units::{ByteSize, HumanDuration};
use sluice_core::{Batch, Event, Queue, Sink, SinkError};
use sluice_pipeline::sinks::{FileSink, HttpSink, HttpSinkOptions};
use sluice_pipeline::{Processor, ProcessorOptions};
use sluice_queue::MemoryQueue;
use tokio_util::sync::CancellationToken;

use crate::read_lines;

mod server;

use server::{private_ca, serve, server, Post, Reply};

/// The sink's private threshold (`GZIP_INLINE_BYTES` in src/sinks/http/mod.rs) above
/// which a body is gzipped on the blocking pool; its unit tests fail to compile if
/// the two differ.
const GZIP_INLINE_BYTES: usize = 32 * 1024;

/// `n` events of stream `clicks`; those `poison(i)` picks carry `"poison"`.
fn events(n: usize, poison: impl Fn(usize) -> bool) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let kind = if poison(i) { "poison" } else { "fine" };
            Event::new(
                "clicks",
                Bytes::from(format!("{{\"n\":{i},\"kind\":\"{kind}\"}}")),
            )
        })
        .collect()
}

/// Envelopes for `events`, one per line (a copy of the sink's own, crate-private).
fn envelopes(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        sluice_proto::envelope::write_line(e, &mut out);
    }
    out
}

fn lines_of(events: &[Event]) -> Vec<String> {
    String::from_utf8(envelopes(events))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn sink(url: &str, tweak: impl FnOnce(&mut HttpSinkOptions)) -> HttpSink {
    let mut opts = HttpSinkOptions {
        url: url.to_string(),
        ..HttpSinkOptions::default()
    };
    tweak(&mut opts);
    HttpSink::new(opts).unwrap()
}

/// Runs a processor over `events` until the queue is drained.
async fn process(events: Vec<Event>, sink: HttpSink, dead_letter: Option<FileSink>) {
    process_with(events, sink, dead_letter, Duration::from_millis(50)).await;
}

/// [`process`] with `retry_max` (the cap on delays, `Retry-After` included).
async fn process_with(
    events: Vec<Event>,
    sink: HttpSink,
    dead_letter: Option<FileSink>,
    retry_max: Duration,
) {
    let queue = MemoryQueue::new(10_000, u64::MAX);
    queue.append(Batch::new(events)).await.unwrap();
    let opts = ProcessorOptions {
        workers: 1,
        batch_max_wait: Duration::from_millis(1),
        retry_initial: Duration::from_millis(10),
        retry_max,
        drain_on_shutdown: true,
        ..ProcessorOptions::default()
    };
    let mut p = Processor::new(Arc::new(queue), Arc::new(sink), opts);
    if let Some(dl) = dead_letter {
        p = p.with_dead_letter(Arc::new(dl));
    }
    let stop = CancellationToken::new();
    stop.cancel(); // drain, then stop
    tokio::time::timeout(Duration::from_secs(30), p.run(stop))
        .await
        .expect("the processor drained the queue")
        .unwrap();
}

#[tokio::test]
async fn posts_ndjson_envelopes_split_by_max_request_bytes() {
    let srv = server(|_, _| Reply::ok()).await;
    let evs = events(10, |_| false);
    sink(&srv.url, |_| {}).deliver(&evs).await.unwrap();
    let posts = srv.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].headers[CONTENT_TYPE], "application/x-ndjson");
    assert!(posts[0].headers.get(CONTENT_ENCODING).is_none());
    assert_eq!(
        posts[0].lines,
        lines_of(&evs),
        "exactly the envelopes, in order"
    );

    // Three lines fit in a POST: 10 events take 4 POSTs; an oversized event
    // goes alone.
    let srv = server(|_, _| Reply::ok()).await;
    let line = lines_of(&evs[..1])[0].len() + 1;
    let max = line * 3 + line / 2;
    let mut evs = events(10, |_| false);
    evs.insert(
        4,
        Event::new("clicks", format!("{{\"pad\":\"{}\"}}", "x".repeat(2 * max))),
    );
    sink(&srv.url, |o| o.max_request_bytes = ByteSize(max as u64))
        .deliver(&evs)
        .await
        .unwrap();
    let posts = srv.posts();
    assert_eq!(posts.len(), 5, "3 + 1 + 1 (oversized) + 3 + 3 events");
    for p in &posts {
        assert!(p.bytes <= max || p.lines.len() == 1, "{} bytes", p.bytes);
    }
    let all: Vec<String> = posts.iter().flat_map(|p| p.lines.clone()).collect();
    assert_eq!(sorted(all), sorted(lines_of(&evs)), "every event once");
}

#[tokio::test]
async fn retry_after_is_honoured_through_the_processor() {
    let srv = server(|_, _| Reply {
        retry_after: Some("1"),
        body: "busy",
        ..Reply::status(503)
    })
    .await;
    match sink(&srv.url, |_| {}).deliver(&events(3, |_| false)).await {
        Err(SinkError::Retryable {
            message,
            retry_after,
        }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(1)));
            assert!(message.contains("503 Service Unavailable"), "{message}");
            assert!(
                message.contains(&srv.url) && message.ends_with("busy"),
                "{message}"
            );
        }
        other => panic!("expected Retryable, got {other:?}"),
    }

    let srv = server(|_, n| match n {
        0 => Reply {
            retry_after: Some("1"),
            ..Reply::status(503)
        },
        _ => Reply::ok(),
    })
    .await;
    let evs = events(20, |_| false);
    let start = Instant::now();
    process_with(
        evs.clone(),
        sink(&srv.url, |_| {}),
        None,
        Duration::from_secs(5),
    )
    .await;
    let elapsed = start.elapsed();
    let posts = srv.posts();
    assert_eq!(posts.len(), 2);
    let waited = posts[1].at - posts[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(
        srv.taken_ids(),
        evs.iter().map(|e| e.id.to_string()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn retry_after_past_retry_max_is_capped() {
    let srv = server(|_, n| match n {
        0 => Reply {
            retry_after: Some("3600"),
            ..Reply::status(429)
        },
        _ => Reply::ok(),
    })
    .await;
    let evs = events(5, |_| false);
    let max = Duration::from_millis(300);
    tokio::time::timeout(
        Duration::from_secs(10),
        process_with(evs.clone(), sink(&srv.url, |_| {}), None, max),
    )
    .await
    .expect("Retry-After: 3600 was capped by retry_max");
    let posts = srv.posts();
    assert_eq!(posts.len(), 2);
    let waited = posts[1].at - posts[0].at;
    assert!(
        waited >= max && waited < max + Duration::from_secs(2),
        "retried after {waited:?}"
    );
    assert_eq!(
        srv.taken_ids(),
        evs.iter().map(|e| e.id.to_string()).collect::<Vec<_>>()
    );
}

/// Answers 422 to any POST holding a poison event.
fn poison_refused(post: &Post, _: usize) -> Reply {
    if post.lines.iter().any(|l| l.contains("poison")) {
        Reply {
            body: "line holds poison",
            ..Reply::status(422)
        }
    } else {
        Reply::ok()
    }
}

#[tokio::test]
async fn bisection_rejects_exactly_the_refused_events() {
    let poison = [7, 50, 93];
    let evs = events(100, |i| poison.contains(&i));
    let clean: Vec<String> = evs
        .iter()
        .enumerate()
        .filter(|(i, _)| !poison.contains(i))
        .map(|(_, e)| e.id.to_string())
        .collect();

    let srv = server(poison_refused).await;
    match sink(&srv.url, |_| {}).deliver(&evs).await {
        Err(SinkError::Rejected(list)) => {
            let idx: Vec<usize> = list.iter().map(|r| r.index).collect();
            assert_eq!(idx, poison);
            for r in &list {
                let want = format!(
                    "http sink: 422 Unprocessable Entity from {}: line holds poison",
                    srv.url
                );
                assert_eq!(r.reason, want);
            }
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        sorted(srv.taken_ids()),
        sorted(clean.clone()),
        "the 97, each once"
    );
    let posts = srv.posts().len();
    assert!(
        posts <= 1 + 3 * 2 * 7,
        "{posts} POSTs for 3 bad events in 100"
    );

    // Through the processor: the 3 are dead-lettered with the reason, the 97 arrive.
    let srv = server(poison_refused).await;
    let dir = tempfile::tempdir().unwrap();
    let dl = FileSink::new(dir.path(), 1 << 20);
    process(evs, sink(&srv.url, |_| {}), Some(dl.clone())).await;
    assert_eq!(sorted(srv.taken_ids()), sorted(clean));
    let dead = read_lines(&dl.stream_dir("clicks"));
    assert_eq!(dead.len(), 3, "{dead:?}");
    for line in &dead {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["data"]["kind"], "poison");
        let reason = v["headers"]["sluice-dead-letter-reason"].as_str().unwrap();
        assert!(reason.contains("422"), "{reason}");
        assert_eq!(v["headers"]["sluice-dead-letter-sink"], "http");
    }
}

#[tokio::test]
async fn concurrency_bounds_posts_in_flight_across_callers() {
    let srv = server(|_, _| Reply {
        hold: Duration::from_millis(200),
        ..Reply::ok()
    })
    .await;
    let sink = sink(&srv.url, |o| {
        o.concurrency = 2;
        o.max_request_bytes = ByteSize(1); // one event per POST
    });
    let evs = events(6, |_| false);
    let other = sink.clone();
    let start = Instant::now();
    let (a, b) = tokio::join!(sink.deliver(&evs[..3]), other.deliver(&evs[3..]));
    a.unwrap();
    b.unwrap();
    assert_eq!(srv.posts().len(), 6);
    assert_eq!(srv.seen.max_in_flight.load(Ordering::SeqCst), 2);
    // Kept alive and pooled: the two connections carried all six POSTs.
    assert_eq!(srv.seen.connections.load(Ordering::SeqCst), 2);
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
}

#[tokio::test]
async fn gzip_bodies_inflate_to_the_envelopes() {
    let srv = server(|_, _| Reply::ok()).await;
    // Over GZIP_INLINE_BYTES, so the blocking pool compresses.
    let evs = events(800, |_| false);
    sink(&srv.url, |o| o.gzip = true)
        .deliver(&evs)
        .await
        .unwrap();
    let posts = srv.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].headers[CONTENT_ENCODING], "gzip");
    assert_eq!(posts[0].headers[CONTENT_TYPE], "application/x-ndjson");
    assert!(posts[0].bytes > GZIP_INLINE_BYTES);
    assert!(posts[0].wire_bytes < posts[0].bytes / 2);
    assert_eq!(posts[0].lines, lines_of(&evs));
}

#[tokio::test]
async fn connection_refused_is_retryable_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    drop(listener);
    let start = Instant::now();
    match sink(&url, |_| {}).deliver(&events(3, |_| false)).await {
        Err(SinkError::Retryable {
            message,
            retry_after,
        }) => {
            assert!(
                message.starts_with(&format!("http sink: POST {url} failed")),
                "{message}"
            );
            assert_eq!(retry_after, None);
        }
        other => panic!("expected Retryable, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_slow_server_times_out_as_retryable() {
    let srv = server(|_, _| Reply {
        hold: Duration::from_secs(2),
        ..Reply::ok()
    })
    .await;
    let start = Instant::now();
    let err = sink(&srv.url, |o| {
        o.timeout = HumanDuration(Duration::from_millis(200))
    })
    .deliver(&events(3, |_| false))
    .await
    .unwrap_err();
    assert!(
        matches!(&err, SinkError::Retryable { message, .. } if message.contains("within 200ms")),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn unauthorized_is_retried_not_bisected() {
    let srv = server(|_, _| Reply::status(401)).await;
    let err = sink(&srv.url, |o| {
        o.headers = [("Authorization", "Bearer expired")].into_iter().collect();
    })
    .deliver(&events(50, |_| false))
    .await
    .unwrap_err();
    assert!(
        matches!(&err, SinkError::Retryable { message, .. } if message.contains("401")),
        "{err:?}"
    );
    let posts = srv.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].headers["authorization"], "Bearer expired");
}

#[tokio::test]
async fn https_posts_to_a_server_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, acceptor) = private_ca();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let srv = serve(Some(acceptor), |_, _| Reply::ok()).await;
    assert!(srv.url.starts_with("https://127.0.0.1:"));
    let evs = events(10, |_| false);
    sink(&srv.url, |o| o.ca_file = Some(ca_file))
        .deliver(&evs)
        .await
        .unwrap();
    let posts = srv.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].lines, lines_of(&evs));

    // A server whose CA is not trusted is a passing failure, naming the reason.
    let (other_ca, _) = private_ca();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, other_ca).unwrap();
    let err = sink(&srv.url, |o| o.ca_file = Some(other_file))
        .deliver(&evs)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SinkError::Retryable { message, .. }
            if message.contains(&srv.url) && message.contains("invalid peer certificate")),
        "{err:?}"
    );
    assert_eq!(srv.posts().len(), 1);
}

#[test]
fn new_refuses_bad_options() {
    let new = |tweak: fn(&mut HttpSinkOptions)| {
        let mut o = HttpSinkOptions {
            url: "http://localhost:8080/ingest".into(),
            ..HttpSinkOptions::default()
        };
        tweak(&mut o);
        HttpSink::new(o).map(|_| ())
    };
    assert_eq!(new(|_| {}), Ok(()));
    for (tweak, want) in [
        (
            (|o| o.url = String::new()) as fn(&mut HttpSinkOptions),
            "https:// URL",
        ),
        (|o| o.url = "ftp://host/x".into(), "https:// URL"),
        (
            |o| {
                o.url = "https://host/x".into();
                o.ca_file = Some("/nonexistent/ca.pem".into());
            },
            "/nonexistent/ca.pem",
        ),
        (|o| o.url = "http://user:pw@host/x".into(), "credentials"),
        (|o| o.concurrency = 0, "concurrency"),
        (|o| o.max_request_bytes = ByteSize(0), "max_request_bytes"),
        (|o| o.timeout = HumanDuration(Duration::ZERO), "timeout"),
        (
            |o| o.headers = [("bad header", "x")].into_iter().collect(),
            "header name",
        ),
        (
            |o| o.headers = [("content-type", "text/plain")].into_iter().collect(),
            "set by the sink",
        ),
        (
            |o| o.headers = [("x-token", "a\nb")].into_iter().collect(),
            "value of x-token",
        ),
    ] {
        let err = new(tweak).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}
