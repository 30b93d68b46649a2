//! Real brokers for the broker tests, and the scenarios every broker must pass.
//!
//! The binaries come from `scripts/test` (Debian's `nats-server`; `tansu` from
//! crates.io). A missing binary fails the test under `CI=true` and skips it, with a
//! notice, elsewhere.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use hyper::StatusCode;

use crate::procs::*;
use crate::support::*;

/// Finds a broker binary: `$env_var`, then `PATH`, then the given fallbacks.
pub fn find_binary(name: &str, env_var: &str, fallbacks: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(fallbacks.iter().cloned())
        .find(|p| p.is_file())
}

/// What to do when a broker binary is missing: fail under CI, skip (`None`) elsewhere.
pub fn missing<T>(name: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{name} is not installed; `scripts/test` installs it (CI=true: a missing broker is a failure)");
    }
    eprintln!("SKIPPED: {name} is not installed; run `scripts/test` to install it");
    None
}

/// Test-node flags for a broker queue at `url`, then `extra`.
fn queue_flags<'a>(url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let kind = url.split("://").next().unwrap();
    let mut flags = vec![("queue.kind", kind), ("queue.url", url)];
    flags.extend_from_slice(extra);
    flags
}

/// A broker the scenarios can use, stop and start again on the same address.
pub trait Broker: Send + Sync {
    /// The `--queue` / `--sink` URL.
    fn url(&self) -> String;
    /// Kills the broker (SIGKILL).
    fn stop(&mut self) -> impl std::future::Future<Output = ()> + Send;
    /// Starts it again on the same address (and data).
    fn start(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// A `nats-server -js` on a free port with its store in a temp dir.
pub struct NatsServer {
    bin: PathBuf,
    pub port: u16,
    monitor: u16,
    dir: tempfile::TempDir,
    config: String,
    child: Option<tokio::process::Child>,
}

impl NatsServer {
    /// Starts one, or returns `None` (skip) when nats-server is missing outside CI.
    pub async fn start() -> Option<NatsServer> {
        NatsServer::start_with("").await
    }

    /// Starts one with extra server configuration (e.g. `max_payload: 2048`).
    pub async fn start_with(config: &str) -> Option<NatsServer> {
        let Some(bin) = find_binary(
            "nats-server",
            "NATS_SERVER_BIN",
            &[PathBuf::from("/usr/sbin/nats-server")],
        ) else {
            return missing("nats-server");
        };
        let mut s = NatsServer {
            bin,
            port: free_addr().port(),
            monitor: free_addr().port(),
            dir: tempfile::tempdir().unwrap(),
            config: config.to_string(),
            child: None,
        };
        s.start().await;
        Some(s)
    }
}

impl Broker for NatsServer {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    async fn start(&mut self) {
        let conf = self.dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "host: 127.0.0.1\nport: {}\nhttp_port: {}\njetstream {{ store_dir: {:?} }}\n{}\n",
                self.port,
                self.monitor,
                self.dir.path().join("js"),
                self.config
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.path().join("nats.log")).unwrap();
        let child = tokio::process::Command::new(&self.bin)
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let health = format!(
            "http://127.0.0.1:{}/healthz?js-enabled-only=true",
            self.monitor
        );
        let ready = wait_until_async(Duration::from_secs(20), || async {
            matches!(Http::h1().request(hyper::Method::GET, &health, &[], "").await,
                     Ok(a) if a.status == StatusCode::OK)
        })
        .await;
        assert!(
            ready,
            "nats-server did not become healthy: {}",
            std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
        );
    }
}

/// HTTP ingest → broker → processor → file sink, in one `sluice serve`: every event
/// of single-event and NDJSON requests arrives, byte for byte.
pub async fn ingest_to_file(broker: &impl Broker, extra: &[(&str, &str)]) {
    let url = broker.url();
    let node = start(&queue_flags(&url, extra), Default::default()).await;
    let http = Http::h1();
    let mut want = BTreeSet::new();
    for i in 0..50 {
        let body = format!("{{\"k\":\"single-{i}\",\"pad\":\"é\\n\"}}");
        let a = http.post(&node.events_url("load"), &[JSON], body).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        want.insert(format!("single-{i}"));
    }
    for b in 0..5 {
        let body: String = (0..1000)
            .map(|i| format!("{{\"k\":\"batch-{b}-{i}\"}}\n"))
            .collect();
        let a = http.post(&node.events_url("load"), &[NDJSON], body).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        assert_eq!(a.json()["accepted"], 1000);
        want.extend((0..1000).map(|i| format!("batch-{b}-{i}")));
    }
    let dups = assert_all_delivered(&[node.out_dir("load")], &want, Duration::from_secs(60)).await;
    let lines = sink_lines(&node.out_dir("load"));
    let one = lines.iter().find(|l| l.contains("single-7")).unwrap();
    assert_eq!(raw_data(one), "{\"k\":\"single-7\",\"pad\":\"é\\n\"}");
    eprintln!("{} events delivered, {dups} duplicates", want.len());
    // The processor counts a delivery once the sink has returned, a moment after the
    // lines are in the files: wait for the counter (bounded) instead of racing it.
    let series = "sluice_sink_delivered_events_total{sink=\"file\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut counted = metric(&node.metrics().await, series);
    while counted < want.len() as f64 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        counted = metric(&node.metrics().await, series);
    }
    assert!(
        counted >= want.len() as f64,
        "{counted} delivered events counted"
    );
    node.node.shutdown();
    assert!(node.node.wait().await, "clean shutdown");
}

