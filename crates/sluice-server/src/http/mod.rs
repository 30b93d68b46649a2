//! HTTP listeners: the ingest API and the admin endpoints, each served by
//! [`serve`] over HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on one port.

pub mod admin;
pub mod ingest;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use sluice_proto::v1::ingest_service_server::IngestServiceServer;
use tower_service::Service;

use crate::front::IngestState;
use crate::grpc::Grpc;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Response bodies of the ingest listener: HTTP answers or gRPC streams.
pub type IngestBody = Either<Full<Bytes>, tonic::body::Body>;

/// The ingest listener's handler: gRPC (`content-type: application/grpc…`) goes to
/// the `IngestService`, everything else to the HTTP API.
pub async fn route(
    state: Arc<IngestState>,
    mut grpc: IngestServiceServer<Grpc>,
    req: Request<Incoming>,
) -> Result<Response<IngestBody>, Infallible> {
    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        let r = grpc.call(req).await?;
        return Ok(r.map(Either::Right));
    }
    let r = ingest::handle(state, req).await?;
    Ok(r.map(Either::Left))
}

/// Connection settings of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub max_concurrent_streams: u32,
}

/// Accepts connections until `stop` is cancelled, then asks every open connection
/// to finish its in-flight requests and close; returns when all have.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    limits: ConnLimits,
    stop: CancellationToken,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conns = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams);
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
        let _ = tcp.set_nodelay(true);
        let builder = builder.clone();
        let handler = handler.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(handler);
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}
