//! [`KafkaQueue`]: the producer side (appends, the byte bound, repairs) and the
//! consumers it hands out; see the module docs of [`super`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, ClientContext};
use sluice_core::{
    AppendError, Batch, BoxFuture, Committed, ConsumeError, Consumer, Event, Queue, QueueStats,
    Unhealthy,
};

use super::consumer::{self, KafkaConsumer};
use super::record::{batch_runs, encode_batch_record};
use super::{
    client_error, encode_record, log, topic, validate_event, EncodeError, Error, KafkaOptions,
    CLOSE_TIMEOUT, CONNECT_TIMEOUT, DELIVERY_TIMEOUT, MAX_MESSAGE_BYTES, REPAIR_INTERVAL,
    RETRY_AFTER, STATS_INTERVAL,
};
use crate::coalesce::{share, Coalescer};

/// Room in a record under `message.max.bytes` for what is not the record encoding
/// (key, headers, librdkafka's record overhead).
const BATCH_HEADROOM: usize = 1024;

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

#[derive(Clone)]
pub struct KafkaQueue {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced by [`Inner::repair`]; appends hold the one they started with.
    producer: RwLock<Arc<FutureProducer<QueueContext>>>,
    producer_config: ClientConfig,
    opts: KafkaOptions,
    /// The most event bytes in one batch record: the producer's
    /// `message.max.bytes` less room for the record's key and headers.
    batch_limit: usize,
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
    /// Single-event appends waiting to be produced together.
    coalescer: Arc<Coalescer>,
    /// The task producing them; it holds the queue weakly and is stopped with it.
    coalescing: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.coalescing.get() {
            task.abort();
        }
    }
}

