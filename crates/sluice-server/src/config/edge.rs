//! `[tls]` and `[gateway]`: the edge of a node.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, HumanDuration};

/// `[tls]`: with `cert` and `key` set, `listen` (and `admin_listen`, unless `admin` is
/// false) speak only TLS 1.2/1.3, offering ALPN `h2` and `http/1.1`. The files are
/// re-read on SIGHUP and when they change, without dropping connections.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first.
    pub cert: Option<PathBuf>,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA bundle, PEM: when set, clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Serve the admin listener over TLS too. Default true.
    pub admin: Option<bool>,
    /// How often the files are checked for changes (SIGHUP reloads at once).
    /// Default `10s`.
    pub watch_interval: Option<HumanDuration>,
}

impl TlsConfig {
    /// True when TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// Whether the admin listener uses TLS.
    pub fn on_admin(&self) -> bool {
        self.enabled() && self.admin.unwrap_or(true)
    }

    /// The files a reload reads.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key, &self.client_ca]
            .into_iter()
            .flatten()
    }
}

/// `[gateway]`, used by `sluice gateway`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Ingest nodes, `http://HOST:PORT` (their gRPC `IngestService`): a list, or
    /// one comma-separated string (as `--upstream` and `SLUICE_GATEWAY__UPSTREAMS`).
    #[serde(deserialize_with = "list_or_csv")]
    pub upstreams: Vec<String>,
    /// HTTP/2 connections per upstream, each multiplexing many requests. Default 2.
    pub connections: usize,
    /// One attempt's limit; past it the batch is retried on another upstream.
    /// Default `10s`.
    pub request_timeout: HumanDuration,
    /// TCP connect limit for an upstream. Default `1s`.
    pub connect_timeout: HumanDuration,
    /// Consecutive failures that take an upstream out of rotation. Default 2.
    pub eject_after: u32,
    /// How often ejected upstreams are probed. Default `1s`.
    pub probe_interval: HumanDuration,
    /// Upstreams tried for one batch before the producer gets 503. Default 3.
    pub max_attempts: u32,
    /// API key the gateway presents to the upstreams, if they require one.
    pub upstream_api_key: Option<sluice_core::Secret>,
    /// Upstream calls in flight at once, per upstream; requests arriving while all
    /// are busy are merged into the next call (per stream). 0 sends one call per
    /// request. Default 2: fewer calls carry more requests each, and each call costs
    /// both ends far more than the events in it (bench/RESULTS.md).
    pub max_in_flight: usize,
    /// Largest merged call, in event bytes (ids, payloads, headers). A request
    /// larger than this goes out alone. Default `4 MiB`; keep it well under the
    /// ingest nodes' `http.max_body_bytes`.
    pub max_batch_bytes: ByteSize,
    /// Event bytes of the requests waiting for an upstream call slot (the merge
    /// queue); past it requests get 429 with `Retry-After`, and the front door sheds
    /// before reading bodies (the gateway's queue capacity). Default `64 MiB`.
    pub max_queued_bytes: ByteSize,
    /// Requests waiting for an upstream call slot; past it requests get 429.
    /// Default 4,096.
    pub max_queued_requests: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            upstreams: Vec::new(),
            connections: 2,
            request_timeout: HumanDuration(Duration::from_secs(10)),
            connect_timeout: HumanDuration(Duration::from_secs(1)),
            eject_after: 2,
            probe_interval: HumanDuration(Duration::from_secs(1)),
            max_attempts: 3,
            upstream_api_key: None,
            max_in_flight: 2,
            max_batch_bytes: ByteSize(4 << 20),
            max_queued_bytes: ByteSize(64 << 20),
            max_queued_requests: 4096,
        }
    }
}

/// A list of strings, or one comma-separated string.
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(l) => l,
        Either::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
    })
}
