//! The request messages of a gRPC call, read from the HTTP/2 body by hand.
//!
//! ```text
//! message := compressed:u8 (0 or 1) | length:u32 (big-endian) | length bytes
//! ```
//!
//! tonic's server decoder decompresses inline on the async runtime, with zstd's
//! default 128 MiB window and no budget; reading the frames here instead lets a
//! message be refused on its length prefix alone (over `http.max_body_bytes`), its
//! bytes be charged to the byte budget as they arrive, and its decompression and
//! decoding happen later, bounded and off the runtime (`grpc::decode`).
//!
//! [`Messages::next`] is cancel-safe: everything read so far stays in the reader,
//! so the streaming calls can use it in `select!`.

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::ApiError;
use crate::front::budget::{Budget, Charge};

/// One request message as received (still compressed if `compressed`), with the
/// budget charge of its bytes.
pub struct Raw {
    pub bytes: Bytes,
    pub compressed: bool,
    pub charge: Charge,
}

/// The request messages of one call.
pub struct Messages {
    body: Incoming,
    buf: BytesMut,
    /// What `buf` holds, charged to the budget.
    buffered: Charge,
    limit: u64,
    ended: bool,
}

impl Messages {
    /// Reads `body`; messages over `limit` bytes are refused from their prefix.
    pub fn new(body: Incoming, budget: &std::sync::Arc<Budget>, limit: u64) -> Messages {
        Messages {
            body,
            buf: BytesMut::new(),
            buffered: budget.charge(),
            limit,
            ended: false,
        }
    }

    /// The next message, `None` once the client has ended its stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Raw>, ApiError> {
        loop {
            if let Some(raw) = self.take()? {
                return Ok(Some(raw));
            }
            if self.ended {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ApiError::bad_request(
                    "invalid_protobuf",
                    format!(
                        "the stream ended inside a message ({} bytes of it received)",
                        self.buf.len()
                    ),
                ));
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(e)) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "body_read_error",
                        format!("reading the request stream failed: {e}"),
                    ))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffered.add(data.len() as u64)?;
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// A whole message from the buffer, if there is one.
    fn take(&mut self) -> Result<Option<Raw>, ApiError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let compressed = match self.buf[0] {
            0 => false,
            1 => true,
            f => {
                return Err(ApiError::bad_request(
                    "invalid_protobuf",
                    format!("invalid gRPC compression flag {f} (valid flags are 0 and 1)"),
                ))
            }
        };
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if u64::from(len) > self.limit {
            let what = if compressed {
                "a compressed request message"
            } else {
                "a request message"
            };
            return Err(ApiError::message_too_large(
                &format!("{what} of {len} bytes"),
                self.limit,
            ));
        }
        let len = len as usize;
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let bytes = self.buf.split_to(len).freeze();
        self.buffered.release(5);
        let charge = self.buffered.split_off(len as u64);
        Ok(Some(Raw {
            bytes,
            compressed,
            charge,
        }))
    }
}