impl KafkaQueue {
    /// Connects, checks the broker answers (metadata within 5 s), creates the topic if
    /// missing.
    pub async fn connect(opts: KafkaOptions) -> Result<KafkaQueue, Error> {
        opts.validate()?;
        let topic = opts.topic();
        // librdkafka's own bound is left above ours, so ours refuses first.
        let kbytes = (opts.max_buffered_bytes.0 / 1024 * 2).clamp(1024, i32::MAX as u64);
        let config = topic.producer_config(
            &opts.producer,
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
            .map_err(|e| topic.client_error("producer", e))?;
        let producer = Arc::new(producer);
        if !topic::exists(producer.clone(), &topic, CONNECT_TIMEOUT).await? {
            topic::create(&topic, CONNECT_TIMEOUT).await?;
        }
        let max_message = opts
            .producer
            .iter()
            .find(|(k, _)| *k == "message.max.bytes")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(MAX_MESSAGE_BYTES);
        let queue = KafkaQueue {
            inner: Arc::new(Inner {
                producer: RwLock::new(producer),
                producer_config: config,
                batch_limit: max_message.saturating_sub(BATCH_HEADROOM).max(1),
                opts,
                buffered: AtomicU64::new(0),
                lag: Arc::new(AtomicU64::new(0)),
                reachable,
                closing: Default::default(),
                closed: AtomicBool::new(false),
                repairing: AtomicBool::new(false),
                last_repair: Mutex::new(None),
                coalescer: Arc::default(),
                coalescing: OnceLock::new(),
            }),
        };
        Ok(queue.start_coalescing())
    }

    /// Starts the group commit of single-event appends (see [`crate::coalesce`]): a
    /// group is produced as one append, so its events of one stream and key are one
    /// batch record; every append of the group hears the group's outcome.
    fn start_coalescing(self) -> KafkaQueue {
        // The task must not keep the queue alive: it holds the coalescer and a weak
        // reference.
        let weak = Arc::downgrade(&self.inner);
        let coalescer = self.inner.coalescer.clone();
        let task = tokio::spawn(async move {
            coalescer
                .run(|events| {
                    let weak = weak.clone();
                    async move {
                        match weak.upgrade() {
                            Some(inner) => KafkaQueue { inner }.produce_group(events).await,
                            None => events
                                .iter()
                                .map(|_| Err(AppendError::ShuttingDown))
                                .collect(),
                        }
                    }
                })
                .await
        });
        let _ = self.inner.coalescing.set(task.abort_handle());
        self
    }

    /// The settings the queue was connected with.
    pub fn options(&self) -> &KafkaOptions {
        &self.inner.opts
    }

    fn reserve(&self, bytes: u64) -> Option<Reservation<'_>> {
        let max = self.inner.opts.max_buffered_bytes.0;
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
        let topic = self.opts.topic();
        let exists = match topic::exists(self.producer(), &topic, CONNECT_TIMEOUT).await {
            Ok(exists) => exists,
            Err(e) => {
                tracing::debug!(error = %e, "kafka brokers away; not repairing");
                return;
            }
        };
        if !exists {
            if let Err(e) = topic::create(&topic, CONNECT_TIMEOUT).await {
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
        let limit = inner.opts.max_buffered_bytes.0 as usize;
        if bytes > limit {
            return Err(AppendError::TooLarge { bytes, limit });
        }
        // Encode everything first: a bad event refuses the batch before any is sent.
        let refuse = |e: EncodeError| AppendError::Backend {
            message: e.to_string(),
        };
        let topic = &inner.opts.topic;
        let runs = batch_runs(&batch.events, inner.batch_limit);
        let mut payloads: Vec<Vec<u8>> = runs.iter().map(|_| Vec::new()).collect();
        let mut records = Vec::with_capacity(runs.len());
        for (run, payload) in runs.iter().zip(payloads.iter_mut()) {
            let size = run.iter().map(|e| e.size_hint()).sum::<usize>();
            let record = match run[..] {
                [one] => encode_record(topic, one).map_err(refuse)?,
                _ => {
                    for e in run {
                        validate_event(e).map_err(refuse)?;
                    }
                    encode_batch_record(topic, run, payload)
                }
            };
            records.push((record, size));
        }
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
        for (record, size) in records {
            match producer.send_result(record) {
                Ok(report) => reports.push((report, size)),
                Err((e, _)) => {
                    refused = Some((e, size));
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

impl KafkaQueue {
    /// Produces a coalesced group, in appends of at most a quarter of
    /// `max_buffered_bytes` (so that a large group is never refused as too large for
    /// the buffer); each event's outcome is its append's.
    async fn produce_group(&self, events: Vec<Event>) -> Vec<Result<(), AppendError>> {
        let limit = (self.inner.opts.max_buffered_bytes.0 / 4).max(1) as usize;
        let mut results = Vec::with_capacity(events.len());
        let mut rest = events.into_iter().peekable();
        while rest.peek().is_some() {
            let mut size = 0;
            let part: Vec<Event> = std::iter::from_fn(|| {
                let next = rest.next_if(|e| size == 0 || size + e.size_hint() <= limit)?;
                size += next.size_hint();
                Some(next)
            })
            .collect();
            let n = part.len();
            let r = self.produce(Batch::new(part)).await;
            results.extend((0..n).map(|_| share(&r)));
        }
        results
    }

    /// A lone event that fits a batch record goes through the coalescer (checked
    /// first, so it cannot fail its group); anything else is produced as it is.
    async fn append_one_or_many(&self, batch: Batch) -> Result<(), AppendError> {
        let lone = match &batch.events[..] {
            [e] if sluice_proto::record::event_len(e) + 5 <= self.inner.batch_limit => e,
            _ => return self.produce(batch).await,
        };
        validate_event(lone).map_err(|e| AppendError::Backend {
            message: e.to_string(),
        })?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(AppendError::ShuttingDown);
        }
        // One deadline from here, however long the group before this one takes.
        let appended =
            tokio::time::timeout(DELIVERY_TIMEOUT, self.inner.coalescer.append(lone.clone()));
        let Ok(appended) = appended.await else {
            return Err(self.failed(format!(
                "kafka did not acknowledge the event within {DELIVERY_TIMEOUT:?}"
            )));
        };
        match appended {
            Err(AppendError::Full {
                reason,
                retry_after,
                ..
            }) => Err(AppendError::Full {
                batch: Box::new(batch),
                reason,
                retry_after,
            }),
            r => r,
        }
    }
}

impl Queue for KafkaQueue {
    fn append(&self, batch: Batch) -> BoxFuture<'_, Result<Committed, AppendError>> {
        Box::pin(async move {
            self.append_one_or_many(batch)
                .await
                .map(|()| Committed::default())
        })
    }

    fn consumer(&self, name: &str) -> Result<Box<dyn Consumer>, ConsumeError> {
        let opts = &self.inner.opts;
        let session_ms = opts.session_timeout.0.as_millis().max(1);
        let mut config = opts.topic().client_config();
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
        for (k, v) in opts.consumer.iter() {
            config.set(k, v);
        }
        let watch_interval = opts
            .session_timeout
            .0
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
            capacity_bytes: self.inner.opts.max_buffered_bytes.0,
        }
    }

    fn health(&self) -> Result<(), Unhealthy> {
        if self.inner.reachable.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Unhealthy::Unreachable(format!(
                "no Kafka broker of {} is reachable",
                self.inner.opts.topic().brokers()
            )))
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
