//! `/debug/pprof/*` on the admin listener: profiles on demand, at the paths Go users
//! know. `GET /debug/pprof/profile?seconds=N` samples the whole process's CPU for N
//! seconds (default 30, at most 300) at 99 Hz and answers a gzipped pprof protobuf
//! (`go tool pprof`, `pprof -http`), or with `&format=svg` a flame graph.
//! `GET /debug/pprof/heap[?format=svg]` answers the live heap by allocation site
//! (`inuse_space`, sampled by jemalloc about every 512 KiB allocated) when the binary
//! was built with the `jemalloc` feature (the default), else 501.
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
        "/debug/pprof/heap" => heap::heap(query).await.unwrap_or_else(ApiError::into_response),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "debug endpoints: /debug/pprof/profile?seconds=N[&format=svg], /debug/pprof/heap[?format=svg]",
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

/// The `format` parameter of a query.
fn format_of(query: Option<&str>) -> Result<Format, ApiError> {
    let mut format = Format::Pprof;
    for (k, v) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        match (k, v) {
            ("format", "svg") => format = Format::Svg,
            ("format", "pprof" | "proto") => format = Format::Pprof,
            ("format", v) => return Err(bad(format!("format must be pprof or svg, not {v:?}"))),
            _ => {}
        }
    }
    Ok(format)
}

/// A profile as an answer: a pprof file to download, or an SVG to look at.
fn answer(body: Vec<u8>, format: Format, file: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let content_type = match format {
        Format::Svg => "image/svg+xml",
        Format::Pprof => "application/octet-stream",
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if format == Format::Pprof {
        r.headers_mut()
            .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(file));
    }
    r
}

async fn profile(query: Option<&str>) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut seconds = 30;
    let format = format_of(query)?;
    for (k, v) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        if k == "seconds" {
            seconds = v
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=MAX_SECONDS).contains(s))
                .ok_or_else(|| bad(format!("seconds must be 1 to {MAX_SECONDS}, not {v:?}")))?;
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
    let done = sluice_core::blocking::run(sluice_core::blocking::Kind::Profile, move || {
        let r = record(Duration::from_secs(seconds), format);
        PROFILING.store(false, Ordering::Release);
        r
    })
    .await;
    let body = match done {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return Err(failed(e)),
        Err(e) => {
            PROFILING.store(false, Ordering::Release);
            return Err(failed(e.to_string()));
        }
    };
    Ok(answer(
        body,
        format,
        "attachment; filename=\"profile.pb.gz\"",
    ))
}

/// Samples for `length`, then encodes the report.
fn record(length: Duration, format: Format) -> Result<Vec<u8>, String> {
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
            Ok(svg)
        }
        Format::Pprof => {
            use pprof::protos::Message;
            let profile = report
                .pprof()
                .map_err(|e| format!("encoding the profile: {e}"))?;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&profile.encode_to_vec())
                .and_then(|()| gz.finish())
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

/// `/debug/pprof/heap`.
mod heap {
    use super::*;

    /// 501 unless this binary's allocator is jemalloc with its profiler on.
    #[cfg(not(feature = "heap-profile"))]
    pub async fn heap(query: Option<&str>) -> Result<Response<Full<Bytes>>, ApiError> {
        format_of(query)?;
        Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "heap_profile_unavailable",
            "this sluice was built without heap profiling (the jemalloc feature, on by default)",
        ))
    }

    #[cfg(feature = "heap-profile")]
    pub async fn heap(query: Option<&str>) -> Result<Response<Full<Bytes>>, ApiError> {
        let format = format_of(query)?;
        let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "heap_profile_unavailable",
                "jemalloc's profiler is off in this process (its malloc conf lacks prof:true)",
            ));
        };
        // Linked in is not the same as allocating: a build whose global allocator is
        // another one has an empty jemalloc heap.
        let allocated = tikv_jemalloc_ctl::epoch::advance()
            .and_then(|_| tikv_jemalloc_ctl::stats::allocated::read())
            .unwrap_or(0);
        if allocated < 1 << 20 {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "heap_profile_unavailable",
                "jemalloc is not this process's allocator: build sluice with the jemalloc feature (on by default)",
            ));
        }
        let mut ctl = ctl.clone().lock_owned().await;
        if !ctl.activated() {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "heap_profile_unavailable",
                "jemalloc's profiler is not active (prof_active:false)",
            ));
        }
        // Writing the dump and symbolizing it is blocking work.
        let body = sluice_core::blocking::run(sluice_core::blocking::Kind::Profile, move || {
            let pprof = ctl.dump_pprof().map_err(|e| e.to_string())?;
            match format {
                Format::Pprof => Ok(pprof),
                Format::Svg => flame_graph(&pprof),
            }
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(failed)?;
        Ok(answer(body, format, "attachment; filename=\"heap.pb.gz\""))
    }

    /// A flame graph of a gzipped pprof profile's last sample value (bytes in use).
    #[cfg(feature = "heap-profile")]
    fn flame_graph(gzipped: &[u8]) -> Result<Vec<u8>, String> {
        use pprof::protos::Message as _;
        use std::collections::HashMap;
        use std::io::Read as _;
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gzipped)
            .read_to_end(&mut raw)
            .map_err(|e| format!("reading the heap profile: {e}"))?;
        let p = pprof::protos::Profile::decode(raw.as_slice())
            .map_err(|e| format!("decoding the heap profile: {e}"))?;
        let text = |i: i64| p.string_table.get(i as usize).map_or("?", String::as_str);
        let functions: HashMap<u64, &str> =
            p.function.iter().map(|f| (f.id, text(f.name))).collect();
        let locations: HashMap<u64, Vec<&str>> = p
            .location
            .iter()
            .map(|l| {
                // Inlined frames come innermost first.
                let names = l
                    .line
                    .iter()
                    .rev()
                    .map(|line| functions.get(&line.function_id).copied().unwrap_or("?"))
                    .collect();
                (l.id, names)
            })
            .collect();
        let mut folded: HashMap<String, i64> = HashMap::new();
        for s in &p.sample {
            let Some(&bytes) = s.value.last() else {
                continue;
            };
            // Samples list the leaf first; a flame graph reads from the root.
            let stack: Vec<&str> = s
                .location_id
                .iter()
                .rev()
                .flat_map(|id| locations.get(id).into_iter().flatten().copied())
                .collect();
            let stack = if stack.is_empty() {
                "?".to_string()
            } else {
                stack.join(";")
            };
            *folded.entry(stack).or_default() += bytes;
        }
        let lines: Vec<String> = folded
            .into_iter()
            .filter(|(_, b)| *b > 0)
            .map(|(stack, b)| format!("{stack} {b}"))
            .collect();
        let mut opts = pprof::flamegraph::Options::default();
        opts.title = "heap in use".into();
        opts.count_name = "bytes".into();
        let mut svg = Vec::new();
        pprof::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut svg)
            .map_err(|e| format!("drawing the flame graph: {e}"))?;
        Ok(svg)
    }
}
