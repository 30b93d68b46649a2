//! [`NatsQueue`]: appends (single events coalesced, several as batch messages) and
//! the stream's bound and depth; see the module docs of [`super`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use sluice_core::options::redact_url;
use sluice_core::{
    AppendError, Batch, BoxFuture, Committed, ConsumeError, Consumer, Event, Queue, QueueStats,
    Unhealthy,
};
use sluice_proto::broker;

use super::consumer::NatsConsumer;
use super::layout::{batch_chunks, batch_limit, message_headers, subject_for};
use super::{Error, NatsOptions};
use crate::coalesce::{share, Coalescer};

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

/// Group commit for single-event appends (see [`crate::coalesce`]): a group is
/// published as one message per stream (a batch message when there are several, the
/// one-event layout for a lone one), and each append hears the outcome of its
/// message.
async fn coalesce(
    js: jetstream::Context,
    client: async_nats::Client,
    opts: NatsOptions,
    c: Arc<Coalescer>,
) {
    c.run(|events| {
        let (js, client, opts) = (&js, &client, &opts);
        async move {
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
                    publish_one(js, opts, one).await
                } else {
                    let chunks = batch_chunks(run, batch_limit(client));
                    publish_batch_messages(js, opts, &chunks).await
                };
                results.extend(run.iter().map(|_| share(&r)));
                start = end;
            }
            results
        }
    })
    .await
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

/// The stream's figures, refreshed in the background (stats() cannot wait).
#[derive(Default)]
struct Depth {
    events: AtomicU64,
    bytes: AtomicU64,
}

impl NatsQueue {
    /// Connects and creates the stream (and nothing else) if it does not exist.
    pub async fn connect(opts: NatsOptions) -> Result<NatsQueue, Error> {
        opts.validate()?;
        let client = opts.connection().connect().await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(opts.publish_timeout.0)
            .ack_timeout(opts.publish_timeout.0)
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
        self.coalescer.append(event.clone()).await
    }
}

impl Drop for NatsQueue {
    fn drop(&mut self) {
        self.refresher.abort();
        self.coalescing.abort();
    }
}

/// Gets the stream, creating it (work-queue retention, discard new) when missing.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    opts: &NatsOptions,
) -> Result<stream::Stream, Error> {
    js.get_or_create_stream(stream::Config {
        name: opts.stream.clone(),
        subjects: vec![format!("{}.>", opts.subject_prefix)],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_bytes: opts.max_bytes.0.min(i64::MAX as u64) as i64,
        storage: stream::StorageType::File,
        num_replicas: opts.replicas,
        duplicate_window: opts.duplicate_window.0,
        ..Default::default()
    })
    .await
    .map_err(|e| Error::Stream {
        stream: opts.stream.clone(),
        message: format!("creating it: {e}"),
    })
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
    fn append(&self, batch: Batch) -> BoxFuture<'_, Result<Committed, AppendError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Acquire) {
                return Err(AppendError::ShuttingDown);
            }
            // One deadline for the whole batch: while the server is away the client
            // buffers publishes, and the producer must hear 503 in bounded time.
            match tokio::time::timeout(self.opts.publish_timeout.0, self.publish_all(&batch)).await
            {
                Ok(Ok(())) => Ok(Committed::default()),
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
                        "JetStream did not ack within {} (server {} unreachable?)",
                        self.opts.publish_timeout,
                        redact_url(&self.opts.url)
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
            capacity_bytes: self.opts.max_bytes.0,
        }
    }

    fn health(&self) -> Result<(), Unhealthy> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(Unhealthy::Unreachable(format!(
                "NATS connection to {} is {state}",
                redact_url(&self.opts.url)
            ))),
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
