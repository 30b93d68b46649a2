//! Kafka as a [`Queue`](sluice_core::Queue): every sluice stream goes to ONE topic, partitioned by the
//! event's key (or id); consumers are members of a consumer group named like the
//! sluice consumer.
//!
//! # Record encoding (a public contract)
//!
//! One event as one record (the sink always; the queue for a lone event):
//!
//! ```text
//! key        event.key if it has one, else event.id (UTF-8)
//! value      event.payload, verbatim
//! timestamp  event.received_at_unix_nanos / 1_000_000 (CreateTime, ms)
//! headers    sluice_proto::broker::headers: sluice-id, sluice-stream,
//!            sluice-received-at, [sluice-timestamp], [sluice-key], then the
//!            event's own headers, verbatim, in order
//! ```
//!
//! The queue writes the events of one append as **batch records**: the events of one
//! stream and one key (or all keyless events of one stream) together, cut at
//! `message.max.bytes` (see `record::batch_runs`), so a key's events stay in one
//! partition in order, and a broker pays per record, not per event:
//!
//! ```text
//! key        the events' key, else the first event's id
//! value      the events in sluice's record encoding (sluice_proto::record,
//!            versioned by its first byte)
//! timestamp  the first event's receive time (ms)
//! headers    sluice-batch: 1 (the layout version), sluice-stream: the stream;
//!            nothing else
//! ```
//!
//! The headers are the layout every broker queue and sink shares
//! ([`sluice_proto::broker`]); an event's own headers never use one of its reserved
//! names in any case, nor a broker's control names, nor a malformed name or value
//! (see [`validate_event`]); all header values are UTF-8. Decoding rebuilds an
//! identical [`Event`](sluice_core::Event), and refuses a record whose sluice headers
//! are missing or repeated or whose stream name, id or key is invalid: the consumer
//! hands such a record to the dead-letter sink as a quarantine event
//! ([`sluice_core::Delivery::unreadable`]), logged as an error, never to the main sink.
//!
//! # Producing
//!
//! One idempotent producer (`enable.idempotence`, `acks=all`, see
//! `Topic::producer_config`). [`Queue::append`](sluice_core::Queue::append) produces every record of the batch and
//! resolves once every delivery report is OK, within [`DELIVERY_TIMEOUT`] (10 s) or
//! with [`AppendError::Backend`](sluice_core::AppendError::Backend): a dead broker answers in bounded time. Kafka has no
//! atomic multi-record append outside transactions, so a failed append may have
//! stored part of the batch; the client retries it and sluice is at-least-once.
//!
//! - Single-event appends are coalesced (`crate::coalesce`): those arriving while
//!   earlier ones are being produced go out together as one append (batch records),
//!   and each hears the outcome of the group; a bad event is refused before it
//!   joins a group, so it fails only its own append.
//! - Bytes waiting for their reports are bounded by
//!   [`KafkaOptions::max_buffered_bytes`]; past it appends are refused with
//!   [`AppendError::Full`](sluice_core::AppendError::Full) (the batch handed back, nothing sent).
//! - An event larger than [`MAX_MESSAGE_BYTES`] fails the append with
//!   [`AppendError::TooLarge`](sluice_core::AppendError::TooLarge).
//! - A batch with an event that [`validate_event`] refuses is refused, before
//!   anything is sent, with [`AppendError::Backend`](sluice_core::AppendError::Backend) (no variant fits better): ingest
//!   checks the same rules first and answers 400 itself.
//! - Deduplication: the idempotent producer's broker-side dedupe keys on librdkafka's
//!   producer id and per-partition sequence numbers, which it assigns to each record
//!   it sends; it only drops librdkafka's own resends of a record and never looks at
//!   the event id or key. So no producer can suppress another's event; a producer's
//!   retry of a request is a new record (at-least-once), and consumers dedupe by
//!   `sluice-id`.
//! - After a failed append, if the brokers answer, the topic is recreated if it is
//!   gone and the producer is replaced (at most every 5 s): a broker that lost its
//!   state (restarted empty) otherwise leaves an idempotent producer failing for
//!   good with `UNKNOWN_PRODUCER_ID` or unknown partitions. The topic is created by
//!   sluice only (`allow.auto.create.topics=false`), with the configured partitions.
//!
//! # Consuming
//!
//! See the `consumer` module: manual commits of each partition's contiguous done
//! prefix (`enable.auto.commit=false`, `enable.auto.offset.store=false`), a
//! synchronous commit of revoked partitions on rebalance, at-least-once.
//!
//! Beside each consumer a thread watches the group (the `watch` module): it measures
//! the lag, and leaves and rejoins the group when another member's partitions have a
//! backlog that has not moved for three session timeouts (a broker that does not
//! rebalance after a member died).
//!
//! # Health
//!
//! The producer reports its broker connections every second (librdkafka
//! statistics); while none is up, [`Queue::health`](sluice_core::Queue::health) is `Err`, so ingest answers 503
//! at once and `/readyz` says why.
//!
//! # Stats
//!
//! [`Queue::stats`](sluice_core::Queue::stats) reports `depth_events` = the consumer group's lag (committed
//! offsets to high watermarks, summed over partitions, refreshed every session
//! timeout; 0 on a node without a consumer), `depth_bytes` = bytes produced but not
//! yet acknowledged by the broker, `capacity_bytes` = `max_buffered_bytes`.

