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
//!   one batch message per stream (`coalesce` in the queue module, a group commit for the broker).
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
//! - **Reading back.** A message that is not a sluice event as [`broker::decode`](sluice_proto::broker::decode)
//!   reads it (a foreign publish on our subjects, a duplicated `sluice-*` header, an
//!   invalid stream name, id or key) is never delivered as it is: it goes to the
//!   dead-letter sink as a [`broker::quarantine`](sluice_proto::broker::quarantine) event in
//!   [`Delivery::unreadable`](sluice_core::Delivery::unreadable), logged as an error, and is acked with its delivery.
//! - **Bounds.** The stream has `max_bytes` and discards *new* messages when full:
//!   the producer gets 429. Work-queue retention deletes each message once it is
//!   acked, so the bound is on what is not yet processed.
//! - **Consumers.** Every processor with the same consumer name pulls from one
//!   durable consumer, so they share the work. A delivery is acked only on
//!   [`Consumer::commit`](sluice_core::Consumer::commit), after the sink has it; while a delivery is held the consumer
//!   sends progress acks, so a slow or retrying sink does not trigger redelivery, but a
//!   processor that dies leaves its messages to be redelivered to the others after
//!   `ack_wait`. Deliveries report JetStream's per-message delivery count, which the
//!   processor compares with its `max_deliveries` to dead-letter poison events.

mod consumer;
mod layout;
mod queue;
mod sink;

pub use layout::{decode_message, decode_messages, message_headers, subject_for};
pub use queue::NatsQueue;
pub use sink::{sink_msg_id, NatsSink, NatsSinkOptions};

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::options::serialize_redacted_url;
use sluice_core::units::{ByteSize, HumanDuration};
use sluice_core::{OptionError, Secret};

/// What connecting to NATS or setting up JetStream can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is out of range.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// No server answered (or refused the credentials) within the connect timeout.
    #[error("connecting to NATS at {servers}: {message}")]
    Connect { servers: String, message: String },
    /// JetStream refused to create or look up a stream.
    #[error("JetStream stream {stream}: {message}")]
    Stream { stream: String, message: String },
}

/// `[queue]` with `kind = "nats"`: how to reach and lay out the JetStream stream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsOptions {
    /// Server URL(s), comma-separated: `nats://h1:4222,nats://h2:4222` (the client
    /// tries each, and learns the rest of a cluster from the one it reaches);
    /// `tls://` for TLS. User and password may be in the URL. Default
    /// `nats://127.0.0.1:4222`.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// An authentication token. Default none.
    pub token: Option<Secret>,
    /// A `.creds` file (a user JWT and its NKey seed). Default none.
    pub credentials_file: Option<PathBuf>,
    /// A PEM bundle of the CAs to trust for TLS (a private CA). Default none: the
    /// system's.
    pub ca_file: Option<PathBuf>,
    /// The JetStream stream holding every sluice stream. Default `SLUICE`.
    pub stream: String,
    /// Events of stream `s` are published on `<subject_prefix>.s`. Default `sluice.events`.
    pub subject_prefix: String,
    /// The stream's byte bound (JetStream's `max_bytes`); publishes past it are
    /// refused (429). Default `1 GiB`.
    pub max_bytes: ByteSize,
    /// Copies JetStream keeps (in a cluster). Default 1.
    pub replicas: usize,
    /// How long JetStream remembers message ids to drop duplicates. Default `2m`.
    pub duplicate_window: HumanDuration,
    /// A delivery not acked (nor kept alive) for this long goes to another
    /// processor. Default `30s`.
    pub ack_wait: HumanDuration,
    /// Longest wait for JetStream's acks of one request (503 past it). Default `5s`.
    pub publish_timeout: HumanDuration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            url: DEFAULT_URL.into(),
            token: None,
            credentials_file: None,
            ca_file: None,
            stream: "SLUICE".into(),
            subject_prefix: "sluice.events".into(),
            max_bytes: ByteSize(1 << 30),
            replicas: 1,
            duplicate_window: HumanDuration(Duration::from_secs(120)),
            ack_wait: HumanDuration(Duration::from_secs(30)),
            publish_timeout: HumanDuration(Duration::from_secs(5)),
        }
    }
}

