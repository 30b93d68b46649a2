//! [`NatsQueue`]: NATS JetStream as the queue, shared by any number of ingest and
//! processor processes.
//!
//! ```text
//!  ingest ──publish, wait for the JetStream ack──▶ stream SLUICE
//!                                                  subjects sluice.events.<stream>
//!                                                  retention work-queue, discard new
//!  processor ◀──pull (durable consumer "processor", explicit acks)──┘
//! ```
//!
//! - **Layout.** One JetStream stream (`stream`, default `SLUICE`) holds every sluice
//!   stream; an event of stream `clicks` is published on `sluice.events.clicks`
//!   (`subject_prefix`). A lone event is one message: the payload verbatim, the other
//!   fields in headers ([`sluice_proto::broker`]), and `Nats-Msg-Id` = an id sluice
//!   makes for this publish (below). An append of several events (an NDJSON body, a
//!   gRPC message) is one *batch message* per run of one stream's events that fits
//!   the server's `max_payload`: header `sluice-batch: 1`, the payload sluice's
//!   versioned record encoding (see [`sluice_proto::broker`]). Single-event appends
//!   that arrive while earlier ones are being published are published together, as
//!   one batch message per stream ([`coalesce`], a group commit for the broker).
//!   JetStream stores, acks and delivers per message, and on this project's machine
//!   its own ceiling was ~30-50k messages/s, so a message per event capped 1,000-event
//!   requests at that many events/s (bench/RESULTS.md). A poll may hand out up to one
//!   message's events more than asked for, and the queue depth (`depth_events`)
//!   counts messages. No producer header reaches JetStream as control:
//!   [`message_headers`] refuses `Nats-*`, sluice's own names and malformed headers
//!   (ingest refused them already), and rewrites nothing.
//! - **Acks.** `append` publishes every message and resolves once JetStream has acked
//!   each one (stored on `replicas` servers; on disk per the server's `sync_interval`).
//!   A batch is not atomic in JetStream: when some publishes fail the producer gets
//!   503 and retries, and the retry is a new append.
//! - **Deduplication.** JetStream's duplicate window compares `Nats-Msg-Id` only, so
//!   that id is never the producer's: each event of each append gets a fresh
//!   server-made UUIDv7. The window therefore collapses only a re-send of the very
//!   same publish (the client resending it across a reconnect); it never drops an
//!   event because another event, from the same producer or another one, carried
//!   the same event id. A producer's retry of a request (after a 503 or a timeout)
//!   is a new append and may store events twice: the queue is at-least-once, and
//!   consumers dedupe by `sluice-id` (the producer's id, or the server's UUIDv7),
//!   which is unique only as far as producers make their own ids unique.
//! - **Reading back.** A message that is not a sluice event as [`broker::decode`]
//!   reads it (a foreign publish on our subjects, a duplicated `sluice-*` header, an
//!   invalid stream name, id or key) is never delivered as it is: it goes to the
//!   dead-letter sink as a [`broker::quarantine`] event in
//!   [`Delivery::unreadable`], logged as an error, and is acked with its delivery.
//! - **Bounds.** The stream has `max_bytes` and discards *new* messages when full:
//!   the producer gets 429. Work-queue retention deletes each message once it is
//!   acked, so the bound is on what is not yet processed.
//! - **Consumers.** Every processor with the same consumer name pulls from one
//!   durable consumer, so they share the work. A delivery is acked only on
//!   [`Consumer::commit`], after the sink has it; while a delivery is held the consumer
//!   sends progress acks, so a slow or retrying sink does not trigger redelivery, but a
//!   processor that dies leaves its messages to be redelivered to the others after
//!   `ack_wait`. Deliveries report JetStream's per-message delivery count, which the
//!   processor compares with its `max_deliveries` to dead-letter poison events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, Subject};
use futures_util::StreamExt;
use sluice_core::{
    AppendError, Batch, BoxFuture, ConsumeError, Consumer, Delivery, Event, Queue, QueueStats,
};
use sluice_proto::broker;

