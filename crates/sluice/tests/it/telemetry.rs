//! Distributed tracing, end to end: the real binary exports spans with OTLP (HTTP
//! and gRPC) to a real receiver here, which decodes the protobuf it gets. One
//! request is followed through the WAL to the file sink, and two requests through
//! NATS from an `ingest` process to a `process` process and out of the HTTP sink.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;

use crate::brokers::*;
use crate::procs::*;
use crate::support::*;

/// A producer's span context, as its `traceparent` header carries it.
const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    attrs: BTreeMap<String, String>,
    links: Vec<(String, String)>,
    /// The `sluice.role` of the process that exported it.
    role: String,
}

impl Got {
    fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map_or("", String::as_str)
    }
}

/// What the receiver got: spans, and the `traceparent` of each request to `/sink`.
#[derive(Default)]
struct Seen {
    spans: Vec<Got>,
    sink_traceparents: Vec<String>,
    sink_bodies: Vec<String>,
}

/// An OTLP receiver: OTLP/HTTP (`POST /v1/traces`) and, on `/sink`, an HTTP sink's
/// target over HTTP/1.1 at `http`; OTLP/gRPC (`TraceService/Export`, h2c) at `grpc`.
struct Receiver {
    http: SocketAddr,
    grpc: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

type Body =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

impl Receiver {
    async fn start() -> Receiver {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let h1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            http: h1.local_addr().unwrap(),
            grpc: h2.local_addr().unwrap(),
            seen: seen.clone(),
        };
        for (listener, http2) in [(h1, false), (h2, true)] {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(tcp);
                        let svc = hyper::service::service_fn(move |req| {
                            let seen = seen.clone();
                            async move { Ok::<_, Infallible>(answer(req, &seen).await) }
                        });
                        if http2 {
                            let _ = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(io, svc)
                            .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await;
                        }
                    });
                }
            });
        }
        r
    }

    fn spans(&self) -> Vec<Got> {
        self.seen.lock().unwrap().spans.clone()
    }

    /// Waits until `want` holds for the spans received (the exporter sends every
    /// few seconds).
    async fn wait_for(&self, what: &str, want: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let ok = wait_until(Duration::from_secs(30), || want(&self.spans())).await;
        let spans = self.spans();
        assert!(ok, "{what}: not received within 30 s; got {spans:#?}");
        spans
    }
}

async fn answer(req: Request<Incoming>, seen: &Mutex<Seen>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let reply = |status: StatusCode, ctype: &str, frames: Vec<Frame<Bytes>>| {
        let mut r = Response::new(StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        )));
        *r.status_mut() = status;
        r.headers_mut()
            .insert("content-type", ctype.parse().unwrap());
        r
    };
    match path.as_str() {
        "/v1/traces" => {
            record(seen, &body);
            reply(StatusCode::OK, "application/x-protobuf", vec![])
        }
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => {
            // A gRPC message: compressed flag, length, protobuf.
            assert_eq!(body[0], 0, "uncompressed");
            let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
            record(seen, &body[5..5 + len]);
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            reply(
                StatusCode::OK,
                "application/grpc",
                vec![
                    Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])),
                    Frame::trailers(trailers),
                ],
            )
        }
        "/sink" => {
            let mut s = seen.lock().unwrap();
            s.sink_traceparents.push(traceparent);
            s.sink_bodies
                .push(String::from_utf8_lossy(&body).into_owned());
            reply(StatusCode::OK, "text/plain", vec![])
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", vec![]),
    }
}

