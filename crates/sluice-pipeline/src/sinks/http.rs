//! The HTTP sink: POSTs each delivery as NDJSON envelopes to one URL.
//!
//! ```text
//! POST /ingest HTTP/1.1
//! Host: collector:8080
//! Content-Type: application/x-ndjson
//! Content-Encoding: gzip                      only with `gzip`
//! Authorization: Bearer …                     the configured extra headers
//!
//! {"id":"0193…","stream":"clicks",…,"data":{…}}\n
//! {"id":"0193…","stream":"clicks",…,"data":{…}}\n
//! ```
//!
//! Invariants: a body is whole envelope lines, in delivery order, at most
//! `max_request_bytes` of them before compression (an event whose line alone is larger
//! goes alone); a delivery resolves `Ok` only once every one of its POSTs got a 2xx.
//! Chunks of one delivery are posted concurrently, so the server may see them out of
//! order; at most `concurrency` POSTs are in flight across every caller of one sink
//! (and its clones). Connections are kept alive and pooled; the protocol is HTTP/1.1,
//! in the clear for `http://` URLs and over TLS (rustls, ALPN `http/1.1`) for
//! `https://` ones, trusting the system's CA bundle or `ca_file`.
//!
//! How answers map to [`SinkError`]:
//!
//! | answer                                     | result                                      |
//! |--------------------------------------------|---------------------------------------------|
//! | 2xx                                        | delivered                                   |
//! | 408, 429, 5xx                              | `Retryable`, `retry_after` from `Retry-After` (the processor waits at most `retry_max`) |
//! | connect or TLS error, timeout              | `Retryable`                                 |
//! | 401, 403, 404, 405, 407, 1xx, 3xx          | `Retryable`: wrong URL or credentials, no event's fault |
//! | any other 4xx (400, 413, 422, …)           | bisect, then `Rejected` for the refused events |
//!
//! Bisection: a refused POST of n > 1 events is split in two halves, each posted
//! again, recursively, down to single events, so that exactly the events the server
//! refuses are rejected and every other one is delivered, a clean half once. Each
//! refused event costs at most 2·⌈log2 n⌉ extra POSTs (two per level of the split,
//! n the events of its chunk) and about twice its chunk's bytes.
//!
//! A passing failure anywhere makes the whole delivery `Retryable`, even when other
//! chunks were taken: the processor then delivers it all again, so a server can see
//! a chunk twice (at-least-once). POSTs not yet started when a passing failure comes
//! back are not sent at all, and refusals found meanwhile are found again on the
//! next attempt. Only when every failure is a refusal is the result `Rejected`, with
//! exactly the refused indexes.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    RETRY_AFTER, TRANSFER_ENCODING,
};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use sluice_core::units::{ByteSize, HumanDuration};
use sluice_core::{BoxFuture, Event, OptionError, Properties, Rejection, Sink, SinkError};
use sluice_proto::envelope::{write_line_cached, TimeCache};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// How much of a refusal's body goes into its reason.
const REASON_BODY_BYTES: usize = 200;
/// Most response body bytes read to keep a connection reusable; past that the
/// connection is dropped instead.
const DRAIN_MAX_BYTES: usize = 64 * 1024;
/// Bodies up to this size are gzipped on the calling task; larger ones on the
/// blocking pool (fast deflate runs at roughly 100 MB/s: 32 KiB is a few hundred µs).
const GZIP_INLINE_BYTES: usize = 32 * 1024;
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Where systems keep their CA bundle (Debian, Ubuntu and Alpine; Fedora and RHEL).
const SYSTEM_CA_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// How the HTTP sink posts: `[sink]` (or `[dead_letter]`) with `kind = "http"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSinkOptions {
    /// Where to POST, an `http://` or `https://` URL (no credentials in it: put them
    /// in `headers`). Required; the default is empty and refused by [`HttpSink::new`].
    pub url: String,
    /// Most POSTs in flight at once, across every caller of the sink: bounds the load
    /// on the server and the open connections. Default 4.
    pub concurrency: usize,
    /// Longest one POST may take, from connecting to the end of the answer; past it
    /// the POST counts as a passing failure. Default `10s`.
    pub timeout: HumanDuration,
    /// Most envelope bytes (before compression) in one POST: a larger delivery is
    /// split into several POSTs, so that servers with a body limit take it. An event
    /// alone larger than this still goes, alone. Default `1 MiB`.
    pub max_request_bytes: ByteSize,
    /// Extra headers on every POST, e.g. `{ Authorization = "Bearer ..." }`.
    /// `Content-Type`, `Content-Encoding`, `Content-Length` and `Transfer-Encoding`
    /// are the sink's own. Values of secret-looking names are redacted by
    /// `sluice config check`. Default none.
    pub headers: Properties,
    /// Compress bodies (`Content-Encoding: gzip`, fast level): less traffic for some
    /// CPU. Default false.
    pub gzip: bool,
    /// A PEM bundle of the CAs to trust for an `https://` URL, for servers with a
    /// private CA. Default none: the system's bundle.
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpSinkOptions {
    fn default() -> Self {
        HttpSinkOptions {
            url: String::new(),
            concurrency: 4,
            timeout: HumanDuration(Duration::from_secs(10)),
            max_request_bytes: ByteSize(1 << 20),
            headers: Properties::default(),
            gzip: false,
            ca_file: None,
        }
    }
}