/// How to reach and lay out the JetStream stream.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URL(s), e.g. `nats://127.0.0.1:4222` (comma-separated for a cluster).
    pub url: String,
    /// The JetStream stream; default `SLUICE`.
    pub stream: String,
    /// Events of stream `s` go to `<subject_prefix>.s`; default `sluice.events`.
    pub subject_prefix: String,
    /// The stream's byte bound; publishes past it are refused (429). Default 1 GiB.
    pub max_bytes: u64,
    /// Copies JetStream keeps (a cluster); default 1.
    pub replicas: usize,
    /// How long JetStream remembers message ids for deduplication; default 2 min.
    pub duplicate_window: Duration,
    /// A delivery not acked (nor kept alive) for this long is redelivered; default 30 s.
    pub ack_wait: Duration,
    /// Longest wait for the JetStream acks of one append; default 5 s.
    pub publish_timeout: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            url: "nats://127.0.0.1:4222".into(),
            stream: "SLUICE".into(),
            subject_prefix: "sluice.events".into(),
            max_bytes: 1 << 30,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(5),
        }
    }
}

/// Connects with a bounded wait for the first connection; afterwards the client
/// reconnects by itself, forever.
pub async fn connect_client(url: &str, timeout: Duration) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(timeout)
        .name("sluice")
        .connect(url)
        .await
        .map_err(|e| format!("connecting to NATS at {url}: {e}"))
}

/// The subject of stream `name` under `prefix`. Stream names may hold dots, which
/// NATS reads as token separators; empty tokens (`a..b`, a leading dot) would make
/// an invalid subject, so they become `_`. The exact name travels in a header.
pub fn subject_for(prefix: &str, name: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1 + name.len());
    s.push_str(prefix);
    for token in name.split('.') {
        s.push('.');
        s.push_str(if token.is_empty() { "_" } else { token });
    }
    s
}

/// The headers of one event's message, with `Nats-Msg-Id` = `msg_id`. Refuses an
/// event that [`broker::check_event`] refuses (a reserved or malformed header of its
/// own, an invalid stream, id or key): nothing is rewritten.
pub fn message_headers(event: &Event, msg_id: &str) -> Result<HeaderMap, broker::EncodeError> {
    broker::check_event(event)?;
    let mut h = HeaderMap::new();
    for (k, v) in broker::headers(event) {
        h.append(k, v.as_ref());
    }
    h.insert("Nats-Msg-Id", msg_id);
    Ok(h)
}

/// The message's headers as (name, value) pairs, in order.
fn header_pairs(m: &async_nats::Message) -> impl Iterator<Item = (&str, &str)> {
    m.headers.iter().flat_map(|h| {
        h.iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_ref(), v.as_str())))
    })
}

/// Rebuilds an event from a message.
pub fn decode_message(m: &async_nats::Message) -> Result<Event, broker::DecodeError> {
    broker::decode(
        header_pairs(m),
        |n| n.starts_with("Nats-"),
        m.payload.clone(),
    )
}

/// The events of a message: a batch message's ([`broker::decode_batch`]; its only
/// headers are `Nats-*`, [`broker::BATCH`] = 1 and [`broker::STREAM`], once each), or
/// the one event of any other.
pub fn decode_messages(m: &async_nats::Message) -> Result<Vec<Event>, broker::DecodeError> {
    let is_batch = m.headers.as_ref().is_some_and(|h| {
        h.iter()
            .any(|(k, _)| AsRef::<str>::as_ref(k) == broker::BATCH)
    });
    if !is_batch {
        return decode_message(m).map(|e| vec![e]);
    }
    let (mut version, mut stream) = (None, None);
    for (name, value) in header_pairs(m) {
        let slot = match name {
            broker::BATCH => &mut version,
            broker::STREAM => &mut stream,
            n if n.starts_with("Nats-") => continue,
            n => {
                return Err(broker::DecodeError::Batch(format!(
                    "unexpected header {:?}",
                    n.chars().take(64).collect::<String>()
                )))
            }
        };
        if slot.replace(value).is_some() {
            return Err(broker::DecodeError::Duplicate(if name == broker::BATCH {
                broker::BATCH
            } else {
                broker::STREAM
            }));
        }
    }
    if version != Some(broker::BATCH_VERSION) {
        return Err(broker::DecodeError::Batch(format!(
            "layout version {:?} is not {}",
            version.unwrap_or("").chars().take(16).collect::<String>(),
            broker::BATCH_VERSION
        )));
    }
    let stream = stream.ok_or(broker::DecodeError::Missing(broker::STREAM))?;
    broker::decode_batch(stream, m.payload.clone())
}