fn record(seen: &Mutex<Seen>, body: &[u8]) {
    let req = ExportTraceServiceRequest::decode(body).expect("a valid OTLP protobuf");
    let mut s = seen.lock().unwrap();
    for rs in req.resource_spans {
        let resource = rs
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        let role = resource.get("sluice.role").cloned().unwrap_or_default();
        assert_eq!(
            resource.get("service.name").map(String::as_str),
            Some("sluice")
        );
        for ss in rs.scope_spans {
            for span in ss.spans {
                s.spans.push(Got {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    kind: span.kind,
                    attrs: attrs(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    role: role.clone(),
                });
            }
        }
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The one span named `name` in trace `trace`.
fn one<'a>(spans: &'a [Got], trace: &str, name: &str) -> &'a Got {
    let found: Vec<&Got> = spans
        .iter()
        .filter(|s| s.trace_id == trace && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name:?} span in trace {trace}: {spans:#?}"
    );
    found[0]
}

const SPAN_KIND_INTERNAL: i32 = 1;
const SPAN_KIND_SERVER: i32 = 2;
const SPAN_KIND_CLIENT: i32 = 3;

/// `sluice serve` with `toml` as its config file (written to `dir/sluice.toml`) and
/// `dir/node` as its data dir, which it also returns.
async fn serve_with_config(dir: &std::path::Path, toml: &str) -> (Served, std::path::PathBuf) {
    let conf = dir.join("sluice.toml");
    std::fs::write(&conf, toml).unwrap();
    let data = dir.join("node");
    let node = spawn_serve(
        &data,
        free_addr(),
        free_addr(),
        &["--config", conf.to_str().unwrap()],
    )
    .await;
    (node, data)
}

/// One request with a producer's `traceparent`, through the WAL to the file sink,
/// exported over OTLP/HTTP: the producer's trace id throughout; the request span a
/// child of the producer's span; `append` (with the group commit's fsync), `queued`
/// and `deliver file` its children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_traced_through_the_wal_to_the_file_sink() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[telemetry]\nendpoint = \"http://{}\"\nprotocol = \"http/protobuf\"\n",
        rx.http
    );
    let (node, data) = serve_with_config(dir.path(), &toml).await;
    let url = format!("http://{}/v1/streams/clicks/events", node.http);
    let producer = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    let a = Http::h1()
        .post(
            &url,
            &[
                ("content-type", "application/json"),
                ("traceparent", &producer),
            ],
            "{\"n\":1}",
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    // An untraced request (no traceparent) starts its own trace.
    let b = Http::h1().post(&url, &[], "{\"n\":2}").await;
    assert_eq!(b.status, StatusCode::ACCEPTED);

    let spans = rx
        .wait_for("the request's four spans", |s| {
            s.iter()
                .any(|g| g.trace_id == PRODUCER_TRACE && g.name == "deliver file")
        })
        .await;
    let req = one(&spans, PRODUCER_TRACE, "POST /v1/streams/{stream}/events");
    assert_eq!(req.parent, PRODUCER_SPAN, "a child of the producer's span");
    assert_eq!(req.kind, SPAN_KIND_SERVER);
    assert_eq!(req.role, "serve");
    assert_eq!(req.attr("sluice.stream"), "clicks");
    assert_eq!(req.attr("sluice.events"), "1");
    assert_eq!(req.attr("sluice.bytes"), "7");
    assert_eq!(req.attr("http.response.status_code"), "202");
    assert_eq!(req.attr("sluice.key"), "_anonymous", "{req:?}");
    let append = one(&spans, PRODUCER_TRACE, "append");
    assert_eq!(append.parent, req.span_id);
    assert_eq!(append.kind, SPAN_KIND_INTERNAL);
    assert!(append.attr("sluice.group.appends").parse::<u32>().unwrap() >= 1);
    let fsync: f64 = append.attr("sluice.fsync_ms").parse().unwrap();
    assert!(fsync > 0.0, "the group commit's fsync: {append:?}");
    let queued = one(&spans, PRODUCER_TRACE, "queued");
    assert_eq!(queued.parent, req.span_id);
    assert_eq!(queued.attr("sluice.stream"), "clicks");
    let deliver = one(&spans, PRODUCER_TRACE, "deliver file");
    assert_eq!(deliver.parent, req.span_id);
    assert_eq!(deliver.kind, SPAN_KIND_CLIENT);
    assert_eq!(deliver.attr("sluice.outcome"), "delivered");
    assert_eq!(deliver.attr("sluice.events"), "1");
    assert_eq!(deliver.attr("sluice.attempt"), "1");

    // The untraced request got a trace of its own, rooted at the request span.
    let own = rx
        .wait_for("the second request's trace", |s| {
            s.iter().any(|g| {
                g.trace_id != PRODUCER_TRACE
                    && g.name == "POST /v1/streams/{stream}/events"
                    && g.parent.is_empty()
            })
        })
        .await;
    assert!(own.iter().all(|g| g.trace_id != "0".repeat(32)));

    // The event is on disk, carrying the request span's context.
    let lines = sink_lines(&data.join("out").join("clicks"));
    let line = lines
        .iter()
        .find(|l| l.contains("\"n\":1"))
        .expect("delivered");
    assert!(
        line.contains(&format!("00-{PRODUCER_TRACE}-{}-01", req.span_id)),
        "the event keeps its request's traceparent: {line}"
    );
}

