//! HTTP listeners: the ingest API (with gRPC routed by content type) and the admin
//! endpoints, each served by [`serve`] over HTTP/1.1 and HTTP/2 on one port,
//! cleartext (h2 by prior knowledge) or TLS (h2 by ALPN).
//!
//! Every connection lives under deadlines that a peer cannot extend by trickling
//! bytes or by answering nothing. Each close is counted once, when the socket is
//! closed, in `sluice_connections_closed_total{listener, reason}`:
//!
//! ```text
//! reason           when
//! max_connections  over `max_connections` at accept: closed at once
//! tls_handshake    the TLS handshake failed
//! header_timeout   the first request's headers (HTTP/1), or the preface, SETTINGS
//!                  and first HEADERS (HTTP/2), TLS handshake included, are not all
//!                  in within `header_read_timeout` of accept (a deadline, not an
//!                  inactivity timer); on HTTP/1, a later request's headers not
//!                  within `header_read_timeout` of its first byte
//! idle_timeout     no request in flight and none started for `idle_timeout`
//!                  (PINGs, SETTINGS and WINDOW_UPDATEs do not count): asked to
//!                  close gracefully, and closed hard `drain_timeout` later if the
//!                  peer has not finished by then
//! drain_timeout    the node is shutting down and the connection's requests did not
//!                  finish within `drain_timeout` of the request to close
//! ```
//!
//! Invariants: a connection holds its `max_connections` slot exactly as long as its
//! socket is open; once asked to close (idle or shutdown) it is gone within
//! `drain_timeout`. HTTP/2 limits are set explicitly: header lists of at most
//! [`MAX_HEADER_LIST_BYTES`], [`MAX_PENDING_RESETS`] streams reset before being
//! accepted (the "rapid reset" attack), and a keep-alive PING every `idle_timeout`
//! that must be answered within `header_read_timeout`, so a dead peer with a
//! request in flight is detected.

pub mod admin;
pub mod debug;
pub mod ingest;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::front::IngestState;
use crate::grpc::Grpc;
use crate::metrics::Metrics;
use crate::tls::TlsReloader;

/// Response bodies of the ingest listener: HTTP answers or gRPC streams.
pub type IngestBody = Either<Full<Bytes>, tonic::body::Body>;

/// Largest HTTP/2 header list (HPACK-decoded) a client may send.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
/// HTTP/2 streams a client may open and reset before the server accepts them.
pub const MAX_PENDING_RESETS: usize = 20;
/// Most HTTP/1 request headers.
const MAX_H1_HEADERS: usize = 100;

/// The ingest listener's handler: gRPC (`content-type: application/grpc…`) goes to
/// the `IngestService`, everything else to the HTTP API. A gRPC call is admitted
/// from its headers alone (method, API key, shutdown, the concurrency limit, a full
/// queue) before any of its messages is read; the admission travels to the service
/// in the request's extensions.
pub async fn route(
    state: Arc<IngestState>,
    grpc: Grpc,
    mut req: Request<Incoming>,
) -> Result<Response<IngestBody>, Infallible> {
    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        let r = match crate::grpc::admit_call(&state, &req) {
            Ok(admission) => {
                req.extensions_mut().insert(admission);
                grpc.call(req).await
            }
            Err(status) => status.into_http::<tonic::body::Body>(),
        };
        return Ok(r.map(Either::Right));
    }
    let r = ingest::handle(state, req).await?;
    Ok(r.map(Either::Left))
}

/// How a listener treats its connections.
#[derive(Clone)]
pub struct Listener {
    /// `ingest` or `admin`: the metric label.
    pub name: &'static str,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a connection asked to close may take before it is closed hard.
    pub drain_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub max_connections: usize,
    /// TLS, if configured.
    pub tls: Option<Arc<TlsReloader>>,
    pub metrics: Arc<Metrics>,
}

impl Listener {
    fn closed(&self, reason: &'static str) {
        self.metrics
            .connections_closed
            .get_or_create(&[("listener", self.name), ("reason", reason)])
            .inc();
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_headers(MAX_H1_HEADERS)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(MAX_HEADER_LIST_BYTES)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .keep_alive_interval(self.idle_timeout)
            .keep_alive_timeout(self.header_read_timeout);
        builder
    }
}