impl HttpSinkOptions {
    /// Checks every option (the CA bundle is read only by [`HttpSink::new`]).
    pub fn validate(&self) -> Result<(), OptionError> {
        self.checked_url()?;
        if self.concurrency == 0 {
            return Err(OptionError::new("concurrency", 0, "must be at least 1"));
        }
        if self.max_request_bytes.0 == 0 {
            return Err(OptionError::new(
                "max_request_bytes",
                0,
                "must be at least 1",
            ));
        }
        if self.timeout.0.is_zero() {
            return Err(OptionError::new("timeout", "0s", "must be more than 0"));
        }
        headers(&self.headers, self.gzip).map(|_| ())
    }

    /// The URL, and how messages show it: scheme, authority and path, without the
    /// query (which may hold a token).
    fn checked_url(&self) -> Result<(Uri, String), OptionError> {
        let bad = |why: String| OptionError::new("url", format!("{:?}", self.url), why);
        let uri: Uri = self
            .url
            .parse()
            .map_err(|e| bad(format!("must be an http:// or https:// URL: {e}")))?;
        let Some(scheme @ ("http" | "https")) = uri.scheme_str() else {
            return Err(bad("must be an http:// or https:// URL".into()));
        };
        let Some(authority) = uri.authority() else {
            return Err(bad("has no host".into()));
        };
        if authority.as_str().contains('@') {
            // Not quoted back: it holds a secret.
            return Err(OptionError::new(
                "url",
                "a URL with credentials",
                "must not hold credentials; send them in headers (Authorization)",
            ));
        }
        let shown = format!("{scheme}://{authority}{}", uri.path());
        Ok((uri, shown))
    }
}

/// POSTs NDJSON envelopes to a URL (see the module docs). Clones share the
/// connection pool and the concurrency bound.
#[derive(Clone)]
pub struct HttpSink {
    client: Client<Connector, Full<Bytes>>,
    uri: Uri,
    /// The URL for messages: scheme, authority and path, without the query (which
    /// may hold a token).
    shown: Arc<str>,
    headers: Arc<HeaderMap>,
    permits: Arc<Semaphore>,
    concurrency: usize,
    timeout: Duration,
    max_request_bytes: usize,
    gzip: bool,
}

