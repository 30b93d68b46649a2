//! The client's own HTTP/2 connection (RFC 9113), for the one request shape the
//! ingest API has: a `POST` with a body whose small answer is read whole.
//!
//! Why not hyper's: a request there is a channel message to the connection task,
//! a spawned task to stream its body, and a write per wake-up, which made the
//! client cost ~7 µs of CPU per request. Here a request appends its frames to
//! the connection's output buffer under one lock and waits; a single driver task
//! per connection writes everything queued since its last write in one syscall
//! and reads every frame that arrived in one, so under load one write carries
//! many requests and one read many answers.
//!
//! What it does: the connection preface and SETTINGS both ways (a request waits
//! for a free stream under the server's `MAX_CONCURRENT_STREAMS`), flow control
//! both ways (bodies larger than the server's windows wait for WINDOW_UPDATE; we
//! return what we read), HPACK decoding with the dynamic table and Huffman
//! strings, CONTINUATION and padding, PING answers and keep-alive PINGs, GOAWAY
//! (requests the server will not process fail as [`Error::Refused`], which is safe
//! to retry), RST_STREAM, and cancellation: dropping a request's future resets its
//! stream. What it does not: server push (disabled in our SETTINGS), request
//! trailers, priorities.
//!
//! ```text
//! mod.rs      Connection: the handle requests use (open a stream, wait for its answer, cancel)
//! frame.rs    the frame header, types, flags and error codes
//! state.rs    what requests and the driver share under one lock: streams, windows, settings
//! driver.rs   the handshake and the connection's task: one write, one read per wake-up
//! inbound.rs  each received frame applied to the state
//! hpack.rs    header compression (RFC 7541), with huffman.rs
//! ```

mod driver;
mod frame;
mod hpack;
mod huffman;
mod inbound;
mod state;

/// The HPACK and Huffman decoders, for the fuzz targets in `fuzz/` (crate
/// `sluice-fuzz`); not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use super::hpack::{encode_indexed, encode_literal, Decoder};
    pub use super::huffman::decode as huffman_decode;
}

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use driver::{handshake, Driver};
pub use hpack::DecodeError;

use frame::*;
use state::{Shared, Stream};

/// Our per-stream receive window, announced in SETTINGS.
const STREAM_WINDOW: u32 = 1 << 20;
/// Our connection receive window, set by a WINDOW_UPDATE after the preface.
const CONN_WINDOW: u32 = 4 << 20;
/// The largest response body we keep (answers are a few hundred bytes).
const MAX_BODY: usize = 4 << 20;
/// The largest response header block (all its CONTINUATIONs together).
const MAX_HEADER_BLOCK: usize = 256 << 10;
/// The most a driver does in one poll before letting other tasks run.
const POLL_BUDGET: usize = 32;

/// Why a request or the connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server will not process this request (GOAWAY below its stream, or
    /// REFUSED_STREAM): nothing was done, so it is safe to send it again.
    #[error("the server refused the stream before processing it")]
    Refused,
    /// The server reset the stream with this error code.
    #[error("the server reset the stream (HTTP/2 error code {0:#x})")]
    Reset(u32),
    /// The answer is larger than the client keeps.
    #[error("the response body is over {MAX_BODY} bytes")]
    TooLarge,
    /// The connection is gone: closed, broken, or a protocol error.
    #[error("HTTP/2 connection failed: {0}")]
    Connection(Arc<str>),
}

/// A response read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// `Retry-After` in whole seconds, when the server sent one.
    pub retry_after: Option<u64>,
    pub body: Bytes,
    /// When the response's headers arrived.
    pub head_at: Instant,
}

/// Options for a connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Send a PING this often; no answer by the next one closes the connection.
    pub keep_alive: Option<Duration>,
}

/// A handle to one connection. Cheap to clone; the connection closes (GOAWAY)
/// once every handle is dropped and every request has finished.
pub struct Connection {
    shared: Arc<Shared>,
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Connection {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last handle: let the driver see it and close when idle.
            let waker = self.shared.lock().driver.clone();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl Connection {
    /// Whether new requests would fail here (closed, broken, or after GOAWAY).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Sends a request whose HPACK header block is the concatenation of `head`'s
    /// pieces (see [`encode_post`]) with `body`, and reads its answer whole.
    /// Dropping the future cancels the request (RST_STREAM CANCEL).
    pub async fn send(&self, head: &[&[u8]], body: &Bytes) -> Result<Response, Error> {
        let mut wait = Wait {
            shared: &self.shared,
            ticket: None,
        };
        let id =
            std::future::poll_fn(|cx| self.shared.open(cx, head, body, &mut wait.ticket)).await?;
        drop(wait);
        let mut guard = Cancel {
            shared: &self.shared,
            id,
            armed: true,
        };
        let r = std::future::poll_fn(|cx| self.shared.poll_response(cx, id)).await;
        guard.armed = false;
        r
    }
}

/// A request waiting for a stream. Dropped while queued, it leaves the queue;
/// dropped after it was woken but before it took the free stream, it passes the
/// wake-up on, so no other waiting request misses it.
struct Wait<'a> {
    shared: &'a Shared,
    ticket: Option<u64>,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket else {
            return;
        };
        let mut st = self.shared.lock();
        if st.unqueue(ticket) {
            return;
        }
        let next = (st.active < st.max_streams)
            .then(|| st.waiters.pop_front())
            .flatten();
        drop(st);
        if let Some((_, w)) = next {
            w.wake();
        }
    }
}

