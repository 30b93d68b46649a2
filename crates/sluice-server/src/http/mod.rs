//! HTTP listeners: the ingest API (with gRPC routed by content type) and the admin
//! endpoints, each served by [`serve`] over HTTP/1.1 and HTTP/2 on one port,
//! cleartext (h2 by prior knowledge) or TLS (h2 by ALPN).
//!
//! Connection hygiene, counted in `sluice_connections_closed_total{reason}`: at most
//! `max_connections` at once (more are closed on accept); the TLS handshake and the
//! request headers must arrive within `header_read_timeout` (a slowloris client is
//! cut off); a connection with no traffic for `idle_timeout` is closed gracefully.

pub mod admin;
pub mod ingest;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
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
}

/// Accepts connections until `stop` is cancelled, then asks every open connection
/// to finish its in-flight requests and close; returns when all have.
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams);
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
            let activity = Arc::new(AtomicU64::new(0));
            let tcp = Tracked {
                inner: tcp,
                activity: activity.clone(),
            };
            match &settings.tls {
                None => serve_conn(tcp, &builder, handler, &stop, &settings, &activity).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                    match tokio::time::timeout(settings.header_read_timeout, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            serve_conn(stream, &builder, handler, &stop, &settings, &activity).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "tls handshake failed");
                            settings.closed("tls_handshake");
                        }
                        Err(_) => settings.closed("tls_handshake"),
                    }
                }
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// Serves one connection until it ends, `stop` fires or it has been idle too long.
async fn serve_conn<I, F, Fut, B>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    handler: F,
    stop: &CancellationToken,
    settings: &Listener,
    activity: &AtomicU64,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let svc = hyper::service::service_fn(handler);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Idle check: no byte read or written over a whole `idle_timeout`.
    let tick = settings.idle_timeout / 2;
    let mut last = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    let timeout = e
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if timeout {
                        settings.closed("header_timeout");
                    }
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(tick), if !draining => {
                let now = activity.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    quiet = Duration::ZERO;
                } else {
                    quiet += tick;
                    if quiet >= settings.idle_timeout {
                        settings.closed("idle_timeout");
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// An IO that counts its reads and writes, for the idle timeout.
struct Tracked<T> {
    inner: T,
    activity: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
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
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
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
