//! [`Client`]: the HTTP ingest API over a [`Pool`] of HTTP/1.1 or HTTP/2 connections.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_client::{Body, Client, Protocol};
//! let client = Client::builder("http://127.0.0.1:8080").protocol(Protocol::Http2).build()?;
//! let clicks = client.endpoint("clicks")?;
//! let sent = client.send(&clicks, &Body::ndjson("{\"a\":1}\n{\"a\":2}\n")).await?;
//! println!("{} accepted in {} attempt(s): {}", sent.accepted, sent.attempts, sent.timings);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use tracing::Instrument;

use crate::error::{BuildError, ClientError};
use crate::http2;
use crate::pool::{Checkout, Pool, Sender};
use crate::retry::RetryPolicy;
use crate::timing::Timings;

/// A request body with its content type.
#[derive(Debug, Clone)]
pub struct Body {
    pub bytes: Bytes,
    pub content_type: HeaderValue,
}

impl Body {
    /// Newline-delimited JSON: one event per line.
    pub fn ndjson(bytes: impl Into<Bytes>) -> Body {
        Body {
            bytes: bytes.into(),
            content_type: HeaderValue::from_static("application/x-ndjson"),
        }
    }

    /// One JSON object (one event) or a JSON array of objects.
    pub fn json(bytes: impl Into<Bytes>) -> Body {
        Body {
            bytes: bytes.into(),
            content_type: HeaderValue::from_static("application/json"),
        }
    }
}

/// A stream's events URL, parsed once.
#[derive(Debug, Clone)]
pub struct Endpoint {
    stream: Arc<str>,
    /// Absolute form, for HTTP/2 (`:scheme` and `:authority`).
    absolute: Uri,
    /// Origin form, for HTTP/1.1 (with a `Host` header).
    origin: Uri,
    /// The HPACK of the request line, for the client's own HTTP/2 connections.
    h2_head: Bytes,
}

impl Endpoint {
    pub fn stream(&self) -> &str {
        &self.stream
    }
}

/// What a successful send returns.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// Events the server accepted (`202 {"accepted": N}`).
    pub accepted: u64,
    /// The phases of the last (successful) attempt.
    pub timings: Timings,
    /// Attempts made, 1 when the first one succeeded.
    pub attempts: u32,
    /// Time spent waiting between attempts.
    pub retry_wait: Duration,
}

/// A pooled client for the HTTP ingest API. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: Arc<Pool<Full<Bytes>>>,
    pub(crate) base: String,
    pub(crate) api_key: Option<HeaderValue>,
    /// `api_key`'s HPACK, for the client's own HTTP/2 connections.
    pub(crate) h2_auth: Option<Bytes>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
}

impl Client {
    pub(crate) fn new(inner: Inner) -> Client {
        Client {
            inner: Arc::new(inner),
        }
    }

    /// The events URL of `stream`.
    pub fn endpoint(&self, stream: &str) -> Result<Endpoint, BuildError> {
        let bad = || BuildError::Url {
            url: format!("{}/v1/streams/{stream}/events", self.inner.base),
            reason: "the stream name is not valid in a URL path",
        };
        if stream.is_empty() || stream.contains(['/', '?', '#', '%']) {
            return Err(bad());
        }
        let absolute: Uri = format!("{}/v1/streams/{stream}/events", self.inner.base)
            .parse()
            .map_err(|_| bad())?;
        let origin = Uri::from(absolute.path_and_query().ok_or_else(bad)?.clone());
        let h2_head = http2::encode_post(
            absolute.scheme_str() == Some("https"),
            absolute.authority().map_or("", |a| a.as_str()),
            origin.path(),
        );
        Ok(Endpoint {
            stream: stream.into(),
            absolute,
            origin,
            h2_head: h2_head.into(),
        })
    }

    /// Opens `n` connections now rather than on first use.
    pub async fn warm(&self, n: usize) -> Result<(), ClientError> {
        self.inner.pool.warm(n).await
    }

