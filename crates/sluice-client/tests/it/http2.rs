//! The client's own HTTP/2 connection: against a real node (flow control, stream
//! limits, cancellation), and against a scripted server on a real socket that
//! sends what a node never does (GOAWAY, REFUSED_STREAM, padding, CONTINUATION,
//! Huffman strings, the dynamic table, 1xx, trailers, silence to PINGs).

use std::time::Duration;

use futures_util::FutureExt;
use sluice_client::{Body, Client, ClientError, Protocol, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

fn h2_client(base: &str) -> Client {
    Client::builder(base)
        .protocol(Protocol::Http2)
        .retry(RetryPolicy::none())
        .build()
        .unwrap()
}

/// `n` NDJSON events of about `size` bytes each.
fn ndjson(n: usize, size: usize) -> Body {
    let pad = "x".repeat(size.saturating_sub(24));
    let mut s = String::with_capacity(n * size);
    for i in 0..n {
        s.push_str(&format!("{{\"i\":{i},\"pad\":\"{pad}\"}}\n"));
    }
    Body::ndjson(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_the_servers_windows_arrive_whole() {
    let node = start_fast(&[]).await;
    let client = h2_client(&node.base);
    let ep = client.endpoint("big").unwrap();
    // ~3 MiB each, six at once on one connection: far over the server's 1 MiB
    // stream and connection windows, so bodies wait for WINDOW_UPDATEs.
    let body = ndjson(26_000, 128);
    assert!(body.bytes.len() > 3 << 20);
    let sends = (0..6).map(|_| client.send(&ep, &body));
    for r in futures_util::future::join_all(sends).await {
        assert_eq!(r.unwrap().accepted, 26_000);
    }
    assert_eq!(node.counter(EVENTS).await, 6 * 26_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_servers_stream_limit_wait_their_turn() {
    let node = start_fast(&[("http.max_concurrent_streams", "4")]).await;
    let client = h2_client(&node.base);
    let ep = client.endpoint("limit").unwrap();
    let body = Body::json("{\"a\":1}");
    let sends = (0..300).map(|_| client.send(&ep, &body));
    let results = futures_util::future::join_all(sends).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_ok_and(|a| a.accepted == 1)));
    assert_eq!(node.counter(REQUESTS).await, 300);
}

// One thread: the node and the connection's driver run only when the test
// awaits, so a request polled once is certainly still in flight.
#[tokio::test(flavor = "current_thread")]
async fn cancelled_requests_free_their_streams_and_the_connection_carries_on() {
    let node = start_fast(&[("http.max_concurrent_streams", "4")]).await;
    let client = h2_client(&node.base);
    let ep = client.endpoint("cancel").unwrap();
    let body = Body::json("{\"a\":1}");
    client.send(&ep, &body).await.unwrap();
    // Drop 16 requests in flight (polled once: queued, not answered); with only
    // 4 streams allowed, any stream they leaked would stall what follows. (Many
    // more at once and the server rightly takes it for a rapid-reset attack.)
    for i in 0..16 {
        let r = client.send(&ep, &body).now_or_never();
        assert!(r.is_none(), "request {i} did not wait: {r:?}");
    }
    let sends = (0..50).map(|_| client.send(&ep, &body));
    for r in futures_util::future::join_all(sends).await {
        let a = r.unwrap();
        assert!(
            a.timings.reused,
            "still the first connection: {:?}",
            a.timings
        );
    }
    // Requests that wait for a stream and are dropped leave the line: 10 sent
    // together (4 get streams, 6 wait), then 20 more polled once (so they queue
    // behind) and dropped. The 10 must all finish.
    let mut ten = Box::pin(futures_util::future::join_all(
        (0..10).map(|_| client.send(&ep, &body)),
    ));
    assert!((&mut ten).now_or_never().is_none());
    for _ in 0..20 {
        assert!(client.send(&ep, &body).now_or_never().is_none());
    }
    let ten = tokio::time::timeout(Duration::from_secs(20), ten)
        .await
        .expect("no request waits forever");
    for r in ten {
        assert_eq!(r.unwrap().accepted, 1);
    }
    // The 20 never got a stream: the server saw nothing of them. (The 16
    // cancelled ones were sent, and the server may have handled them.)
    let seen = node.counter(REQUESTS).await;
    assert!((1 + 50 + 10..=1 + 16 + 50 + 10).contains(&seen), "{seen}");
}

// ---- a scripted HTTP/2 server ----

const SETTINGS: u8 = 0x4;

/// One server-side connection, driven by the test.
struct Peer {
    s: TcpStream,
    buf: Vec<u8>,
}

struct Frame {
    ty: u8,
    flags: u8,
    id: u32,
    payload: Vec<u8>,
}

impl Peer {
    /// Accepts a connection, checks the client's preface and sends our SETTINGS.
    async fn accept(l: &TcpListener) -> Peer {
        let (mut s, _) = l.accept().await.unwrap();
        let mut preface = [0u8; 24];
        s.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let mut p = Peer { s, buf: Vec::new() };
        p.send(SETTINGS, 0, 0, &[]).await;
        p
    }

    async fn send(&mut self, ty: u8, flags: u8, id: u32, payload: &[u8]) {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, ty, flags];
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).await.unwrap();
    }

    /// The next frame, or `None` when the client closed the connection.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        ty: self.buf[3],
                        flags: self.buf[4],
                        id: u32::from_be_bytes(self.buf[5..9].try_into().unwrap()),
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 16 << 10];
            let n = self.s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until a request has ended (END_STREAM) and returns its stream id;
    /// records the other frames it saw.
    async fn request(&mut self, seen: &mut Vec<(u8, u8, Vec<u8>)>) -> u32 {
        loop {
            let f = self.frame().await.expect("a request");
            let end = (f.ty == 0x0 || f.ty == 0x1) && f.flags & 0x1 != 0;
            seen.push((f.ty, f.flags, f.payload));
            if end {
                return f.id;
            }
        }
    }
}

