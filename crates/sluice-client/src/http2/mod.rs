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

mod hpack;
mod huffman;

/// The HPACK and Huffman decoders, for the fuzz targets in `fuzz/` (crate
/// `sluice-fuzz`); not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use super::hpack::{encode_indexed, encode_literal, Decoder};
    pub use super::huffman::decode as huffman_decode;
}

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

pub use hpack::DecodeError;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

// Error codes (§7).
const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const COMPRESSION_ERROR: u32 = 0x9;

/// The frame size we accept (SETTINGS_MAX_FRAME_SIZE's default; we never raise it).
const MAX_FRAME: usize = 16_384;
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

struct Shared {
    state: Mutex<State>,
    /// Live [`Connection`] handles.
    handles: AtomicUsize,
    /// Set once new requests would fail (failed, GOAWAY, stream ids used up), so
    /// the pool can ask without taking the lock.
    closed: AtomicBool,
}

/// Stream ids are handed out in order, so they hash as themselves.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u32 keys")
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct State {
    /// Frames waiting for the driver to write them.
    out: Vec<u8>,
    streams: HashMap<u32, Stream, BuildHasherDefault<IdHasher>>,
    /// Streams whose answer has not arrived (what `MAX_CONCURRENT_STREAMS` bounds).
    active: usize,
    next_id: u32,
    /// The server's settings.
    max_streams: usize,
    initial_window: i64,
    max_frame: usize,
    /// What we may still send on the connection.
    send_window: i64,
    /// What the server may still send us on the connection, and what we read
    /// since our last WINDOW_UPDATE.
    recv_window: i64,
    recv_unacked: u32,
    /// Streams with body left to send, waiting for window.
    blocked: VecDeque<u32>,
    /// Requests waiting for a stream, by ticket, oldest first.
    waiters: VecDeque<(u64, Waker)>,
    next_ticket: u64,
    driver: Option<Waker>,
    /// Whether the driver was woken since it last took `out`.
    notified: bool,
    /// Set once the connection is unusable; every later request gets it.
    error: Option<Error>,
    /// After a GOAWAY: no new streams.
    going_away: bool,
}

struct Stream {
    send_window: i64,
    /// Body not yet sent.
    body: Bytes,
    /// Bytes read on this stream since our last WINDOW_UPDATE for it.
    recv_unacked: u32,
    status: Option<u16>,
    retry_after: Option<u64>,
    head_at: Option<Instant>,
    data: Vec<u8>,
    /// The answer, once it is whole (or failed).
    done: Option<Result<(), Error>>,
    waker: Option<Waker>,
}

/// Writes a frame header for a `len`-byte payload.
fn frame_head(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, id: u32) {
    let len = len as u32;
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&id.to_be_bytes());
}

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, id: u32, payload: &[u8]) {
    frame_head(out, payload.len(), ty, flags, id);
    out.extend_from_slice(payload);
}

/// The payload length in a frame header (its first three bytes).
fn frame_len(head: &[u8]) -> usize {
    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2])
}

fn conn_err(code: u32, why: &str) -> (u32, Arc<str>) {
    (code, Arc::from(why))
}