/// NATS JetStream behind the [`Queue`] trait. See the module docs.
pub struct NatsQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    opts: NatsOptions,
    depth: Arc<Depth>,
    /// Publishes awaiting their JetStream ack, over all requests.
    in_flight: tokio::sync::Semaphore,
    closed: AtomicBool,
    refresher: tokio::task::JoinHandle<()>,
    coalescer: Arc<Coalescer>,
    coalescing: tokio::task::JoinHandle<()>,
}

/// Most batch messages of multi-event appends awaiting a JetStream ack at once (each
/// at most `max_payload`; bounds the client's memory). Single events are bounded by
/// the requests waiting on the coalescer, which publishes one group at a time.
const MAX_IN_FLIGHT: usize = 256;

/// Where a coalesced append hears the outcome of its message.
type Answer = tokio::sync::oneshot::Sender<Result<(), AppendError>>;

/// Single-event appends waiting for the [`coalesce`] task.
#[derive(Default)]
struct Coalescer {
    pending: Mutex<Vec<(Event, Answer)>>,
    wake: tokio::sync::Notify,
}

/// Group commit for single-event appends: takes every event waiting, publishes them
/// as one message per stream (a batch message when there are several, the
/// one-event layout for a lone one), and answers each append with the outcome of
/// its message; the appends arriving meanwhile form the next group. JetStream's
/// cost is per message, so concurrent single-event requests share it.
async fn coalesce(
    js: jetstream::Context,
    client: async_nats::Client,
    opts: NatsOptions,
    c: Arc<Coalescer>,
) {
    loop {
        c.wake.notified().await;
        loop {
            let mut group =
                std::mem::take(&mut *c.pending.lock().expect("coalescer lock poisoned"));
            if group.is_empty() {
                break;
            }
            // An append that gave up (its deadline passed, the producer heard 503)
            // is not published late: pending holds only appends still waiting.
            group.retain(|(_, tx)| !tx.is_closed());
            // One run per stream; an append's own order is kept (stable sort).
            group.sort_by(|a, b| a.0.stream.cmp(&b.0.stream));
            let (events, waiters): (Vec<Event>, Vec<_>) = group.into_iter().unzip();
            let mut results = Vec::with_capacity(events.len());
            let mut start = 0;
            while start < events.len() {
                let end = start
                    + events[start..]
                        .iter()
                        .take_while(|e| e.stream == events[start].stream)
                        .count();
                let run = &events[start..end];
                let r = if let [one] = run {
                    publish_one(&js, &opts, one).await
                } else {
                    let chunks = batch_chunks(run, batch_limit(&client));
                    publish_batch_messages(&js, &opts, &chunks).await
                };
                results.extend(run.iter().map(|_| share(&r)));
                start = end;
            }
            for (w, r) in waiters.into_iter().zip(results) {
                let _ = w.send(r);
            }
        }
    }
}

/// The same outcome for another append of a shared message (`Full` hands back an
/// empty batch: [`Queue::append`] puts the caller's own back).
fn share(r: &Result<(), AppendError>) -> Result<(), AppendError> {
    match r {
        Ok(()) => Ok(()),
        Err(AppendError::Full {
            reason,
            retry_after,
            ..
        }) => Err(AppendError::Full {
            batch: Box::new(Batch::new(Vec::new())),
            reason: reason.clone(),
            retry_after: *retry_after,
        }),
        Err(AppendError::ShuttingDown) => Err(AppendError::ShuttingDown),
        Err(AppendError::TooLarge { bytes, limit }) => Err(AppendError::TooLarge {
            bytes: *bytes,
            limit: *limit,
        }),
        Err(AppendError::Backend { message }) => Err(AppendError::Backend {
            message: message.clone(),
        }),
    }
}

/// One event as one message (the one-event layout), acked.
async fn publish_one(
    js: &jetstream::Context,
    opts: &NatsOptions,
    e: &Event,
) -> Result<(), AppendError> {
    let id = sluice_core::new_event_ids(1).next().expect("one id");
    let headers = message_headers(e, &id).map_err(|err| AppendError::Backend {
        message: format!("event 1 cannot be published: {err}"),
    })?;
    let msg = jetstream::message::PublishMessage::build()
        .payload(e.payload.clone())
        .headers(headers);
    js.send_publish(subject_for(&opts.subject_prefix, &e.stream), msg)
        .await
        .map_err(publish_error)?
        .await
        .map_err(publish_error)?;
    Ok(())
}