/// Two requests with their own producers' contexts through NATS: ingest in one
/// process, delivery in another (started after both were acked, so one delivery
/// carries both), spans exported over OTLP/gRPC. The delivery span is in the first
/// request's trace, a child of its request span, and links to the second's; the
/// HTTP sink sends the delivery span's `traceparent` on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_traced_across_nats_from_ingest_to_process() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let rx = Receiver::start().await;
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("sluice.toml");
    std::fs::write(
        &conf,
        format!(
            "[telemetry]\nendpoint = \"http://{}\"\nprotocol = \"grpc\"\n\n\
             [processor]\nbatch_max_wait = \"500ms\"\n",
            rx.grpc
        ),
    )
    .unwrap();
    let nats_url = nats.url();
    let sink = format!("http://{}/sink", rx.http);
    let common = [
        "--queue",
        nats_url.as_str(),
        "--config",
        conf.to_str().unwrap(),
    ];
    let ingest = spawn_role(
        "ingest",
        &root.path().join("ingest"),
        free_addr(),
        free_addr(),
        &common,
    )
    .await;
    let url = format!("http://{}/v1/streams/orders/events", ingest.http);
    let traces = [
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
    ];
    for (i, t) in traces.iter().enumerate() {
        let tp = format!("00-{t}-00000000000000a{i}-01");
        let a = Http::h1()
            .post(
                &url,
                &[("content-type", "application/json"), ("traceparent", &tp)],
                format!("{{\"order\":{i}}}"),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
    }
    let mut args = common.to_vec();
    args.extend(["--sink", sink.as_str()]);
    let _process = spawn_role(
        "process",
        &root.path().join("process"),
        free_addr(),
        free_addr(),
        &args,
    )
    .await;

    let spans = rx
        .wait_for("the delivery span", |s| {
            s.iter().any(|g| g.name == "deliver http")
                && traces.iter().all(|t| {
                    s.iter()
                        .any(|g| g.trace_id == *t && g.name == "POST /v1/streams/{stream}/events")
                })
        })
        .await;
    let reqs: Vec<&Got> = traces
        .iter()
        .map(|t| one(&spans, t, "POST /v1/streams/{stream}/events"))
        .collect();
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.role, "ingest");
        assert_eq!(r.parent, format!("00000000000000a{i}"));
        let append = one(&spans, &r.trace_id, "append");
        assert_eq!(append.parent, r.span_id);
        assert_eq!(append.role, "ingest");
        let queued = one(&spans, &r.trace_id, "queued");
        assert_eq!(queued.parent, r.span_id, "queued: {queued:?}");
        assert_eq!(queued.role, "process", "recorded where the event was taken");
    }
    let deliver = one(&spans, traces[0], "deliver http");
    assert_eq!(deliver.role, "process");
    assert_eq!(
        deliver.parent, reqs[0].span_id,
        "a child of the first request's span"
    );
    assert_eq!(
        deliver.attr("sluice.events"),
        "2",
        "one delivery carried both"
    );
    assert_eq!(deliver.attr("sluice.requests"), "2");
    assert_eq!(
        deliver.links,
        vec![(traces[1].to_string(), reqs[1].span_id.clone())],
        "linked to the second request's span"
    );
    assert_eq!(deliver.attr("sluice.outcome"), "delivered");
    let seen = rx.seen.lock().unwrap();
    assert_eq!(
        seen.sink_traceparents,
        vec![format!("00-{}-{}-01", traces[0], deliver.span_id)],
        "the HTTP sink sent the delivery span's context; bodies: {:?}",
        seen.sink_bodies
    );
}