    /// Sends `body` to `endpoint`, retrying per the client's [`RetryPolicy`].
    pub async fn send(&self, endpoint: &Endpoint, body: &Body) -> Result<Accepted, ClientError> {
        let span = tracing::debug_span!("sluice_client.request", stream = %endpoint.stream);
        let (result, attempts, waited) = self
            .inner
            .retry
            .run(|_| self.attempt(endpoint, body))
            .instrument(span)
            .await;
        result.map(|mut a| {
            a.attempts = attempts;
            a.retry_wait = waited;
            a
        })
    }

    /// One attempt, no retry (what a load generator measures).
    pub async fn send_once(
        &self,
        endpoint: &Endpoint,
        body: &Body,
    ) -> Result<Accepted, ClientError> {
        self.attempt(endpoint, body).await
    }

    async fn attempt(&self, endpoint: &Endpoint, body: &Body) -> Result<Accepted, ClientError> {
        match self.inner.timeout {
            Some(t) => tokio::time::timeout(t, self.attempt_inner(endpoint, body))
                .await
                .map_err(|_| ClientError::Timeout(t))?,
            None => self.attempt_inner(endpoint, body).await,
        }
    }

    async fn attempt_inner(
        &self,
        endpoint: &Endpoint,
        body: &Body,
    ) -> Result<Accepted, ClientError> {
        let start = Instant::now();
        let pool = &self.inner.pool;
        let mut checkout = pool.checkout().await?;
        let mut timings = timings_of(&checkout);
        let answer = match self.exchange(&mut checkout, endpoint, body, start).await {
            Ok(a) => a,
            // The request was certainly not processed: a kept-alive HTTP/1.1
            // connection the server closed just as we reused it, or an HTTP/2
            // stream the server refused. Try once more on another connection.
            Err(e) if e.unprocessed(timings.reused) => {
                checkout = pool.checkout().await?;
                timings = timings_of(&checkout);
                self.exchange(&mut checkout, endpoint, body, start)
                    .await
                    .map_err(Wire::into_error)?
            }
            Err(e) => return Err(e.into_error()),
        };
        timings.first_byte = answer.first_byte;
        timings.total = start.elapsed();
        pool.checkin(checkout);
        timings.emit();
        let (status, bytes) = (answer.status, answer.body);
        if (200..300).contains(&status) {
            let accepted = parse_accepted(&bytes).ok_or_else(|| {
                ClientError::Protocol(format!(
                    "HTTP {status} without \"accepted\": {:?}",
                    String::from_utf8_lossy(&bytes)
                ))
            })?;
            Ok(Accepted {
                accepted,
                timings,
                attempts: 1,
                retry_wait: Duration::ZERO,
            })
        } else {
            let (code, message) = parse_error(&bytes);
            Err(ClientError::Rejected {
                status,
                code,
                message,
                retry_after: answer.retry_after,
            })
        }
    }

    /// One request and its whole answer, on the checked-out connection.
    async fn exchange(
        &self,
        checkout: &mut Checkout<Full<Bytes>>,
        endpoint: &Endpoint,
        body: &Body,
        start: Instant,
    ) -> Result<Answer, Wire> {
        if let Sender::Own(conn) = &checkout.sender {
            let ct = content_type_hpack(&body.content_type);
            let auth = self.inner.h2_auth.as_deref().unwrap_or_default();
            let r = conn
                .send(&[&endpoint.h2_head, &ct, auth], &body.bytes)
                .await
                .map_err(Wire::Own)?;
            return Ok(Answer {
                status: r.status,
                retry_after: r.retry_after.map(Duration::from_secs),
                body: r.body,
                first_byte: r.head_at.saturating_duration_since(start),
            });
        }
        let resp = self
            .roundtrip(checkout, endpoint, body)
            .await
            .map_err(Wire::Hyper)?;
        let first_byte = start.elapsed();
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(Wire::Hyper)?
            .to_bytes();
        Ok(Answer {
            status,
            retry_after,
            body,
            first_byte,
        })
    }

