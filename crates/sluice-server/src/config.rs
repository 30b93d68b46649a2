//! Configuration: one TOML file with human values (`"30s"`, `"4 GiB"`), overridden by
//! `SLUICE_*` environment variables and then by command-line flags, validated once
//! into a typed [`Config`]. Unknown keys are errors. Nothing else in sluice reads the
//! environment.
//!
//! Environment variables map onto keys: `SLUICE_LISTEN` → `listen`,
//! `SLUICE_QUEUE__MAX_BYTES` → `queue.max_bytes` (a double underscore separates a
//! section from its key). `SLUICE_QUEUE` and `SLUICE_ACK` are shorthands for
//! `queue.kind` and `queue.ack`, like the `--queue` and `--ack` flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod access;
mod backends;
mod edge;

pub use access::{AuthConfig, KeyConfig, LimitsConfig};
pub use backends::{kind_and_url, NoOptions, QueueConfig, SinkConfig};
pub use edge::{GatewayConfig, TlsConfig};
pub use sluice_core::units::{ByteSize, HumanDuration};
pub use sluice_queue::AckMode;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value is out of its allowed range.
    #[error("{key} {message}; got {value}")]
    Invalid {
        key: &'static str,
        value: String,
        message: String,
    },
    /// A backend refused one of its options (`section` is `queue`, `sink` or
    /// `dead_letter`).
    #[error("{section}.{source}")]
    Backend {
        section: &'static str,
        #[source]
        source: sluice_core::OptionError,
    },
    /// `[telemetry]` is wrong.
    #[error("{0}")]
    Telemetry(#[from] sluice_telemetry::TelemetryError),
    /// The section names a backend this build of sluice left out.
    #[error("{section}.kind = {kind:?} needs a sluice built with the `{feature}` cargo feature")]
    NotBuilt {
        section: &'static str,
        kind: String,
        feature: &'static str,
    },
}