impl HttpSink {
    /// A sink posting to `opts.url`; fails when an option is invalid (see
    /// [`HttpSinkOptions::validate`]) or the CA bundle cannot be read.
    pub fn new(opts: HttpSinkOptions) -> Result<HttpSink, OptionError> {
        let (uri, shown) = opts.checked_url()?;
        opts.validate()?;
        let headers = headers(&opts.headers, opts.gzip)?;
        let scheme = uri.scheme_str().unwrap_or_default();
        let tls = match scheme {
            "https" => Some(tls_connector(opts.ca_file.as_deref())?),
            _ => None,
        };

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(opts.timeout.0));
        let connector = Connector { http, tls };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(opts.concurrency)
            .build(connector);
        Ok(HttpSink {
            client,
            uri,
            shown: shown.into(),
            headers: Arc::new(headers),
            permits: Arc::new(Semaphore::new(opts.concurrency)),
            concurrency: opts.concurrency,
            timeout: opts.timeout.0,
            max_request_bytes: opts.max_request_bytes.0 as usize,
            gzip: opts.gzip,
        })
    }

    /// POSTs `lines` (whole envelope lines) once, within the concurrency bound and
    /// the timeout.
    async fn post(&self, lines: Bytes) -> Answer {
        let _permit = self.permits.acquire().await.expect("never closed");
        let body = if !self.gzip {
            lines
        } else {
            match gzip(lines).await {
                Ok(b) => b,
                Err(e) => {
                    return Answer::Retry {
                        message: format!(
                            "http sink: compressing a body for {} failed: {e}",
                            self.shown
                        ),
                        retry_after: None,
                    }
                }
            }
        };
        let mut req = Request::post(self.uri.clone())
            .body(Full::new(body))
            .expect("the URI was validated");
        *req.headers_mut() = HeaderMap::clone(&self.headers);

        let deadline = tokio::time::Instant::now() + self.timeout;
        let resp = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => {
                return Answer::Retry {
                    message: format!(
                        "http sink: no answer from {} within {:?}",
                        self.shown, self.timeout
                    ),
                    retry_after: None,
                }
            }
            Ok(Err(e)) => {
                return Answer::Retry {
                    message: format!("http sink: POST {} failed: {}", self.shown, chain(&e)),
                    retry_after: None,
                }
            }
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        // The verdict is the status: a body cut short by the deadline changes nothing
        // (a 2xx was sent, so the server has the events), it only costs the connection.
        let body = tokio::time::timeout_at(deadline, read_prefix(resp.into_body()))
            .await
            .unwrap_or_default();
        match verdict(status) {
            Verdict::Taken => Answer::Taken,
            Verdict::Retry => Answer::Retry {
                message: self.describe(status, &body),
                retry_after,
            },
            Verdict::Refused => Answer::Refused {
                reason: self.describe(status, &body),
            },
        }
    }

    /// `http sink: 422 Unprocessable Entity from http://host/path: <body start>`.
    fn describe(&self, status: StatusCode, body: &[u8]) -> String {
        let text: String = String::from_utf8_lossy(body)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = text.trim();
        if text.is_empty() {
            format!("http sink: {status} from {}", self.shown)
        } else {
            format!("http sink: {status} from {}: {text}", self.shown)
        }
    }
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("url", &self.shown)
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

impl Sink for HttpSink {
    fn name(&self) -> &'static str {
        "http"
    }

    fn deliver<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        // One buffer for the whole delivery: any run of events is one slice of it, so
        // chunks and bisection halves are posted without copying.
        let mut buf = Vec::with_capacity(events.iter().map(|e| e.size_hint() + 64).sum());
        let mut ends = Vec::with_capacity(events.len());
        let mut time = TimeCache::default();
        for e in events {
            write_line_cached(e, &mut buf, &mut time);
            ends.push(buf.len());
        }
        let delivery = Delivery {
            sink: self,
            lines: Bytes::from(buf),
            ends,
            stop: AtomicBool::new(false),
        };
        Box::pin(async move {
            let chunks = chunks(&delivery.ends, self.max_request_bytes);
            let outcomes =
                futures_util::future::join_all(chunks.into_iter().map(|r| delivery.send(r))).await;
            outcomes
                .into_iter()
                .fold(Outcome::default(), Outcome::merge)
                .into_result()
        })
    }
}

