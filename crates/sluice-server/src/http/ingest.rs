//! `POST /v1/streams/{stream}/events`.
//!
//! The order of checks is the order of cost: route and method, shutdown, the
//! concurrency limit, stream name, content type and encoding, the declared length,
//! then the body is read (bounded in size and time), decompressed (bounded), split
//! and validated, and only then appended to the queue as one batch. Every rejection
//! costs at most the bytes read so far and is counted by reason.

use std::convert::Infallible;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use sluice_core::{validate_stream_name, Event};

use crate::error::ApiError;
pub use crate::front::IngestState;

/// Bodies at least this large (compressed) are decompressed off the async runtime.
const BLOCKING_DECOMPRESS_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy)]
enum Format {
    Json,
    Ndjson,
}

#[derive(Clone, Copy)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

/// Handles one request on the ingest listener.
pub async fn handle(
    state: Arc<IngestState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let response = match ingest(&state, req).await {
        Ok(r) => r,
        Err(e) => {
            state.metrics.reject(e.code);
            let mut r = e.into_response();
            if state.shutting_down.is_cancelled() {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    };
    let class = match response.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state
        .metrics
        .request_seconds
        .get_or_create(&[("class", class)])
        .observe(started.elapsed().as_secs_f64());
    Ok(response)
}

async fn ingest(
    state: &IngestState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let stream = route(req.uri().path())?;
    if req.method() != Method::POST {
        return Err(ApiError::method_not_allowed("POST"));
    }
    let principal = state.keys.authenticate(req.headers())?;
    let _permit = state.admit()?;
    validate_stream_name(stream)?;
    crate::auth::check_stream(&principal, stream)?;
    state.check_rate(&principal)?;
    let stream: std::sync::Arc<str> = stream.into();
    let format = content_type(&req)?;
    let encoding = content_encoding(&req)?;
    let want_ids = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "ids=true" || p == "ids=1"));
    let limit = state.limits.max_body_bytes.0;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::too_large("request body (Content-Length)", limit));
    }
    // Shed load before reading, decompressing and parsing a body the full queue
    // would refuse anyway: a record takes about twice its NDJSON body.
    state.shed_if_full(declared.unwrap_or(0).saturating_mul(2))?;
    let body = read_body(req.into_body(), state).await?;
    let body = decompress(encoding, body, limit).await?;
    let payloads = match format {
        Format::Json => sluice_proto::body::split_json(&body)?,
        Format::Ndjson => sluice_proto::body::split_ndjson(&body)?,
    };
    let received_at = sluice_core::now_unix_nanos();
    let bytes: usize = payloads.iter().map(Bytes::len).sum();
    state.charge(&principal, payloads.len(), bytes)?;
    let ids_for = sluice_core::new_event_ids(payloads.len());
    let events: Vec<Event> = payloads
        .into_iter()
        .zip(ids_for)
        .map(|(payload, id)| Event {
            id,
            stream: stream.clone(),
            key: None,
            received_at_unix_nanos: received_at,
            timestamp_unix_nanos: 0,
            headers: Vec::new(),
            payload,
        })
        .collect();
    let n = events.len();
    let ids: Vec<String> = if want_ids {
        events.iter().map(|e| e.id.clone()).collect()
    } else {
        Vec::new()
    };
    state.append(events, bytes).await?;
    let body = if want_ids {
        serde_json::to_vec(&serde_json::json!({ "accepted": n, "ids": ids }))
            .expect("serialising ids cannot fail")
    } else {
        format!("{{\"accepted\":{n}}}").into_bytes()
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::ACCEPTED;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// `/v1/streams/{stream}/events` → `stream`.
fn route(path: &str) -> Result<&str, ApiError> {
    path.strip_prefix("/v1/streams/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .filter(|s| !s.contains('/'))
        .ok_or_else(ApiError::not_found)
}

fn content_type<B>(req: &Request<B>) -> Result<Format, ApiError> {
    let Some(v) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(Format::Json);
    };
    let v = v.to_str().unwrap_or("");
    let media = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(Format::Ndjson),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {v:?} is not supported; use application/json or application/x-ndjson"
            ),
        )),
    }
}

fn content_encoding<B>(req: &Request<B>) -> Result<Encoding, ApiError> {
    let Some(v) = req.headers().get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    match v
        .to_str()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding {other:?} is not supported; use gzip or zstd"),
        )),
    }
}

async fn read_body(body: Incoming, state: &IngestState) -> Result<Bytes, ApiError> {
    let limit = state.limits.max_body_bytes.0;
    let timeout = state.limits.body_read_timeout.0;
    let limited = Limited::new(body, limit as usize);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the body did not arrive within http.body_read_timeout ({timeout:?})"),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large("request body", limit))
        }
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_read_error",
            format!("reading the request body failed: {e}"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

async fn decompress(encoding: Encoding, body: Bytes, limit: u64) -> Result<Bytes, ApiError> {
    if matches!(encoding, Encoding::Identity) {
        return Ok(body);
    }
    if body.len() < BLOCKING_DECOMPRESS_BYTES {
        return decompress_sync(encoding, &body, limit);
    }
    tokio::task::spawn_blocking(move || decompress_sync(encoding, &body, limit))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// Decompresses at most `limit + 1` bytes, so a bomb costs no more than the limit.
fn decompress_sync(encoding: Encoding, body: &[u8], limit: u64) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity((body.len() * 4).min(limit as usize));
    let (name, read) = match encoding {
        Encoding::Identity => return Ok(Bytes::copy_from_slice(body)),
        Encoding::Gzip => (
            "gzip",
            flate2::read::MultiGzDecoder::new(body)
                .take(limit + 1)
                .read_to_end(&mut out),
        ),
        Encoding::Zstd => (
            "zstd",
            zstd::stream::read::Decoder::with_buffer(body)
                .and_then(|d| d.take(limit + 1).read_to_end(&mut out)),
        ),
    };
    if let Err(e) = read {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_encoding",
            format!("the body is not valid {name}: {e}"),
        ));
    }
    if out.len() as u64 > limit {
        return Err(ApiError::too_large("decompressed request body", limit));
    }
    Ok(Bytes::from(out))
}
