//! Kafka as a [`Queue`]: every sluice stream goes to ONE topic, partitioned by the
//! event's key (or id); consumers are members of a consumer group named like the
//! sluice consumer.
//!
//! # Record encoding (a public contract; the Kafka sink writes the same)
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
//! [`producer_config`]). [`Queue::append`] produces every event of the batch and
//! resolves once every delivery report is OK, within [`DELIVERY_TIMEOUT`] (10 s) or
//! with [`AppendError::Backend`]: a dead broker answers in bounded time. Kafka has no
//! atomic multi-record append outside transactions, so a failed append may have
//! stored part of the batch; the client retries it and sluice is at-least-once.
//!
//! - Bytes waiting for their reports are bounded by
//!   [`KafkaOptions::max_buffered_bytes`]; past it appends are refused with
//!   [`AppendError::Full`] (the batch handed back, nothing sent).
//! - An event larger than [`MAX_MESSAGE_BYTES`] fails the append with
//!   [`AppendError::TooLarge`].
//! - A batch with an event that [`validate_event`] refuses is refused, before
//!   anything is sent, with [`AppendError::Backend`] (no variant fits better): ingest
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
//! statistics); while none is up, [`Queue::health`] is `Err`, so ingest answers 503
//! at once and `/readyz` says why.
//!
//! # Stats
//!
//! [`Queue::stats`] reports `depth_events` = the consumer group's lag (committed
//! offsets to high watermarks, summed over partitions, refreshed every session
//! timeout; 0 on a node without a consumer), `depth_bytes` = bytes produced but not
//! yet acknowledged by the broker, `capacity_bytes` = `max_buffered_bytes`.

mod consumer;
mod record;
mod topic;
mod watch;

pub use record::{
    decode_record, encode_record, record_key, validate_event, DecodeError, EncodeError, HEADER_ID,
    HEADER_KEY,
};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, ClientContext};
use sluice_core::{AppendError, Batch, BoxFuture, ConsumeError, Consumer, Queue, QueueStats};

use consumer::KafkaConsumer;

/// How long the acknowledgement of an append (or a sink delivery) may take: the
/// producer's `message.timeout.ms`, and a deadline of its own on top. Past it the
/// append fails with [`AppendError::Backend`].
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
/// [`Queue::health`]).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// How long [`Queue::close`] waits for dropped consumers to leave their group, and
/// then for outstanding delivery reports.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the Kafka queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOptions {
    /// Bootstrap brokers, `host:port[,host:port]`. Default `localhost:9092`.
    pub brokers: String,
    /// The one topic holding every sluice stream. Default `sluice-events`.
    pub topic: String,
    /// Partitions of the topic when sluice creates it; bounds how many consumers
    /// share the work. Default 12.
    pub partitions: i32,
    /// Replication factor of the topic when sluice creates it. Default 1.
    pub replication: i32,
    /// Bytes produced but not yet acknowledged, past which appends are refused with
    /// 429; bounds the producer's memory. Default 64 MiB.
    pub max_buffered_bytes: usize,
    /// Consumer group session timeout: how long a dead member keeps its partitions.
    /// Default 10 s.
    pub session_timeout: Duration,
    /// Extra librdkafka properties for every client sluice makes (producer,
    /// consumer, admin), e.g. `security.protocol`, `sasl.*`, `ssl.*`. Default none.
    pub client: Vec<(String, String)>,
    /// Extra librdkafka properties for the producer, applied last (e.g.
    /// `linger.ms`, `compression.type`). Default none.
    pub producer: Vec<(String, String)>,
    /// Extra librdkafka properties for the consumer, applied last (e.g.
    /// `fetch.max.bytes`, `debug`). Default none.
    pub consumer: Vec<(String, String)>,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            brokers: "localhost:9092".into(),
            topic: "sluice-events".into(),
            partitions: 12,
            replication: 1,
            max_buffered_bytes: 64 << 20,
            session_timeout: Duration::from_secs(10),
            client: Vec::new(),
            producer: Vec::new(),
            consumer: Vec::new(),
        }
    }
}

/// Creates `opts.topic` with `opts.partitions` and `opts.replication` unless it
/// exists (the Kafka sink's topic; the queue makes its own on connect).
pub async fn ensure_topic(opts: &KafkaOptions) -> Result<(), String> {
    topic::create(opts, CONNECT_TIMEOUT).await
}

