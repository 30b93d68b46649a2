//! `/debug/pprof/*` on the admin listener: profiles on demand, at the paths Go users
//! know. `GET /debug/pprof/profile?seconds=N` samples the whole process's CPU for N
//! seconds (default 30, at most 300) at 99 Hz and answers a gzipped pprof protobuf
//! (`go tool pprof`, `pprof -http`), or with `&format=svg` a flame graph.
//!
//! Who may ask: with `admin_token` set, only a request carrying
//! `Authorization: Bearer <token>`; without it, only when the admin listener is bound
//! to a loopback address (the rule the ingest listener follows for API keys). A
//! profile costs CPU and shows code paths, so nothing else gets one. One profile runs
//! at a time (409 while one does).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::auth::{constant_time_eq, sha256};
use crate::error::ApiError;

/// Longest profile one request may ask for.
const MAX_SECONDS: u64 = 300;

/// Samples per second: 99, not 100, so sampling does not run in lockstep with
/// periodic work.
const FREQUENCY: i32 = 99;

/// Set while a profile runs (the profiler is process-wide).
static PROFILING: AtomicBool = AtomicBool::new(false);

/// Who may read `/debug/*` on this node.
pub struct DebugAccess {
    /// SHA-256 of `admin_token`.
    token: Option<[u8; 32]>,
    /// The admin listener is bound to a loopback address.
    loopback: bool,
}

impl DebugAccess {
    pub fn new(token: Option<&str>, loopback: bool) -> DebugAccess {
        DebugAccess {
            token: token.map(|t| sha256(t.as_bytes())),
            loopback,
        }
    }

    /// `Err` with the answer for a request that may not read `/debug/*`.
    fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(want) = &self.token else {
            if self.loopback {
                return Ok(());
            }
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "debug_forbidden",
                "/debug/ is served beyond loopback only with admin_token set",
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_time_eq(&sha256(t.trim().as_bytes()), want) => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "/debug/ needs Authorization: Bearer <admin_token>",
            )),
        }
    }
}

/// Answers a request under `/debug/`.
pub async fn handle(
    access: &DebugAccess,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Full<Bytes>> {
    if let Err(e) = access.check(headers) {
        return e.into_response();
    }
    match path {
        "/debug/pprof/profile" => profile(query).await.unwrap_or_else(ApiError::into_response),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "debug endpoints: /debug/pprof/profile?seconds=N[&format=svg]",
        )
        .into_response(),
    }
}

/// The output a profile request asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Pprof,
    Svg,
}

async fn profile(query: Option<&str>) -> Result<Response<Full<Bytes>>, ApiError> {
    let (mut seconds, mut format) = (30, Format::Pprof);
    for (k, v) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        match (k, v) {
            ("seconds", v) => {
                seconds = v
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (1..=MAX_SECONDS).contains(s))
                    .ok_or_else(|| bad(format!("seconds must be 1 to {MAX_SECONDS}, not {v:?}")))?
            }
            ("format", "svg") => format = Format::Svg,
            ("format", "pprof" | "proto") => format = Format::Pprof,
            ("format", v) => return Err(bad(format!("format must be pprof or svg, not {v:?}"))),
            _ => {}
        }
    }
    if PROFILING.swap(true, Ordering::AcqRel) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "profile_running",
            "a profile is already running; one at a time",
        ));
    }
    // The profiler's guard is not Send: the whole profile runs on a blocking thread,
    // and symbolization (the expensive part) with it.
    let done = tokio::task::spawn_blocking(move || {
        let r = record(Duration::from_secs(seconds), format);
        PROFILING.store(false, Ordering::Release);
        r
    })
    .await;
    let (body, content_type) = match done {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(failed(e)),
        Err(e) => {
            PROFILING.store(false, Ordering::Release);
            return Err(failed(e.to_string()));
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if format == Format::Pprof {
        r.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"profile.pb.gz\""),
        );
    }
    Ok(r)
}

/// Samples for `length`, then encodes the report.
fn record(length: Duration, format: Format) -> Result<(Vec<u8>, &'static str), String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| format!("starting the profiler: {e}"))?;
    std::thread::sleep(length);
    let report = guard
        .report()
        .build()
        .map_err(|e| format!("building the report: {e}"))?;
    drop(guard);
    match format {
        Format::Svg => {
            let mut svg = Vec::new();
            report
                .flamegraph(&mut svg)
                .map_err(|e| format!("drawing the flame graph: {e}"))?;
            Ok((svg, "image/svg+xml"))
        }
        Format::Pprof => {
            use pprof::protos::Message;
            let profile = report
                .pprof()
                .map_err(|e| format!("encoding the profile: {e}"))?;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&profile.encode_to_vec())
                .and_then(|()| gz.finish())
                .map(|body| (body, "application/octet-stream"))
                .map_err(|e| format!("compressing the profile: {e}"))
        }
    }
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn failed(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "profile_failed", message)
}