/// The most event bytes a batch message may carry: the server's `max_payload` less
/// room for the headers.
fn batch_limit(client: &async_nats::Client) -> usize {
    client
        .server_info()
        .max_payload
        .saturating_sub(BATCH_HEADROOM)
        .max(1)
}

/// Publishes one batch message per chunk (events checked by the caller, each chunk
/// one stream's, from [`batch_chunks`]), all in flight at once, and waits for the acks.
async fn publish_batch_messages(
    js: &jetstream::Context,
    opts: &NatsOptions,
    chunks: &[&[Event]],
) -> Result<(), AppendError> {
    let mut msg_ids = sluice_core::new_event_ids(chunks.len());
    let mut acks = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let chunk = *chunk;
        let stream = &chunk[0].stream;
        let mut payload = Vec::new();
        sluice_proto::record::encode_events(chunk, &mut payload);
        let mut h = HeaderMap::new();
        h.insert(
            "Nats-Msg-Id",
            msg_ids.next().expect("one id per chunk").as_str(),
        );
        h.insert(broker::BATCH, broker::BATCH_VERSION);
        h.insert(broker::STREAM, &**stream);
        let msg = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .headers(h);
        let ack = js
            .send_publish(subject_for(&opts.subject_prefix, stream), msg)
            .await
            .map_err(publish_error)?;
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    for r in futures_util::future::join_all(acks).await {
        r.map_err(publish_error)?;
    }
    Ok(())
}

/// Room left in a batch message for its headers under the server's `max_payload`
/// (NATS counts headers and payload together).
const BATCH_HEADROOM: usize = 512;

/// The events split into runs of one stream whose record encoding fits in `limit`
/// bytes (an event larger than that alone is a run of its own: the server refuses it).
fn batch_chunks(events: &[Event], limit: usize) -> Vec<&[Event]> {
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, 5);
    for (i, e) in events.iter().enumerate() {
        let len = sluice_proto::record::event_len(e);
        if i > start && (e.stream != events[start].stream || size + len > limit) {
            chunks.push(&events[start..i]);
            (start, size) = (i, 5);
        }
        size += len;
    }
    if start < events.len() {
        chunks.push(&events[start..]);
    }
    chunks
}

/// The stream's figures, refreshed in the background (stats() cannot wait).
#[derive(Default)]
struct Depth {
    events: AtomicU64,
    bytes: AtomicU64,
}

impl NatsQueue {
    /// Connects and creates the stream (and nothing else) if it does not exist.
    pub async fn connect(opts: NatsOptions) -> Result<NatsQueue, String> {
        let client = connect_client(&opts.url, Duration::from_secs(5)).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(opts.publish_timeout)
            .ack_timeout(opts.publish_timeout)
            // Never the bound that blocks: `in_flight` is, and the coalescer's one
            // group at a time.
            .max_ack_inflight(64 * 1024)
            .build(client.clone());
        let created = ensure_stream(&js, &opts).await?;
        let depth = Arc::new(Depth::default());
        let refresher = tokio::spawn(refresh(created, depth.clone()));
        let coalescer = Arc::new(Coalescer::default());
        let coalescing = tokio::spawn(coalesce(
            js.clone(),
            client.clone(),
            opts.clone(),
            coalescer.clone(),
        ));
        Ok(NatsQueue {
            client,
            js,
            opts,
            depth,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            closed: AtomicBool::new(false),
            refresher,
            coalescer,
            coalescing,
        })
    }

    /// A lone event through the coalescer, several as batch messages.
    async fn publish_all(&self, batch: &Batch) -> Result<(), AppendError> {
        match &batch.events[..] {
            [] => Ok(()),
            [event] => self.publish_coalesced(event).await,
            events => self.publish_batches(events).await,
        }
    }

