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
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sluice_core::options::serialize_redacted_url;
use sluice_core::units::HumanDuration;
use sluice_core::{OptionError, Secret};

use super::{
    check_name, check_subject_prefix, message_headers, subject_for, Connection, Error, DEFAULT_URL,
};

/// The `Nats-Msg-Id` of `event` at the sink: the same for every redelivery of one
/// stored event, different for two requests' events that share a producer id.
pub fn sink_msg_id(event: &Event) -> String {
    format!(
        "{}:{}:{}",
        event.stream, event.received_at_unix_nanos, event.id
    )
}

/// `[sink]` (or `[dead_letter]`) with `kind = "nats"`: where the NATS sink publishes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSinkOptions {
    /// Server URL(s), comma-separated, as the queue's `url`. Default
    /// `nats://127.0.0.1:4222`.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// An authentication token. Default none.
    pub token: Option<Secret>,
    /// A `.creds` file (a user JWT and its NKey seed). Default none.
    pub credentials_file: Option<PathBuf>,
    /// A PEM bundle of the CAs to trust for TLS. Default none: the system's.
    pub ca_file: Option<PathBuf>,
    /// Events of stream `s` go to `<subject_prefix>.s`. Default `sluice.out`.
    pub subject_prefix: String,
    /// A JetStream stream to create over `<subject_prefix>.>` if it does not exist;
    /// unset expects one to be there already.
    pub stream: Option<String>,
    /// Longest wait for the acks of one delivery. Default `10s`.
    pub timeout: HumanDuration,
}

impl Default for NatsSinkOptions {
    fn default() -> Self {
        NatsSinkOptions {
            url: DEFAULT_URL.into(),
            token: None,
            credentials_file: None,
            ca_file: None,
            subject_prefix: "sluice.out".into(),
            stream: None,
            timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

impl NatsSinkOptions {
    /// Checks every option before anything connects.
    pub fn validate(&self) -> Result<(), OptionError> {
        self.connection().validate()?;
        check_subject_prefix(&self.subject_prefix)?;
        if let Some(name) = &self.stream {
            check_name("stream", name)?;
        }
        if self.timeout.0 < Duration::from_millis(100) {
            return Err(OptionError::new(
                "timeout",
                self.timeout,
                "must be at least 100ms",
            ));
        }
        Ok(())
    }

    fn connection(&self) -> Connection<'_> {
        Connection {
            url: &self.url,
            token: self.token.as_ref(),
            credentials_file: self.credentials_file.as_ref(),
            ca_file: self.ca_file.as_ref(),
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
    pub async fn connect(opts: NatsSinkOptions) -> Result<NatsSink, Error> {
        opts.validate()?;
        let client = opts.connection().connect().await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(opts.timeout.0)
            .ack_timeout(opts.timeout.0)
            .build(client);
        if let Some(name) = &opts.stream {
            js.get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.>", opts.subject_prefix)],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Stream {
                stream: name.clone(),
                message: format!("creating it: {e}"),
            })?;
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
            match tokio::time::timeout(self.opts.timeout.0, self.publish(events)).await {
                Ok(r) => r,
                Err(_) => Err(SinkError::retryable(format!(
                    "nats sink: no JetStream acks within {}",
                    self.opts.timeout
                ))),
            }
        })
    }
}