mod consumer;
mod queue;
mod record;
mod sink;
mod topic;
mod watch;

pub use queue::KafkaQueue;
pub use record::{
    batch_runs, decode_record, decode_records, encode_batch_record, encode_record, record_key,
    validate_event, DecodeError, EncodeError, HEADER_ID, HEADER_KEY,
};
pub use sink::KafkaSink;

use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};
use serde::{Deserialize, Serialize};
use sluice_core::units::{ByteSize, HumanDuration};
use sluice_core::{OptionError, Properties};

/// How long the acknowledgement of an append (or a sink delivery) may take: the
/// producer's `message.timeout.ms`, and a deadline of its own on top. Past it the
/// append fails with [`AppendError::Backend`](sluice_core::AppendError::Backend).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest record the producer sends (`message.max.bytes`, librdkafka's default).
pub const MAX_MESSAGE_BYTES: usize = 1_000_000;

/// How long [`KafkaQueue::connect`] waits for the brokers' metadata.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a producer refused by a full buffer is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The least time between two producer repairs (see the module docs).
const REPAIR_INTERVAL: Duration = Duration::from_secs(5);

/// How often the queue's producer reports its broker connections (see
/// [`Queue::health`](sluice_core::Queue::health)).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// How long [`Queue::close`] waits for dropped consumers to leave their group, and
/// then for outstanding delivery reports.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What setting up a Kafka client, or the topic, can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is out of range.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// librdkafka refused the client's configuration (an unknown or invalid property).
    #[error("creating a kafka {what} for {brokers}: {message}")]
    Client {
        what: &'static str,
        brokers: String,
        message: String,
    },
    /// No broker answered in time.
    #[error("kafka brokers {brokers} did not answer within {timeout:?}: {message}")]
    Unreachable {
        brokers: String,
        timeout: Duration,
        message: String,
    },
    /// The topic could not be created.
    #[error("creating kafka topic {topic}: {message}")]
    Topic { topic: String, message: String },
}