    /// Publishes events as batch messages ([`broker::BATCH`]), taking one permit of
    /// the in-flight bound per message before the first is sent. (Taking them one
    /// at a time while holding earlier ones would deadlock concurrent requests once
    /// the bound is reached: each holding part and waiting for the rest.)
    async fn publish_batches(&self, events: &[Event]) -> Result<(), AppendError> {
        // Refuse the whole batch before anything is sent (ingest checked already).
        for (i, e) in events.iter().enumerate() {
            broker::check_event(e).map_err(|err| AppendError::Backend {
                message: format!("event {} cannot be published: {err}", i + 1),
            })?;
        }
        let chunks = batch_chunks(events, batch_limit(&self.client));
        let _permits = self
            .in_flight
            .acquire_many(chunks.len().min(MAX_IN_FLIGHT) as u32)
            .await
            .map_err(|_| AppendError::ShuttingDown)?;
        publish_batch_messages(&self.js, &self.opts, &chunks).await
    }

    /// A single-event append: the events of concurrent ones are published together
    /// (see [`coalesce`]), and this resolves when the message holding its event is acked.
    async fn publish_coalesced(&self, event: &Event) -> Result<(), AppendError> {
        broker::check_event(event).map_err(|err| AppendError::Backend {
            message: format!("event 1 cannot be published: {err}"),
        })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.coalescer
            .pending
            .lock()
            .expect("coalescer lock poisoned")
            .push((event.clone(), tx));
        self.coalescer.wake.notify_one();
        rx.await.unwrap_or(Err(AppendError::ShuttingDown))
    }
}

impl Drop for NatsQueue {
    fn drop(&mut self) {
        self.refresher.abort();
        self.coalescing.abort();
    }
}

/// Gets the stream, creating it (work-queue retention, discard new) when missing.
async fn ensure_stream(
    js: &jetstream::Context,
    opts: &NatsOptions,
) -> Result<stream::Stream, String> {
    js.get_or_create_stream(stream::Config {
        name: opts.stream.clone(),
        subjects: vec![format!("{}.>", opts.subject_prefix)],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_bytes: opts.max_bytes.min(i64::MAX as u64) as i64,
        storage: stream::StorageType::File,
        num_replicas: opts.replicas,
        duplicate_window: opts.duplicate_window,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("creating JetStream stream {}: {e}", opts.stream))
}

/// Keeps [`Depth`] current from the stream's info, once a second.
async fn refresh(stream: stream::Stream, depth: Arc<Depth>) {
    loop {
        if let Ok(info) = stream.get_info().await {
            depth.events.store(info.state.messages, Ordering::Relaxed);
            depth.bytes.store(info.state.bytes, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A refused publish: the stream at its bound is "full" (429); anything else (server
/// away, timeout) is a backend failure (503).
fn publish_error(e: impl std::fmt::Display) -> AppendError {
    let message = e.to_string();
    if message.contains("maximum bytes exceeded") || message.contains("maximum messages exceeded") {
        return AppendError::Full {
            batch: Box::new(Batch::default()),
            reason: format!("JetStream stream is at its limit: {message}"),
            retry_after: Duration::from_secs(1),
        };
    }
    AppendError::Backend {
        message: format!("JetStream publish failed: {message}"),
    }
}

impl Queue for NatsQueue {
    fn append(&self, batch: Batch) -> BoxFuture<'_, Result<(), AppendError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Acquire) {
                return Err(AppendError::ShuttingDown);
            }
            // One deadline for the whole batch: while the server is away the client
            // buffers publishes, and the producer must hear 503 in bounded time.
            match tokio::time::timeout(self.opts.publish_timeout, self.publish_all(&batch)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(AppendError::Full {
                    reason,
                    retry_after,
                    ..
                })) => Err(AppendError::Full {
                    batch: Box::new(batch),
                    reason,
                    retry_after,
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(AppendError::Backend {
                    message: format!(
                        "JetStream did not ack within {:?} (server {} unreachable?)",
                        self.opts.publish_timeout, self.opts.url
                    ),
                }),
            }
        })
    }

    fn consumer(&self, name: &str) -> Result<Box<dyn Consumer>, ConsumeError> {
        Ok(Box::new(NatsConsumer::new(
            self.client.clone(),
            self.js.clone(),
            self.opts.clone(),
            name,
        )))
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            depth_events: self.depth.events.load(Ordering::Relaxed),
            depth_bytes: self.depth.bytes.load(Ordering::Relaxed),
            capacity_bytes: self.opts.max_bytes,
        }
    }

    fn health(&self) -> Result<(), String> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(format!("NATS connection to {} is {state}", self.opts.url)),
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            self.client
                .flush()
                .await
                .map_err(|e| ConsumeError::Backend {
                    message: format!("flushing the NATS connection: {e}"),
                })
        })
    }
}

