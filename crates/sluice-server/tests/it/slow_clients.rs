//! Hostile and slow clients over raw sockets: every connection has deadlines that a
//! peer cannot extend by trickling bytes, pinging, or answering nothing. A client
//! that is cut off frees its `http.max_connections` slot, and the node keeps serving
//! others throughout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use sluice_server::NodeOptions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame: 9-byte header, then `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;

/// The preface and an empty SETTINGS frame: all a silent client sends.
fn hello() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(frame(SETTINGS, 0, 0, &[]));
    b
}

/// `GET /` on stream 1 (HPACK: :method GET, :scheme http, :path /, :authority x).
fn get_root() -> Vec<u8> {
    frame(HEADERS, 0x4 | 0x1, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'x'])
}

/// Reads until the peer closes (EOF or reset); how long that took, or `None` if it
/// did not within `limit`.
async fn closed_within(s: &mut (impl AsyncRead + Unpin), limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A normal client's POST, retried while the node refuses the connection (over
/// `max_connections`), until `limit`; the status and when it came.
async fn post_until_answered(node: &TestNode, limit: Duration) -> Option<(StatusCode, Duration)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let fresh = Http::h1(); // a new connection each try
        let r = fresh
            .request(
                hyper::Method::POST,
                &node.events_url("fine"),
                &[JSON],
                "{\"ok\":1}",
            )
            .await;
        if let Ok(a) = r {
            return Some((a.status, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn closed_count(m: &str, reason: &str) -> f64 {
    metric(
        m,
        &format!("sluice_connections_closed_total{{listener=\"ingest\",reason=\"{reason}\"}}"),
    )
}

/// Deadlines small enough for a fast test.
const FAST: [(&str, &str); 4] = [
    ("http.header_read_timeout", "1s"),
    ("http.idle_timeout", "2s"),
    ("http.drain_timeout", "500ms"),
    ("http.max_connections", "5"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_h2_clients_after_preface_are_closed_and_free_their_slots() {
    let node = start(&FAST, NodeOptions::default()).await;
    let addr = node.node.http_addr;
    let mut silent = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&hello()).await.unwrap();
        silent.push(s);
    }
    // Every slot is taken; a producer gets in once the silent ones are cut off.
    let (status, after) = post_until_answered(&node, Duration::from_secs(5))
        .await
        .expect("a normal client was locked out by five silent ones");
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(
        after < Duration::from_millis(2500),
        "served after {after:?}"
    );
    for s in &mut silent {
        let t = closed_within(s, Duration::from_secs(2)).await;
        assert!(t.is_some(), "a silent HTTP/2 client is still connected");
    }
    let m = node.metrics().await;
    assert_eq!(closed_count(&m, "header_timeout"), 5.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_h2_clients_over_tls_are_closed_and_free_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (c, k) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let mut flags = FAST.to_vec();
    flags.extend([
        ("tls.cert", c.as_str()),
        ("tls.key", k.as_str()),
        ("tls.admin", "false"),
    ]);
    let node = start(&flags, NodeOptions::default()).await;
    let addr = node.node.http_addr;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    let mut silent = Vec::new();
    for _ in 0..5 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = connector.connect(name.clone(), tcp).await.unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        s.write_all(&hello()).await.unwrap();
        s.flush().await.unwrap();
        silent.push(s);
    }
    // Slots free again: a new TLS client completes a request.
    let started = Instant::now();
    let mut served = false;
    while started.elapsed() < Duration::from_secs(5) && !served {
        if let Ok(tcp) = TcpStream::connect(addr).await {
            if let Ok(mut s) = connector.connect(name.clone(), tcp).await {
                let mut b = hello();
                b.extend(get_root());
                if s.write_all(&b).await.is_ok() {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Any HEADERS frame back on stream 1 is an answer.
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await
                    {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if has_frame(&got, HEADERS, 1) {
                            served = true;
                            break;
                        }
                    }
                }
            }
        }
        if !served {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(served, "a TLS client was locked out by five silent ones");
    assert!(started.elapsed() < Duration::from_millis(2500));
    for s in &mut silent {
        let t = closed_within(s, Duration::from_secs(2)).await;
        assert!(
            t.is_some(),
            "a silent HTTP/2 client over TLS is still connected"
        );
    }
    let m = node.metrics().await;
    assert_eq!(closed_count(&m, "header_timeout"), 5.0, "{m}");
}

/// True when `bytes` (after the server's frames start) hold a frame of `kind` on
/// `stream`.
fn has_frame(bytes: &[u8], kind: u8, stream: u32) -> bool {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let id = u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
        if bytes[at + 3] == kind && id == stream {
            return true;
        }
        at += 9 + len;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_at_header_read_timeout() {
    let node = start(
        &[
            ("http.header_read_timeout", "1s"),
            ("http.idle_timeout", "10s"),
        ],
        NodeOptions::default(),
    )
    .await;
    let mut s = TcpStream::connect(node.node.http_addr).await.unwrap();
    let t = closed_within(&mut s, Duration::from_secs(4))
        .await
        .expect("a mute connection lives past header_read_timeout");
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_millis(1800),
        "closed after {t:?}"
    );
    let m = node.metrics().await;
    assert_eq!(closed_count(&m, "header_timeout"), 1.0, "{m}");
}

/// Writes `bytes` one at a time, `every` apart, until the peer closes; when it did,
/// counted from the first byte.
async fn trickle(s: &mut TcpStream, bytes: &[u8], every: Duration) -> Option<Duration> {
    let started = Instant::now();
    for b in bytes {
        if s.write_all(&[*b]).await.is_err() {
            return Some(started.elapsed());
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(every, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            _ => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_h2_preface_is_cut_off_at_header_read_timeout() {
    let node = start(
        &[
            ("http.header_read_timeout", "1s"),
            ("http.idle_timeout", "10s"),
        ],
        NodeOptions::default(),
    )
    .await;
    let mut s = TcpStream::connect(node.node.http_addr).await.unwrap();
    let mut bytes = hello();
    bytes.extend(get_root());
    let t = trickle(&mut s, &bytes, Duration::from_millis(200))
        .await
        .expect("a preface trickled a byte every 200 ms is never cut off");
    assert!(t < Duration::from_millis(1800), "cut off after {t:?}");
    // Meanwhile the node serves others.
    let r = Http::h2()
        .post(&node.events_url("fine"), &[JSON], "{\"ok\":1}")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_h1_headers_are_cut_off_at_header_read_timeout_from_the_first_byte() {
    let node = start(
        &[
            ("http.header_read_timeout", "1s"),
            ("http.idle_timeout", "10s"),
        ],
        NodeOptions::default(),
    )
    .await;
    let head = b"POST /v1/streams/slow/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

    // The first request on a connection: its deadline runs from the accept.
    let mut s = TcpStream::connect(node.node.http_addr).await.unwrap();
    let t = trickle(&mut s, head, Duration::from_millis(200))
        .await
        .expect("headers trickled a byte every 200 ms are never cut off");
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_millis(1150),
        "cut off after {t:?}"
    );

    // A later request on a kept-alive connection: from its first byte, after a pause.
    let mut s = TcpStream::connect(node.node.http_addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 202"), "{:?}", &buf[..n]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let t = trickle(&mut s, &head[1..], Duration::from_millis(200))
        .await
        .expect("a second request's headers trickled are never cut off");
    let since_first_byte = t + Duration::from_millis(600);
    assert!(
        since_first_byte < Duration::from_millis(1400),
        "cut off {since_first_byte:?} after its first byte"
    );
    let m = node.metrics().await;
    assert_eq!(closed_count(&m, "header_timeout"), 2.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_do_not_keep_an_idle_h2_connection_open() {
    let node = start(
        &[
            ("http.header_read_timeout", "5s"),
            ("http.idle_timeout", "1s"),
            ("http.drain_timeout", "500ms"),
        ],
        NodeOptions::default(),
    )
    .await;
    let s = TcpStream::connect(node.node.http_addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let mut b = hello();
    b.extend(get_root());
    wr.write_all(&b).await.unwrap();
    let started = Instant::now();
    // The client reads (never acking the server's PINGs) and pings every 100 ms.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    while !reader.is_finished() && started.elapsed() < Duration::from_secs(6) {
        if wr.write_all(&frame(PING, 0, 0, b"12345678")).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed_after = started.elapsed();
    assert!(
        reader.is_finished() || closed_after < Duration::from_secs(6),
        "a pinging idle connection was never closed"
    );
    let got = tokio::time::timeout(Duration::from_secs(1), reader)
        .await
        .expect("closed")
        .unwrap();
    assert!(has_frame(&got, HEADERS, 1), "the request was answered");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_millis(2500),
        "closed after {closed_after:?} (idle 1s + drain 500ms)"
    );
    let m = node.metrics().await;
    assert_eq!(closed_count(&m, "idle_timeout"), 1.0, "{m}");
}

/// Sends `frames` over and over on `n` connections for `for_how_long`, reading
/// nothing back.
fn flood(addr: std::net::SocketAddr, n: usize, frames: Vec<u8>, for_how_long: Duration) {
    for _ in 0..n {
        let frames = frames.clone();
        tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return;
            };
            let _ = s.write_all(&hello()).await;
            let burst: Vec<u8> = frames.repeat(64);
            let started = Instant::now();
            while started.elapsed() < for_how_long {
                let w = tokio::time::timeout(Duration::from_millis(200), s.write_all(&burst));
                if let Ok(Err(_)) = w.await {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_do_not_stop_the_node_serving_others() {
    let node = start(&[], NodeOptions::default()).await;
    let mut frames = frame(PING, 0, 0, b"flooding");
    frames.extend(frame(SETTINGS, 0, 0, &[0x00, 0x04, 0x00, 0x01, 0x00, 0x00]));
    flood(node.node.http_addr, 8, frames, Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = Http::h2();
    let started = Instant::now();
    for n in 0..20 {
        let t = Instant::now();
        let r = http
            .post(&node.events_url("fine"), &[JSON], format!("{{\"n\":{n}}}"))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_flood_is_refused_and_the_node_serves_others() {
    let node = start(
        &[("http.header_read_timeout", "2s")],
        NodeOptions::default(),
    )
    .await;
    let mut s = TcpStream::connect(node.node.http_addr).await.unwrap();
    s.write_all(&hello()).await.unwrap();
    // HEADERS without END_HEADERS, then CONTINUATION frames of literal headers
    // ("x-a: aaaa…", never indexed) forever: past the header list limit.
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
    s.write_all(&frame(HEADERS, 0x1, 1, &block)).await.unwrap();
    block.clear();
    block.extend([0x10, 0x03, b'x', b'-', b'a', 0x7f, 0xe9, 0x06]); // value length 1000
    block.extend(std::iter::repeat_n(b'a', 1000));
    let cont = frame(CONTINUATION, 0, 1, &block);
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(4) {
        if s.write_all(&cont).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 4096];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    if !closed {
        closed = closed_within(&mut s, Duration::from_secs(1))
            .await
            .is_some();
    }
    assert!(closed, "an endless header block was not cut off");
    let r = Http::h2()
        .post(&node.events_url("fine"), &[JSON], "{\"ok\":1}")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}
