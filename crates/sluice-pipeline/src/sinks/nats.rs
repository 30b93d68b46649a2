//! [`NatsSink`]: publishes each event to JetStream on `<subject_prefix>.<stream>`, as
//! the NATS queue lays it out (payload verbatim, fields in headers).
//!
//! Deduplication: `Nats-Msg-Id` = [`sink_msg_id`], `<stream>:<received_at>:<id>`,
//! so JetStream drops a redelivery of the *same stored event* (same stream, id and
//! ingest time) within its duplicate window, but never an event of another request
//! that merely carries the same producer id: one producer cannot suppress another's
//! events. An event the NATS layout refuses (a reserved or malformed header, an
//! invalid stream, id or key: see `sluice_proto::broker::check_event`) is rejected
//! alone, to the dead-letter sink.
//!
//! A delivery counts once JetStream has acked every event. An event larger than the
//! server's `max_payload` (or the stream's message limit) can never be published and
//! is rejected alone, to the dead-letter sink; anything else is retried.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use sluice_core::{BoxFuture, Event, Rejection, Sink, SinkError};
use sluice_queue::nats::{connect_client, message_headers, subject_for};

/// The `Nats-Msg-Id` of `event` at the sink: the same for every redelivery of one
/// stored event, different for two requests' events that share a producer id.
pub fn sink_msg_id(event: &Event) -> String {
    format!(
        "{}:{}:{}",
        event.stream, event.received_at_unix_nanos, event.id
    )
}

/// Where the NATS sink publishes.
#[derive(Debug, Clone)]
pub struct NatsSinkOptions {
    /// Server URL(s), e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Events of stream `s` go to `<subject_prefix>.s`; default `sluice.out`.
    pub subject_prefix: String,
    /// A JetStream stream to create over `<subject_prefix>.>` if it does not exist;
    /// `None` expects one to be there already.
    pub stream: Option<String>,
    /// Longest wait for the acks of one delivery; default 10 s.
    pub timeout: Duration,
}

impl Default for NatsSinkOptions {
    fn default() -> Self {
        NatsSinkOptions {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: "sluice.out".into(),
            stream: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Publishes to NATS JetStream. See the module docs.
pub struct NatsSink {
    js: jetstream::Context,
    opts: NatsSinkOptions,
}

impl NatsSink {
    /// Connects (and creates the stream if one is named and missing).
    pub async fn connect(opts: NatsSinkOptions) -> Result<NatsSink, String> {
        let client = connect_client(&opts.url, Duration::from_secs(5)).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(opts.timeout)
            .ack_timeout(opts.timeout)
            .build(client);
        if let Some(name) = &opts.stream {
            js.get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.>", opts.subject_prefix)],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating JetStream stream {name}: {e}"))?;
        }
        Ok(NatsSink { js, opts })
    }

    async fn publish(&self, events: &[Event]) -> Result<(), SinkError> {
        let mut acks = Vec::with_capacity(events.len());
        let mut rejected = Vec::new();
        for (index, e) in events.iter().enumerate() {
            let headers = match message_headers(e, &sink_msg_id(e)) {
                Ok(h) => h,
                Err(err) => {
                    rejected.push(Rejection {
                        index,
                        reason: format!("nats sink: {err}"),
                    });
                    continue;
                }
            };
            let msg = jetstream::message::PublishMessage::build()
                .payload(e.payload.clone())
                .headers(headers);
            match self
                .js
                .send_publish(subject_for(&self.opts.subject_prefix, &e.stream), msg)
                .await
            {
                Ok(ack) => acks.push((index, std::future::IntoFuture::into_future(ack))),
                Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    rejected.push(Rejection {
                        index,
                        reason: format!("nats sink: {err}"),
                    })
                }
                Err(err) => return Err(SinkError::retryable(format!("nats sink: {err}"))),
            }
        }
        let mut retry = None;
        let (indexes, futures): (Vec<_>, Vec<_>) = acks.into_iter().unzip();
        for (index, r) in indexes
            .into_iter()
            .zip(futures_util::future::join_all(futures).await)
        {
            match r {
                Ok(_) => {}
                Err(err) if err.to_string().contains("exceeds maximum") => {
                    rejected.push(Rejection {
                        index,
                        reason: format!("nats sink: {err}"),
                    })
                }
                Err(err) => retry = Some(format!("nats sink: {err}")),
            }
        }
        match (retry, rejected.is_empty()) {
            (Some(message), _) => Err(SinkError::retryable(message)),
            (None, true) => Ok(()),
            (None, false) => Err(SinkError::Rejected(rejected)),
        }
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn deliver<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.opts.timeout, self.publish(events)).await {
                Ok(r) => r,
                Err(_) => Err(SinkError::retryable(format!(
                    "nats sink: no JetStream acks within {:?}",
                    self.opts.timeout
                ))),
            }
        })
    }
}
