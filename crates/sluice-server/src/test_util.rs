//! Starting in-process nodes for tests and benchmarks (feature `test-util`): the one
//! copy of the test node setup that the crates' tests and benches share.

use std::path::{Path, PathBuf};

use crate::config::{KeyConfig, Sources};
use crate::{Config, Node, NodeOptions};

/// An in-process node on free ports with its own data dir.
pub struct TestNode {
    pub node: Node,
    /// The data dir; removed when the node is dropped.
    pub dir: tempfile::TempDir,
    /// `http://` + the ingest listener's address.
    pub base: String,
    /// `http://` + the admin listener's address.
    pub admin: String,
}

/// Config for a test node: ports 0, a temp data dir, then `flags` (dotted keys).
pub fn test_config(dir: &Path, flags: &[(&str, &str)]) -> Config {
    test_config_file(dir, "", flags)
}

/// [`test_config`] with a config file of `toml` (written to `dir/sluice.toml`) under
/// the flags.
pub fn test_config_file(dir: &Path, toml: &str, flags: &[(&str, &str)]) -> Config {
    let file = dir.join("sluice.toml");
    std::fs::write(&file, toml).expect("writing the test config");
    let mut all = vec![
        ("listen".to_string(), "127.0.0.1:0".to_string()),
        ("admin_listen".to_string(), "127.0.0.1:0".to_string()),
        ("data_dir".to_string(), dir.display().to_string()),
        ("shutdown_grace".to_string(), "10s".to_string()),
    ];
    all.extend(flags.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::load(Sources {
        file: Some(&file),
        env: Vec::new(),
        flags: all,
    })
    .expect("test config is valid")
}

/// A node with `flags` in a fresh temp dir.
pub async fn start(flags: &[(&str, &str)], opts: NodeOptions) -> TestNode {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = test_config(dir.path(), flags);
    start_config(config, dir, opts).await
}

/// A cheap node: memory queue, blackhole sink, then `extra`.
pub async fn start_fast(extra: &[(&str, &str)]) -> TestNode {
    let mut flags = vec![("queue.kind", "memory"), ("sink.kind", "blackhole")];
    flags.extend_from_slice(extra);
    start(&flags, NodeOptions::default()).await
}

/// Starts a node from a finished `config` whose files live in `dir`.
pub async fn start_config(config: Config, dir: tempfile::TempDir, opts: NodeOptions) -> TestNode {
    let node = Node::start(config, opts)
        .await
        .expect("the test node starts");
    let base = format!("http://{}", node.http_addr);
    let admin = format!("http://{}", node.admin_addr);
    TestNode {
        node,
        dir,
        base,
        admin,
    }
}

/// Adds an API key that may write every stream (limited to `events_per_s` of its
/// own, if given) to `config`; returns the key.
pub fn add_key(config: &mut Config, events_per_s: Option<u64>) -> String {
    let (key, sha256) = crate::auth::generate_key();
    config.auth.keys.push(KeyConfig {
        name: "test".into(),
        sha256,
        streams: vec!["*".into()],
        events_per_s,
        bytes_per_s: None,
    });
    key
}

impl TestNode {
    /// Where the file sink writes `stream`.
    pub fn out_dir(&self, stream: &str) -> PathBuf {
        self.dir.path().join("out").join(stream)
    }

    /// The ingest URL of `stream`.
    pub fn events_url(&self, stream: &str) -> String {
        format!("{}/v1/streams/{stream}/events", self.base)
    }

    /// The Prometheus page of the admin listener (plain HTTP/1.1, no client library).
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.node.admin_addr)
            .await
            .expect("the admin listener answers");
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .await
            .expect("writing the request");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("reading the answer");
        let text = String::from_utf8(out).expect("metrics are text");
        match text.split_once("\r\n\r\n") {
            Some((_, body)) => body.to_string(),
            None => text,
        }
    }

    /// A counter's value (0 when absent).
    pub async fn counter(&self, series: &str) -> u64 {
        metric(&self.metrics().await, series) as u64
    }
}

/// A metric's value from a Prometheus text page (0 when absent).
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
