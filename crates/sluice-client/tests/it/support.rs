//! Starting nodes, reading their metrics, making TLS certificates.

pub use sluice_server::test_util::{start_fast, TestNode};

/// A node with `flags` (dotted keys) in a fresh temp dir. (This file is shared with
/// the tools' tests, which use what the client's do not.)
#[allow(dead_code)]
pub async fn start(flags: &[(&str, &str)]) -> TestNode {
    sluice_server::test_util::start(flags, sluice_server::NodeOptions::default()).await
}

/// A counter from a Prometheus text page (0 when absent).
#[allow(dead_code)]
pub fn metric(page: &str, series: &str) -> u64 {
    sluice_server::test_util::metric(page, series) as u64
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
