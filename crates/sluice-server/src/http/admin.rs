//! The admin listener: `/healthz` (the process is up), `/readyz` (it takes events:
//! not shutting down, and the queue has room for a request of the largest size) and
//! `/metrics` (Prometheus text), `/ui` (a live dashboard of `/metrics`: one page,
//! nothing fetched from elsewhere); and `/debug/pprof/*` for whom [`DebugAccess`]
//! lets in.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use sluice_core::Queue;
use sluice_pipeline::ProcessorStats;
use tokio_util::sync::CancellationToken;

use super::debug::{self, DebugAccess};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The dashboard (`/ui`).
const UI: &str = include_str!("ui.html");

/// What the admin endpoints read.
pub struct AdminState {
    pub queue: Arc<dyn Queue>,
    pub metrics: Arc<Metrics>,
    pub processor: Arc<ProcessorStats>,
    pub sink: &'static str,
    pub shutting_down: CancellationToken,
    /// Room a request may need in the queue (the body limit): with less than this
    /// left, the node is not ready.
    pub headroom: u64,
    /// Who may read `/debug/*`.
    pub debug: DebugAccess,
}

/// Handles one admin request.
pub async fn handle(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(ApiError::method_not_allowed("GET").into_response());
    }
    let path = req.uri().path();
    if path.starts_with("/debug/") {
        let query = req.uri().query();
        return Ok(debug::handle(&state.debug, path, query, req.headers()).await);
    }
    let r = match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => {
            let s = state.queue.stats();
            if state.shutting_down.is_cancelled() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting down\n".into(),
                    "text/plain",
                )
            } else if let Err(why) = state.queue.health() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("queue unreachable: {why}\n"),
                    "text/plain",
                )
            } else if s.depth_bytes.saturating_add(state.headroom) > s.capacity_bytes {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue full\n".into(),
                    "text/plain",
                )
            } else {
                text(StatusCode::OK, "ready\n".into(), "text/plain")
            }
        }
        "/ui" | "/ui/" => {
            let mut r = text(StatusCode::OK, UI.into(), "text/html; charset=utf-8");
            // The page talks to this listener only, and runs only its own inline code.
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; \
                     style-src 'unsafe-inline'; connect-src 'self'",
                ),
            );
            r
        }
        "/metrics" => text(
            StatusCode::OK,
            state
                .metrics
                .render(state.queue.as_ref(), &state.processor, state.sink),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "admin endpoints: /healthz, /readyz, /metrics, /ui, /debug/pprof/profile, /debug/pprof/heap",
        )
        .into_response(),
    };
    Ok(r)
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