/// Resets a stream whose request future was dropped before its answer.
struct Cancel<'a> {
    shared: &'a Shared,
    id: u32,
    armed: bool,
}

impl Drop for Cancel<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.shared.lock();
        let Some(s) = st.streams.remove(&self.id) else {
            return;
        };
        let mut wake = Vec::new();
        if s.done.is_none() {
            st.finish_active(&mut wake);
            if st.error.is_none() {
                frame(&mut st.out, RST_STREAM, 0, self.id, &CANCEL.to_be_bytes());
                st.notify(&mut wake);
            }
        }
        drop(st);
        wake.into_iter().for_each(Waker::wake);
    }
}

/// The HPACK of `:method POST`, `:scheme`, `:path` and `:authority`. A request's
/// header block is this followed by [`encode_field`]s; it is the same bytes for
/// every request to an endpoint, so callers build it once.
pub fn encode_post(https: bool, authority: &str, path: &str) -> Vec<u8> {
    use hpack::index;
    let mut b = Vec::with_capacity(8 + path.len() + authority.len());
    hpack::encode_indexed(&mut b, index::METHOD_POST);
    let scheme = if https {
        index::SCHEME_HTTPS
    } else {
        index::SCHEME_HTTP
    };
    hpack::encode_indexed(&mut b, scheme);
    hpack::encode_literal(&mut b, index::PATH, path.as_bytes(), false);
    hpack::encode_literal(&mut b, index::AUTHORITY, authority.as_bytes(), false);
    b
}

/// A header the ingest API reads.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    ContentType,
    /// Never indexed, by the server or by any intermediary.
    Authorization,
}

/// The HPACK of one header field.
pub fn encode_field(field: Field, value: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + value.len());
    match field {
        Field::ContentType => {
            hpack::encode_literal(&mut b, hpack::index::CONTENT_TYPE, value, false)
        }
        Field::Authorization => {
            hpack::encode_literal(&mut b, hpack::index::AUTHORIZATION, value, true)
        }
    }
    b
}

impl Shared {
    /// Opens a stream and queues its frames, or waits for a free stream.
    fn open(
        &self,
        cx: &mut Context<'_>,
        head: &[&[u8]],
        body: &Bytes,
        ticket: &mut Option<u64>,
    ) -> Poll<Result<u32, Error>> {
        let mut st = self.lock();
        if st.error.is_none() && !st.going_away && st.active >= st.max_streams {
            // Wait in line: keep our place (with this poll's waker) if we have one.
            let place = ticket.and_then(|t| st.waiters.iter_mut().find(|(k, _)| *k == t));
            match place {
                Some((_, w)) if w.will_wake(cx.waker()) => {}
                Some((_, w)) => *w = cx.waker().clone(),
                None => {
                    let t = st.next_ticket;
                    st.next_ticket += 1;
                    st.waiters.push_back((t, cx.waker().clone()));
                    *ticket = Some(t);
                }
            }
            return Poll::Pending;
        }
        if let Some(t) = ticket.take() {
            st.unqueue(t);
        }
        if let Some(e) = &st.error {
            return Poll::Ready(Err(e.clone()));
        }
        if st.going_away || st.next_id > i32::MAX as u32 {
            return Poll::Ready(Err(Error::Refused));
        }
        let id = st.next_id;
        st.next_id += 2;
        if st.next_id > i32::MAX as u32 {
            self.closed.store(true, Ordering::Release);
        }
        st.active += 1;
        st.headers(id, head, body.is_empty());
        let mut s = Stream {
            send_window: st.initial_window,
            body: body.clone(),
            recv_unacked: 0,
            status: None,
            retry_after: None,
            head_at: None,
            data: Vec::new(),
            done: None,
            waker: None,
        };
        if !s.body.is_empty() && !st.send_data(id, &mut s) {
            st.blocked.push_back(id);
        }
        st.streams.insert(id, s);
        let mut wake = Vec::new();
        st.notify(&mut wake);
        drop(st);
        wake.into_iter().for_each(Waker::wake);
        Poll::Ready(Ok(id))
    }

    fn poll_response(&self, cx: &mut Context<'_>, id: u32) -> Poll<Result<Response, Error>> {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(Error::Connection(Arc::from("stream lost"))));
        };
        match s.done.take() {
            None => {
                match &s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Some(result) => {
                let s = st.streams.remove(&id).expect("present");
                // The last answer on a connection that is going away, or that nobody
                // holds any more: the driver may close it now.
                let closing = st.going_away || self.handles.load(Ordering::Acquire) == 0;
                if closing && st.streams.is_empty() {
                    if let Some(w) = st.driver.clone() {
                        w.wake();
                    }
                }
                Poll::Ready(result.map(|()| Response {
                    status: s.status.unwrap_or_default(),
                    retry_after: s.retry_after,
                    body: Bytes::from(s.data),
                    head_at: s.head_at.unwrap_or_else(Instant::now),
                }))
            }
        }
    }
}