/// The whole configuration of `sluice serve`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the ingest HTTP listener (HTTP/1.1 and h2c). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`,
    /// `/debug/pprof/*`). Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// A bearer token `/debug/*` requires (`Authorization: Bearer <token>`). Without
    /// it `/debug/*` answers only on a loopback `admin_listen`. Default none.
    pub admin_token: Option<sluice_core::Secret>,
    /// Where the WAL, checkpoints and file-sink output live. Default `./sluice-data`.
    pub data_dir: PathBuf,
    /// How long shutdown may take before sluice exits anyway (and warns). Default `30s`.
    pub shutdown_grace: HumanDuration,
    /// On shutdown, how long ingest keeps its listener open answering 503 with
    /// `Retry-After` (and `/readyz` 503) before it stops accepting, so load balancers
    /// and clients move to other nodes instead of seeing refused connections.
    /// Counts toward `shutdown_grace`. Default `0s`.
    pub shutdown_drain_delay: HumanDuration,
    /// `text` (default, for people) or `json` (for log pipelines).
    pub log_format: LogFormat,
    /// The queue between ingest and the processor, and its options.
    pub queue: QueueConfig,
    /// HTTP front-door limits.
    pub http: HttpConfig,
    /// The gRPC `IngestService` (served on `listen`).
    pub grpc: GrpcConfig,
    /// TLS for the listeners; off unless `tls.cert` and `tls.key` are set.
    pub tls: TlsConfig,
    /// API keys.
    pub auth: AuthConfig,
    /// Rate limits over all keys.
    pub limits: LimitsConfig,
    /// `sluice gateway`: where requests are forwarded.
    pub gateway: GatewayConfig,
    /// The worker pool.
    pub processor: ProcessorConfig,
    /// Where events are delivered, and the sink's options.
    pub sink: SinkConfig,
    /// Where events that can never be delivered go, each with its reason; the file
    /// sink under `<data_dir>/dead` by default.
    pub dead_letter: SinkConfig,
    /// Distributed tracing (OpenTelemetry, OTLP); off unless an endpoint is set here
    /// or in `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub telemetry: sluice_telemetry::TelemetryConfig,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body, compressed and decompressed alike (413 past it). Default `10 MiB`.
    pub max_body_bytes: ByteSize,
    /// Requests handled at once; more get 429. Default 4,096.
    pub max_concurrent_requests: usize,
    /// A client must send its request headers within this time: the first request's
    /// (TLS handshake and HTTP/2 preface included) counted from the accept, a later
    /// HTTP/1 request's from its first byte. A deadline, not an inactivity timer:
    /// trickling bytes does not extend it. Default `10s`.
    pub header_read_timeout: HumanDuration,
    /// A client must send its whole body within this time (408 past it). Default `30s`.
    pub body_read_timeout: HumanDuration,
    /// HTTP/2 streams per connection. Default 256.
    pub max_concurrent_streams: u32,
    /// Connections open at once per listener; more are closed as they are accepted.
    /// Default 20,000 (sluice raises its open-file limit to fit).
    pub max_connections: usize,
    /// A connection with no request in flight and none started for this long is
    /// asked to close (HTTP/2 PINGs, SETTINGS and WINDOW_UPDATEs do not keep it open).
    /// Default `60s`.
    pub idle_timeout: HumanDuration,
    /// A connection asked to close (idle, or the node shutting down) is closed hard
    /// if its requests have not finished (or the peer has not acknowledged the
    /// GOAWAY) within this long, freeing its `max_connections` slot. Default `10s`.
    pub drain_timeout: HumanDuration,
    /// Most events in one request (HTTP body or gRPC request message), and most
    /// gRPC header entries in one message; more get 413 `too_many_events` (gRPC
    /// INVALID_ARGUMENT), counted while the body is split or the message scanned,
    /// before anything is allocated per event. It bounds what a body of tiny events
    /// costs: an event takes ~384 bytes in memory and up to 209 bytes of framing in
    /// its WAL record beyond its bytes in the body, so the default keeps a full
    /// 10 MiB body of `{}` lines (3.5 million events unbounded, ~1.3 GiB decoded) to
    /// ~50 MiB in memory and its record to ~31 MiB; a 10 MiB body still holds
    /// events averaging 105 bytes. `http.max_body_bytes +
    /// http.max_events_per_request * 209` must fit in a WAL record
    /// (`queue.segment_bytes / 2`). Default 100,000.
    pub max_events_per_request: usize,
    /// Bytes of requests being read, decompressed and decoded on this node at once
    /// (HTTP bodies and gRPC messages, including those a stream has in flight),
    /// counting ~384 bytes per decoded event; a request that would go past it gets
    /// 429 `overloaded` (gRPC RESOURCE_EXHAUSTED) with `Retry-After`, so
    /// `max_concurrent_requests` large bodies cannot exhaust memory. Must hold at
    /// least one request of the largest size (`2 * max_body_bytes +
    /// max_events_per_request * 384`). Default `512 MiB`.
    pub max_inflight_bytes: ByteSize,
}

/// `[grpc]`. Message sizes follow `http.max_body_bytes`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Request messages of one `IngestStream` / `IngestBidi` call in flight (read and
    /// being appended, not yet acked); past it the server stops reading and HTTP/2
    /// flow control holds the client back. Default 32.
    pub window: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig { window: 32 }
    }
}

