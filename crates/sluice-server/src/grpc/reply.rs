//! gRPC responses written by hand: one message (or a stream of them) as
//! length-prefixed data frames, then the status in trailers; an error before any
//! message is a trailers-only response (tonic's `Status::into_http`).

use std::convert::Infallible;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{self, StreamExt};
use http::{HeaderMap, HeaderValue};
use http_body_util::StreamBody;
use hyper::body::Frame;
use sluice_proto::prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

/// A gRPC answer.
pub type GrpcResponse = http::Response<tonic::body::Body>;

/// The encodings the service accepts, announced on every answer.
const ACCEPT_ENCODING: &str = "gzip,zstd,identity";

/// A trailers-only answer carrying `status`.
pub fn status(status: Status) -> GrpcResponse {
    let mut r = status.into_http::<tonic::body::Body>();
    r.headers_mut().insert(
        "grpc-accept-encoding",
        HeaderValue::from_static(ACCEPT_ENCODING),
    );
    r
}

/// One message, then `OK`.
pub fn unary<M: Message>(message: &M) -> GrpcResponse {
    let frames: [Result<Frame<Bytes>, Infallible>; 2] = [
        Ok(Frame::data(frame(message))),
        Ok(Frame::trailers(trailers(None))),
    ];
    respond(StreamBody::new(stream::iter(frames)))
}

/// The messages `rx` yields until it ends (`OK`) or yields an error (that status).
pub fn streaming<M: Message + Send + 'static>(
    rx: mpsc::Receiver<Result<M, Status>>,
) -> GrpcResponse {
    let frames = stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let frame = match rx.recv().await {
            Some(Ok(m)) => return Some((Ok::<_, Infallible>(Frame::data(frame(&m))), Some(rx))),
            Some(Err(s)) => Frame::trailers(trailers(Some(&s))),
            None => Frame::trailers(trailers(None)),
        };
        Some((Ok(frame), None))
    });
    respond(StreamBody::new(frames.boxed()))
}

fn respond<B>(body: B) -> GrpcResponse
where
    B: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    let mut r = http::Response::new(tonic::body::Body::new(body));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-accept-encoding",
        HeaderValue::from_static(ACCEPT_ENCODING),
    );
    r
}

fn frame<M: Message>(m: &M) -> Bytes {
    let len = m.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    m.encode(&mut buf)
        .expect("the buffer has room for the message");
    buf.freeze()
}

fn trailers(status: Option<&Status>) -> HeaderMap {
    let mut map = HeaderMap::new();
    match status {
        None => {
            map.insert("grpc-status", HeaderValue::from_static("0"));
        }
        Some(s) => {
            if s.add_header(&mut map).is_err() {
                map.insert("grpc-status", HeaderValue::from_static("13"));
            }
        }
    }
    map
}
