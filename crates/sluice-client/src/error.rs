//! The client's errors: [`BuildError`] when a client is configured, [`ClientError`]
//! when a request fails.

use std::net::SocketAddr;
use std::time::Duration;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The base URL is not `http://host[:port]` or `https://host[:port]`.
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    /// The CA bundle could not be read or holds no certificate.
    #[error("reading the CA bundle {path}")]
    Ca {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// rustls refused the TLS configuration.
    #[error("building the TLS configuration")]
    Tls(#[source] rustls::Error),
}

/// Why a request failed. [`ClientError::kind`] names it in a few bounded words (for
/// metrics and load reports); [`ClientError::is_retryable`] says whether a retry can
/// succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// DNS resolution failed or found no address.
    #[error("resolving {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection could not be made.
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {server}")]
    Tls {
        server: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP handshake on a fresh connection failed.
    #[error("HTTP handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request or response failed on the wire.
    #[error("request failed on the connection")]
    Http(#[source] hyper::Error),
    /// The request or response failed on the client's own HTTP/2 connection.
    #[error("request failed on the HTTP/2 connection")]
    Http2(#[source] crate::http2::Error),
    /// The attempt took longer than the configured timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with an error status.
    #[error("rejected with HTTP {status}: {code}: {message}")]
    Rejected {
        status: u16,
        /// The `error.code` of the JSON body (e.g. `rate_limited`), or empty.
        code: String,
        message: String,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// The answer was not what the API promises (e.g. a 202 without `accepted`).
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// A gRPC call ended with a non-OK status.
    #[error("gRPC status {code:?}: {message}")]
    Grpc {
        code: tonic::Code,
        message: String,
        /// From the `google.rpc.RetryInfo` detail or the `retry-after` metadata.
        retry_after: Option<Duration>,
    },
}

impl ClientError {
    /// Whether retrying the same request can succeed: 429 and 503, gRPC
    /// `UNAVAILABLE` and `RESOURCE_EXHAUSTED` with a retry delay, and failures to
    /// connect (nothing was sent on those).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Rejected { status, .. } => matches!(status, 429 | 503),
            // sluice's RESOURCE_EXHAUSTED back-pressure carries a retry delay; without
            // one it is gRPC's "message over the size limit", which no retry fixes.
            ClientError::Grpc {
                code, retry_after, ..
            } => match code {
                tonic::Code::Unavailable => true,
                tonic::Code::ResourceExhausted => retry_after.is_some(),
                _ => false,
            },
            ClientError::Resolve { .. }
            | ClientError::Connect { .. }
            | ClientError::Tls { .. }
            | ClientError::Handshake { .. } => true,
            // Refused streams were never processed.
            ClientError::Http2(crate::http2::Error::Refused) => true,
            _ => false,
        }
    }

    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Rejected { retry_after, .. } | ClientError::Grpc { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// A short, bounded name: `http_429`, `grpc_unavailable`, `connect`, `timeout`...
    pub fn kind(&self) -> String {
        match self {
            ClientError::Resolve { .. } => "dns".into(),
            ClientError::Connect { .. } => "connect".into(),
            ClientError::Tls { .. } => "tls".into(),
            ClientError::Handshake { .. } => "handshake".into(),
            ClientError::Http(_) => "io".into(),
            ClientError::Http2(e) => match e {
                crate::http2::Error::Refused => "refused".into(),
                crate::http2::Error::Reset(_) => "reset".into(),
                crate::http2::Error::TooLarge => "protocol".into(),
                crate::http2::Error::Connection(_) => "io".into(),
            },
            ClientError::Timeout(_) => "timeout".into(),
            ClientError::Rejected { status, .. } => format!("http_{status}"),
            ClientError::Protocol(_) => "protocol".into(),
            ClientError::Grpc { code, .. } => format!("grpc_{}", grpc_code_name(*code)),
        }
    }

    /// Builds the error for a gRPC status, reading its retry delay.
    pub fn from_status(status: &tonic::Status) -> ClientError {
        use tonic_types::StatusExt;
        let retry_after = status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .or_else(|| {
                status
                    .metadata()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
            });
        ClientError::Grpc {
            code: status.code(),
            message: status.message().to_string(),
            retry_after,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> ClientError {
        ClientError::from_status(&status)
    }
}

fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}