/// HPACK `:status CODE`, a literal without indexing (name: static index 8).
fn status(code: &str) -> Vec<u8> {
    let mut b = vec![0x08, code.len() as u8];
    b.extend_from_slice(code.as_bytes());
    b
}

async fn scripted() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    (l, base)
}

#[tokio::test]
async fn every_framing_the_protocol_allows_is_read() {
    let (l, base) = scripted().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        let mut seen = Vec::new();

        // 1: a 100 Continue first; then 202 in HEADERS + CONTINUATION with a
        // Huffman-coded `location: www.example.com` and `content-type` added to the
        // dynamic table; a padded DATA; trailers end the stream. A PING on the way.
        let id = p.request(&mut seen).await;
        p.send(0x6, 0x0, 0, b"pingpong").await;
        p.send(0x1, 0x4, id, &status("100")).await;
        let mut block = status("202");
        block.extend_from_slice(&[0x0f, 0x1f, 0x8c]);
        block.extend_from_slice(&[
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ]);
        block.extend_from_slice(&[0x5f, 16]);
        block.extend_from_slice(b"application/json");
        let (a, b) = block.split_at(4);
        p.send(0x1, 0x0, id, a).await;
        p.send(0x9, 0x4, id, b).await;
        let mut padded = vec![5];
        padded.extend_from_slice(b"{\"accepted\":1}");
        padded.extend_from_slice(&[0; 5]);
        p.send(0x0, 0x8, id, &padded).await;
        p.send(0x1, 0x5, id, &[0x40, 1, b'x', 1, b'y']).await;

        // 2: the status indexed, content-type from the dynamic table (index 62 is
        // `x: y` from the trailers, 63 the content type), the body in two frames.
        let id = p.request(&mut seen).await;
        let mut block = status("202");
        block.push(0x80 | 63);
        p.send(0x1, 0x4, id, &block).await;
        p.send(0x0, 0x0, id, b"{\"accepted\"").await;
        p.send(0x0, 0x1, id, b":2}").await;

        // 3: 429 with Retry-After (static index 53), answered on a stream the
        // client must have opened after reading the two answers above.
        let id = p.request(&mut seen).await;
        let mut block = status("429");
        block.extend_from_slice(&[0x0f, 53 - 15, 1, b'7']);
        p.send(0x1, 0x4, id, &block).await;
        p.send(
            0x0,
            0x1,
            id,
            br#"{"error":{"code":"rate_limited","message":"slow"}}"#,
        )
        .await;

        // The client answered our PING and acknowledged our SETTINGS.
        let ping = (0x6, 0x1, b"pingpong".to_vec());
        assert!(seen.contains(&ping), "PING ACK: {seen:?}");
        assert!(
            seen.contains(&(SETTINGS, 0x1, Vec::new())),
            "SETTINGS ACK: {seen:?}"
        );
    });
    let client = h2_client(&base);
    let ep = client.endpoint("script").unwrap();
    let a = client.send(&ep, &Body::json("{}")).await.unwrap();
    assert_eq!(a.accepted, 1);
    let b = client.send(&ep, &Body::json("{}")).await.unwrap();
    assert_eq!(b.accepted, 2);
    match client.send(&ep, &Body::json("{}")).await {
        Err(ClientError::Rejected {
            status: 429,
            code,
            retry_after,
            ..
        }) => {
            assert_eq!(code, "rate_limited");
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("expected a 429: {other:?}"),
    }
    server.await.unwrap();
}