/// One `deliver` call in progress.
struct Delivery<'a> {
    sink: &'a HttpSink,
    /// Every event's envelope line, in order.
    lines: Bytes,
    /// `ends[i]`: where event i's line ends in `lines`.
    ends: Vec<usize>,
    /// Set by the first passing failure: the delivery will be retried as a whole, so
    /// POSTs not started yet are not sent.
    stop: AtomicBool,
}

impl Delivery<'_> {
    /// The lines of `events`.
    fn body(&self, events: &Range<usize>) -> Bytes {
        let start = if events.start == 0 {
            0
        } else {
            self.ends[events.start - 1]
        };
        self.lines.slice(start..self.ends[events.end - 1])
    }

    /// POSTs `events`, bisecting on refusal down to the single events refused.
    fn send(&self, events: Range<usize>) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            if events.is_empty() || self.stop.load(Ordering::Relaxed) {
                return Outcome::default();
            }
            match self.sink.post(self.body(&events)).await {
                Answer::Taken => Outcome::default(),
                Answer::Retry {
                    message,
                    retry_after,
                } => {
                    self.stop.store(true, Ordering::Relaxed);
                    Outcome {
                        failure: Some((message, retry_after)),
                        failures: 1,
                        ..Outcome::default()
                    }
                }
                Answer::Refused { reason } if events.len() == 1 => Outcome {
                    refused: vec![Rejection {
                        index: events.start,
                        reason,
                    }],
                    ..Outcome::default()
                },
                Answer::Refused { reason } => {
                    tracing::debug!(
                        url = %self.sink.shown,
                        events = events.len(),
                        %reason,
                        "http sink bisecting a refused post"
                    );
                    let mid = events.start + events.len() / 2;
                    let (a, b) =
                        tokio::join!(self.send(events.start..mid), self.send(mid..events.end));
                    a.merge(b)
                }
            }
        })
    }
}

/// What became of some of a delivery's events.
#[derive(Debug, Default)]
struct Outcome {
    /// Events the server refused for good.
    refused: Vec<Rejection>,
    /// The first passing failure's message, and the longest `Retry-After` seen.
    failure: Option<(String, Option<Duration>)>,
    /// POSTs that failed in passing.
    failures: usize,
}

impl Outcome {
    fn merge(mut self, other: Outcome) -> Outcome {
        self.refused.extend(other.refused);
        self.failures += other.failures;
        self.failure = match (self.failure, other.failure) {
            (Some((m, a)), Some((_, b))) => Some((m, a.max(b))),
            (a, b) => a.or(b),
        };
        self
    }

    fn into_result(mut self) -> Result<(), SinkError> {
        if let Some((message, retry_after)) = self.failure {
            let message = match self.failures {
                0 | 1 => message,
                n => format!("{message} (and {} more failed POSTs)", n - 1),
            };
            return Err(SinkError::Retryable {
                message,
                retry_after,
            });
        }
        if self.refused.is_empty() {
            return Ok(());
        }
        self.refused.sort_by_key(|r| r.index);
        Err(SinkError::Rejected(self.refused))
    }
}

/// The server's answer to one POST.
#[derive(Debug)]
enum Answer {
    Taken,
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    Refused {
        reason: String,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Taken,
    Retry,
    Refused,
}

/// What a status says about the events posted.
fn verdict(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Taken,
        // Overload, a slow client, a server error: try again later.
        408 | 429 | 500..=599 => Verdict::Retry,
        // Wrong credentials or a wrong URL are no event's fault: bisecting would only
        // dead-letter every event. Wait for the operator (or `max_attempts`).
        401 | 403 | 404 | 405 | 407 => Verdict::Retry,
        400..=499 => Verdict::Refused,
        // 1xx and 3xx (redirects are not followed): a misconfigured URL.
        _ => Verdict::Retry,
    }
}

/// Splits events (their line ends) into runs of at most `max` bytes; an event larger
/// than `max` alone is a run of its own.
fn chunks(ends: &[usize], max: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut start_byte) = (0, 0);
    for (i, &end) in ends.iter().enumerate() {
        if i > start && end - start_byte > max {
            out.push(start..i);
            start = i;
            start_byte = ends[i - 1];
        }
    }
    if start < ends.len() {
        out.push(start..ends.len());
    }
    out
}

