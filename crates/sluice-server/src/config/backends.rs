//! `[queue]`, `[sink]` and `[dead_letter]`: which backend, and that backend's own
//! options. Each section is a tagged enum on `kind` whose variants are the options
//! types of the backends themselves (deserialized straight from the file), so a new
//! backend is one variant here and one dispatch line in `build.rs`.
//!
//! ```toml
//! [queue]
//! kind = "nats"                       # wal (default) | memory | nats | kafka
//! url = "nats://n1:4222,nats://n2:4222"
//! replicas = 3
//!
//! [sink]
//! kind = "http"                       # file (default) | stdout | blackhole | http | nats | kafka
//! url = "https://collector/ingest"
//! headers = { Authorization = "Bearer ..." }
//! ```

use serde::{Deserialize, Serialize};
#[cfg(feature = "kafka")]
use sluice_brokers::kafka::{KafkaOptions, KafkaSinkOptions};
#[cfg(feature = "nats")]
use sluice_brokers::nats::{NatsOptions, NatsSinkOptions};
use sluice_core::OptionError;
use sluice_pipeline::sinks::{FileSinkOptions, HttpSinkOptions};
use sluice_queue::{MemoryConfig, WalConfig};

/// `[queue]`: the queue between ingest and the processor.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum QueueConfig {
    /// The embedded write-ahead log under `<data_dir>/wal`: durable. The default.
    Wal(WalConfig),
    /// Bounded memory: fastest, loses its contents on a crash.
    Memory(MemoryConfig),
    /// NATS JetStream: shared by many ingest and processor processes.
    #[cfg(feature = "nats")]
    Nats(NatsOptions),
    /// Kafka: shared by many ingest and processor processes.
    #[cfg(feature = "kafka")]
    Kafka(KafkaOptions),
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig::Wal(WalConfig::default())
    }
}

impl QueueConfig {
    /// The `kind` as the config writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            QueueConfig::Wal(_) => "wal",
            QueueConfig::Memory(_) => "memory",
            #[cfg(feature = "nats")]
            QueueConfig::Nats(_) => "nats",
            #[cfg(feature = "kafka")]
            QueueConfig::Kafka(_) => "kafka",
        }
    }

    /// True for the queues that several processes share.
    pub fn is_broker(&self) -> bool {
        !matches!(self, QueueConfig::Wal(_) | QueueConfig::Memory(_))
    }

    pub fn validate(&self) -> Result<(), OptionError> {
        match self {
            QueueConfig::Wal(o) => o.validate(),
            QueueConfig::Memory(o) => o.validate(),
            #[cfg(feature = "nats")]
            QueueConfig::Nats(o) => o.validate(),
            #[cfg(feature = "kafka")]
            QueueConfig::Kafka(o) => o.validate(),
        }
    }
}

/// A backend without options (`stdout`, `blackhole`); any key is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// `[sink]` and `[dead_letter]`: where events are delivered.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    /// NDJSON envelopes under `dir`, one directory per stream. The default.
    File(FileSinkOptions),
    /// NDJSON envelopes on standard output.
    Stdout(NoOptions),
    /// Drops everything (benchmarks).
    Blackhole(NoOptions),
    /// POSTs NDJSON envelopes to `url`.
    Http(HttpSinkOptions),
    /// Publishes to NATS JetStream on `<subject_prefix>.<stream>`.
    #[cfg(feature = "nats")]
    Nats(NatsSinkOptions),
    /// Produces to a Kafka topic.
    #[cfg(feature = "kafka")]
    Kafka(KafkaSinkOptions),
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::File(FileSinkOptions::default())
    }
}

impl SinkConfig {
    /// The `kind` as the config writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::File(_) => "file",
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::Blackhole(_) => "blackhole",
            SinkConfig::Http(_) => "http",
            #[cfg(feature = "nats")]
            SinkConfig::Nats(_) => "nats",
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(_) => "kafka",
        }
    }

    pub fn validate(&self) -> Result<(), OptionError> {
        match self {
            SinkConfig::File(o) => o.validate(),
            SinkConfig::Stdout(_) | SinkConfig::Blackhole(_) => Ok(()),
            SinkConfig::Http(o) => o.validate(),
            #[cfg(feature = "nats")]
            SinkConfig::Nats(o) => o.validate(),
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(o) => o.validate(),
        }
    }
}

/// Every kind a section may name, with the cargo feature it needs (`None`: always
/// built), so that a kind compiled out is refused by name rather than as unknown.
pub const KINDS: [(&str, &str, Option<&str>); 9] = [
    ("queue", "wal", None),
    ("queue", "memory", None),
    ("queue", "nats", Some("nats")),
    ("queue", "kafka", Some("kafka")),
    ("sink", "file", None),
    ("sink", "stdout", None),
    ("sink", "blackhole", None),
    ("sink", "nats", Some("nats")),
    ("sink", "kafka", Some("kafka")),
];

/// The cargo feature that `kind` needs in a section of `class` (`queue` or `sink`)
/// when this build left it out.
pub fn missing_feature(class: &str, kind: &str) -> Option<&'static str> {
    let (_, _, feature) = KINDS.iter().find(|(c, k, _)| *c == class && *k == kind)?;
    let feature = (*feature)?;
    let built = match feature {
        "nats" => cfg!(feature = "nats"),
        "kafka" => cfg!(feature = "kafka"),
        _ => true,
    };
    (!built).then_some(feature)
}

/// The kind and address a `--queue` / `--sink` value names: `wal`, `memory`, ...
/// or a URL (`nats://HOST:PORT` sets the kind to `nats` and the URL;
/// `tls://` is NATS over TLS, `http(s)://` the HTTP sink).
pub fn kind_and_url(value: &str) -> (String, Option<String>) {
    let kind = match value.split_once("://") {
        Some(("nats" | "tls", _)) => "nats",
        Some(("kafka", _)) => "kafka",
        Some(("http" | "https", _)) => "http",
        _ => return (value.to_string(), None),
    };
    (kind.to_string(), Some(value.to_string()))
}