/// `bootstrap.servers` and the properties of `opts.client`: the start of every
/// client's configuration.
fn client_config(opts: &KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &opts.brokers)
        .set_log_level(log_level());
    for (k, v) in &opts.client {
        c.set(k, v);
    }
    c
}

/// The settings of the idempotent producer shared by the Kafka queue and the Kafka
/// sink: `opts.client`, `enable.idempotence=true`, `acks=all`, `message.timeout.ms`
/// = [`DELIVERY_TIMEOUT`], `message.max.bytes` = [`MAX_MESSAGE_BYTES`], then the
/// caller's `extra`, then `opts.producer` (so a user's property wins).
pub fn producer_config(opts: &KafkaOptions, extra: &[(&str, String)]) -> ClientConfig {
    let mut c = client_config(opts);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string());
    for (k, v) in extra {
        c.set(*k, v);
    }
    for (k, v) in &opts.producer {
        c.set(k, v);
    }
    c
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

/// The queue producer's context: logs like [`TracingContext`], and tells from
/// librdkafka's statistics (every [`STATS_INTERVAL`]) whether any broker
/// connection is up, for [`Queue::health`].
struct QueueContext {
    reachable: Arc<AtomicBool>,
}

impl ClientContext for QueueContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(None, &error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics
            .brokers
            .values()
            .any(|b| b.state == "UP" && b.source != "internal");
        if self.reachable.swap(up, Ordering::AcqRel) != up {
            tracing::info!(reachable = up, "kafka brokers reachable: {up}");
        }
    }
}

/// Logs an error librdkafka reports on its own. Lost connections are repeated many
/// times a second while a broker is away and show up as failed calls anyway, so they
/// are debug lines.
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

/// The Kafka queue. Cheap to clone.
#[derive(Clone)]
pub struct KafkaQueue {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced by [`Inner::repair`]; appends hold the one they started with.
    producer: RwLock<Arc<FutureProducer<QueueContext>>>,
    producer_config: ClientConfig,
    opts: KafkaOptions,
    /// Bytes of appends waiting for their delivery reports.
    buffered: AtomicU64,
    /// The consumer group's lag, as the group watch last measured it.
    lag: Arc<AtomicU64>,
    /// Whether the producer has a broker connection up (see [`QueueContext`]).
    reachable: Arc<AtomicBool>,
    /// Dropped consumers still leaving their group.
    closing: consumer::Closing,
    closed: AtomicBool,
    /// Set while a repair runs; when the last one started.
    repairing: AtomicBool,
    last_repair: Mutex<Option<Instant>>,
}

impl KafkaQueue {
    /// Connects, checks the broker answers (metadata within 5 s), creates the topic if
    /// missing.
    pub async fn connect(opts: KafkaOptions) -> Result<KafkaQueue, String> {
        if opts.partitions < 1 || opts.replication < 1 {
            return Err(format!(
                "kafka partitions and replication must be at least 1; got {} and {}",
                opts.partitions, opts.replication
            ));
        }
        if opts.session_timeout < Duration::from_millis(10) {
            return Err(format!(
                "kafka session_timeout must be at least 10ms; got {:?}",
                opts.session_timeout
            ));
        }
        // librdkafka's own bound is left above ours, so ours refuses first.
        let kbytes = (opts.max_buffered_bytes / 1024 * 2).clamp(1024, i32::MAX as usize);
        let config = producer_config(
            &opts,
            &[
                ("queue.buffering.max.kbytes", kbytes.to_string()),
                // sluice creates its topic itself, with the configured partitions.
                ("allow.auto.create.topics", "false".into()),
                (
                    "statistics.interval.ms",
                    STATS_INTERVAL.as_millis().to_string(),
                ),
            ],
        );
        let reachable = Arc::new(AtomicBool::new(true));
        let producer: FutureProducer<QueueContext> = config
            .create_with_context(QueueContext {
                reachable: reachable.clone(),
            })
            .map_err(|e| format!("creating a kafka producer for {}: {e}", opts.brokers))?;
        let producer = Arc::new(producer);
        let exists = topic::exists(producer.clone(), &opts.topic, CONNECT_TIMEOUT)
            .await
            .map_err(|e| format!("{e} (brokers {})", opts.brokers))?;
        if !exists {
            topic::create(&opts, CONNECT_TIMEOUT).await?;
        }
        Ok(KafkaQueue {
            inner: Arc::new(Inner {
                producer: RwLock::new(producer),
                producer_config: config,
                opts,
                buffered: AtomicU64::new(0),
                lag: Arc::new(AtomicU64::new(0)),
                reachable,
                closing: Default::default(),
                closed: AtomicBool::new(false),
                repairing: AtomicBool::new(false),
                last_repair: Mutex::new(None),
            }),
        })
    }