/// The header map every POST carries: the extra headers, then the sink's own.
fn headers(extra: &Properties, gzip: bool) -> Result<HeaderMap, OptionError> {
    let mut map = HeaderMap::new();
    for (k, v) in extra.iter() {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            OptionError::new("headers", format!("{k:?}"), "is not a valid header name")
        })?;
        if [
            CONTENT_TYPE,
            CONTENT_ENCODING,
            CONTENT_LENGTH,
            TRANSFER_ENCODING,
        ]
        .contains(&name)
        {
            return Err(OptionError::new(
                "headers",
                name,
                "is set by the sink itself",
            ));
        }
        // The value is not quoted back: it may be a secret.
        let mut value = HeaderValue::from_str(v).map_err(|_| {
            OptionError::new(
                "headers",
                format!("the value of {name}"),
                "is not a valid header value",
            )
        })?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    map.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if gzip {
        map.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(map)
}

/// Gzips `lines`, on the blocking pool when they are large.
async fn gzip(lines: Bytes) -> std::io::Result<Bytes> {
    fn compress(lines: &[u8]) -> std::io::Result<Bytes> {
        let out = Vec::with_capacity(lines.len() / 4 + 64);
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        enc.write_all(lines)?;
        Ok(enc.finish()?.into())
    }
    if lines.len() <= GZIP_INLINE_BYTES {
        return compress(&lines);
    }
    tokio::task::spawn_blocking(move || compress(&lines))
        .await
        .map_err(std::io::Error::other)?
}

/// The first [`REASON_BODY_BYTES`] of a body, reading on to its end (up to
/// [`DRAIN_MAX_BYTES`]) so that the connection goes back to the pool.
async fn read_prefix(mut body: hyper::body::Incoming) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut seen = 0;
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        let room = REASON_BODY_BYTES.saturating_sub(kept.len()).min(data.len());
        kept.extend_from_slice(&data[..room]);
        if seen > DRAIN_MAX_BYTES {
            break;
        }
    }
    kept
}

/// An error and its sources, `: `-joined (hyper's own text is only "client error
/// (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A TLS connector trusting the CAs in `ca_file`, or the system's.
fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, OptionError> {
    let path = match ca_file {
        Some(p) => p,
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or_else(|| {
                OptionError::new(
                    "ca_file",
                    "nothing",
                    format!(
                        "must be set for an https url: no system CA bundle at {}",
                        SYSTEM_CA_BUNDLES.join(" or ")
                    ),
                )
            })?,
    };
    let bad = |e: &dyn std::fmt::Display| {
        OptionError::new("ca_file", path.display(), format!("is not usable: {e}"))
    };
    let pem = std::fs::read(path).map_err(|e| bad(&e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    // A system bundle may hold a certificate rustls cannot use; the others still count.
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad(&"holds no usable CA certificate"));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(&e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Opens connections for the pool: TCP, then TLS for `https` URLs.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

type ConnectError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = BoxFuture<'static, Result<TokioIo<Stream>, ConnectError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tcp = self.http.call(uri.clone());
        let tls = self
            .tls
            .clone()
            .filter(|_| uri.scheme_str() == Some("https"));
        Box::pin(async move {
            let tcp = tcp.await?.into_inner();
            let Some(tls) = tls else {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            };
            // An IPv6 literal comes bracketed in the URI, bare in a certificate.
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
        })
    }
}

/// A pooled connection, in the clear or over TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(s) => s.connected(),
            Stream::Tls(s) => s.get_ref().0.connected(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The `Retry-After` delay: delay-seconds, or an HTTP-date (a date in the past means
/// now). Dates are read by `httpdate`: the IMF-fixdate servers must send and, as RFC
/// 9110 §5.6.7 asks of recipients, the obsolete RFC 850 and asctime forms; a date whose
/// weekday does not match it, or that does not exist, is no date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if value.bytes().all(|c| c.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
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
            evs.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
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
            evs.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
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
            .map(|(_, e)| e.id.clone())
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
}
