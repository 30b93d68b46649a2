//! `POST /v1/streams/{stream}/events`.
//!
//! The order of checks is the order of cost: route and method, the API key,
//! shutdown, the concurrency limit, stream name, content type and encoding, the
//! declared length, then the body is read (bounded in size and time), decompressed
//! (bounded, zstd's window too), split and validated (at most
//! `http.max_events_per_request` events, stopping at the one too many), and only
//! then appended to the queue as one batch. Every rejection costs at most the bytes
//! read so far and is counted by reason.
//!
//! Memory: what the request holds — the bytes read, the bytes decompressed, and a
//! per-event overhead — is charged to the node's byte budget
//! (`http.max_inflight_bytes`, see `front::budget`) as it grows, and released when
//! the request is answered; past the budget the request gets 429 `overloaded`.
//! Large bodies are decompressed and split off the async runtime.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use sluice_core::{validate_stream_name, Event};
use sluice_telemetry::{KeyValue, RequestSpan};

use crate::error::ApiError;
use crate::front::budget::{Charge, EVENT_MEMORY_BYTES};
use crate::front::inflate::{inflate, Encoding};
pub use crate::front::IngestState;

/// Bodies at least this large are decompressed and split off the async runtime.
const BLOCKING_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy)]
enum Format {
    Json,
    Ndjson,
}

/// Handles one request on the ingest listener.
pub async fn handle(
    state: Arc<IngestState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    // An HTTP/1 answer sent before the body was read whole leaves the rest of the
    // body on the connection: say it closes, so the client does not send its next
    // request there and find it cut off (HTTP/2 streams end on their own).
    let unread_body_closes = req.version() < Version::HTTP_2 && !req.body().is_end_stream();
    let mut body_read = false;
    // A refusal is counted under the stream the path names (the Uri clone shares
    // its bytes: nothing is copied unless the request is refused).
    let uri = req.uri().clone();
    let mut who = None;
    // Started once the request is authenticated and admitted (see `ingest`).
    let mut span = None;
    let mut refusal = None;
    let response = match ingest(&state, req, &mut body_read, &mut who, &mut span).await {
        Ok(r) => r,
        Err(e) => {
            refusal = Some(e.code);
            state.metrics.reject(e.code);
            let key = who
                .as_ref()
                .map_or("_unauthenticated", crate::auth::key_name);
            state
                .metrics
                .tenants
                .rejected(route(uri.path()).ok(), key, e.code);
            let mut r = e.into_response();
            if state.shutting_down.is_cancelled() || (unread_body_closes && !body_read) {
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
    if let Some(span) = span {
        let status = response.status().as_u16();
        if let Some(p) = &who {
            span.set(KeyValue::new(
                "sluice.key",
                crate::auth::key_name(p).to_string(),
            ));
        }
        span.end(
            vec![KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            )],
            refusal,
            status >= 500,
        );
    }
    Ok(response)
}

async fn ingest(
    state: &IngestState,
    req: Request<Incoming>,
    body_read: &mut bool,
    who: &mut Option<crate::auth::Principal>,
    span: &mut Option<RequestSpan>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let stream = route(req.uri().path())?;
    if req.method() != Method::POST {
        return Err(ApiError::method_not_allowed("POST"));
    }
    let principal = state.keys.authenticate(req.headers())?;
    *who = Some(principal.clone());
    let _permit = state.admit()?;
    // Only now a span (and the producer's traceparent, whose sampled flag would
    // otherwise let anyone make the node trace and export at will): a request
    // refused by authentication or admission costs no tracing work.
    *span = RequestSpan::start("POST /v1/streams/{stream}/events", req.headers(), || {
        vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", "/v1/streams/{stream}/events"),
        ]
    });
    let trace = span.as_ref();
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
    // would refuse anyway: the largest record a body of this size can become (a
    // compressed one may expand to `max_body_bytes`).
    let expands = !matches!(encoding, Encoding::Identity);
    let estimate = match declared {
        Some(len) if !expands => state.record_estimate(len),
        Some(_) => state.record_estimate(limit),
        None => 0,
    };
    state.shed_if_full(estimate)?;
    let mut charge = state.budget.charge();
    let body = read_body(req.into_body(), state, &mut charge).await?;
    *body_read = true;
    let max_events = state.limits.max_events_per_request;
    let big = body.len() >= BLOCKING_BYTES;
    let work = move || -> Result<(Vec<Bytes>, Charge), ApiError> {
        let received = body.len() as u64;
        let body = match encoding {
            Encoding::Identity => body,
            _ => {
                let what = "decompressed request body";
                let out = inflate(encoding, &body, limit, what, &mut charge)?;
                drop(body);
                charge.release(received);
                out
            }
        };
        let payloads = match format {
            Format::Json => sluice_proto::body::split_json_limited(&body, max_events)?,
            Format::Ndjson => sluice_proto::body::split_ndjson_limited(&body, max_events)?,
        };
        charge.add(payloads.len() as u64 * EVENT_MEMORY_BYTES)?;
        Ok((payloads, charge))
    };
    let (payloads, _charge) = if big {
        sluice_core::blocking::run(sluice_core::blocking::Kind::IngestDecode, work)
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })??
    } else {
        work()?
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
            timestamp_unix_nanos: None,
            headers: Vec::new(),
            payload,
        })
        .collect();
    let n = events.len();
    if let Some(t) = trace {
        t.set(KeyValue::new("sluice.stream", stream.to_string()));
        t.set(KeyValue::new("sluice.events", n as i64));
        t.set(KeyValue::new("sluice.bytes", bytes as i64));
    }
    let ids: Vec<String> = if want_ids {
        events.iter().map(|e| e.id.to_string()).collect()
    } else {
        Vec::new()
    };
    state.append(events, bytes, &principal, trace).await?;
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
    let v = v.to_str().unwrap_or("?");
    Encoding::parse(v).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding {v:?} is not supported; use gzip or zstd"),
        )
    })
}

/// Reads the body, at most `http.max_body_bytes` within `http.body_read_timeout`,
/// charging every chunk to the byte budget as it arrives.
async fn read_body(
    mut body: Incoming,
    state: &IngestState,
    charge: &mut Charge,
) -> Result<Bytes, ApiError> {
    let limit = state.limits.max_body_bytes.0;
    let timeout = state.limits.body_read_timeout.0;
    let read = async {
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "body_read_error",
                    format!("reading the request body failed: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            len += data.len() as u64;
            if len > limit {
                return Err(ApiError::too_large("request body", limit));
            }
            charge.add(data.len() as u64)?;
            chunks.push(data);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().expect("one chunk"),
            _ => {
                let mut all = BytesMut::with_capacity(len as usize);
                for c in chunks {
                    all.extend_from_slice(&c);
                }
                all.freeze()
            }
        })
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the body did not arrive within http.body_read_timeout ({timeout:?})"),
        )),
        Ok(r) => r,
    }
}
