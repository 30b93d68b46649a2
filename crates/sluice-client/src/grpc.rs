//! [`GrpcClient`]: the generated `IngestService` client over the client's own
//! [`Pool`] (HTTP/2 only) instead of tonic's transport, so gRPC calls get the same
//! pooling, multiplexing and phase [`Timings`] as HTTP requests.
//!
//! The API key travels as `authorization: Bearer KEY` metadata. Unary calls are
//! retried on `RESOURCE_EXHAUSTED` / `UNAVAILABLE` after the status's
//! `google.rpc.RetryInfo` delay (or its `retry-after` metadata); streaming calls are
//! not retried (the caller's stream cannot be replayed), and the error says why.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use http::Uri;
use sluice_proto::v1::ingest_service_client::IngestServiceClient;
use sluice_proto::v1::{IngestAck, IngestRequest, IngestResponse};
use tonic::metadata::{Ascii, MetadataValue};

use crate::builder::{ClientBuilder, Protocol};
use crate::error::{BuildError, ClientError};
use crate::pool::{Pool, Sender};
use crate::retry::RetryPolicy;
use crate::timing::Timings;

/// A `tower::Service` that sends gRPC's HTTP/2 requests over the pool. The response
/// carries the attempt's [`Timings`] (up to the first byte) in its extensions.
#[derive(Clone)]
pub struct GrpcChannel {
    pool: Arc<Pool<tonic::body::Body>>,
}

type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, ClientError>> + Send>,
>;

impl tower_service::Service<http::Request<tonic::body::Body>> for GrpcChannel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = ClientError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> ResponseFuture {
        let pool = self.pool.clone();
        Box::pin(async move {
            let start = Instant::now();
            let mut checkout = pool.checkout().await?;
            let mut timings = crate::client::timings_of(&checkout);
            let resp = match &mut checkout.sender {
                Sender::H2(s) => {
                    s.ready().await.map_err(ClientError::Http)?;
                    s.send_request(req).await.map_err(ClientError::Http)?
                }
                Sender::H1(_) | Sender::Own(_) => {
                    return Err(ClientError::Protocol(
                        "the server did not agree to HTTP/2, which gRPC needs".into(),
                    ))
                }
            };
            timings.first_byte = start.elapsed();
            pool.checkin(checkout);
            let mut resp = resp;
            resp.extensions_mut().insert(timings);
            Ok(resp)
        })
    }
}

/// What a successful unary `Ingest` returns.
#[derive(Debug, Clone)]
pub struct GrpcAccepted {
    pub response: IngestResponse,
    /// The last attempt's phases (`total` is the whole call).
    pub timings: Timings,
    pub attempts: u32,
}

/// A pooled gRPC `IngestService` client. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct GrpcClient {
    raw: IngestServiceClient<GrpcChannel>,
    pool: Arc<Pool<tonic::body::Body>>,
    api_key: Option<MetadataValue<Ascii>>,
    timeout: Option<Duration>,
    retry: RetryPolicy,
}

impl ClientBuilder {
    /// Builds a gRPC client (HTTP/2 whatever [`ClientBuilder::protocol`] says).
    pub fn build_grpc(self) -> Result<GrpcClient, BuildError> {
        let b = self.protocol(Protocol::Http2);
        let (mut connector, base) = b.connector()?;
        // tonic streams its own bodies: hyper's HTTP/2 connection carries them.
        connector.own_http2 = false;
        let pool = Arc::new(Pool::new(connector, b.connections()));
        let origin: Uri = base.parse().map_err(|_| BuildError::Url {
            url: base.clone(),
            reason: "not a URL",
        })?;
        let api_key = match b.api_key_value() {
            Some(k) => Some(format!("Bearer {k}").parse().map_err(|_| BuildError::Url {
                url: base.clone(),
                reason: "the API key is not a valid metadata value",
            })?),
            None => None,
        };
        Ok(GrpcClient {
            raw: IngestServiceClient::with_origin(GrpcChannel { pool: pool.clone() }, origin),
            pool,
            api_key,
            timeout: b.timeout_value(),
            retry: b.retry_policy(),
        })
    }
}

impl GrpcClient {
    /// The generated client, for calls this type does not wrap.
    pub fn raw(&self) -> IngestServiceClient<GrpcChannel> {
        self.raw.clone()
    }

    /// Opens `n` connections now rather than on first use.
    pub async fn warm(&self, n: usize) -> Result<(), ClientError> {
        self.pool.warm(n).await
    }

    /// Wraps a message with the API key and the deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(k) = &self.api_key {
            r.metadata_mut().insert("authorization", k.clone());
        }
        if let Some(t) = self.timeout {
            r.set_timeout(t);
        }
        r
    }

    /// One batch, retried per the client's [`RetryPolicy`].
    pub async fn ingest(&self, req: &IngestRequest) -> Result<GrpcAccepted, ClientError> {
        let (result, attempts, _) = self.retry.run(|_| self.ingest_once(req)).await;
        result.map(|mut a| {
            a.attempts = attempts;
            a
        })
    }

    /// One batch, one attempt.
    pub async fn ingest_once(&self, req: &IngestRequest) -> Result<GrpcAccepted, ClientError> {
        let start = Instant::now();
        let call = async {
            let mut raw = self.raw.clone();
            raw.ingest(self.request(req.clone())).await
        };
        let resp = match self.timeout {
            Some(t) => tokio::time::timeout(t, call)
                .await
                .map_err(|_| ClientError::Timeout(t))?,
            None => call.await,
        }
        .map_err(|s| ClientError::from_status(&s))?;
        let mut timings = resp
            .extensions()
            .get::<Timings>()
            .copied()
            .unwrap_or_default();
        timings.total = start.elapsed();
        timings.emit();
        Ok(GrpcAccepted {
            response: resp.into_inner(),
            timings,
            attempts: 1,
        })
    }

    /// A client stream of batches, answered with one summary (not retried).
    pub async fn ingest_stream<S>(&self, messages: S) -> Result<IngestResponse, ClientError>
    where
        S: Stream<Item = IngestRequest> + Send + 'static,
    {
        let mut raw = self.raw.clone();
        let resp = raw
            .ingest_stream(self.request(messages))
            .await
            .map_err(|s| ClientError::from_status(&s))?;
        Ok(resp.into_inner())
    }

    /// A bidirectional stream: one [`IngestAck`] per batch, in order (not retried).
    pub async fn ingest_bidi<S>(
        &self,
        messages: S,
    ) -> Result<tonic::Streaming<IngestAck>, ClientError>
    where
        S: Stream<Item = IngestRequest> + Send + 'static,
    {
        let mut raw = self.raw.clone();
        let resp = raw
            .ingest_bidi(self.request(messages))
            .await
            .map_err(|s| ClientError::from_status(&s))?;
        Ok(resp.into_inner())
    }
}
