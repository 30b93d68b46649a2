//! Shared helpers: starting nodes, an HTTP client, reading the sink. Also the
//! support of the `sluice` crate's tests (which add the binary's helpers); each of the
//! two uses part of it.
#![allow(dead_code, unused_imports)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_server::config::Sources;
use sluice_server::{Config, NodeOptions};

pub use sluice_server::test_util::{
    add_key, metric, start_config, test_config, test_config_file, TestNode,
};

/// A node with `flags` in a fresh temp dir.
pub async fn start(flags: &[(&str, &str)], opts: NodeOptions) -> TestNode {
    start_in(tempfile::tempdir().unwrap(), flags, opts).await
}

/// The log filter for nodes a test runs, from `TEST_SLUICE_LOG` (e.g.
/// `warn,sluice_queue=debug`); default `warn` for child processes and nothing for
/// nodes inside the test process.
pub fn test_log() -> Option<String> {
    std::env::var("TEST_SLUICE_LOG").ok()
}

pub async fn start_in(
    dir: tempfile::TempDir,
    flags: &[(&str, &str)],
    opts: NodeOptions,
) -> TestNode {
    if let Some(filter) = test_log() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let config = test_config(dir.path(), flags);
    start_config(config, dir, opts).await
}

/// A new API key for `streams`: (the key, its `[[auth.keys]]` TOML, with `extra`
/// lines such as `events_per_s = 10`).
pub fn key_toml(name: &str, streams: &[&str], extra: &str) -> (String, String) {
    let (key, hash) = sluice_server::auth::generate_key();
    let streams: Vec<String> = streams.iter().map(|s| format!("{s:?}")).collect();
    let toml = format!(
        "[[auth.keys]]\nname = {name:?}\nsha256 = \"{hash}\"\nstreams = [{}]\n{extra}\n",
        streams.join(", ")
    );
    (key, toml)
}

/// Gives `config` the `[auth]` and `[limits]` of `toml`, loaded the way a node
/// loads its file (written to `dir/keys.toml`).
pub fn auth_from_toml(config: &mut Config, dir: &Path, toml: &str) {
    let file = dir.join("keys.toml");
    std::fs::write(&file, toml).unwrap();
    let from_file = Config::load(Sources {
        file: Some(&file),
        env: Vec::new(),
        flags: Vec::new(),
    })
    .unwrap();
    config.auth = from_file.auth;
    config.limits = from_file.limits;
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A pooled HTTP client (HTTP/1.1, or HTTP/2 prior knowledge).
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn h1() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn h2() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        self.request(Method::POST, url, headers, body)
            .await
            .unwrap()
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.request(Method::GET, url, &[], Bytes::new())
            .await
            .unwrap()
    }
}

pub const JSON: (&str, &str) = ("content-type", "application/json");
pub const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");

/// Every envelope line under a stream's output directory, oldest file first.
pub fn sink_lines(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            // Only whole lines: the sink may be writing the next one right now.
            let whole = text.rfind('\n').map_or("", |end| &text[..end]);
            whole.lines().map(str::to_string).collect::<Vec<_>>()
        })
        .collect()
}

/// The raw `data` bytes of an envelope line (the producer's bytes, verbatim).
pub fn raw_data(line: &str) -> &str {
    let i = line.find(",\"data\":").expect("envelope has data") + ",\"data\":".len();
    &line[i..line.len() - 1]
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// A free TCP port on 127.0.0.1 for a child process that needs a fixed address, taken
/// from below the kernel's ephemeral range (32768–60999 by default).
///
/// A port from `bind(0)` is an ephemeral one: once it is released, another test's
/// listener or outgoing connection may get it before the child binds it, or while a
/// broker is down for a restart. A client reconnecting in a loop to a stopped broker
/// can even connect to itself on it (TCP simultaneous open). The kernel never hands
/// out ports below the range on its own, so only another test picking at random could
/// collide; ports handed out by this process are never handed out twice.
pub fn free_addr() -> SocketAddr {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, RandomState};
    use std::sync::{Mutex, OnceLock};
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut taken = TAKEN.get_or_init(Default::default).lock().unwrap();
    let seed = RandomState::new().hash_one(std::process::id());
    for i in 0..u64::from(HIGH - LOW) {
        let port = LOW + ((seed.wrapping_add(i)) % u64::from(HIGH - LOW)) as u16;
        if taken.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            taken.insert(port);
            return l.local_addr().unwrap();
        }
    }
    panic!("no free port in {LOW}..{HIGH}");
}

/// A gRPC channel: HTTP/2 prior knowledge over one pooled hyper client.
pub type GrpcChannel = Client<HttpConnector, tonic::body::Body>;

/// A generated `IngestService` client talking to `addr`.
pub fn grpc_client(
    addr: SocketAddr,
) -> sluice_proto::v1::ingest_service_client::IngestServiceClient<GrpcChannel> {
    let channel = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin = format!("http://{addr}").parse().unwrap();
    sluice_proto::v1::ingest_service_client::IngestServiceClient::with_origin(channel, origin)
}

