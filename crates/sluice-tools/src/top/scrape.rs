//! Reading a node's admin listener: a plain HTTP GET, the Prometheus text parsed,
//! and the figures `sluice top` shows computed from two readings.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why a node could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{0:?}: only http:// URLs (the admin listener without TLS)")]
    Url(String),
    #[error("{what} {target}: {source}")]
    Io {
        what: &'static str,
        target: String,
        source: std::io::Error,
    },
    #[error("{0} did not answer HTTP")]
    NotHttp(String),
}

/// `GET url` over HTTP/1.0 (the admin listener's plain HTTP): the status line's code
/// and reason, and the body (at most `max_body` bytes).
pub fn get(url: &str, timeout: Duration, max_body: u64) -> Result<(String, Vec<u8>), ScrapeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ScrapeError::Url(url.to_string()))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let io = |what, target: &str| {
        let target = target.to_string();
        move |source| ScrapeError::Io {
            what,
            target,
            source,
        }
    };
    let addr = host
        .to_socket_addrs()
        .map_err(io("resolving", host))?
        .next()
        .ok_or_else(|| ScrapeError::Url(url.to_string()))?;
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(io("connecting to", host))?;
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    write!(conn, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(io("writing to", host))?;
    let mut answer = Vec::new();
    conn.take(max_body + 64 * 1024)
        .read_to_end(&mut answer)
        .map_err(io("reading from", host))?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ScrapeError::NotHttp(host.to_string()))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = match head.lines().next().unwrap_or_default().split_once(' ') {
        Some((version, status)) if version.starts_with("HTTP/") => status.trim().to_string(),
        _ => return Err(ScrapeError::NotHttp(host.to_string())),
    };
    Ok((status, answer[split + 4..].to_vec()))
}

/// One reading of `/metrics`: series (name and labels as written) to value.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    series: Vec<(String, HashMap<String, String>, f64)>,
}

impl Reading {
    /// Parses the Prometheus text exposition (comments and malformed lines skipped).
    pub fn parse(text: &str, at: Instant) -> Reading {
        let mut series = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match key.split_once('{') {
                Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
                None => (key, HashMap::new()),
            };
            series.push((name.to_string(), labels, value));
        }
        Reading { at, series }
    }

    /// The sum of `name` over its series whose labels pass `pred`.
    pub fn sum(&self, name: &str, pred: impl Fn(&HashMap<String, String>) -> bool) -> f64 {
        self.series
            .iter()
            .filter(|(n, l, _)| n == name && pred(l))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// `name` summed by the value of `label`.
    pub fn by(&self, name: &str, label: &str) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for (n, l, v) in &self.series {
            if n == name {
                *out.entry(l.get(label).cloned().unwrap_or_default())
                    .or_default() += v;
            }
        }
        out
    }
}

/// `a="x",b="y"` (values with `\"` and `\\` escapes).
fn labels(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// What `sluice top` shows of one node, from two readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub events_in: f64,
    pub events_out: f64,
    pub bytes_in: f64,
    pub rejected: f64,
    pub p99_seconds: Option<f64>,
    pub depth_events: f64,
    pub lag_seconds: f64,
    pub fsync_seconds: Option<f64>,
    pub sink_errors: f64,
    pub dead_lettered: f64,
    pub total_in: f64,
    /// Events per second by stream.
    pub streams: Vec<(String, f64)>,
}

impl Figures {
    /// Rates between `before` and `now`; gauges and totals from `now`.
    pub fn between(before: &Reading, now: &Reading) -> Figures {
        let dt = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let rate =
            |name: &str| (now.sum(name, |_| true) - before.sum(name, |_| true)).max(0.0) / dt;
        let delta = |name: &str| now.sum(name, |_| true) - before.sum(name, |_| true);
        let fsyncs = delta("sluice_wal_fsync_duration_seconds_count");
        let (a, b) = (
            before.by("sluice_stream_events_total", "stream"),
            now.by("sluice_stream_events_total", "stream"),
        );
        let mut streams: Vec<(String, f64)> = b
            .into_iter()
            .map(|(s, v)| {
                let r = (v - a.get(&s).copied().unwrap_or(0.0)).max(0.0) / dt;
                (s, r)
            })
            .filter(|(_, r)| *r > 0.0)
            .collect();
        streams.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        Figures {
            events_in: rate("sluice_ingest_events_total"),
            events_out: rate("sluice_sink_delivered_events_total"),
            bytes_in: rate("sluice_ingest_bytes_total"),
            rejected: rate("sluice_ingest_rejected_requests_total"),
            p99_seconds: quantile(before, now, "sluice_http_request_duration_seconds", 0.99),
            depth_events: now.sum("sluice_queue_depth_events", |_| true),
            lag_seconds: now.sum("sluice_processor_lag_seconds", |_| true),
            fsync_seconds: (fsyncs > 0.0)
                .then(|| delta("sluice_wal_fsync_duration_seconds_sum") / fsyncs),
            sink_errors: rate("sluice_sink_errors_total"),
            dead_lettered: now.sum("sluice_dead_lettered_events_total", |_| true),
            total_in: now.sum("sluice_ingest_events_total", |_| true),
            streams,
        }
    }
}

/// The `q` quantile of the observations between two readings, from the buckets.
fn quantile(before: &Reading, now: &Reading, name: &str, q: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let (a, b) = (before.by(&bucket, "le"), now.by(&bucket, "le"));
    let mut les: Vec<(f64, f64)> = b
        .iter()
        .filter_map(|(le, v)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, v - a.get(le).copied().unwrap_or(0.0)))
        })
        .collect();
    les.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = les.last()?.1;
    if total <= 0.0 {
        return None;
    }
    les.into_iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(bound, _)| bound)
        .filter(|b| b.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_quantiles_come_from_two_readings() {
        let t0 = Instant::now();
        let page = |events: u64, fast: u64, slow: u64| {
            format!(
                "# HELP x\nsluice_ingest_events_total {events}\n\
                 sluice_stream_events_total{{stream=\"a\\\"b\",key=\"k\"}} {events}\n\
                 sluice_http_request_duration_seconds_bucket{{class=\"2xx\",le=\"0.001\"}} {fast}\n\
                 sluice_http_request_duration_seconds_bucket{{class=\"2xx\",le=\"0.1\"}} {}\n\
                 sluice_http_request_duration_seconds_bucket{{class=\"2xx\",le=\"+Inf\"}} {}\n\
                 sluice_queue_depth_events 7\n",
                fast + slow,
                fast + slow
            )
        };
        let a = Reading::parse(&page(100, 10, 0), t0);
        let b = Reading::parse(&page(300, 108, 2), t0 + Duration::from_secs(2));
        let f = Figures::between(&a, &b);
        assert_eq!(f.events_in, 100.0);
        assert_eq!(f.depth_events, 7.0);
        assert_eq!(f.total_in, 300.0);
        assert_eq!(f.streams, vec![("a\"b".to_string(), 100.0)]);
        // 100 new observations: 98 under 1 ms, 2 under 100 ms: p99 is the 100 ms bucket.
        assert_eq!(f.p99_seconds, Some(0.1));
    }
}
