//! One request of each mode: what a load worker sends and how it knows the events
//! were accepted.
//!
//! | mode | one request is |
//! |---|---|
//! | `http1`, `http2` | one `POST` of `--batch` NDJSON lines |
//! | `grpc-unary` | one `Ingest` call with `--batch` events |
//! | `grpc-stream` | one `IngestStream` call of `--messages` messages of `--batch` events |
//! | `grpc-bidi` | one message of `--batch` events on the worker's long-lived `IngestBidi` stream, until its ack |

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream;
use sluice_proto::v1::{Event, IngestAck, IngestRequest};
use tokio::sync::mpsc;

use sluice_client::{Body, Client, ClientError, Endpoint, GrpcClient};

use super::Mode;

/// The payload of one request, built once.
#[derive(Clone)]
pub struct Payload {
    /// NDJSON body for HTTP.
    pub body: Body,
    /// The same events for gRPC.
    pub request: IngestRequest,
    /// Events per request.
    pub events: u64,
    /// Payload bytes per request (the events' bytes, without framing).
    pub bytes: u64,
}

impl Payload {
    /// `batch` events cycling through `lines`.
    pub fn new(stream: &str, lines: &[Bytes], batch: usize) -> Payload {
        let mut body = BytesMut::new();
        let mut events = Vec::with_capacity(batch);
        let mut bytes = 0;
        for i in 0..batch.max(1) {
            let line = &lines[i % lines.len()];
            body.put_slice(line);
            body.put_u8(b'\n');
            bytes += line.len() as u64;
            events.push(Event {
                payload: line.clone(),
                ..Default::default()
            });
        }
        Payload {
            body: Body::ndjson(body.freeze()),
            request: IngestRequest {
                stream: stream.to_string(),
                events,
                return_ids: false,
            },
            events: batch.max(1) as u64,
            bytes,
        }
    }

    /// One JSON object of about `size` bytes.
    pub fn sized_event(size: usize) -> Bytes {
        let head = br#"{"source":"sluice-load","pad":""#;
        let tail = br#""}"#;
        let pad = size.saturating_sub(head.len() + tail.len());
        let mut b = BytesMut::with_capacity(head.len() + pad + tail.len());
        b.put_slice(head);
        b.put_bytes(b'x', pad);
        b.put_slice(tail);
        b.freeze()
    }
}

/// A worker's connection to the server in its mode.
pub enum Shooter {
    Http {
        client: Client,
        endpoint: Endpoint,
    },
    Unary {
        client: Box<GrpcClient>,
    },
    Stream {
        client: Box<GrpcClient>,
        messages: usize,
    },
    Bidi {
        client: Box<GrpcClient>,
        open: Option<(mpsc::Sender<IngestRequest>, tonic::Streaming<IngestAck>)>,
    },
}

/// The shared client of a run.
#[derive(Clone)]
pub enum Shared {
    Http(Client, Endpoint),
    Grpc(GrpcClient),
}

impl Shooter {
    pub fn new(mode: Mode, shared: &Shared, messages: usize) -> Shooter {
        match (mode, shared) {
            (_, Shared::Http(c, e)) => Shooter::Http {
                client: c.clone(),
                endpoint: e.clone(),
            },
            (Mode::GrpcStream, Shared::Grpc(c)) => Shooter::Stream {
                client: Box::new(c.clone()),
                messages: messages.max(1),
            },
            (Mode::GrpcBidi, Shared::Grpc(c)) => Shooter::Bidi {
                client: Box::new(c.clone()),
                open: None,
            },
            (_, Shared::Grpc(c)) => Shooter::Unary {
                client: Box::new(c.clone()),
            },
        }
    }

    /// Sends one request; the events the server accepted.
    pub async fn shoot(&mut self, p: &Payload) -> Result<u64, ClientError> {
        match self {
            Shooter::Http { client, endpoint } => client
                .send_once(endpoint, &p.body)
                .await
                .map(|a| a.accepted),
            Shooter::Unary { client } => client
                .ingest_once(&p.request)
                .await
                .map(|a| a.response.accepted),
            Shooter::Stream { client, messages } => {
                let msgs = stream::iter(std::iter::repeat_n(p.request.clone(), *messages));
                client.ingest_stream(msgs).await.map(|r| r.accepted)
            }
            Shooter::Bidi { client, open } => {
                if open.is_none() {
                    let (tx, rx) = mpsc::channel::<IngestRequest>(1);
                    let msgs =
                        stream::unfold(
                            rx,
                            |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
                        );
                    let acks = client.ingest_bidi(msgs).await?;
                    *open = Some((tx, acks));
                }
                let (tx, acks) = open.as_mut().expect("opened above");
                let sent = tx.send(p.request.clone()).await.is_ok();
                let ack = if sent { acks.message().await } else { Ok(None) };
                match ack {
                    Ok(Some(ack)) if ack.error.is_empty() => Ok(ack.accepted),
                    Ok(Some(ack)) => Err(ack_error(&ack)),
                    Ok(None) => {
                        *open = None;
                        Err(ClientError::Protocol("the bidi stream ended".into()))
                    }
                    Err(status) => {
                        *open = None;
                        Err(ClientError::from_status(&status))
                    }
                }
            }
        }
    }
}

/// The error of a rejected bidi message (`"<Code>: <message>"`).
fn ack_error(ack: &IngestAck) -> ClientError {
    use tonic::Code;
    let (name, message) = ack
        .error
        .split_once(": ")
        .unwrap_or(("", ack.error.as_str()));
    let code = match name.replace('_', "").to_ascii_lowercase().as_str() {
        "resourceexhausted" => Code::ResourceExhausted,
        "unavailable" => Code::Unavailable,
        "invalidargument" => Code::InvalidArgument,
        "permissiondenied" => Code::PermissionDenied,
        "unauthenticated" => Code::Unauthenticated,
        "deadlineexceeded" => Code::DeadlineExceeded,
        "notfound" => Code::NotFound,
        "internal" => Code::Internal,
        _ => Code::Unknown,
    };
    ClientError::Grpc {
        code,
        message: message.to_string(),
        retry_after: (ack.retry_after_ms > 0)
            .then(|| std::time::Duration::from_millis(ack.retry_after_ms)),
    }
}