/// Accepts connections until `stop` is cancelled, then asks every open connection
/// to finish its in-flight requests and close (closing it hard after
/// `drain_timeout`); returns when all have.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    settings: Listener,
    stop: CancellationToken,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conns = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let builder = settings.builder();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            settings.closed("max_connections");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let builder = builder.clone();
        let handler = handler.clone();
        let stop = stop.clone();
        let settings = settings.clone();
        conns.spawn(async move {
            let open = settings
                .metrics
                .connections_open
                .get_or_create(&[("listener", settings.name)])
                .clone();
            open.inc();
            let activity = Arc::new(Activity::new());
            let tcp = Tracked {
                inner: tcp,
                activity: activity.clone(),
            };
            let reason = match &settings.tls {
                None => serve_conn(tcp, &builder, handler, &stop, &settings, activity).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                    // The handshake counts toward the first request's deadline.
                    let deadline = activity.born + settings.header_read_timeout;
                    match tokio::time::timeout_at(deadline.into(), acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_conn(stream, &builder, handler, &stop, &settings, activity).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "tls handshake failed");
                            Some("tls_handshake")
                        }
                        Err(_) => Some("header_timeout"),
                    }
                }
            };
            // Counted here, once the socket is closed, so the metric never runs
            // ahead of the slots actually freed.
            if let Some(reason) = reason {
                settings.closed(reason);
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// Why a connection is being closed gracefully.
#[derive(Clone, Copy)]
enum Closing {
    Idle,
    Shutdown,
}

/// Serves one connection until it ends, `stop` fires or a deadline passes (see the
/// module doc); returns the reason to count, if any. The socket is closed when this
/// returns (the connection, and with it the IO, is dropped).
async fn serve_conn<I, F, Fut, B>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    handler: F,
    stop: &CancellationToken,
    settings: &Listener,
    activity: Arc<Activity>,
) -> Option<&'static str>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        // In flight from its headers until its response body is done or dropped.
        let guard = act.request_started(req.version() == http::Version::HTTP_2);
        let answer = handler(req);
        async move {
            let r = answer.await?;
            Ok::<_, Infallible>(r.map(move |body| {
                body.map_frame(move |frame| {
                    let _in_flight = &guard;
                    frame
                })
            }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let (header, idle) = (settings.header_read_timeout, settings.idle_timeout);
    let mut closing: Option<(Closing, Instant)> = None;
    loop {
        let check = match closing {
            Some((_, until)) => Ok(until.saturating_duration_since(Instant::now())),
            None => activity.check(header, idle),
        };
        let wait = match check {
            Ok(wait) => wait,
            Err(Overdue::Headers) => return Some("header_timeout"),
            Err(Overdue::Idle) => {
                closing = Some((Closing::Idle, Instant::now() + settings.drain_timeout));
                conn.as_mut().graceful_shutdown();
                continue;
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                let timeout = r.as_ref().err().is_some_and(|e| {
                    e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout)
                });
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return match closing {
                    Some((Closing::Idle, _)) => Some("idle_timeout"),
                    _ if timeout => Some("header_timeout"),
                    _ => None,
                };
            }
            _ = stop.cancelled(), if closing.is_none() => {
                closing = Some((Closing::Shutdown, Instant::now() + settings.drain_timeout));
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(wait) => {
                if let Some((why, until)) = closing {
                    if Instant::now() >= until {
                        // The peer did not finish (or never acked the GOAWAY's PING).
                        return Some(match why {
                            Closing::Idle => "idle_timeout",
                            Closing::Shutdown => "drain_timeout",
                        });
                    }
                }
            }
        }
    }
}

/// What a connection's requests tell its watchdog; times are nanoseconds since
/// `born` (the accept).
struct Activity {
    born: Instant,
    /// Requests whose headers have arrived.
    started: AtomicU64,
    /// Requests not finished (their response body not done or dropped).
    in_flight: AtomicUsize,
    /// When a request last started or finished.
    last_change: AtomicU64,
    /// HTTP/1: when the first byte of the next request arrived, plus one (0: none).
    next_request: AtomicU64,
    /// The connection speaks HTTP/2 (known from its first request).
    h2: AtomicBool,
}

/// A deadline a connection missed.
enum Overdue {
    /// Headers not in within `header_read_timeout`: close hard.
    Headers,
    /// Nothing in flight or started for `idle_timeout`: close gracefully.
    Idle,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_change: AtomicU64::new(0),
            next_request: AtomicU64::new(0),
            h2: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.born.elapsed().as_nanos() as u64
    }

    fn request_started(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 {
            self.h2.store(true, Ordering::SeqCst);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        self.last_change.store(self.now(), Ordering::SeqCst);
        self.next_request.store(0, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Bytes came in: on an HTTP/1 connection with nothing in flight they start the
    /// next request, whose headers are then due within `header_read_timeout`.
    fn read(&self) {
        if self.started.load(Ordering::SeqCst) > 0
            && !self.h2.load(Ordering::SeqCst)
            && self.in_flight.load(Ordering::SeqCst) == 0
        {
            let _ = self.next_request.compare_exchange(
                0,
                self.now() + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// `Err` with the deadline the connection has missed, or how long the watchdog
    /// may sleep: until the next deadline, and never longer than the shorter timeout
    /// (no change of state can bring a deadline closer than that).
    fn check(&self, header: Duration, idle: Duration) -> Result<Duration, Overdue> {
        let now = Duration::from_nanos(self.now());
        let horizon = header.min(idle);
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Ok(horizon);
        }
        let (due, missed) = if self.started.load(Ordering::SeqCst) == 0 {
            // The first request's headers are due within `header` of the accept.
            (horizon, Overdue::Headers)
        } else {
            let idle_at = Duration::from_nanos(self.last_change.load(Ordering::SeqCst)) + idle;
            match self.next_request.load(Ordering::SeqCst) {
                0 => (idle_at, Overdue::Idle),
                next => {
                    let headers_at = Duration::from_nanos(next - 1) + header;
                    if headers_at <= idle_at {
                        (headers_at, Overdue::Headers)
                    } else {
                        (idle_at, Overdue::Idle)
                    }
                }
            }
        };
        match due.checked_sub(now) {
            Some(left) if !left.is_zero() => Ok(left.min(horizon)),
            _ => Err(missed),
        }
    }
}

/// One request in flight on a connection; finished when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_change.store(a.now(), Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An IO that reports its reads to the connection's [`Activity`].
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
