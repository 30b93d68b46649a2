//! Slow clients and shutdown, over raw sockets: a body that stalls gets 408, a client
//! that never finishes its headers is disconnected while others are served, and a
//! request in flight when shutdown starts still completes with its 202, and during
//! the shutdown drain delay new requests get 503 with Retry-After.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use sluice_server::NodeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text[..i]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= i + 4 + len {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_gets_408_and_slowloris_is_cut_off() {
    let node = start(
        &[
            ("http.body_read_timeout", "300ms"),
            ("http.header_read_timeout", "300ms"),
        ],
        NodeOptions::default(),
    )
    .await;
    let addr = node.node.http_addr;

    let mut slow_body = TcpStream::connect(addr).await.unwrap();
    slow_body
        .write_all(b"POST /v1/streams/slow/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let answer = read_response(&mut slow_body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    let mut loris = TcpStream::connect(addr).await.unwrap();
    loris
        .write_all(b"POST /v1/streams/slow/events HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile another client is served.
    let a = Http::h1()
        .post(&node.events_url("fine"), &[JSON], "{\"ok\":1}")
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), loris.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a client that never finished its headers is still connected"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        started.elapsed()
    );
    let m = node.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_connections_closed_total{listener=\"ingest\",reason=\"header_timeout\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_excess_ones_refused() {
    let node = start(
        &[
            ("http.idle_timeout", "400ms"),
            ("http.max_connections", "2"),
        ],
        NodeOptions::default(),
    )
    .await;
    let addr = node.node.http_addr;
    let request =
        b"POST /v1/streams/idle/events HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(request).await.unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 202"));
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(request).await.unwrap();
    assert!(read_response(&mut second).await.starts_with("HTTP/1.1 202"));

    // A third connection is over http.max_connections: closed without an answer.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), third.read_to_end(&mut buf))
        .await
        .expect("the excess connection is closed");
    assert!(n.is_err() || buf.is_empty(), "{buf:?}");

    // Both kept-alive connections go quiet and are closed by the idle timeout.
    let started = Instant::now();
    for s in [&mut first, &mut second] {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest))
            .await
            .expect("an idle connection is closed")
            .unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // The slots are free again.
    let mut again = TcpStream::connect(addr).await.unwrap();
    again.write_all(request).await.unwrap();
    assert!(read_response(&mut again).await.starts_with("HTTP/1.1 202"));
    let m = node.metrics().await;
    let closed = |reason: &str| {
        metric(
            &m,
            &format!("sluice_connections_closed_total{{listener=\"ingest\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(closed("idle_timeout"), 2.0, "{m}");
    assert!(closed("max_connections") >= 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_completes_during_shutdown() {
    let node = start(&[], NodeOptions::default()).await;
    let addr = node.node.http_addr;
    let out = node.out_dir("inflight");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = b"{\"during\":\"shutdown\"}";
    s.write_all(
        format!(
            "POST /v1/streams/inflight/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.node.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections once shutdown started"
    );
    s.write_all(&body[5..]).await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(node.node.wait().await, "clean shutdown");
    let lines = sink_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(raw_data(&lines[0]), "{\"during\":\"shutdown\"}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_503_with_retry_after_during_the_drain_delay() {
    let node = start(&[("shutdown_drain_delay", "2s")], NodeOptions::default()).await;
    let http = Http::h1();
    let url = node.events_url("late");
    assert_eq!(
        http.post(&url, &[JSON], "{\"early\":1}").await.status,
        StatusCode::ACCEPTED
    );
    node.node.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = http.post(&url, &[JSON], "{\"late\":1}").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["error"]["code"], "shutting_down");
    assert_eq!(a.headers["retry-after"], "1");
    let ready = http.get(&format!("{}/readyz", node.admin)).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let out = node.out_dir("late");
    assert!(node.node.wait().await);
    let lines = sink_lines(&out);
    assert_eq!(
        lines.len(),
        1,
        "only the event acked before shutdown: {lines:?}"
    );
    assert_eq!(raw_data(&lines[0]), "{\"early\":1}");
}

/// Rate limits are taken atomically once a request's size is known: concurrent
/// requests cannot all pass the check and then all pay, and the `Retry-After` of a
/// refusal is honest (retrying after it is admitted, retrying earlier is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_cannot_drive_a_key_rate_limit_into_debt() {
    let (node, key) = start_keyed(&[], Some(100)).await;
    let bearer = format!("Bearer {key}");
    let headers = [NDJSON, ("authorization", bearer.as_str())];
    let body: String = (0..1000).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let url = node.events_url("rl");
    let http = Http::h2();
    let answers =
        futures_util::future::join_all((0..20).map(|_| http.post(&url, &headers, body.clone())))
            .await;
    let accepted = answers
        .iter()
        .filter(|a| a.status == StatusCode::ACCEPTED)
        .count();
    assert_eq!(
        accepted, 1,
        "a 100 events/s key took {accepted} x 1,000 events at once"
    );
    let mut waits = Vec::new();
    for a in answers.iter().filter(|a| a.status != StatusCode::ACCEPTED) {
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(a.json()["error"]["code"], "rate_limited");
        waits.push(
            a.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    // The debt: 1,000 events at 100/s, less the one-second burst.
    assert!(waits.iter().all(|w| (9..=10).contains(w)), "{waits:?}");

    // Earlier than that, still refused, and told the rest of the wait.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let early = http.post(&url, &headers, body.clone()).await;
    assert_eq!(early.status, StatusCode::TOO_MANY_REQUESTS);
    let rest: u64 = early.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((4..=5).contains(&rest), "Retry-After {rest}");
    tokio::time::sleep(Duration::from_secs(rest)).await;
    let again = http.post(&url, &headers, body.clone()).await;
    assert_eq!(
        again.status,
        StatusCode::ACCEPTED,
        "locked out past its Retry-After"
    );
}

/// An HTTP/1.1 answer sent before the body was read (no key, unknown path) says
/// `Connection: close` and closes, so a client never sends its next request on a
/// connection holding the rest of a body; an error after the whole body was read
/// keeps the connection, and the next request on it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_is_read_closes_the_connection_and_says_so() {
    let (node, key) = start_keyed(&[], None).await;
    let body = "{\"n\":1}\n".repeat(2000);
    for (path, auth, status) in [("/v1/streams/s/events", "", "401"), ("/nope", "", "404")] {
        let mut s = TcpStream::connect(node.node.http_addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\n{auth}content-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body.as_bytes()[..100]).await.unwrap();
        let answer = read_response(&mut s).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{path}: {answer}"
        );
        let mut rest = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut rest).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{path}: the connection stayed open");
    }
    // The whole body read, then refused (invalid JSON): the connection goes on.
    let mut s = TcpStream::connect(node.node.http_addr).await.unwrap();
    let auth = format!("authorization: Bearer {key}\r\n");
    for (payload, status) in [("{\"n\":\n", "400"), ("{\"n\":2}\n", "202")] {
        let req = format!(
            "POST /v1/streams/s/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\n{auth}content-length: {}\r\n\r\n{payload}",
            payload.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let answer = read_response(&mut s).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
}
