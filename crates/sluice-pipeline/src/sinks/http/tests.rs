use super::*;
use crate::sinks::read_lines;
use std::convert::Infallible;
use std::io::Read;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::Instant;

use http::Response;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_core::{Batch, Queue};
use sluice_queue::MemoryQueue;
use tokio_util::sync::CancellationToken;

use crate::sinks::{envelopes, FileSink};
use crate::{Processor, ProcessorOptions};

/// One POST as the test server saw it.
#[derive(Debug, Clone)]
struct Post {
    headers: HeaderMap,
    /// The body's lines, inflated when gzipped.
    lines: Vec<String>,
    /// Body bytes before and after inflating.
    wire_bytes: usize,
    bytes: usize,
    at: Instant,
}

/// The test server's answer to a POST.
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
    body: &'static str,
    hold: Duration,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            body: "",
            hold: Duration::ZERO,
        }
    }

    fn ok() -> Reply {
        Reply::status(200)
    }
}

/// What the server saw: every POST, the lines of the 2xx ones, and how many
/// requests it held at once.
#[derive(Default)]
struct Seen {
    posts: Mutex<Vec<Post>>,
    taken: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    connections: AtomicUsize,
}

struct Server {
    url: String,
    seen: Arc<Seen>,
}

impl Server {
    fn posts(&self) -> Vec<Post> {
        self.seen.posts.lock().unwrap().clone()
    }

    /// The ids of the events in POSTs answered 2xx, in arrival order.
    fn taken_ids(&self) -> Vec<String> {
        self.seen
            .taken
            .lock()
            .unwrap()
            .iter()
            .map(|l| id_of(l))
            .collect()
    }
}

type Handler = dyn Fn(&Post, usize) -> Reply + Send + Sync;

/// A hyper server on 127.0.0.1:0 answering each POST with `handler(post, n)`, n
/// counting POSTs from 0.
async fn server(handler: impl Fn(&Post, usize) -> Reply + Send + Sync + 'static) -> Server {
    serve(None, handler).await
}

/// [`server`], over TLS when `tls` is given.
async fn serve(
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: impl Fn(&Post, usize) -> Reply + Send + Sync + 'static,
) -> Server {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let handler: Arc<Handler> = Arc::new(handler);
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            state.connections.fetch_add(1, Ordering::SeqCst);
            let (seen, handler, tls) = (state.clone(), handler.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, seen.clone(), handler.clone()));
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    None => http.serve_connection(TokioIo::new(stream), svc).await,
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => http.serve_connection(TokioIo::new(stream), svc).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    Server {
        url: format!("{scheme}://{addr}/ingest"),
        seen,
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    seen: Arc<Seen>,
    handler: Arc<Handler>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let raw = body.collect().await.unwrap().to_bytes();
    let text = if parts
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| v == "gzip")
    {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw.to_vec()
    };
    let post = Post {
        headers: parts.headers,
        lines: String::from_utf8(text.clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect(),
        wire_bytes: raw.len(),
        bytes: text.len(),
        at,
    };
    let n = {
        let mut posts = seen.posts.lock().unwrap();
        posts.push(post.clone());
        posts.len() - 1
    };
    let reply = handler(&post, n);
    tokio::time::sleep(reply.hold).await;
    if (200..300).contains(&reply.status) {
        seen.taken.lock().unwrap().extend(post.lines);
    }
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = Response::builder().status(reply.status);
    if let Some(v) = reply.retry_after {
        resp = resp.header(RETRY_AFTER, v);
    }
    Ok(resp
        .body(Full::new(Bytes::from_static(reply.body.as_bytes())))
        .unwrap())
}

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

fn lines_of(events: &[Event]) -> Vec<String> {
    String::from_utf8(envelopes(events))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn id_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["id"].as_str().unwrap().to_string()
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

/// A fresh CA as PEM, and a server config with a certificate it signed for
/// 127.0.0.1.
fn private_ca() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::PrivatePkcs8KeyDer;
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    )
    .unwrap();
    (ca.pem(), Arc::new(config).into())
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
fn chunks_respect_the_bound_and_send_oversized_events_alone() {
    // Lines of 10, 10, 50, 10, 10, 10 bytes.
    let ends = [10, 20, 70, 80, 90, 100];
    assert_eq!(chunks(&ends, 25), vec![0..2, 2..3, 3..5, 5..6]);
    assert_eq!(chunks(&ends, 1000), vec![0..6]);
    assert_eq!(chunks(&ends, 1), vec![0..1, 1..2, 2..3, 3..4, 4..5, 5..6]);
    assert!(chunks(&[], 10).is_empty());
}

#[test]
fn parses_imf_fixdates() {
    let at = |s| {
        httpdate::parse_http_date(s)
            .ok()
            .map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs())
    };
    assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
    assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    assert_eq!(at("Wed, 01 Mar 2000 00:00:00 GMT"), Some(951_868_800));
    // RFC 9110 §5.6.7: recipients also read the two obsolete forms.
    assert_eq!(at("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
    assert_eq!(at("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
    assert_eq!(at("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    assert_eq!(at("Sun, 06 Nov 1994 25:49:37 GMT"), None);
    assert_eq!(at("Mon, 06 Nov 1994 08:49:37 GMT"), None, "wrong weekday");
    assert_eq!(at("Thu, 31 Feb 2000 00:00:00 GMT"), None, "no such day");
    assert_eq!(at("Sun, 06 Nov 1994 08:49:37 UTC"), None);
    let mut h = HeaderMap::new();
    h.insert(
        RETRY_AFTER,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
    );
    assert_eq!(
        retry_after(&h),
        Some(Duration::ZERO),
        "a past date means now"
    );
    h.insert(RETRY_AFTER, HeaderValue::from_static(" 120 "));
    assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
    h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
    assert_eq!(retry_after(&h), None);
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