    async fn roundtrip(
        &self,
        checkout: &mut Checkout<Full<Bytes>>,
        endpoint: &Endpoint,
        body: &Body,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        let mut req = Request::builder().method(Method::POST);
        match checkout.sender {
            Sender::H1(_) => {
                req = req.uri(endpoint.origin.clone());
                if let Some(a) = endpoint.absolute.authority() {
                    req = req.header(HOST, a.as_str());
                }
            }
            Sender::H2(_) | Sender::Own(_) => req = req.uri(endpoint.absolute.clone()),
        }
        req = req.header(CONTENT_TYPE, body.content_type.clone());
        if let Some(k) = &self.inner.api_key {
            req = req.header(AUTHORIZATION, k.clone());
        }
        let req = req
            .body(Full::new(body.bytes.clone()))
            .expect("the request parts are valid");
        match &mut checkout.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::Own(_) => unreachable!("sent by exchange"),
        }
    }
}

/// A response read whole, from either kind of connection.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Bytes,
    first_byte: Duration,
}

/// How a request failed on the wire.
enum Wire {
    Hyper(hyper::Error),
    Own(http2::Error),
}

impl Wire {
    /// Whether the server certainly did not process the request.
    fn unprocessed(&self, reused: bool) -> bool {
        match self {
            Wire::Hyper(e) => {
                reused && (e.is_canceled() || e.is_incomplete_message() || e.is_closed())
            }
            Wire::Own(e) => matches!(e, http2::Error::Refused),
        }
    }

    fn into_error(self) -> ClientError {
        match self {
            Wire::Hyper(e) => ClientError::Http(e),
            Wire::Own(e) => ClientError::Http2(e),
        }
    }
}

/// The HPACK of a body's content type; the two the API takes are built once.
fn content_type_hpack(ct: &HeaderValue) -> Cow<'static, [u8]> {
    static NDJSON: OnceLock<Vec<u8>> = OnceLock::new();
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    let of = |v: &[u8]| http2::encode_field(http2::Field::ContentType, v);
    match ct.as_bytes() {
        v @ b"application/x-ndjson" => Cow::Borrowed(NDJSON.get_or_init(|| of(v))),
        v @ b"application/json" => Cow::Borrowed(JSON.get_or_init(|| of(v))),
        v => Cow::Owned(of(v)),
    }
}

/// The connection phases of a checkout (none when the connection was reused).
pub(crate) fn timings_of<B>(c: &Checkout<B>) -> Timings {
    Timings {
        pool_wait: c.wait,
        dns: c.fresh.and_then(|f| f.dns),
        connect: c.fresh.map(|f| f.connect),
        tls: c.fresh.and_then(|f| f.tls),
        reused: c.fresh.is_none(),
        version: c.sender.version(),
        ..Timings::default()
    }
}

/// `N` from `{"accepted":N,...}`, without a JSON parser on the hot path.
pub(crate) fn parse_accepted(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"accepted\":";
    let i = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = body[i..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .fold(None, |acc: Option<u64>, b| {
            Some(acc.unwrap_or(0).saturating_mul(10) + u64::from(b - b'0'))
        });
    digits
}

/// `(code, message)` from `{"error":{"code":..,"message":..}}`; the raw body otherwise.
fn parse_error(body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Wrapper>(body) {
        Ok(w) => (w.error.code, w.error.message),
        Err(_) => (String::new(), String::from_utf8_lossy(body).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_is_read_from_the_answer() {
        assert_eq!(parse_accepted(b"{\"accepted\":17}"), Some(17));
        assert_eq!(parse_accepted(b"{\"accepted\": 3,\"ids\":[]}"), Some(3));
        assert_eq!(parse_accepted(b"{\"nope\":1}"), None);
    }

    /// The connect path (TLS state included) once made every request future ~8 KiB,
    /// copied at each await level; it is boxed now and only paid when connecting.
    #[test]
    fn request_future_stays_small() {
        let c = Client::builder("http://127.0.0.1:1").build().unwrap();
        let (e, b) = (c.endpoint("s").unwrap(), Body::json("{}"));
        let size = std::mem::size_of_val(&c.send_once(&e, &b));
        assert!(size < 2048, "send_once's future is {size} bytes");
    }

    #[test]
    fn error_body_gives_code_and_message() {
        let (c, m) = parse_error(br#"{"error":{"code":"rate_limited","message":"slow down"}}"#);
        assert_eq!((c.as_str(), m.as_str()), ("rate_limited", "slow down"));
        assert_eq!(parse_error(b"oops").1, "oops");
    }
}
