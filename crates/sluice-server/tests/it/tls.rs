//! TLS on the listeners, with certificates made here by rcgen: ALPN, versions, mTLS,
//! and reloading certificates without dropping connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sluice_server::NodeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::*;

/// A CA and what it signed, as PEM files in a directory.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    fn der(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sluice test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
        }
    }

    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes a server certificate and key where the node's config points.
    fn install_server(&self, leaf: &Leaf) {
        // Key first, then cert: a reload racing the writes fails and keeps the old pair.
        std::fs::write(self.dir.join("server.key"), &leaf.key_pem).unwrap();
        std::fs::write(self.dir.join("server.pem"), &leaf.cert_pem).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

fn client_config(
    pki: &Pki,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(pki.roots());
    let mut c = match client_cert {
        None => b.with_no_client_auth(),
        Some(l) => b
            .with_client_auth_cert(
                vec![l.der()],
                PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// One POST over an established TLS stream, HTTP/2 when ALPN chose it.
async fn post_over(
    stream: TlsStream<TcpStream>,
    url_path: &str,
) -> Result<(StatusCode, Sender), String> {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let mut sender = if h2 {
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Sender::H2(s)
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Sender::H1(s)
    };
    let status = sender.post(url_path).await?;
    Ok((status, sender))
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn post(&mut self, path: &str) -> Result<StatusCode, String> {
        let req = Request::post(format!("https://localhost{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"tls\":true}")))
            .unwrap();
        let resp = match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        Ok(status)
    }
}

async fn tls_node(pki: &Pki, extra: &[(&str, &str)]) -> TestNode {
    pki.install_server(&pki.leaf("server one"));
    let cert = pki.path("server.pem");
    let key = pki.path("server.key");
    let mut flags = vec![("tls.cert", cert.as_str()), ("tls.key", key.as_str())];
    flags.extend_from_slice(extra);
    start(&flags, NodeOptions::default()).await
}

const PATH: &str = "/v1/streams/tls/events";
const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_picks_h2_or_http1_and_both_ingest() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    let node = tls_node(&pki, &[]).await;
    let addr = node.node.http_addr;

    let s = connect(
        addr,
        client_config(&pki, &[b"h2", b"http/1.1"], TLS13, None),
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(post_over(s, PATH).await.unwrap().0, StatusCode::ACCEPTED);

    let s = connect(addr, client_config(&pki, &[b"http/1.1"], TLS12, None))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(post_over(s, PATH).await.unwrap().0, StatusCode::ACCEPTED);

    assert!(
        wait_until(Duration::from_secs(10), || sink_lines(&node.out_dir("tls"))
            .len()
            == 2)
        .await
    );
    // Plain HTTP on the TLS port is refused and counted; the admin port speaks TLS too.
    let a = Http::h1()
        .request(
            hyper::Method::GET,
            &format!("{}/healthz", node.base),
            &[],
            "",
        )
        .await;
    assert!(a.is_err() || !a.unwrap().status.is_success());
    let s = connect(
        node.node.admin_addr,
        client_config(&pki, &[b"http/1.1"], TLS13, None),
    )
    .await
    .expect("the admin listener speaks TLS");
    drop(s);
}

/// A hand-made TLS 1.1 ClientHello, otherwise acceptable (suites, groups and
/// signature algorithms the server supports): the server must answer with a fatal
/// `protocol_version` alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused_with_a_protocol_version_alert() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    let node = tls_node(&pki, &[]).await;
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // no session id
                   // ECDHE-ECDSA/RSA-AES128-GCM-SHA256
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let extensions: &[u8] = &[
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // groups x25519, P-256
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // point formats: uncompressed
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04, // signature algorithms
    ];
    hello.extend_from_slice(&[0x00, extensions.len() as u8]);
    hello.extend_from_slice(extensions);
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);

    let mut tcp = TcpStream::connect(node.node.http_addr).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut answer = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut answer))
        .await
        .expect("the server answers")
        .expect("an alert record");
    assert_eq!(answer[0], 0x15, "an alert record: {answer:?}");
    assert_eq!(answer[5], 2, "fatal: {answer:?}");
    assert_eq!(answer[6], 70, "protocol_version: {answer:?}");
    let m = metrics_tls(&node, &pki).await;
    assert!(
        metric(
            &m,
            "sluice_connections_closed_total{listener=\"ingest\",reason=\"tls_handshake\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_a_signed_client_and_refuses_others() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    let ca = pki.path("ca.pem");
    let node = tls_node(
        &pki,
        &[("tls.client_ca", ca.as_str()), ("tls.admin", "false")],
    )
    .await;
    let addr = node.node.http_addr;
    let good = pki.leaf("producer");
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = Pki::new(rogue_dir.path()).leaf("producer");

    let s = connect(addr, client_config(&pki, &[b"h2"], TLS13, Some(&good)))
        .await
        .unwrap();
    assert_eq!(post_over(s, PATH).await.unwrap().0, StatusCode::ACCEPTED);

    for (what, cert) in [
        ("no certificate", None),
        ("a certificate of another CA", Some(&rogue)),
    ] {
        for versions in [TLS13, TLS12] {
            // TLS 1.3 reports the refusal after the client's handshake: at the request.
            let outcome = match connect(addr, client_config(&pki, &[b"h2"], versions, cert)).await {
                Err(e) => Err(e.to_string()),
                Ok(s) => post_over(s, PATH).await.map(|r| r.0),
            };
            assert!(
                outcome.is_err(),
                "{what} over {versions:?} was let in: {outcome:?}"
            );
        }
    }
    assert_eq!(sink_lines(&node.out_dir("tls")).len(), 1);
    // The admin listener stayed plain (tls.admin = false).
    assert!(Http::h1()
        .get(&format!("{}/healthz", node.admin))
        .await
        .status
        .is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_certificates_are_picked_up_without_dropping_connections() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    let node = tls_node(
        &pki,
        &[("tls.watch_interval", "100ms"), ("tls.admin", "false")],
    )
    .await;
    let addr = node.node.http_addr;
    let config = client_config(&pki, &[b"http/1.1"], TLS13, None);
    let old = connect(addr, config.clone()).await.unwrap();
    let first = old.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (status, mut kept) = post_over(old, PATH).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);

    let next = pki.leaf("server two");
    pki.install_server(&next);
    let renewed = wait_until_async(Duration::from_secs(10), || async {
        let s = connect(addr, config.clone()).await.unwrap();
        s.get_ref().1.peer_certificates().unwrap()[0] == next.der()
    })
    .await;
    assert!(renewed, "new connections never got the new certificate");
    assert_ne!(first, next.der());
    // The connection opened before the reload still works.
    assert_eq!(kept.post(PATH).await.unwrap(), StatusCode::ACCEPTED);
    let m = Http::h1().get(&format!("{}/metrics", node.admin)).await;
    let m = String::from_utf8(m.body.to_vec()).unwrap();
    assert_eq!(
        metric(&m, "sluice_tls_reloads_total{result=\"ok\"}"),
        1.0,
        "{m}"
    );

    // A broken file is refused and the current certificate stays.
    std::fs::write(pki.dir.join("server.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = connect(addr, config.clone()).await.unwrap();
    assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], next.der());
    let m = Http::h1().get(&format!("{}/metrics", node.admin)).await;
    let m = String::from_utf8(m.body.to_vec()).unwrap();
    assert!(
        metric(&m, "sluice_tls_reloads_total{result=\"error\"}") >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    let node = tls_node(&pki, &[("tls.watch_interval", "1h")]).await;
    let config = client_config(&pki, &[b"http/1.1"], TLS13, None);
    let next = pki.leaf("server two");
    pki.install_server(&next);
    let pid = std::process::id().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(ok.success());
    let renewed = wait_until_async(Duration::from_secs(10), || async {
        let s = connect(node.node.http_addr, config.clone()).await.unwrap();
        s.get_ref().1.peer_certificates().unwrap()[0] == next.der()
    })
    .await;
    assert!(renewed, "SIGHUP did not reload the certificate");
}

/// The metrics page over the admin listener's TLS.
async fn metrics_tls(node: &TestNode, pki: &Pki) -> String {
    {
        let s = connect(
            node.node.admin_addr,
            client_config(pki, &[b"http/1.1"], TLS13, None),
        )
        .await
        .unwrap();
        let io = TokioIo::new(s);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("https://localhost/metrics")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }
}

/// The HTTP sink's own options from the config reach the wire: a sender node posts
/// over HTTPS to a receiver sluice (its CA only in the sender's `sink.ca_file`),
/// authenticated by `sink.headers.Authorization`, in POSTs of at most
/// `sink.max_request_bytes`; every event arrives, as an envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_sink_uses_its_ca_file_headers_and_request_size_from_the_config() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    pki.install_server(&pki.leaf("collector"));
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let rdir = tempfile::tempdir().unwrap();
    let mut rconfig = test_config(
        rdir.path(),
        &[
            ("tls.cert", &cert),
            ("tls.key", &key),
            ("tls.admin", "false"),
        ],
    );
    let api_key = add_key(&mut rconfig, None);
    let receiver = start_config(rconfig, rdir, NodeOptions::default()).await;
    let url = format!(
        "https://localhost:{}/v1/streams/relayed/events",
        receiver.node.http_addr.port()
    );
    let bearer = format!("Bearer {api_key}");
    let sender = start(
        &[
            ("sink.kind", "http"),
            ("sink.url", &url),
            ("sink.ca_file", &ca),
            ("sink.headers.Authorization", &bearer),
            ("sink.max_request_bytes", "1 KiB"),
        ],
        NodeOptions::default(),
    )
    .await;
    let body: String = (0..40).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let a = Http::h1()
        .post(&sender.events_url("web"), &[NDJSON], body)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let out = receiver.dir.path().join("out").join("relayed");
    assert!(
        wait_until(Duration::from_secs(20), || sink_lines(&out).len() >= 40).await,
        "{} of 40 relayed",
        sink_lines(&out).len()
    );
    let mut ns: Vec<u64> = sink_lines(&out)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["data"]["stream"], "web", "the sender's envelope: {l}");
            v["data"]["data"]["n"].as_u64().unwrap()
        })
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..40).collect::<Vec<_>>(), "each event once");
    // 40 envelopes of ~130 bytes in POSTs of at most 1 KiB: five or more.
    let requests = metric(&receiver.metrics().await, "sluice_ingest_requests_total");
    assert!(requests >= 4.0, "{requests} POSTs");
    let refused = metric(
        &receiver.metrics().await,
        "sluice_ingest_rejected_requests_total{reason=\"unauthorized\"}",
    );
    assert_eq!(refused, 0.0, "every POST carried the key");
    sender.node.shutdown();
    sender.node.wait().await;
}