/// A request refused by authentication makes no span, whatever its `traceparent`
/// says (its sampled flag must not let anyone make a node trace and export); an
/// authenticated one is traced, its span naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_make_no_spans() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, keys) = key_toml("shop", &["orders"], "");
    let toml = format!(
        "{keys}\n[telemetry]\nendpoint = \"http://{}\"\nprotocol = \"http/protobuf\"\n",
        rx.http
    );
    let (node, _) = serve_with_config(dir.path(), &toml).await;
    let url = format!("http://{}/v1/streams/orders/events", node.http);
    let refused = "00-33333333333333333333333333333333-00000000000000b1-01";
    for _ in 0..20 {
        let a = Http::h1()
            .post(&url, &[("traceparent", refused)], "{}")
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    let traced = "00-44444444444444444444444444444444-00000000000000b2-01";
    let auth = format!("Bearer {key}");
    let a = Http::h1()
        .post(
            &url,
            &[("traceparent", traced), ("authorization", &auth)],
            "{}",
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let spans = rx
        .wait_for("the authenticated request's spans", |s| {
            s.iter().any(|g| {
                g.trace_id == "44444444444444444444444444444444" && g.name == "deliver file"
            })
        })
        .await;
    let req = one(
        &spans,
        "44444444444444444444444444444444",
        "POST /v1/streams/{stream}/events",
    );
    assert_eq!(req.attr("sluice.key"), "shop");
    assert!(
        spans
            .iter()
            .all(|g| g.trace_id != "33333333333333333333333333333333"),
        "no span of a refused request: {spans:#?}"
    );
}

/// A collector that takes connections and never answers costs spans, not requests:
/// every traced request is acked and delivered while the exporter waits, and SIGTERM
/// still ends the node promptly (the last export gets 5 s, then it is given up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collector_costs_spans_not_requests() {
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = hung.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let holding = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = hung.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(conn);
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let toml =
        format!("[telemetry]\nendpoint = \"http://{collector}\"\nprotocol = \"http/protobuf\"\n");
    let (node, data) = serve_with_config(dir.path(), &toml).await;
    let url = format!("http://{}/v1/streams/hung/events", node.http);
    // More spans (4 per request) than the exporter's queue holds (2,048).
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let url = url.clone();
            tokio::spawn(async move {
                let http = Http::h1();
                for i in 0..150 {
                    let tp = format!("00-{:032x}-00000000000000c1-01", t * 1000 + i + 1);
                    let a = http
                        .post(
                            &url,
                            &[("traceparent", tp.as_str())],
                            format!("{{\"t\":{t},\"i\":{i}}}"),
                        )
                        .await;
                    assert_eq!(a.status, StatusCode::ACCEPTED);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let out = data.join("out").join("hung");
    let all = wait_until(Duration::from_secs(30), || sink_lines(&out).len() >= 1200).await;
    assert!(all, "{} of 1,200 delivered", sink_lines(&out).len());
    // The exporter did try: its queue filled past a batch and it connected.
    let tried = wait_until(Duration::from_secs(10), || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    assert!(tried, "the exporter never reached the collector");
    let stopping = std::time::Instant::now();
    let status = sigterm_and_wait(node).await;
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "stopped in {:?}",
        stopping.elapsed()
    );
    holding.abort();
}