/// Opens HTTP/2 over `io` (TCP, or TLS that chose `h2`): sends the preface and
/// our SETTINGS, and waits for the server's SETTINGS. Spawn the returned driver;
/// it runs the connection until it closes.
pub async fn handshake<IO>(mut io: IO, opts: Options) -> std::io::Result<(Connection, Driver<IO>)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = PREFACE.to_vec();
    // ENABLE_PUSH = 0, INITIAL_WINDOW_SIZE = STREAM_WINDOW.
    let mut settings = Vec::with_capacity(12);
    settings.extend_from_slice(&[0, 2, 0, 0, 0, 0, 0, 4]);
    settings.extend_from_slice(&STREAM_WINDOW.to_be_bytes());
    frame(&mut out, SETTINGS, 0, 0, &settings);
    frame(
        &mut out,
        WINDOW_UPDATE,
        0,
        0,
        &(CONN_WINDOW - 65_535).to_be_bytes(),
    );
    io.write_all(&out).await?;
    io.flush().await?;

    // The server's preface is a SETTINGS frame; read until it is whole. The read
    // buffer holds one whole frame (what we must be able to take): small enough for
    // 10,000 connections per process, and still ~100 answers per read.
    let mut rbuf = vec![0u8; MAX_FRAME + 9];
    let mut have = 0;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    loop {
        if have >= 9 {
            let len = frame_len(&rbuf);
            if rbuf[3] != SETTINGS || rbuf[4] & ACK != 0 || len > MAX_FRAME {
                return Err(bad("the server did not start with SETTINGS"));
            }
            if have >= 9 + len {
                break;
            }
        }
        let n = io.read(&mut rbuf[have..]).await?;
        if n == 0 {
            return Err(bad(
                "the server closed the connection during the HTTP/2 handshake",
            ));
        }
        have += n;
    }
    let mut state = State {
        out: Vec::new(),
        streams: HashMap::default(),
        active: 0,
        next_id: 1,
        max_streams: usize::MAX,
        initial_window: 65_535,
        max_frame: MAX_FRAME,
        send_window: 65_535,
        recv_window: i64::from(CONN_WINDOW),
        recv_unacked: 0,
        blocked: VecDeque::new(),
        waiters: VecDeque::new(),
        next_ticket: 0,
        driver: None,
        notified: false,
        error: None,
        going_away: false,
    };
    let len = frame_len(&rbuf);
    state
        .settings(&rbuf[9..9 + len])
        .map_err(|(_, why)| bad(&why))?;
    rbuf.copy_within(9 + len..have, 0);
    have -= 9 + len;
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        handles: AtomicUsize::new(1),
        closed: AtomicBool::new(false),
    });
    let driver = Driver {
        io,
        shared: shared.clone(),
        rbuf,
        rlen: have,
        wbuf: Vec::new(),
        wpos: 0,
        decoder: hpack::Decoder::default(),
        partial: None,
        keep_alive: opts
            .keep_alive
            .map(|every| (Box::pin(tokio::time::sleep(every)), every, false)),
        leftover: have > 0,
        unflushed: false,
        done: false,
    };
    Ok((Connection { shared }, driver))
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection is over: every stream and waiting request gets `e`.
    fn fail(&self, e: Error) {
        let mut wake = Vec::new();
        self.lock().fail(e, &mut wake);
        self.closed.store(true, Ordering::Release);
        wake.into_iter().for_each(Waker::wake);
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

impl State {
    /// Queues HEADERS (and CONTINUATIONs if the block exceeds the frame size).
    fn headers(&mut self, id: u32, head: &[&[u8]], end_stream: bool) {
        let len: usize = head.iter().map(|p| p.len()).sum();
        let es = if end_stream { END_STREAM } else { 0 };
        if len <= self.max_frame {
            frame_head(&mut self.out, len, HEADERS, es | END_HEADERS, id);
            for p in head {
                self.out.extend_from_slice(p);
            }
            return;
        }
        let block = head.concat();
        let mut chunks = block.chunks(self.max_frame).peekable();
        let mut ty = HEADERS;
        let mut flags = es;
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            frame(
                &mut self.out,
                ty,
                flags | if last { END_HEADERS } else { 0 },
                id,
                c,
            );
            ty = CONTINUATION;
            flags = 0;
        }
    }

    /// Queues as much of the stream's body as the windows allow; true when all of it is queued.
    fn send_data(&mut self, id: u32, s: &mut Stream) -> bool {
        while !s.body.is_empty() {
            let n = (s.body.len() as i64)
                .min(s.send_window)
                .min(self.send_window)
                .min(self.max_frame as i64);
            if n <= 0 {
                return false;
            }
            let chunk = s.body.split_to(n as usize);
            let flags = if s.body.is_empty() { END_STREAM } else { 0 };
            frame(&mut self.out, DATA, flags, id, &chunk);
            s.send_window -= n;
            self.send_window -= n;
        }
        true
    }

    /// Sends what the windows now allow of blocked bodies.
    fn unblock(&mut self) {
        let mut still = VecDeque::new();
        while let Some(id) = self.blocked.pop_front() {
            let Some(mut s) = self.streams.remove(&id) else {
                continue;
            };
            let done = s.done.is_some() || self.send_data(id, &mut s);
            self.streams.insert(id, s);
            if !done {
                still.push_back(id);
                if self.send_window <= 0 {
                    break;
                }
            }
        }
        still.append(&mut self.blocked);
        self.blocked = still;
    }

    /// Takes a waiting request out of the line; false if it was not in it (woken).
    fn unqueue(&mut self, ticket: u64) -> bool {
        match self.waiters.iter().position(|(k, _)| *k == ticket) {
            Some(i) => {
                self.waiters.remove(i);
                true
            }
            None => false,
        }
    }

    /// Wakes the driver if it has not been since it last took the output.
    fn notify(&mut self, wake: &mut Vec<Waker>) {
        if !self.notified {
            self.notified = true;
            if let Some(w) = &self.driver {
                wake.push(w.clone());
            }
        }
    }

    /// A stream's answer is in (or it failed): frees its slot for a waiting request.
    fn finish_active(&mut self, wake: &mut Vec<Waker>) {
        self.active -= 1;
        if let Some((_, w)) = self.waiters.pop_front() {
            wake.push(w);
        }
    }

    /// Ends stream `id` with `result` and wakes its request.
    fn complete(&mut self, id: u32, result: Result<(), Error>, wake: &mut Vec<Waker>) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.done.is_some() {
            return;
        }
        let unsent = !s.body.is_empty();
        s.body = Bytes::new();
        s.done = Some(result);
        if let Some(w) = s.waker.take() {
            wake.push(w);
        }
        if unsent {
            // The server answered before reading the whole body: stop sending it.
            frame(&mut self.out, RST_STREAM, 0, id, &NO_ERROR.to_be_bytes());
        }
        self.finish_active(wake);
    }

    /// Applies the server's SETTINGS (not an ACK) and queues our ACK.
    fn settings(&mut self, payload: &[u8]) -> Result<(), (u32, Arc<str>)> {
        if !payload.len().is_multiple_of(6) {
            return Err(conn_err(
                FRAME_SIZE_ERROR,
                "SETTINGS length not a multiple of 6",
            ));
        }
        for s in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match u16::from_be_bytes([s[0], s[1]]) {
                0x3 => self.max_streams = value as usize,
                0x4 => {
                    if value > i32::MAX as u32 {
                        return Err(conn_err(FLOW_CONTROL_ERROR, "initial window too large"));
                    }
                    let delta = i64::from(value) - self.initial_window;
                    self.initial_window = i64::from(value);
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                    }
                }
                0x5 => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(conn_err(PROTOCOL_ERROR, "bad max frame size"));
                    }
                    self.max_frame = value as usize;
                }
                // HEADER_TABLE_SIZE: we never index, so any size suits us; ENABLE_PUSH and
                // MAX_HEADER_LIST_SIZE: nothing to do; unknown settings are ignored.
                _ => {}
            }
        }
        frame(&mut self.out, SETTINGS, ACK, 0, &[]);
        self.unblock();
        Ok(())
    }

    /// Marks the connection failed and fails every stream.
    fn fail(&mut self, e: Error, wake: &mut Vec<Waker>) {
        if self.error.is_none() {
            self.error = Some(e.clone());
        }
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.complete(id, Err(e.clone()), wake);
        }
        wake.extend(self.waiters.drain(..).map(|(_, w)| w));
    }
}