/// `[processor]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Concurrent deliveries; 0 (default) means two per core, at least four
    /// (deliveries mostly wait on their sink).
    pub workers: usize,
    /// Most events per delivery. Default 5,000: each delivery costs a sink write and
    /// an fsync, so bigger deliveries carry more events per fsync (measured: 1,000 →
    /// 5,000 took the file sink from ~560k to ~0.85–1.0M events/s).
    pub batch_max_events: usize,
    /// Longest wait for a delivery to fill up to `batch_max_events` before what is
    /// there is delivered (the delivery latency at a trickle). Default `20ms`.
    pub batch_max_wait: HumanDuration,
    /// First retry delay of a failing sink. Default `100ms`.
    pub retry_initial: HumanDuration,
    /// Longest retry delay; a sink's `Retry-After` is honoured up to this too.
    /// Default `30s`.
    pub retry_max: HumanDuration,
    /// The consumer group (Kafka) or durable consumer (JetStream) that processors
    /// share; processors with the same group split the work. Default `processor`.
    pub group: String,
    /// Sink attempts for one delivery before its events are dead-lettered; 0 (the
    /// default) retries a passing failure forever, holding the queue back instead.
    pub max_attempts: u32,
    /// Times a broker queue may hand out one event (redelivery after an ack timeout or
    /// a processor crash) before it is dead-lettered unseen; 0 means no limit.
    /// Default 10.
    pub max_deliveries: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            admin_listen: "127.0.0.1:9090".parse().expect("valid address"),
            admin_token: None,
            data_dir: PathBuf::from("./sluice-data"),
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            shutdown_drain_delay: HumanDuration(Duration::ZERO),
            log_format: LogFormat::Text,
            queue: QueueConfig::default(),
            http: HttpConfig::default(),
            grpc: GrpcConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            gateway: GatewayConfig::default(),
            processor: ProcessorConfig::default(),
            sink: SinkConfig::default(),
            dead_letter: SinkConfig::default(),
            telemetry: Default::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: ByteSize(10 << 20),
            max_concurrent_requests: 4096,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            body_read_timeout: HumanDuration(Duration::from_secs(30)),
            max_concurrent_streams: 256,
            max_connections: 20_000,
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            drain_timeout: HumanDuration(Duration::from_secs(10)),
            max_events_per_request: 100_000,
            max_inflight_bytes: ByteSize(512 << 20),
        }
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            workers: 0,
            batch_max_events: 5000,
            batch_max_wait: HumanDuration(Duration::from_millis(20)),
            retry_initial: HumanDuration(Duration::from_millis(100)),
            retry_max: HumanDuration(Duration::from_secs(30)),
            group: "processor".into(),
            max_attempts: 0,
            max_deliveries: 10,
        }
    }
}

/// Where values come from, lowest precedence first.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    /// The TOML file, if any.
    pub file: Option<&'a Path>,
    /// `(name, value)` of the environment; only `SLUICE_*` names are used.
    pub env: Vec<(String, String)>,
    /// `(dotted.key, value)` from command-line flags.
    pub flags: Vec<(String, String)>,
}