/// Like [`wait_until`], with an async check.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Producers POSTing NDJSON bodies of unique events, round-robin over `targets`,
/// remembering what was acked and which refusals they saw.
pub struct Load {
    pub acked: Arc<Mutex<BTreeSet<String>>>,
    pub refused: Arc<Mutex<BTreeMap<u16, usize>>>,
    /// A refusal without `Retry-After` (each 429/503 must carry one).
    pub no_retry_after: Arc<Mutex<usize>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(targets: Vec<SocketAddr>, tasks: usize, tag: &str) -> Load {
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let refused = Arc::new(Mutex::new(BTreeMap::new()));
        let no_retry_after = Arc::new(Mutex::new(0));
        let handles = (0..tasks)
            .map(|task| {
                let (acked, refused, nra) =
                    (acked.clone(), refused.clone(), no_retry_after.clone());
                let targets = targets.clone();
                let tag = tag.to_string();
                tokio::spawn(async move {
                    let client = Http::h1();
                    for seq in 0usize.. {
                        let to = targets[(seq + task) % targets.len()];
                        let url = format!("http://{to}/v1/streams/load/events");
                        let n = 1 + (seq * 7 + task) % 20;
                        let keys: Vec<String> = (0..n)
                            .map(|i| format!("{tag}-t{task}-s{seq}-e{i}"))
                            .collect();
                        let body: String = keys
                            .iter()
                            .map(|k| format!("{{\"k\":\"{k}\"}}\n"))
                            .collect();
                        match client
                            .request(hyper::Method::POST, &url, &[NDJSON], body)
                            .await
                        {
                            Ok(a) if a.status == StatusCode::ACCEPTED => {
                                acked.lock().unwrap().extend(keys)
                            }
                            Ok(a) => {
                                *refused
                                    .lock()
                                    .unwrap()
                                    .entry(a.status.as_u16())
                                    .or_insert(0) += 1;
                                if !a.headers.contains_key("retry-after") {
                                    *nra.lock().unwrap() += 1;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                })
            })
            .collect();
        Load {
            acked,
            refused,
            no_retry_after,
            tasks: handles,
        }
    }

    /// Stops the producers; returns every acked key.
    pub async fn stop(self) -> BTreeSet<String> {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.acked.lock().unwrap().clone()
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// The output directory of stream `load` (what [`Load`] writes) under a data dir.
pub fn out(data: &Path) -> PathBuf {
    data.join("out").join("load")
}

/// Every delivered key (`data.k`) under the sink directories, with its count.
pub fn delivered(dirs: &[PathBuf]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for d in dirs {
        for line in sink_lines(d) {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("corrupt line in the sink ({e}): {line:?}"));
            *m.entry(v["data"]["k"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    m
}

/// Waits until every acked key is delivered (or `timeout`), asserts nothing was
/// lost, and returns the number of duplicates.
pub async fn assert_all_delivered(
    dirs: &[PathBuf],
    acked: &BTreeSet<String>,
    timeout: Duration,
) -> usize {
    let end = Instant::now() + timeout;
    let mut got = delivered(dirs);
    while Instant::now() < end && !acked.iter().all(|k| got.contains_key(k)) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = delivered(dirs);
    }
    let lost: Vec<&String> = acked.iter().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events were lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    got.values().map(|n| n - 1).sum()
}

/// An in-process node from `flags` with one API key for every stream, limited to
/// `events_per_s` of its own; returns the node and the key.
pub async fn start_keyed(flags: &[(&str, &str)], events_per_s: Option<u64>) -> (TestNode, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), flags);
    let key = add_key(&mut config, events_per_s);
    (start_config(config, dir, NodeOptions::default()).await, key)
}

/// The answer of a gRPC call made by hand: its status (from the headers of a
/// trailers-only answer or from the trailers) and its response messages' bytes.
pub struct RawGrpc {
    pub status: tonic::Status,
    pub body: Bytes,
}

/// One gRPC call over HTTP/2 prior knowledge with a hand-built body (length-prefixed
/// messages, compressed or not), so a test can send what no generated client would.
pub async fn raw_grpc(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<RawGrpc, String> {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/sluice.v1.IngestService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let head = resp.headers().clone();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = tonic::Status::from_header_map(&head)
        .or_else(|| tonic::Status::from_header_map(&trailers))
        .ok_or_else(|| format!("no grpc-status in {head:?} / {trailers:?}"))?;
    Ok(RawGrpc {
        status,
        body: collected.to_bytes(),
    })
}

/// One gRPC message frame: flag, big-endian length, bytes.
pub fn grpc_frame(compressed: bool, message: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The peak resident set size of process `pid` (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// A config file under `dir` with one API key for every stream (and `extra` TOML);
/// returns the key and the file's path.
pub fn key_config(dir: &Path, extra: &str) -> (String, PathBuf) {
    let (key, hash) = sluice_server::auth::generate_key();
    let file = dir.join("sluice.toml");
    std::fs::write(
        &file,
        format!(
            "{extra}\n[[auth.keys]]\nname = \"test\"\nsha256 = \"{hash}\"\nstreams = [\"*\"]\n"
        ),
    )
    .unwrap();
    (key, file)
}

/// Posts single events to `stream` of `node` until told to stop (send `true`);
/// the task returns how many were accepted.
pub fn post_until_stopped(
    node: &TestNode,
    stream: &str,
) -> (
    tokio::task::JoinHandle<u64>,
    tokio::sync::watch::Sender<bool>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let url = node.events_url(stream);
    let task = tokio::spawn(async move {
        let http = Http::h1();
        let mut sent = 0;
        while !*stopped.borrow_and_update() {
            let a = http.post(&url, &[JSON], r#"{"n":1}"#).await;
            assert_eq!(a.status, StatusCode::ACCEPTED);
            sent += 1;
        }
        sent
    });
    (task, stop)
}
