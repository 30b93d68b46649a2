//! Starting nodes, reading their metrics, making TLS certificates.

use std::path::Path;

use sluice_server::config::Sources;
use sluice_server::{Config, Node, NodeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An in-process `sluice serve` on free ports with its own data dir.
pub struct TestNode {
    pub node: Node,
    /// Kept so the data dir lives as long as the node.
    pub _dir: tempfile::TempDir,
    pub base: String,
}

/// Config for a test node: ports 0, a temp data dir, then `flags` (dotted keys).
pub fn test_config(dir: &Path, flags: &[(&str, &str)]) -> Config {
    let mut all = vec![
        ("listen".to_string(), "127.0.0.1:0".to_string()),
        ("admin_listen".to_string(), "127.0.0.1:0".to_string()),
        ("data_dir".to_string(), dir.display().to_string()),
        ("shutdown_grace".to_string(), "10s".to_string()),
    ];
    all.extend(flags.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::load(Sources {
        file: None,
        env: Vec::new(),
        flags: all,
    })
    .expect("test config is valid")
}

pub async fn start(flags: &[(&str, &str)]) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(test_config(dir.path(), flags), NodeOptions::default())
        .await
        .unwrap();
    let base = format!("http://{}", node.http_addr);
    TestNode {
        node,
        _dir: dir,
        base,
    }
}

/// A cheap node: memory queue, blackhole sink.
pub async fn start_fast(extra: &[(&str, &str)]) -> TestNode {
    let mut flags = vec![("queue.kind", "memory"), ("sink.kind", "blackhole")];
    flags.extend_from_slice(extra);
    start(&flags).await
}

impl TestNode {
    /// The Prometheus page of the admin listener.
    pub async fn metrics(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(self.node.admin_addr)
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    /// A counter's value (0 when absent).
    pub async fn counter(&self, series: &str) -> u64 {
        metric(&self.metrics().await, series)
    }
}

/// A metric's value from a Prometheus text page.
pub fn metric(page: &str, series: &str) -> u64 {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

pub const REQUESTS: &str = "sluice_ingest_requests_total";
pub const EVENTS: &str = "sluice_ingest_events_total";

/// A CA and a server certificate for `localhost` / `127.0.0.1`, as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sluice-client test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}