impl Config {
    /// Loads the file (if any), applies the environment and flags, and validates.
    pub fn load(sources: Sources<'_>) -> Result<Config, ConfigError> {
        let mut table = match sources.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        origin: path.display().to_string(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in &sources.env {
            if let Some(key) = env_key(name) {
                set(&mut table, &key, value);
            }
        }
        for (key, value) in &sources.flags {
            set(&mut table, key, value);
        }
        for (section, class, default) in [
            ("queue", "queue", "wal"),
            ("sink", "sink", "file"),
            ("dead_letter", "sink", "file"),
        ] {
            default_kind(&mut table, section, class, default)?;
        }
        let origin = match sources.file {
            Some(p) => format!("{} (with environment and flag overrides)", p.display()),
            None => "configuration (environment and flags)".to_string(),
        };
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin,
                    message: e.message().to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// The process environment's `SLUICE_*` variables, for [`Sources::env`].
    pub fn process_env() -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| k.starts_with("SLUICE_"))
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let min = |key: &'static str, got: u64, least: u64| {
            if got < least {
                Err(ConfigError::Invalid {
                    key,
                    value: ByteSize(got).to_string(),
                    message: format!("must be at least {}", ByteSize(least)),
                })
            } else {
                Ok(())
            }
        };
        min("http.max_body_bytes", self.http.max_body_bytes.0, 1 << 10)?;
        self.telemetry.validate()?;
        let backend = |section| move |source| ConfigError::Backend { section, source };
        self.queue.validate().map_err(backend("queue"))?;
        self.sink.validate().map_err(backend("sink"))?;
        self.dead_letter
            .validate()
            .map_err(backend("dead_letter"))?;
        self.validate_request_bounds()?;
        let nonzero = |key: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    key,
                    value: "0".into(),
                    message: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        nonzero("grpc.window", self.grpc.window)?;
        nonzero("http.max_connections", self.http.max_connections)?;
        nonzero("gateway.connections", self.gateway.connections)?;
        nonzero("gateway.max_attempts", self.gateway.max_attempts as usize)?;
        nonzero("gateway.eject_after", self.gateway.eject_after as usize)?;
        self.auth.validate()?;
        self.limits.validate()?;
        if self.http.idle_timeout.0 < Duration::from_millis(10) {
            return Err(ConfigError::Invalid {
                key: "http.idle_timeout",
                value: self.http.idle_timeout.to_string(),
                message: "must be at least 10ms".into(),
            });
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            let (key, value) = match &self.tls.cert {
                Some(c) => ("tls.key", format!("nothing (tls.cert = {})", c.display())),
                None => ("tls.cert", "nothing (tls.key is set)".to_string()),
            };
            return Err(ConfigError::Invalid {
                key,
                value,
                message: "must be set together with the other".into(),
            });
        }
        if self.tls.client_ca.is_some() && !self.tls.enabled() {
            return Err(ConfigError::Invalid {
                key: "tls.client_ca",
                value: "a CA bundle".into(),
                message: "needs tls.cert and tls.key".into(),
            });
        }
        nonzero(
            "http.max_concurrent_requests",
            self.http.max_concurrent_requests,
        )?;
        nonzero(
            "processor.batch_max_events",
            self.processor.batch_max_events,
        )?;
        nonzero(
            "http.max_concurrent_streams",
            self.http.max_concurrent_streams as usize,
        )?;
        Ok(())
    }

    /// Refuses to serve ingest open to the network: `listen` off loopback needs API
    /// keys or `auth.allow_unauthenticated`. Checked by every role that serves
    /// `listen` (not `sluice process`, which binds only the admin listener).
    pub fn check_open_listener(&self) -> Result<(), ConfigError> {
        if self.auth.keys.is_empty()
            && !self.auth.allow_unauthenticated
            && !self.listen.ip().is_loopback()
        {
            return Err(ConfigError::Invalid {
                key: "listen",
                value: self.listen.to_string(),
                message: "is not a loopback address and no API keys are configured \
                          ([[auth.keys]], see `sluice keys generate`); pass \
                          --allow-unauthenticated to serve it open anyway"
                    .into(),
            });
        }
        Ok(())
    }

    /// A request's largest WAL record must fit in one (`queue.segment_bytes / 2`, see
    /// `build.rs`), and the byte budget must hold the largest request.
    fn validate_request_bounds(&self) -> Result<(), ConfigError> {
        use crate::front::budget::EVENT_MEMORY_BYTES;
        use crate::front::{record_bound, RECORD_BYTES_PER_EVENT, RECORD_BYTES_PER_HEADER};
        let h = &self.http;
        if h.max_events_per_request == 0 {
            return Err(ConfigError::Invalid {
                key: "http.max_events_per_request",
                value: "0".into(),
                message: "must be at least 1".into(),
            });
        }
        let events = h.max_events_per_request as u64;
        // With tracing on, a traced request's events also carry its `traceparent`
        // (at most 1 MiB of them).
        let tracing = matches!(
            self.telemetry.resolve(|k| std::env::var(k).ok()),
            Ok(Some(_))
        );
        let traced = if tracing {
            events
                .saturating_mul(sluice_telemetry::STAMP_BYTES_PER_EVENT)
                .min(sluice_telemetry::STAMP_MAX_BYTES)
        } else {
            0
        };
        let record = record_bound(h.max_body_bytes.0, events).saturating_add(traced);
        let max_record = match &self.queue {
            QueueConfig::Wal(wal) => wal.max_record_bytes(),
            // One request is one WAL record; the other queues split it.
            _ => u64::MAX,
        };
        if record > max_record {
            return Err(ConfigError::Invalid {
                key: "http.max_events_per_request",
                value: h.max_events_per_request.to_string(),
                message: format!(
                    "is too large for the WAL record size: http.max_body_bytes ({}) + \
                     http.max_events_per_request ({events}) x {} bytes of record framing \
                     per event (+ {} of trace context when tracing is on) = {} must be at most queue.segment_bytes / 2 ({}); lower \
                     either limit or raise queue.segment_bytes",
                    h.max_body_bytes,
                    RECORD_BYTES_PER_EVENT + RECORD_BYTES_PER_HEADER,
                    ByteSize(traced),
                    ByteSize(record),
                    ByteSize(max_record),
                ),
            });
        }
        let largest = h
            .max_body_bytes
            .0
            .saturating_mul(2)
            .saturating_add(events.saturating_mul(EVENT_MEMORY_BYTES));
        if h.max_inflight_bytes.0 < largest {
            return Err(ConfigError::Invalid {
                key: "http.max_inflight_bytes",
                value: h.max_inflight_bytes.to_string(),
                message: format!(
                    "must hold the largest request: 2 x http.max_body_bytes ({}) + \
                     http.max_events_per_request ({events}) x {EVENT_MEMORY_BYTES} bytes = {}",
                    h.max_body_bytes,
                    ByteSize(largest)
                ),
            });
        }
        Ok(())
    }

    /// The file sink's output directory (`sink.dir`, default `<data_dir>/out`).
    pub fn sink_dir(&self) -> PathBuf {
        match &self.sink {
            SinkConfig::File(f) => f.dir.clone(),
            _ => None,
        }
        .unwrap_or_else(|| self.default_sink_dir())
    }

    /// Where a file sink writes without a `dir`: `<data_dir>/out`.
    pub fn default_sink_dir(&self) -> PathBuf {
        self.data_dir.join("out")
    }

    /// Where a dead-letter file sink writes without a `dir`: `<data_dir>/dead`.
    pub fn default_dead_letter_dir(&self) -> PathBuf {
        self.data_dir.join("dead")
    }

    /// The effective configuration as TOML, secrets redacted (`sluice config check`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config serializes")
    }

    /// The WAL's directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }

    /// Worker count with 0 resolved to the default.
    pub fn workers(&self) -> usize {
        match self.processor.workers {
            0 => sluice_pipeline::default_workers(),
            n => n,
        }
    }
}

