//! The test server: hyper on 127.0.0.1:0, plain or over TLS with a private CA,
//! recording every POST and answering each with its handler's [`Reply`].

use std::convert::Infallible;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, RETRY_AFTER};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One POST as the test server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Post {
    pub(crate) headers: HeaderMap,
    /// The body's lines, inflated when gzipped.
    pub(crate) lines: Vec<String>,
    /// Body bytes before and after inflating.
    pub(crate) wire_bytes: usize,
    pub(crate) bytes: usize,
    pub(crate) at: Instant,
}

/// The test server's answer to a POST.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<&'static str>,
    pub(crate) body: &'static str,
    pub(crate) hold: Duration,
}

impl Reply {
    pub(crate) fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            body: "",
            hold: Duration::ZERO,
        }
    }

    pub(crate) fn ok() -> Reply {
        Reply::status(200)
    }
}

/// What the server saw: every POST, the lines of the 2xx ones, and how many
/// requests it held at once.
#[derive(Default)]
pub(crate) struct Seen {
    posts: Mutex<Vec<Post>>,
    taken: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    pub(crate) max_in_flight: AtomicUsize,
    pub(crate) connections: AtomicUsize,
}

pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) seen: Arc<Seen>,
}

impl Server {
    pub(crate) fn posts(&self) -> Vec<Post> {
        self.seen.posts.lock().unwrap().clone()
    }

    /// The ids of the events in POSTs answered 2xx, in arrival order.
    pub(crate) fn taken_ids(&self) -> Vec<String> {
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
pub(crate) async fn server(
    handler: impl Fn(&Post, usize) -> Reply + Send + Sync + 'static,
) -> Server {
    serve(None, handler).await
}

/// [`server`], over TLS when `tls` is given.
pub(crate) async fn serve(
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

/// A fresh CA as PEM, and a server config with a certificate it signed for
/// 127.0.0.1.
pub(crate) fn private_ca() -> (String, tokio_rustls::TlsAcceptor) {
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

fn id_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["id"].as_str().unwrap().to_string()
}