/// The broker killed and restarted under load: producers get 503 + Retry-After
/// while it is away (never a 5xx without it), and every acked event is delivered.
pub async fn broker_restart_under_load(broker: &mut impl Broker, extra: &[(&str, &str)]) {
    let url = broker.url();
    let node = start(&queue_flags(&url, extra), Default::default()).await;
    let load = Load::start(vec![node.node.http_addr], 8, "restart");
    // Under load means flowing end to end: events acked and delivered.
    assert!(
        wait_until(Duration::from_secs(30), || {
            load.acked_count() > 500 && !delivered(&[node.out_dir("load")]).is_empty()
        })
        .await
    );
    broker.stop().await;
    let before = load.acked_count();
    let saw_503 = wait_until(Duration::from_secs(30), || {
        load.refused.lock().unwrap().contains_key(&503)
    })
    .await;
    assert!(saw_503, "no 503 while the broker was down");
    // /readyz says why: at once for NATS (its connection state); for Kafka once
    // librdkafka's next statistics show no broker connection up.
    let ready = node.admin.clone() + "/readyz";
    let unready = wait_until_async(Duration::from_secs(15), || async {
        let a = Http::h1().get(&ready).await;
        a.status == StatusCode::SERVICE_UNAVAILABLE
            && String::from_utf8_lossy(&a.body).contains("unreachable")
    })
    .await;
    assert!(unready, "/readyz did not report the broker unreachable");
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.start().await;
    assert!(
        wait_until(Duration::from_secs(60), || load.acked_count()
            > before + 500)
        .await,
        "ingest did not recover after the broker came back"
    );
    let refused = load.refused.lock().unwrap().clone();
    let nra = *load.no_retry_after.lock().unwrap();
    let acked = load.stop().await;
    assert_eq!(nra, 0, "refusals without Retry-After: {refused:?}");
    let dups = assert_all_delivered(&[node.out_dir("load")], &acked, Duration::from_secs(90)).await;
    eprintln!(
        "{} acked, refusals {refused:?}, {dups} duplicates",
        acked.len()
    );
    node.node.shutdown();
    node.node.wait().await;
}

/// The scale-out topology on loopback: 2 `sluice ingest` + 2 `sluice process` (one
/// consumer group) + the broker. Both processors take part; one is SIGKILLed mid-run
/// and the other finishes its work: every acked event is delivered.
pub async fn scale_out(broker: &impl Broker, extra: &[&str]) {
    let root = tempfile::tempdir().unwrap();
    let url = broker.url();
    let mut args = vec!["--queue", url.as_str()];
    args.extend_from_slice(extra);
    let mut ingests = Vec::new();
    for i in 0..2 {
        let d = root.path().join(format!("ingest-{i}"));
        ingests.push(spawn_role("ingest", &d, free_addr(), free_addr(), &args).await);
    }
    let mut procs = Vec::new();
    for i in 0..2 {
        let d = root.path().join(format!("process-{i}"));
        procs.push(spawn_role("process", &d, free_addr(), free_addr(), &args).await);
    }
    let dirs: Vec<PathBuf> = procs.iter().map(|p| out(&p.data)).collect();
    let load = Load::start(ingests.iter().map(|s| s.http).collect(), 8, "scale");
    // Both processors deliver something while both run.
    let shared = wait_until(Duration::from_secs(60), || {
        dirs.iter()
            .all(|d| !delivered(std::slice::from_ref(d)).is_empty())
    })
    .await;
    assert!(shared, "both processors should share the work");
    let mut victim = procs.remove(0);
    victim.child.kill().await.unwrap();
    let at_kill = load.acked_count();
    assert!(
        wait_until(Duration::from_secs(30), || load.acked_count()
            > at_kill + 2000)
        .await
    );
    let acked = load.stop().await;
    let dups = assert_all_delivered(&dirs, &acked, Duration::from_secs(120)).await;
    eprintln!(
        "{} acked through 2 ingest nodes, {dups} duplicates after the SIGKILL",
        acked.len()
    );
}
