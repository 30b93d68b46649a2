//! The durable pull consumer processors share; see the module docs of [`super`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::{self, consumer};
use async_nats::Subject;
use futures_util::StreamExt;
use sluice_core::{BoxFuture, ConsumeError, Consumer, Delivery};
use sluice_proto::broker;

use super::layout::{decode_messages, header_pairs};
use super::queue::ensure_stream;
use super::NatsOptions;

/// Most messages the continuous pull asks for at once (prefetched, not yet handed
/// out: they age toward ack_wait too, so the prefetch stays small).
const PREFETCH: usize = 5000;

/// Deliveries handed out and not yet committed: their ack subjects, and since when.
type Outstanding = Mutex<HashMap<u64, (Vec<Subject>, Instant)>>;

/// One durable pull consumer, shared by every processor with the same name.
pub(super) struct NatsConsumer {
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
    pub(super) fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        opts: NatsOptions,
        name: &str,
    ) -> NatsConsumer {
        let outstanding = Arc::new(Outstanding::default());
        let keepalive = tokio::spawn(keep_alive(
            client.clone(),
            outstanding.clone(),
            opts.ack_wait.0 / 3,
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
        let stream = ensure_stream(&self.js, &self.opts)
            .await
            .map_err(|e| backend(e.to_string()))?;
        let c = stream
            .get_or_create_consumer(
                &self.name,
                consumer::pull::Config {
                    durable_name: Some(self.name.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.opts.ack_wait.0,
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
            let deadline = tokio::time::Instant::now() + max_wait.min(self.opts.ack_wait.0 / 2);
            while events.len() + unreadable.len() < max_events {
                let m = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => break,
                    Ok(Some(Ok(m))) => m,
                    Ok(Some(Err(e))) => {
                        // A missed heartbeat or a reconnect: start a new pull next
                        // time. Messages handed out are still committed; the rest
                        // return after ack_wait.
                        *slot = None;
                        if e.kind() == MessagesErrorKind::MissingHeartbeat {
                            // The server went quiet for two heartbeats (busy, a
                            // leader moving, a reconnect): routine, and the next
                            // poll pulls anew; a server that is gone fails there.
                            tracing::warn!(error = %e, "JetStream pull missed its heartbeats; pulling anew");
                            break;
                        }
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