/// Where a NATS client goes when no URL is given.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How long connecting waits for a first server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl NatsOptions {
    /// Checks every option before anything connects.
    pub fn validate(&self) -> Result<(), OptionError> {
        self.connection().validate()?;
        check_name("stream", &self.stream)?;
        check_subject_prefix(&self.subject_prefix)?;
        if self.max_bytes < ByteSize(1 << 20) {
            return Err(OptionError::new(
                "max_bytes",
                self.max_bytes,
                "must be at least 1 MiB",
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(OptionError::new(
                "replicas",
                self.replicas,
                "must be 1 to 5 (JetStream's limit)",
            ));
        }
        for (key, d) in [
            ("ack_wait", self.ack_wait),
            ("publish_timeout", self.publish_timeout),
            ("duplicate_window", self.duplicate_window),
        ] {
            if d.0 < Duration::from_millis(100) {
                return Err(OptionError::new(key, d, "must be at least 100ms"));
            }
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

/// What the queue and the sink each need to reach a server.
struct Connection<'a> {
    url: &'a str,
    token: Option<&'a Secret>,
    credentials_file: Option<&'a PathBuf>,
    ca_file: Option<&'a PathBuf>,
}

impl Connection<'_> {
    /// The servers of `url`, each with a scheme (`h:4222` becomes `nats://h:4222`).
    fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, OptionError> {
        let servers: Vec<_> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let with_scheme = if s.contains("://") {
                    s.to_string()
                } else {
                    format!("nats://{s}")
                };
                with_scheme.parse::<async_nats::ServerAddr>().map_err(|e| {
                    OptionError::new(
                        "url",
                        sluice_core::options::redact_url(s),
                        format!("is not a NATS server URL: {e}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        if servers.is_empty() {
            return Err(OptionError::new(
                "url",
                "nothing",
                format!("needs at least one server, e.g. {DEFAULT_URL}"),
            ));
        }
        Ok(servers)
    }

    fn validate(&self) -> Result<(), OptionError> {
        self.servers()?;
        for (key, file) in [
            ("credentials_file", self.credentials_file),
            ("ca_file", self.ca_file),
        ] {
            if let Some(path) = file.filter(|p| !p.is_file()) {
                return Err(OptionError::new(
                    key,
                    path.display(),
                    "is not a readable file",
                ));
            }
        }
        Ok(())
    }

    /// Connects with a bounded wait for the first connection; afterwards the client
    /// reconnects by itself, forever.
    async fn connect(&self) -> Result<async_nats::Client, Error> {
        self.validate()?;
        let shown = sluice_core::options::redact_url(self.url);
        let failed = |message: String| Error::Connect {
            servers: shown.clone(),
            message,
        };
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(CONNECT_TIMEOUT)
            .name("sluice");
        if let Some(token) = self.token {
            opts = opts.token(token.expose().to_string());
        }
        if let Some(path) = self.credentials_file {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| failed(format!("credentials_file {}: {e}", path.display())))?;
        }
        if let Some(path) = self.ca_file {
            opts = opts.add_root_certificates(path.clone());
        }
        opts.connect(self.servers()?)
            .await
            .map_err(|e| failed(e.to_string()))
    }
}

/// A JetStream stream name: non-empty, without whitespace, `.`, `*`, `>`, `/` or `\\`.
fn check_name(key: &'static str, name: &str) -> Result<(), OptionError> {
    let bad = |c: char| c.is_whitespace() || ".*>/\\".contains(c);
    if name.is_empty() || name.contains(bad) {
        return Err(OptionError::new(
            key,
            format!("{name:?}"),
            "must be a JetStream stream name: not empty, no whitespace, '.', '*', '>', '/' or '\\'",
        ));
    }
    Ok(())
}

/// A subject prefix: dot-separated tokens, none empty, no wildcards or whitespace.
fn check_subject_prefix(prefix: &str) -> Result<(), OptionError> {
    let bad_token =
        |t: &str| t.is_empty() || t.contains(|c: char| c.is_whitespace() || c == '*' || c == '>');
    if prefix.split('.').any(bad_token) {
        return Err(OptionError::new(
            "subject_prefix",
            format!("{prefix:?}"),
            "must be NATS subject tokens separated by dots: none empty, no wildcards or whitespace",
        ));
    }
    Ok(())
}