/// Most messages the continuous pull asks for at once (prefetched, not yet handed
/// out: they age toward ack_wait too, so the prefetch stays small).
const PREFETCH: usize = 5000;

/// Deliveries handed out and not yet committed: their ack subjects, and since when.
type Outstanding = Mutex<HashMap<u64, (Vec<Subject>, Instant)>>;

/// One durable pull consumer, shared by every processor with the same name.
struct NatsConsumer {
    client: async_nats::Client,
    js: jetstream::Context,
    opts: NatsOptions,
    name: String,
    /// The consumer handle, made on the first poll (the server may be away at start).
    pull: tokio::sync::Mutex<Option<consumer::PullConsumer>>,
    /// The continuous pull the polls take from.
    messages: tokio::sync::Mutex<Option<consumer::pull::Stream>>,
    outstanding: Arc<Outstanding>,
    next_token: AtomicU64,
    keepalive: tokio::task::JoinHandle<()>,
}

impl NatsConsumer {
    fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        opts: NatsOptions,
        name: &str,
    ) -> NatsConsumer {
        let outstanding = Arc::new(Outstanding::default());
        let keepalive = tokio::spawn(keep_alive(
            client.clone(),
            outstanding.clone(),
            opts.ack_wait / 3,
        ));
        NatsConsumer {
            client,
            js,
            opts,
            name: name.to_string(),
            pull: tokio::sync::Mutex::new(None),
            messages: tokio::sync::Mutex::new(None),
            outstanding,
            next_token: AtomicU64::new(1),
            keepalive,
        }
    }

    async fn pull(&self) -> Result<consumer::PullConsumer, ConsumeError> {
        let mut slot = self.pull.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let backend = |e: String| ConsumeError::Backend { message: e };
        let stream = ensure_stream(&self.js, &self.opts).await.map_err(backend)?;
        let c = stream
            .get_or_create_consumer(
                &self.name,
                consumer::pull::Config {
                    durable_name: Some(self.name.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.opts.ack_wait,
                    // Unlimited: the processor dead-letters by delivery count, so a
                    // message is never silently abandoned by the server.
                    max_deliver: -1,
                    max_ack_pending: 1_000_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| backend(format!("creating JetStream consumer {}: {e}", self.name)))?;
        *slot = Some(c.clone());
        Ok(c)
    }
}

impl Drop for NatsConsumer {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// Sends "work in progress" for deliveries held longer than `every`, so JetStream
/// does not redeliver events a live processor is still working on.
async fn keep_alive(client: async_nats::Client, outstanding: Arc<Outstanding>, every: Duration) {
    let every = every.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let due: Vec<Subject> = {
            let map = outstanding.lock().expect("outstanding map poisoned");
            map.values()
                .filter(|(_, since)| since.elapsed() >= every)
                .flat_map(|(subjects, _)| subjects.iter().cloned())
                .collect()
        };
        for s in due {
            let _ = client.publish(s, "+WPI".into()).await;
        }
    }
}

impl Consumer for NatsConsumer {
    fn poll(
        &self,
        max_events: usize,
        max_wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Delivery>, ConsumeError>> {
        Box::pin(async move {
            let backend = |e: String| ConsumeError::Backend { message: e };
            // One continuous pull per consumer, shared by the workers' polls: the client
            // keeps a bounded prefetch requested, so messages stream in while the sink
            // works, and nothing is lost between polls. (Short one-off pulls starved
            // under ingest load and left messages in abandoned inboxes.)
            let mut slot = self.messages.lock().await;
            if slot.is_none() {
                let pull = self.pull().await?;
                let stream = pull
                    .stream()
                    .max_messages_per_batch(max_events.clamp(100, PREFETCH))
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
                    .map_err(|e| backend(format!("pulling from JetStream: {e}")))?;
                *slot = Some(stream);
            }
            let stream = slot.as_mut().expect("set above");
            let (mut events, mut attempts, mut replies) = (Vec::new(), Vec::new(), Vec::new());
            let mut unreadable = Vec::new();
            // A poll outliving ack_wait would collect redeliveries of its own events.
            let deadline = tokio::time::Instant::now() + max_wait.min(self.opts.ack_wait / 2);
            while events.len() + unreadable.len() < max_events {
                let m = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => break,
                    Ok(Some(Ok(m))) => m,
                    Ok(Some(Err(e))) => {
                        // A missed heartbeat or a reconnect: start a new pull next
                        // time. Messages handed out are still committed; the rest
                        // return after ack_wait.
                        *slot = None;
                        if events.is_empty() {
                            return Err(backend(format!("pulling from JetStream: {e}")));
                        }
                        break;
                    }
                    Ok(None) => {
                        *slot = None;
                        break;
                    }
                };
                let delivered = m.info().map_or(1, |i| i.delivered.max(1) as u32);
                let (m, acker_reply) = {
                    let reply = m.reply.clone();
                    (m.split().0, reply)
                };
                let Some(reply) = acker_reply else { continue };
                match decode_messages(&m) {
                    Ok(batch) => {
                        attempts.extend(std::iter::repeat_n(delivered, batch.len()));
                        events.extend(batch);
                        replies.push(reply);
                    }
                    Err(e) => {
                        // Not a sluice event as it stands (a foreign publish on our
                        // subjects, a tampered header): never delivered as it is, it
                        // goes to the dead-letter sink and is acked with the delivery.
                        tracing::error!(subject = %m.subject, error = %e, "unreadable message in the JetStream stream, quarantined to the dead-letter sink");
                        let q = broker::quarantine(header_pairs(&m), m.payload.clone());
                        unreadable.push((
                            q,
                            format!("unreadable JetStream message on {}: {e}", m.subject),
                        ));
                        replies.push(reply);
                    }
                }
            }
            if events.is_empty() && unreadable.is_empty() {
                return Ok(None);
            }
            let token = self.next_token.fetch_add(1, Ordering::Relaxed);
            self.outstanding
                .lock()
                .expect("outstanding map poisoned")
                .insert(token, (replies, Instant::now()));
            Ok(Some(Delivery {
                events,
                token,
                attempts,
                unreadable,
            }))
        })
    }

    fn commit(&self, token: u64) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            let replies = self
                .outstanding
                .lock()
                .expect("outstanding map poisoned")
                .remove(&token)
                .map(|(r, _)| r)
                .unwrap_or_default();
            for r in replies {
                self.client
                    .publish(r, "".into())
                    .await
                    .map_err(|e| ConsumeError::Backend {
                        message: format!("acking to JetStream: {e}"),
                    })?;
            }
            // The acks leave now; one lost to a crash means a redelivery, never a loss.
            self.client
                .flush()
                .await
                .map_err(|e| ConsumeError::Backend {
                    message: format!("flushing acks to JetStream: {e}"),
                })
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            self.client
                .flush()
                .await
                .map_err(|e| ConsumeError::Backend {
                    message: format!("flushing acks to JetStream: {e}"),
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_event_headers_are_refused_not_rewritten() {
        let mut e = Event::new("s", &b"{}"[..]);
        e.headers = vec![("trace".into(), "abc".into())];
        let h = message_headers(&e, "m-1").unwrap();
        assert_eq!(h.get("trace").map(|v| v.as_str()), Some("abc"));
        assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("m-1"));
        assert_eq!(h.get("sluice-id").map(|v| v.as_str()), Some(e.id.as_str()));
        for (name, value) in [
            ("a:b c", "v"),
            ("", "v"),
            ("t", "x\r\ny"),
            ("Nats-Rollup", "all"),
            ("NATS-ROLLUP", "all"),
            ("Nats-Expected-Last-Sequence", "1"),
            ("Nats-Msg-Id", "x"),
            ("sluice-stream", "../../x"),
        ] {
            e.headers = vec![(name.into(), value.into())];
            assert!(message_headers(&e, "m").is_err(), "{name:?}: {value:?}");
        }
    }

    #[test]
    fn subjects_never_have_empty_tokens() {
        assert_eq!(
            subject_for("sluice.events", "clicks"),
            "sluice.events.clicks"
        );
        assert_eq!(subject_for("p", "eu.clicks"), "p.eu.clicks");
        assert_eq!(subject_for("p", ".a..b."), "p._.a._.b._");
    }
}