/// A header block being received across HEADERS and CONTINUATION frames.
struct Partial {
    id: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// Runs one connection: writes what requests queued, reads and dispatches what
/// the server sent. Spawn it; it ends when the connection closes.
pub struct Driver<IO> {
    io: IO,
    shared: Arc<Shared>,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    decoder: hpack::Decoder,
    partial: Option<Partial>,
    /// The PING timer, its period, and whether a PING is unanswered.
    keep_alive: Option<(Pin<Box<tokio::time::Sleep>>, Duration, bool)>,
    /// Whether `rbuf` holds bytes read during the handshake, not yet dispatched.
    leftover: bool,
    /// Whether bytes were written since the last completed flush.
    unflushed: bool,
    done: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Future for Driver<IO> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(());
        }
        match this.drive(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(e) => {
                this.done = true;
                this.shared.fail(e);
                Poll::Ready(())
            }
        }
    }
}

impl<IO> Drop for Driver<IO> {
    fn drop(&mut self) {
        // A runtime shutting down drops us: no request may wait forever.
        self.shared
            .fail(Error::Connection(Arc::from("the connection's task ended")));
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Driver<IO> {
    /// Reads, dispatches and writes until nothing is left to do (Pending) or the
    /// connection ends (Ready with the reason).
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        if std::mem::take(&mut self.leftover) {
            // Frames that came with the server's SETTINGS in the handshake's read.
            if let Err((code, why)) = self.dispatch() {
                return Poll::Ready(self.goaway(cx, code, why));
            }
        }
        for _ in 0..POLL_BUDGET {
            let mut progress = false;

            // Read whatever arrived and dispatch its whole frames.
            let mut buf = ReadBuf::new(&mut self.rbuf[self.rlen..]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n == 0 {
                        return Poll::Ready(Error::Connection(Arc::from(
                            "the server closed the connection",
                        )));
                    }
                    self.rlen += n;
                    if let Err((code, why)) = self.dispatch() {
                        return Poll::Ready(self.goaway(cx, code, why));
                    }
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Error::Connection(Arc::from(e.to_string())))
                }
                Poll::Pending => {}
            }

            if let Some((sleep, every, unanswered)) = &mut self.keep_alive {
                if sleep.as_mut().poll(cx).is_ready() {
                    if *unanswered {
                        return Poll::Ready(Error::Connection(Arc::from(
                            "no answer to a keep-alive PING",
                        )));
                    }
                    *unanswered = true;
                    let deadline = tokio::time::Instant::now() + *every;
                    sleep.as_mut().reset(deadline);
                    let mut st = self.shared.lock();
                    frame(&mut st.out, PING, 0, 0, &[0; 8]);
                    progress = true;
                }
            }

            // Take everything queued since the last write, and write it.
            if self.wpos == self.wbuf.len() {
                self.wbuf.clear();
                if self.wbuf.capacity() > 4 << 20 {
                    // A large body passed: do not keep its buffer for good.
                    self.wbuf = Vec::new();
                }
                self.wpos = 0;
                let mut st = self.shared.lock();
                std::mem::swap(&mut st.out, &mut self.wbuf);
                st.notified = false;
                match &st.driver {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.driver = Some(cx.waker().clone()),
                }
                let idle = st.streams.is_empty() && self.wbuf.is_empty();
                let unused = self.shared.handles.load(Ordering::Acquire) == 0;
                if idle && (unused || st.going_away) {
                    drop(st);
                    return self.close(cx);
                }
            }
            let mut wrote = false;
            while self.wpos < self.wbuf.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Error::Connection(Arc::from(
                            "the socket wrote nothing",
                        )))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.wpos += n;
                        wrote = true;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Error::Connection(Arc::from(e.to_string())))
                    }
                    Poll::Pending => break,
                }
            }
            if wrote {
                progress = true;
                self.unflushed = true;
            }
            // TLS may hold written bytes in its buffer: flush until it has none.
            if self.unflushed {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Error::Connection(Arc::from(e.to_string())))
                    }
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Out of budget: let other tasks run, then carry on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Ends an idle connection nobody uses any more: GOAWAY, then shut down.
    fn close(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let e = self.goaway(cx, NO_ERROR, Arc::from("closed by the client"));
        let _ = Pin::new(&mut self.io).poll_shutdown(cx);
        Poll::Ready(e)
    }

    /// Sends GOAWAY with `code` and gives up the connection. Best effort: the
    /// frame is small and goes straight to the socket or is lost with it.
    fn goaway(&mut self, cx: &mut Context<'_>, code: u32, why: Arc<str>) -> Error {
        let mut payload = [0u8; 8];
        payload[4..].copy_from_slice(&code.to_be_bytes());
        let mut f = Vec::new();
        frame(&mut f, GOAWAY, 0, 0, &payload);
        let _ = Pin::new(&mut self.io).poll_write(cx, &f);
        Error::Connection(why)
    }

    /// Handles every whole frame in the read buffer, under one lock.
    fn dispatch(&mut self) -> Result<(), (u32, Arc<str>)> {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let mut wake = Vec::new();
        let now = Instant::now();
        let mut at = 0;
        let rbuf = std::mem::take(&mut self.rbuf);
        let result = loop {
            let avail = &rbuf[at..self.rlen];
            if avail.len() < 9 {
                break Ok(());
            }
            let len = frame_len(avail);
            if len > MAX_FRAME {
                break Err(conn_err(
                    FRAME_SIZE_ERROR,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if avail.len() < 9 + len {
                break Ok(());
            }
            let (ty, flags) = (avail[3], avail[4]);
            let id = u32::from_be_bytes([avail[5], avail[6], avail[7], avail[8]]) & 0x7fff_ffff;
            let payload = &avail[9..9 + len];
            at += 9 + len;
            if let Err(e) = self.frame(&mut st, ty, flags, id, payload, now, &mut wake) {
                break Err(e);
            }
        };
        self.rbuf = rbuf;
        self.rbuf.copy_within(at..self.rlen, 0);
        self.rlen -= at;
        drop(st);
        wake.into_iter().for_each(Waker::wake);
        result
    }
}

impl<IO> Driver<IO> {
    /// Handles one frame from the server.
    #[allow(clippy::too_many_arguments)]
    fn frame(
        &mut self,
        st: &mut State,
        ty: u8,
        flags: u8,
        id: u32,
        payload: &[u8],
        now: Instant,
        wake: &mut Vec<Waker>,
    ) -> Result<(), (u32, Arc<str>)> {
        if self.partial.is_some() && ty != CONTINUATION {
            return Err(conn_err(PROTOCOL_ERROR, "header block interrupted"));
        }
        match ty {
            DATA => {
                if id == 0 {
                    return Err(conn_err(PROTOCOL_ERROR, "DATA on stream 0"));
                }
                // Flow control counts the whole payload, padding included.
                let len = payload.len() as u32;
                st.recv_window -= i64::from(len);
                if st.recv_window < 0 {
                    return Err(conn_err(FLOW_CONTROL_ERROR, "connection window exceeded"));
                }
                st.recv_unacked += len;
                if st.recv_unacked >= CONN_WINDOW / 4 {
                    let inc = std::mem::take(&mut st.recv_unacked);
                    st.recv_window += i64::from(inc);
                    frame(&mut st.out, WINDOW_UPDATE, 0, 0, &inc.to_be_bytes());
                }
                let data = unpad(flags, payload)?;
                let mut result = None;
                if let Some(s) = st.streams.get_mut(&id).filter(|s| s.done.is_none()) {
                    if s.status.is_none() {
                        result = Some(Err(Error::Connection(Arc::from(
                            "DATA before the response headers",
                        ))));
                    } else if s.data.len() + data.len() > MAX_BODY {
                        result = Some(Err(Error::TooLarge));
                    } else {
                        s.data.extend_from_slice(data);
                        s.recv_unacked += len;
                        if flags & END_STREAM != 0 {
                            result = Some(Ok(()));
                        } else if s.recv_unacked >= STREAM_WINDOW / 2 {
                            let inc = std::mem::take(&mut s.recv_unacked);
                            frame(&mut st.out, WINDOW_UPDATE, 0, id, &inc.to_be_bytes());
                        }
                    }
                }
                if let Some(r) = result {
                    if r.is_err() {
                        frame(&mut st.out, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
                    }
                    st.complete(id, r, wake);
                }
            }
            HEADERS => {
                if id == 0 {
                    return Err(conn_err(PROTOCOL_ERROR, "HEADERS on stream 0"));
                }
                let mut block = unpad(flags, payload)?;
                if flags & PRIORITY != 0 {
                    block = block
                        .get(5..)
                        .ok_or_else(|| conn_err(FRAME_SIZE_ERROR, "short HEADERS"))?;
                }
                let p = Partial {
                    id,
                    end_stream: flags & END_STREAM != 0,
                    block: block.to_vec(),
                };
                if flags & END_HEADERS != 0 {
                    self.head(st, p, now, wake)?;
                } else {
                    self.partial = Some(p);
                }
            }
            CONTINUATION => {
                let Some(mut p) = self.partial.take() else {
                    return Err(conn_err(PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
                };
                if p.id != id {
                    return Err(conn_err(PROTOCOL_ERROR, "CONTINUATION on another stream"));
                }
                if p.block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(conn_err(PROTOCOL_ERROR, "response header block too large"));
                }
                p.block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    self.head(st, p, now, wake)?;
                } else {
                    self.partial = Some(p);
                }
            }
            RST_STREAM => {
                let code = u32::from_be_bytes(
                    payload
                        .try_into()
                        .map_err(|_| conn_err(FRAME_SIZE_ERROR, "RST_STREAM length"))?,
                );
                let e = if code == REFUSED_STREAM {
                    Error::Refused
                } else {
                    Error::Reset(code)
                };
                st.complete(id, Err(e), wake);
            }
            SETTINGS => {
                if id != 0 {
                    return Err(conn_err(PROTOCOL_ERROR, "SETTINGS on a stream"));
                }
                if flags & ACK == 0 {
                    st.settings(payload)?;
                }
            }
            PUSH_PROMISE => {
                return Err(conn_err(PROTOCOL_ERROR, "PUSH_PROMISE, which we disabled"))
            }
            PING => {
                if payload.len() != 8 || id != 0 {
                    return Err(conn_err(FRAME_SIZE_ERROR, "bad PING"));
                }
                if flags & ACK == 0 {
                    frame(&mut st.out, PING, ACK, 0, payload);
                } else if let Some((_, _, unanswered)) = &mut self.keep_alive {
                    *unanswered = false;
                }
            }
            GOAWAY => {
                if payload.len() < 8 {
                    return Err(conn_err(FRAME_SIZE_ERROR, "short GOAWAY"));
                }
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                st.going_away = true;
                self.shared.closed.store(true, Ordering::Release);
                // Streams above `last` were never processed: safe to send again.
                let refused: Vec<u32> = st.streams.keys().copied().filter(|&i| i > last).collect();
                for i in refused {
                    st.complete(i, Err(Error::Refused), wake);
                }
                wake.extend(st.waiters.drain(..).map(|(_, w)| w));
            }
            WINDOW_UPDATE => {
                let inc = u32::from_be_bytes(
                    payload
                        .try_into()
                        .map_err(|_| conn_err(FRAME_SIZE_ERROR, "WINDOW_UPDATE length"))?,
                ) & 0x7fff_ffff;
                if id == 0 {
                    if inc == 0 {
                        return Err(conn_err(PROTOCOL_ERROR, "zero WINDOW_UPDATE"));
                    }
                    st.send_window += i64::from(inc);
                    if st.send_window > i64::from(i32::MAX) {
                        return Err(conn_err(FLOW_CONTROL_ERROR, "connection window overflow"));
                    }
                } else if let Some(s) = st.streams.get_mut(&id) {
                    s.send_window += i64::from(inc);
                }
                st.unblock();
            }
            // PRIORITY, and frame types we do not know, are ignored (§5.5).
            _ => {}
        }
        Ok(())
    }

    /// A whole response header block: decode it (always: the HPACK table depends
    /// on every block) and apply it to its stream.
    fn head(
        &mut self,
        st: &mut State,
        p: Partial,
        now: Instant,
        wake: &mut Vec<Waker>,
    ) -> Result<(), (u32, Arc<str>)> {
        let (mut status, mut retry_after) = (None, None);
        self.decoder
            .decode(&p.block, |name, value| match name {
                b":status" => {
                    status = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u16>().ok())
                }
                b"retry-after" => {
                    retry_after = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                }
                _ => {}
            })
            .map_err(|DecodeError(why)| conn_err(COMPRESSION_ERROR, why))?;
        let Some(s) = st.streams.get_mut(&p.id).filter(|s| s.done.is_none()) else {
            return Ok(());
        };
        let result = if s.status.is_none() {
            match status {
                // 1xx: informational, the real answer follows.
                Some(100..=199) if !p.end_stream => None,
                Some(code) => {
                    s.status = Some(code);
                    s.retry_after = retry_after;
                    s.head_at = Some(now);
                    p.end_stream.then_some(Ok(()))
                }
                None => Some(Err(Error::Connection(Arc::from(
                    "a response without :status",
                )))),
            }
        } else {
            // Trailers end the stream.
            p.end_stream.then_some(Ok(()))
        };
        if let Some(r) = result {
            st.complete(p.id, r, wake);
        }
        Ok(())
    }
}

/// The data of a possibly PADDED frame.
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], (u32, Arc<str>)> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or_else(|| conn_err(FRAME_SIZE_ERROR, "padded frame without a pad length"))?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|n| &rest[..n])
        .ok_or_else(|| conn_err(PROTOCOL_ERROR, "padding longer than the frame"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever frames a broken or hostile server sends, a request ends (answer or
    /// error) and nothing panics: 2,000 random frame sequences over an in-memory pipe.
    #[tokio::test]
    async fn random_frames_never_panic_or_hang() {
        let mut rng = fastrand::Rng::with_seed(0x5EED);
        for round in 0..1_000 {
            let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
            let mut script = Vec::new();
            frame(&mut script, SETTINGS, 0, 0, &[]);
            for _ in 0..rng.usize(1..8) {
                let ty = rng.u8(0..11);
                let flags = rng.u8(..);
                let id = [0, 1, 1, 3, rng.u32(..)][rng.usize(0..5)];
                let mut payload = vec![0u8; rng.usize(0..40)];
                rng.fill(&mut payload);
                if rng.bool() {
                    // Often a plausible answer: a status, then a body.
                    payload = vec![0x88];
                }
                frame(&mut script, ty, flags, id, &payload);
            }
            let server = tokio::spawn(async move {
                let mut sink = vec![0u8; 1 << 16];
                let _ = server_io.read(&mut sink).await;
                let _ = server_io.write_all(&script).await;
                // Then silence, and finally hang up.
                tokio::time::sleep(Duration::from_millis(1)).await;
            });
            let Ok((conn, driver)) = handshake(client_io, Options::default()).await else {
                continue;
            };
            let driver = tokio::spawn(driver);
            let head = encode_post(false, "x", "/v1/streams/s/events");
            let sent = tokio::time::timeout(
                Duration::from_secs(5),
                conn.send(&[&head], &Bytes::from_static(b"{}")),
            )
            .await;
            assert!(sent.is_ok(), "round {round}: the request hung");
            server.await.unwrap();
            drop(conn);
            tokio::time::timeout(Duration::from_secs(5), driver)
                .await
                .expect("the driver ends")
                .expect("the driver did not panic");
        }
    }
}
