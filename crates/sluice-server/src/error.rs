//! The one place where typed errors become answers: HTTP
//! `{"error": {"code": "...", "message": "...", "line": N}}` with the right status and
//! `Retry-After` where a retry can succeed; gRPC statuses with the same message and a
//! `google.rpc.RetryInfo` detail (plus `retry-after` metadata, in seconds); and the
//! metric reason (`code`) for both.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use sluice_core::{AppendError, StreamNameError};
use sluice_proto::body::BodyError;

/// An error answer of the ingest API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Machine-readable code; also the `reason` label of the rejection metric.
    pub code: &'static str,
    pub message: String,
    pub line: Option<usize>,
    pub retry_after: Option<Duration>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            line: None,
            retry_after: None,
            allow: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Marks the error as about the `n`th event of a gRPC request message.
    pub fn at_event(mut self, n: usize) -> ApiError {
        self.line = Some(n);
        self.message = format!("event {n}: {}", self.message);
        self
    }

    pub fn retry_after(mut self, d: Duration) -> ApiError {
        self.retry_after = Some(d);
        self
    }

    pub fn not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; events go to POST /v1/streams/{stream}/events",
        )
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this endpoint takes {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn too_large(what: &str, limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{what} is larger than http.max_body_bytes ({limit} bytes)"),
        )
    }

    /// A gRPC request message over `http.max_body_bytes` (compressed or not):
    /// RESOURCE_EXHAUSTED, as gRPC does for oversized messages.
    pub fn message_too_large(what: &str, limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("{what} is over the size limit http.max_body_bytes ({limit} bytes)"),
        )
    }

    pub fn shutting_down() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "sluice is shutting down; retry against another node or later",
        )
        .retry_after(Duration::from_secs(1))
    }

    /// Renders the answer.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(serde::Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            line: Option<usize>,
        }
        let body = serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                line: self.line,
            },
        })
        .expect("serialising a plain struct cannot fail");
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(d) = self.retry_after {
            let secs = d.as_secs_f64().ceil().max(1.0) as u64;
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        r
    }
}

impl ApiError {
    /// The gRPC status for this error: the HTTP status picks the code, the message is
    /// `"<code>: <message>"`, and a retryable error carries its delay.
    pub fn into_status(self) -> tonic::Status {
        use tonic::Code;
        let code = match self.status.as_u16() {
            // gRPC's convention for a message over the size limit (no RetryInfo:
            // retrying the same message cannot succeed).
            413 if self.code == "message_too_large" => Code::ResourceExhausted,
            400 | 413 | 415 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            405 => Code::Unimplemented,
            408 => Code::DeadlineExceeded,
            429 => Code::ResourceExhausted,
            503 => Code::Unavailable,
            _ => Code::Internal,
        };
        let message = format!("{}: {}", self.code, self.message);
        let Some(delay) = self.retry_after else {
            return tonic::Status::new(code, message);
        };
        use tonic_types::{ErrorDetails, StatusExt};
        let mut status = tonic::Status::with_error_details(
            code,
            message,
            ErrorDetails::with_retry_info(Some(delay)),
        );
        let secs = delay.as_secs_f64().ceil().max(1.0) as u64;
        status.metadata_mut().insert("retry-after", secs.into());
        status
    }
}

/// The retry delay a status carries (its `google.rpc.RetryInfo`), in milliseconds; 0
/// when it has none.
pub fn retry_after_ms(status: &tonic::Status) -> u64 {
    use tonic_types::StatusExt;
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .map_or(0, |d| d.as_millis() as u64)
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        let status = match e.code {
            "too_many_events" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut a = ApiError::new(status, e.code, e.message);
        a.line = e.line;
        a
    }
}

impl From<StreamNameError> for ApiError {
    fn from(e: StreamNameError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_stream", e.to_string())
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> ApiError {
        match e {
            AppendError::Full {
                retry_after,
                reason,
                ..
            } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!("queue is full ({reason}); retry later"),
            )
            .retry_after(retry_after),
            AppendError::ShuttingDown => ApiError::shutting_down(),
            e @ AppendError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            AppendError::Backend { message } => {
                // The reason names files, brokers and addresses: it is for the
                // operator (`/readyz`, the log), never for producers.
                tracing::debug!(reason = %message, "queue refused an append");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    "the queue cannot take events right now (the node's /readyz says why); \
                     the events were not acknowledged",
                )
                .retry_after(Duration::from_secs(5))
            }
        }
    }
}