/// `SLUICE_QUEUE__MAX_BYTES` → `queue.max_bytes`; shorthands for `--queue` / `--ack`.
fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("SLUICE_")?;
    Some(match rest {
        "QUEUE" => "queue.kind".into(),
        "ACK" => "queue.ack".into(),
        "SINK" => "sink.kind".into(),
        _ => rest.to_ascii_lowercase().replace("__", "."),
    })
}

/// Gives a section that names no `kind` the default one, and refuses a kind this
/// build left out by name (serde would call it unknown).
fn default_kind(
    table: &mut toml::Table,
    section: &'static str,
    class: &str,
    default: &str,
) -> Result<(), ConfigError> {
    let Some(toml::Value::Table(t)) = table.get_mut(section) else {
        return Ok(());
    };
    let kind = t
        .entry("kind")
        .or_insert_with(|| toml::Value::String(default.into()));
    if let Some(kind) = kind.as_str() {
        if let Some(feature) = backends::missing_feature(class, kind) {
            return Err(ConfigError::NotBuilt {
                section,
                kind: kind.to_string(),
                feature,
            });
        }
    }
    Ok(())
}

/// Sets a dotted key to a value given as text: TOML integers and booleans keep their
/// type, everything else is a string (human values are strings anyway).
fn set(table: &mut toml::Table, key: &str, value: &str) {
    let parsed = if let Ok(i) = value.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = value.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(value.to_string())
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("split yields at least one part");
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("made a table above");
    }
    t.insert(last.to_string(), parsed);
}

#[cfg(test)]
mod tests;
