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
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    RETRY_AFTER, TRANSFER_ENCODING,
};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use sluice_core::units::{ByteSize, HumanDuration};
use sluice_core::{BoxFuture, Event, OptionError, Properties, Sink, SinkError};
use sluice_proto::envelope::{write_line_cached, TimeCache};
use tokio::sync::Semaphore;

mod connect;
mod delivery;

use connect::{tls_connector, Connector};
use delivery::{chunks, verdict, Answer, Delivery, Outcome, Verdict};

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
        // The delivery attempt's trace context, when it is traced (W3C Trace Context).
        if let Some(tp) = sluice_telemetry::current_traceparent() {
            if let Ok(v) = HeaderValue::from_str(&tp) {
                req.headers_mut()
                    .insert(HeaderName::from_static(sluice_telemetry::TRACEPARENT), v);
            }
        }

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
    sluice_core::blocking::run(sluice_core::blocking::Kind::HttpSinkCompress, move || {
        compress(&lines)
    })
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
mod tests;