    /// The settings the queue was connected with.
    pub fn options(&self) -> &KafkaOptions {
        &self.inner.opts
    }

    fn reserve(&self, bytes: u64) -> Option<Reservation<'_>> {
        let max = self.inner.opts.max_buffered_bytes as u64;
        let buffered = &self.inner.buffered;
        if buffered.fetch_add(bytes, Ordering::AcqRel) + bytes > max {
            buffered.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        }
        Some(Reservation {
            counter: buffered,
            bytes,
        })
    }

    /// Starts a repair in the background unless one runs or ran recently.
    fn repair_soon(&self) {
        let inner = &self.inner;
        {
            let last = inner
                .last_repair
                .lock()
                .expect("kafka repair lock poisoned");
            if last.is_some_and(|t| t.elapsed() < REPAIR_INTERVAL) {
                return;
            }
        }
        if inner.repairing.swap(true, Ordering::AcqRel) {
            return;
        }
        *inner
            .last_repair
            .lock()
            .expect("kafka repair lock poisoned") = Some(Instant::now());
        let inner = inner.clone();
        tokio::spawn(async move {
            inner.repair().await;
            inner.repairing.store(false, Ordering::Release);
        });
    }
}

impl Inner {
    fn producer(&self) -> Arc<FutureProducer<QueueContext>> {
        self.producer
            .read()
            .expect("kafka producer lock poisoned")
            .clone()
    }

    /// After failed appends: when the brokers answer, recreates the topic if it is
    /// gone and replaces the producer. A broker that lost its state (restarted
    /// empty, or the topic deleted) otherwise leaves the idempotent producer failing
    /// for good (`UNKNOWN_PRODUCER_ID`, unknown partitions). Brokers that do not
    /// answer are left to librdkafka, which reconnects by itself.
    async fn repair(&self) {
        let exists = match topic::exists(self.producer(), &self.opts.topic, CONNECT_TIMEOUT).await {
            Ok(exists) => exists,
            Err(e) => {
                tracing::debug!(error = %e, "kafka brokers away; not repairing");
                return;
            }
        };
        if !exists {
            if let Err(e) = topic::create(&self.opts, CONNECT_TIMEOUT).await {
                tracing::warn!(error = %e, "recreating the kafka topic failed");
                return;
            }
        }
        let fresh: FutureProducer<QueueContext> =
            match self.producer_config.create_with_context(QueueContext {
                reachable: self.reachable.clone(),
            }) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "creating a new kafka producer failed");
                    return;
                }
            };
        let old = std::mem::replace(
            &mut *self.producer.write().expect("kafka producer lock poisoned"),
            Arc::new(fresh),
        );
        tracing::warn!(
            topic_recreated = !exists,
            "replaced the kafka producer after failed appends"
        );
        // Its drop purges what it still holds (those appends fail) and joins its
        // thread: not on the runtime.
        let _ = std::thread::Builder::new()
            .name("kafka-producer-drop".into())
            .spawn(move || drop(old));
    }
}