/// `[queue]` with `kind = "kafka"`: the topic, the consumer group's settings and
/// the clients' librdkafka properties.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaOptions {
    /// Bootstrap brokers, `kafka://HOST:PORT[,HOST:PORT]` (the scheme is optional).
    /// Default `kafka://localhost:9092`.
    pub url: String,
    /// The one topic holding every sluice stream. Default `sluice-events`.
    pub topic: String,
    /// Partitions of the topic when sluice creates it; bounds how many processors
    /// share the work. Default 12.
    pub partitions: i32,
    /// Replication factor of the topic when sluice creates it. Default 1.
    pub replication: i32,
    /// Bytes produced but not yet acknowledged, past which appends are refused with
    /// 429; bounds the producer's memory (the backlog itself is in Kafka). Default
    /// `64 MiB`.
    pub max_buffered_bytes: ByteSize,
    /// Consumer-group session timeout: a processor silent this long loses its
    /// partitions to the others. Default `10s`.
    pub session_timeout: HumanDuration,
    /// librdkafka properties for every client sluice makes (producer, consumer,
    /// admin): `security.protocol`, `sasl.*`, `ssl.*`, ... Secret-looking values are
    /// redacted by `sluice config check`. Default none.
    pub client: Properties,
    /// librdkafka properties for the producer, applied last (`linger.ms`,
    /// `compression.type`, ...). Default none.
    pub producer: Properties,
    /// librdkafka properties for the consumer, applied last (`fetch.max.bytes`,
    /// `debug`, ...). Default none.
    pub consumer: Properties,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            url: DEFAULT_URL.into(),
            topic: "sluice-events".into(),
            partitions: 12,
            replication: 1,
            max_buffered_bytes: ByteSize(64 << 20),
            session_timeout: HumanDuration(Duration::from_secs(10)),
            client: Properties::default(),
            producer: Properties::default(),
            consumer: Properties::default(),
        }
    }
}

/// Where a Kafka client goes when no URL is given.
pub const DEFAULT_URL: &str = "kafka://localhost:9092";

impl KafkaOptions {
    /// Checks every option before anything connects (librdkafka checks its
    /// properties when a client is made).
    pub fn validate(&self) -> Result<(), OptionError> {
        self.topic().validate()?;
        if self.max_buffered_bytes < ByteSize(1 << 20) {
            return Err(OptionError::new(
                "max_buffered_bytes",
                self.max_buffered_bytes,
                "must be at least 1 MiB",
            ));
        }
        if self.session_timeout.0 < Duration::from_millis(10) {
            return Err(OptionError::new(
                "session_timeout",
                self.session_timeout,
                "must be at least 10ms",
            ));
        }
        Ok(())
    }

    fn topic(&self) -> Topic<'_> {
        Topic {
            url: &self.url,
            client: &self.client,
            name: &self.topic,
            partitions: self.partitions,
            replication: self.replication,
        }
    }
}

/// `[sink]` (or `[dead_letter]`) with `kind = "kafka"`: the topic the sink produces
/// to and its clients' librdkafka properties.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkOptions {
    /// Bootstrap brokers, as the queue's `url`. Default `kafka://localhost:9092`.
    pub url: String,
    /// The topic. Default `sluice-out`.
    pub topic: String,
    /// Partitions of the topic when sluice creates it. Default 12.
    pub partitions: i32,
    /// Replication factor of the topic when sluice creates it. Default 1.
    pub replication: i32,
    /// librdkafka properties for every client of the sink (producer, admin):
    /// `security.protocol`, `sasl.*`, `ssl.*`, ... Default none.
    pub client: Properties,
    /// librdkafka properties for the producer, applied last (`message.max.bytes`,
    /// `compression.type`, ...). Default none.
    pub producer: Properties,
}

impl Default for KafkaSinkOptions {
    fn default() -> Self {
        KafkaSinkOptions {
            url: DEFAULT_URL.into(),
            topic: "sluice-out".into(),
            partitions: 12,
            replication: 1,
            client: Properties::default(),
            producer: Properties::default(),
        }
    }
}

impl KafkaSinkOptions {
    /// Checks every option before anything connects.
    pub fn validate(&self) -> Result<(), OptionError> {
        self.topic().validate()
    }