#[tokio::test]
async fn refused_requests_are_sent_again_on_a_new_connection() {
    let (l, base) = scripted().await;
    let server = tokio::spawn(async move {
        // First connection: REFUSED_STREAM for one request, GOAWAY (last stream
        // 0: nothing processed) for the next.
        let mut p = Peer::accept(&l).await;
        let id = p.request(&mut Vec::new()).await;
        p.send(0x3, 0x0, id, &7u32.to_be_bytes()).await;
        let _id = p.request(&mut Vec::new()).await;
        p.send(0x7, 0x0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]).await;
        // The client opens another connection for the retry: answer there.
        let mut q = Peer::accept(&l).await;
        let id = q.request(&mut Vec::new()).await;
        q.send(0x1, 0x4, id, &status("202")).await;
        q.send(0x0, 0x1, id, b"{\"accepted\":1}").await;
        // And the first connection ends: the client closes it once idle.
        while p.frame().await.is_some() {}
        let id = q.request(&mut Vec::new()).await;
        q.send(0x1, 0x4, id, &status("202")).await;
        q.send(0x0, 0x1, id, b"{\"accepted\":3}").await;
    });
    let client = Client::builder(&base)
        .protocol(Protocol::Http2)
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let ep = client.endpoint("refused").unwrap();
    // REFUSED_STREAM: `send_once` itself retries once, on the same (still open)
    // connection, which the script then GOAWAYs; that is a second refusal.
    let first = client.send_once(&ep, &Body::json("{}")).await;
    assert!(
        matches!(&first, Err(e) if e.kind() == "refused" && e.is_retryable()),
        "{first:?}"
    );
    // After GOAWAY the pool makes a new connection.
    let second = client.send_once(&ep, &Body::json("{}")).await.unwrap();
    assert_eq!(second.accepted, 1);
    assert!(!second.timings.reused, "{:?}", second.timings);
    let third = client.send_once(&ep, &Body::json("{}")).await.unwrap();
    assert_eq!(third.accepted, 3);
    server.await.unwrap();
}

#[tokio::test]
async fn a_server_that_stops_answering_pings_is_given_up() {
    let (l, base) = scripted().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        // Read everything, answer nothing.
        let mut pings = 0;
        while let Some(f) = p.frame().await {
            pings += usize::from(f.ty == 0x6);
        }
        pings
    });
    let client = Client::builder(&base)
        .protocol(Protocol::Http2)
        .http2_keep_alive(Some(Duration::from_millis(100)))
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let ep = client.endpoint("silent").unwrap();
    let started = std::time::Instant::now();
    let r = client.send(&ep, &Body::json("{}")).await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), "io", "{e:?}");
    assert!(
        e.to_string().contains("HTTP/2") && format!("{e:?}").contains("PING"),
        "{e:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    drop(client);
    assert!(server.await.unwrap() >= 1, "the client sent a PING");
}

#[tokio::test]
async fn a_server_that_hangs_up_fails_the_request_and_the_next_one_reconnects() {
    let (l, base) = scripted().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        p.request(&mut Vec::new()).await;
        drop(p); // mid-request
        let mut q = Peer::accept(&l).await;
        let id = q.request(&mut Vec::new()).await;
        q.send(0x1, 0x4, id, &status("202")).await;
        q.send(0x0, 0x1, id, b"{\"accepted\":1}").await;
        while q.frame().await.is_some() {}
    });
    let client = h2_client(&base);
    let ep = client.endpoint("hangup").unwrap();
    let e = client.send(&ep, &Body::json("{}")).await.unwrap_err();
    assert_eq!(e.kind(), "io", "{e:?}");
    let a = client.send(&ep, &Body::json("{}")).await.unwrap();
    assert_eq!(a.accepted, 1);
    assert!(!a.timings.reused);
    drop(client);
    server.await.unwrap();
}