impl KafkaQueue {
    /// Produces every event of `batch`; resolves once each is acknowledged.
    async fn produce(&self, batch: Batch) -> Result<(), AppendError> {
        // librdkafka's own message timeout may fire late; this one does not.
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(AppendError::ShuttingDown);
        }
        let bytes = batch.size_hint();
        if bytes > inner.opts.max_buffered_bytes {
            return Err(AppendError::TooLarge {
                bytes,
                limit: inner.opts.max_buffered_bytes,
            });
        }
        // Encode everything first: a bad event refuses the batch before any is sent.
        let records = batch
            .events
            .iter()
            .map(|e| encode_record(&inner.opts.topic, e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AppendError::Backend {
                message: e.to_string(),
            })?;
        let Some(_reservation) = self.reserve(bytes as u64) else {
            return Err(AppendError::Full {
                batch: Box::new(batch),
                reason: "kafka producer buffer at max_buffered_bytes".into(),
                retry_after: RETRY_AFTER,
            });
        };
        let producer = inner.producer();
        let mut reports = Vec::with_capacity(records.len());
        let mut refused = None;
        for (record, event) in records.into_iter().zip(&batch.events) {
            match producer.send_result(record) {
                Ok(report) => reports.push((report, event.size_hint())),
                Err((e, _)) => {
                    refused = Some((e, event.size_hint()));
                    break;
                }
            }
        }
        if let Some((e, size)) = refused {
            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                // Part of the batch may be on its way already: at-least-once.
                return Err(AppendError::Full {
                    batch: Box::new(batch),
                    reason: "kafka producer queue is full".into(),
                    retry_after: RETRY_AFTER,
                });
            }
            return Err(self.kafka_error(&e, size));
        }
        for (report, size) in reports {
            match tokio::time::timeout_at(deadline, report).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err((e, _)))) => return Err(self.kafka_error(&e, size)),
                Ok(Err(_canceled)) => {
                    return Err(self.failed("kafka producer dropped a delivery report".into()))
                }
                Err(_elapsed) => {
                    return Err(self.failed(format!(
                        "kafka did not acknowledge the batch within {DELIVERY_TIMEOUT:?}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// A produce error as the append's error. `event_bytes` is the failed event's
    /// size.
    fn kafka_error(&self, e: &KafkaError, event_bytes: usize) -> AppendError {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => AppendError::TooLarge {
                bytes: event_bytes,
                limit: MAX_MESSAGE_BYTES,
            },
            _ => self.failed(format!("kafka: {e}")),
        }
    }

    /// A failure of the brokers or the producer: the append fails, and the producer
    /// is checked (see `Inner::repair`).
    fn failed(&self, message: String) -> AppendError {
        self.repair_soon();
        AppendError::Backend { message }
    }
}

/// Bytes counted in [`Inner::buffered`] until the append is over.
struct Reservation<'a> {
    counter: &'a AtomicU64,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Queue for KafkaQueue {
    fn append(&self, batch: Batch) -> BoxFuture<'_, Result<(), AppendError>> {
        Box::pin(self.produce(batch))
    }

    fn consumer(&self, name: &str) -> Result<Box<dyn Consumer>, ConsumeError> {
        let opts = &self.inner.opts;
        let session_ms = opts.session_timeout.as_millis().max(1);
        let mut config = client_config(opts);
        config
            .set("group.id", name)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (session_ms / 3).clamp(1, 3000).to_string(),
            );
        for (k, v) in &opts.consumer {
            config.set(k, v);
        }
        let watch_interval = opts
            .session_timeout
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        let consumer = KafkaConsumer::new(
            &config,
            &opts.topic,
            name,
            watch_interval,
            self.inner.lag.clone(),
            self.inner.closing.clone(),
        )
        .map_err(|e| ConsumeError::Backend {
            message: format!("creating kafka consumer group {name:?}: {e}"),
        })?;
        Ok(Box::new(consumer))
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            depth_events: self.inner.lag.load(Ordering::Relaxed),
            depth_bytes: self.inner.buffered.load(Ordering::Relaxed),
            capacity_bytes: self.inner.opts.max_buffered_bytes as u64,
        }
    }

    fn health(&self) -> Result<(), String> {
        if self.inner.reachable.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(format!(
                "no Kafka broker of {} is reachable",
                self.inner.opts.brokers
            ))
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.inner.closed.store(true, Ordering::Release);
        let inner = self.inner.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
            consumer::wait_closed(&inner.closing, deadline).await;
            tokio::task::spawn_blocking(move || inner.producer().flush(CLOSE_TIMEOUT))
                .await
                .map_err(|e| ConsumeError::Backend {
                    message: e.to_string(),
                })?
                .map_err(|e| ConsumeError::Backend {
                    message: format!("flushing the kafka producer: {e}"),
                })
        })
    }
}