    fn topic(&self) -> Topic<'_> {
        Topic {
            url: &self.url,
            client: &self.client,
            name: &self.topic,
            partitions: self.partitions,
            replication: self.replication,
        }
    }
}

/// A topic and how to reach its brokers: what the queue and the sink share.
#[derive(Clone, Copy)]
struct Topic<'a> {
    url: &'a str,
    client: &'a Properties,
    name: &'a str,
    partitions: i32,
    replication: i32,
}

impl Topic<'_> {
    fn validate(&self) -> Result<(), OptionError> {
        if bootstrap_servers(self.url).is_empty() {
            return Err(OptionError::new(
                "url",
                format!("{:?}", self.url),
                format!("needs at least one broker, e.g. {DEFAULT_URL}"),
            ));
        }
        // Kafka's own rule for topic names.
        let legal = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if self.name.is_empty() || self.name.len() > 249 || !self.name.chars().all(legal) {
            return Err(OptionError::new(
                "topic",
                format!("{:?}", self.name),
                "must be 1 to 249 of a-z, A-Z, 0-9, '.', '_', '-'",
            ));
        }
        for (key, n) in [
            ("partitions", self.partitions),
            ("replication", self.replication),
        ] {
            if n < 1 {
                return Err(OptionError::new(key, n, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The bootstrap list librdkafka takes.
    fn brokers(&self) -> String {
        bootstrap_servers(self.url)
    }

    /// `bootstrap.servers` and the `client` properties: the start of every client's
    /// configuration.
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers())
            .set_log_level(log_level());
        for (k, v) in self.client.iter() {
            c.set(k, v);
        }
        c
    }

    /// The settings of the idempotent producer shared by the Kafka queue and the
    /// Kafka sink: the client properties, `enable.idempotence=true`, `acks=all`,
    /// `message.timeout.ms` = [`DELIVERY_TIMEOUT`], `message.max.bytes` =
    /// [`MAX_MESSAGE_BYTES`], `linger.ms=0`, then the caller's `extra`, then
    /// `producer` (so a user's property wins).
    ///
    /// `linger.ms=0`: every append waits for its delivery report, so librdkafka's
    /// default linger (5 ms) was most of a single event's ack time and capped 64
    /// connections at ~10k req/s. Without it records still travel together: those
    /// queued while earlier produce requests are in flight go out in the next one.
    fn producer_config(&self, producer: &Properties, extra: &[(&str, String)]) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string());
        for (k, v) in extra {
            c.set(*k, v);
        }
        for (k, v) in producer.iter() {
            c.set(k, v);
        }
        c
    }

    fn client_error(&self, what: &'static str, e: impl std::fmt::Display) -> Error {
        Error::Client {
            what,
            brokers: self.brokers(),
            message: e.to_string(),
        }
    }
}

/// `kafka://h:p,h:p` (or `h:p,kafka://h:p`) as librdkafka's `h:p,h:p`.
pub fn bootstrap_servers(url: &str) -> String {
    url.split(',')
        .map(|a| a.trim().trim_start_matches("kafka://"))
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// A client context that sends librdkafka's log lines and errors to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(None, &error, reason);
    }
}

fn client_error(group: Option<&str>, error: &KafkaError, reason: &str) {
    let transport = matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
    );
    if transport {
        tracing::debug!(group, error = %error, reason, "kafka broker connection failed");
    } else {
        tracing::warn!(group, error = %error, reason, "kafka client error");
    }
}

/// The most verbose librdkafka level that [`log`] would not throw away. librdkafka
/// drops lines above the level a client is created with, and rdkafka's default
/// follows the `log` crate, which sluice does not use.
fn log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(tracing::Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(fac, message, "librdkafka"),
        RDKafkaLogLevel::Warning => tracing::warn!(fac, message, "librdkafka"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(fac, message, "librdkafka")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(fac, message, "librdkafka"),
    }
}
