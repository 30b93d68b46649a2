//! Hostile clients against the ingest front door (issue #14): bodies and messages
//! built to amplify memory or CPU (gzip/zstd bombs, millions of tiny events, deep
//! nesting), invalid UTF-8, slow large bodies that would pin memory, and idle
//! streams at shutdown. Each asserts the precise answer, that it comes fast, and
//! that the node keeps serving others; the bomb tests run the real binary and read
//! its peak RSS from `/proc`.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use sluice_proto::v1::{Event, IngestRequest};
use sluice_server::NodeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::procs::*;
use crate::support::*;

fn rejected(page: &str, reason: &str) -> f64 {
    metric(
        page,
        &format!("sluice_ingest_rejected_requests_total{{reason=\"{reason}\"}}"),
    )
}

/// ~10 MB of `{}` lines (under the default 10 MiB `max_body_bytes`), gzipped to ~10 KB.
fn ndjson_bomb() -> Vec<u8> {
    gzip(&b"{}\n".repeat(3_400_000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_ndjson_bomb_is_401_without_a_key_and_413_too_many_events_with_one_fast() {
    let (node, key) = start_keyed(&[], None).await;
    let bomb = ndjson_bomb();
    assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
    let http = Http::h1();
    let url = node.events_url("bomb");
    let gz = ("content-encoding", "gzip");

    let started = Instant::now();
    let a = http.post(&url, &[NDJSON, gz], bomb.clone()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.body);
    assert!(started.elapsed() < Duration::from_secs(1));

    let auth = format!("Bearer {key}");
    let started = Instant::now();
    let a = http
        .post(&url, &[NDJSON, gz, ("authorization", &auth)], bomb)
        .await;
    let took = started.elapsed();
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", a.body);
    assert_eq!(a.json()["error"]["code"], "too_many_events");
    let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("http.max_events_per_request (100000)"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(3), "refused after {took:?}");

    // The node still serves, and counted the refusal by its reason.
    let ok = http
        .post(&url, &[NDJSON, ("authorization", &auth)], "{\"n\":1}\n")
        .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED);
    assert_eq!(rejected(&node.metrics().await, "too_many_events"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_array_of_a_million_empty_objects_is_413_too_many_events() {
    let node = start(&[], NodeOptions::default()).await;
    let mut body = String::from("[{}");
    body.push_str(&",{}".repeat(1_000_000));
    body.push(']');
    let started = Instant::now();
    let a = Http::h1()
        .post(&node.events_url("arr"), &[JSON], body)
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", a.body);
    assert_eq!(a.json()["error"]["code"], "too_many_events");
    assert_eq!(
        a.json()["error"]["line"],
        100_001,
        "the first element too many"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_small_events_just_under_max_body_bytes_is_accepted() {
    // 8 MiB of 100-byte events (83,886 of them) with the default config.
    let node = start(&[], NodeOptions::default()).await;
    let n = (8 << 20) / 100;
    let body: String = (0..n)
        .map(|i| format!("{{\"n\":{i:>10},\"pad\":\"{}\"}}\n", "p".repeat(74)))
        .collect();
    assert_eq!(body.len(), n * 100);
    let a = Http::h1()
        .post(&node.events_url("small"), &[NDJSON], body)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(a.json()["accepted"], n);
}

/// A zstd frame of `data` whose header declares a window of 2^`window_log` bytes.
fn zstd_with_window(data: &[u8], window_log: u32) -> Vec<u8> {
    use std::io::Write;
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.window_log(window_log).unwrap();
    e.include_contentsize(false).unwrap();
    e.write_all(data).unwrap();
    let frame = e.finish().unwrap();
    // Frame header: magic (4), descriptor, then the window descriptor unless the
    // frame is a single segment.
    assert_eq!(frame[4] & 0x20, 0, "not a single-segment frame");
    assert_eq!(10 + u32::from(frame[5] >> 3), window_log, "declared window");
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bombs_and_huge_windows_are_refused() {
    let node = start(&[], NodeOptions::default()).await;
    let http = Http::h1();
    let url = node.events_url("z");
    let zstd = ("content-encoding", "zstd");

    // 64 MiB of blanks: refused at max_body_bytes (10 MiB) once decompressed.
    let bomb = zstd::encode_all(&vec![b' '; 64 << 20][..], 19).unwrap();
    let a = http.post(&url, &[NDJSON, zstd], bomb).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", a.body);
    assert_eq!(a.json()["error"]["code"], "payload_too_large");

    // A valid body in a frame declaring a 128 MiB window: zstd's default limit lets
    // a decoder allocate it; sluice caps the window at 8 MiB.
    let frame = zstd_with_window(b"{\"n\":1}\n", 27);
    let a = http.post(&url, &[NDJSON, zstd], frame).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    assert_eq!(a.json()["error"]["code"], "invalid_encoding");
    let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("zstd windows up to 8 MiB"), "{msg}");

    // A level-19 frame (8 MiB window) is fine.
    let ok = zstd_with_window(b"{\"n\":2}\n", 23);
    assert_eq!(
        http.post(&url, &[NDJSON, zstd], ok).await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_nesting_is_400_not_a_stack_overflow() {
    let node = start(&[], NodeOptions::default()).await;
    let http = Http::h1();
    let url = node.events_url("deep");
    let deep = "[".repeat(1_000_000);
    for (ct, body) in [
        (JSON, format!("{{\"a\":{deep}}}")),
        (JSON, format!("[{{\"a\":{deep}}}]")),
        (NDJSON, format!("{{\"a\":{deep}}}\n")),
    ] {
        let a = http.post(&url, &[ct], body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
        assert_eq!(a.json()["error"]["code"], "invalid_json");
        let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("nesting deeper than 128"), "{msg}");
    }
    // The same inside a gRPC payload.
    let mut client = grpc_client(node.node.http_addr);
    let err = client
        .ingest(IngestRequest {
            stream: "deep".into(),
            events: vec![Event {
                payload: format!("{{\"a\":{deep}}}").into(),
                ..Default::default()
            }],
            return_ids: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("nesting deeper than 128"), "{err:?}");
    assert_eq!(
        http.post(&url, &[JSON], "{\"ok\":[[1]]}").await.status,
        StatusCode::ACCEPTED
    );
}

/// `IngestRequest { stream: "s", events: [ event bytes ... ] }` by hand.
fn request_bytes(events: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![0x0a, 0x01, b's'];
    for e in events {
        out.push(0x12);
        out.push(u8::try_from(e.len()).unwrap());
        out.extend_from_slice(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_grpc_fields_is_invalid_argument_naming_the_event() {
    let node = start(&[], NodeOptions::default()).await;
    let addr = node.node.http_addr;
    let good: Vec<u8> = [&[0x32, 0x02][..], b"{}"].concat(); // payload "{}"
    let with = |field: &[u8]| [field, &good[..]].concat();
    let cases: [(Vec<u8>, &str); 4] = [
        (
            with(&[0x0a, 0x02, b'a', 0xff]),
            "event 2: id is not valid UTF-8",
        ),
        (
            with(&[0x12, 0x01, 0xc3]),
            "event 2: stream is not valid UTF-8",
        ),
        (with(&[0x1a, 0x01, 0xfe]), "event 2: key is not valid UTF-8"),
        (
            with(&[0x2a, 0x05, 0x0a, 0x01, 0xff, 0x12, 0x00]),
            "event 2: header name is not valid UTF-8",
        ),
    ];
    for (bad, expect) in cases {
        let msg = request_bytes(&[good.clone(), bad]);
        let r = raw_grpc(addr, "Ingest", &[], grpc_frame(false, &msg))
            .await
            .unwrap();
        assert_eq!(r.status.code(), Code::InvalidArgument, "{:?}", r.status);
        assert!(r.status.message().contains(expect), "{:?}", r.status);
    }
    assert_eq!(rejected(&node.metrics().await, "invalid_utf8"), 4.0);
    // Nothing of those requests was written; a good one is.
    let r = raw_grpc(
        addr,
        "Ingest",
        &[],
        grpc_frame(false, &request_bytes(&[good])),
    )
    .await
    .unwrap();
    assert_eq!(r.status.code(), Code::Ok, "{:?}", r.status);
    assert_eq!(
        &r.body[..5],
        &[0, 0, 0, 0, 2],
        "IngestResponse {{ accepted: 1 }}"
    );
}

/// `IngestRequest { stream: "bomb", events: [Event {}; 5,000,000] }`: 10 MB, gzipped
/// to ~10 KB.
fn grpc_bomb() -> Vec<u8> {
    let mut msg = vec![0x0a, 0x04];
    msg.extend_from_slice(b"bomb");
    msg.extend_from_slice(&[0x12, 0x00].repeat(5_000_000));
    assert!(msg.len() < 10 << 20);
    grpc_frame(true, &gzip(&msg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_empty_event_bombs_are_refused_before_decoding_and_rss_stays_bounded() {
    let data = tempfile::tempdir().unwrap();
    let (key, file) = key_config(data.path(), "");
    let served = spawn_serve(
        &data.path().join("node"),
        free_addr(),
        free_addr(),
        &["--config", &file.display().to_string()],
    )
    .await;
    let pid = served.child.id().unwrap();
    let addr = served.http;
    let bomb = grpc_bomb();
    assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
    let auth = format!("Bearer {key}");

    // Four at once without a key, then four at once with one, while a normal
    // producer keeps being served.
    for with_key in [false, true] {
        let started = Instant::now();
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let (bomb, auth) = (bomb.clone(), auth.clone());
                tokio::spawn(async move {
                    let mut h = vec![("grpc-encoding", "gzip")];
                    if with_key {
                        h.push(("authorization", auth.as_str()));
                    }
                    raw_grpc(addr, "Ingest", &h, bomb).await.unwrap().status
                })
            })
            .collect();
        let ok = Http::h1()
            .post(
                &format!("http://{addr}/v1/streams/normal/events"),
                &[NDJSON, ("authorization", &auth)],
                "{\"n\":1}\n",
            )
            .await;
        assert_eq!(ok.status, StatusCode::ACCEPTED, "{:?}", ok.body);
        for c in calls {
            let status = c.await.unwrap();
            if with_key {
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                assert!(
                    status.message().starts_with("too_many_events")
                        && status
                            .message()
                            .contains("http.max_events_per_request (100000)"),
                    "{status:?}"
                );
            } else {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            }
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "four bombs took {took:?}");
    }
    let peak_mib = peak_rss_kib(pid) / 1024;
    assert!(peak_mib < 300, "peak RSS {peak_mib} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_budget_refuses_slow_large_bodies_with_429_once_spent() {
    // Room for three 900 KB bodies in flight, not four.
    let node = start(
        &[
            ("http.max_body_bytes", "1 MiB"),
            ("http.max_events_per_request", "1000"),
            ("http.max_inflight_bytes", "3 MiB"),
        ],
        NodeOptions::default(),
    )
    .await;
    let addr = node.node.http_addr;
    let part = "{\"pad\":\"".to_string() + &"p".repeat(900_000);
    let mut slow = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/streams/slow/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            part.len() + 2
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(part.as_bytes()).await.unwrap();
        // Stalls before `"}`: a refused body is answered at once, a held one is not.
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(700), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 429"), "{text}");
                assert!(text.contains("\"overloaded\""), "{text}");
                assert!(
                    text.to_ascii_lowercase().contains("retry-after: 1"),
                    "{text}"
                );
                refused += 1;
            }
            Ok(other) => panic!("connection ended: {other:?}"),
            Err(_) => slow.push(s),
        }
    }
    assert_eq!((slow.len(), refused), (3, 1));
    // The held ones finish and are accepted; then there is room again.
    for mut s in slow {
        s.write_all(b"\"}").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    }
    let a = Http::h1()
        .post(&node.events_url("slow"), &[JSON], part.clone() + "\"}")
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(rejected(&node.metrics().await, "overloaded"), 1.0);
}

async fn sigterm(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// One `{"n":N}` event for stream `idle`.
fn msg(n: u64) -> IngestRequest {
    IngestRequest {
        stream: "idle".into(),
        events: vec![Event {
            payload: format!("{{\"n\":{n}}}").into(),
            ..Default::default()
        }],
        return_ids: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_end_with_unavailable_at_shutdown_and_acked_events_are_delivered() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("node");
    let mut served = spawn_serve(&dir, free_addr(), free_addr(), &[]).await;
    let pid = served.child.id().unwrap();
    // A bidi stream and a client stream, each with one message acked, then idle.
    let (bidi_tx, bidi_rx) = tokio::sync::mpsc::channel(4);
    let mut bidi_client = grpc_client(served.http);
    bidi_tx.send(msg(1)).await.unwrap();
    let mut acks = bidi_client
        .ingest_bidi(tokio_stream_of(bidi_rx))
        .await
        .unwrap()
        .into_inner();
    let first = acks.message().await.unwrap().unwrap();
    assert_eq!((first.sequence, first.accepted), (1, 1));
    let (cs_tx, cs_rx) = tokio::sync::mpsc::channel(4);
    cs_tx.send(msg(2)).await.unwrap();
    let mut cs_client = grpc_client(served.http);
    let summary =
        tokio::spawn(async move { cs_client.ingest_stream(tokio_stream_of(cs_rx)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    sigterm(pid).await;
    let end = tokio::time::timeout(Duration::from_secs(5), acks.message())
        .await
        .expect("the idle bidi stream ends at shutdown");
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    use tonic_types::StatusExt;
    assert!(status.get_details_retry_info().is_some(), "{status:?}");
    let status = tokio::time::timeout(Duration::from_secs(5), summary)
        .await
        .expect("the idle client stream ends at shutdown")
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.metadata().get("sluice-accepted-events").unwrap(),
        "1"
    );
    let exit = tokio::time::timeout(Duration::from_secs(8), served.child.wait())
        .await
        .expect("sluice exits long before the 30 s grace period")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop((bidi_tx, cs_tx));
    let lines = sink_lines(&dir.join("out").join("idle"));
    let mut ns: Vec<u64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["data"]["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    ns.sort();
    assert_eq!(ns, vec![1, 2], "both acked events delivered");
}

/// An mpsc receiver as a request stream.
fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

/// A stream that sends nothing ends at `http.idle_timeout` (DEADLINE_EXCEEDED, with
/// what it had acked) and frees its admission permit: with one request allowed at a
/// time, an idle stream would otherwise lock every other producer out for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_ends_at_idle_timeout_and_frees_its_permit() {
    let node = start(
        &[
            ("http.idle_timeout", "1s"),
            ("http.max_concurrent_requests", "1"),
        ],
        NodeOptions::default(),
    )
    .await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(msg(1)).await.unwrap();
    let mut client = grpc_client(node.node.http_addr);
    let started = Instant::now();
    let summary = tokio::spawn(async move { client.ingest_stream(tokio_stream_of(rx)).await });
    // While it holds the only permit, others are refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = grpc_client(node.node.http_addr).ingest(msg(2)).await;
    assert_eq!(busy.unwrap_err().code(), Code::ResourceExhausted);
    let status = tokio::time::timeout(Duration::from_secs(5), summary)
        .await
        .expect("the idle stream is ended by the server")
        .unwrap()
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("stream_idle"), "{status:?}");
    assert_eq!(
        status.metadata().get("sluice-accepted-events").unwrap(),
        "1"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The permit is free again.
    let ok = grpc_client(node.node.http_addr)
        .ingest(msg(3))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().accepted, 1);
    drop(tx);
    assert_eq!(wait_lines(&node.out_dir("idle"), 2).await, 2);
}

async fn wait_lines(dir: &std::path::Path, n: usize) -> usize {
    wait_until(Duration::from_secs(10), || sink_lines(dir).len() >= n).await;
    sink_lines(dir).len()
}
