//! What a connection's requests and its driver share, under one lock: the
//! streams, both directions' flow-control windows, the server's settings, the
//! requests waiting for a free stream, and the frames queued for the driver to
//! write. Requests change it when they open or cancel a stream; the driver when
//! frames arrive.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

use super::frame::*;
use super::Error;

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Live [`Connection`](super::Connection) handles.
    pub(super) handles: AtomicUsize,
    /// Set once new requests would fail (failed, GOAWAY, stream ids used up), so
    /// the pool can ask without taking the lock.
    pub(super) closed: AtomicBool,
}

/// Stream ids are handed out in order, so they hash as themselves.
#[derive(Default)]
pub(super) struct IdHasher(u64);

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

pub(super) struct State {
    /// Frames waiting for the driver to write them.
    pub(super) out: Vec<u8>,
    pub(super) streams: HashMap<u32, Stream, BuildHasherDefault<IdHasher>>,
    /// Streams whose answer has not arrived (what `MAX_CONCURRENT_STREAMS` bounds).
    pub(super) active: usize,
    pub(super) next_id: u32,
    /// The server's settings.
    pub(super) max_streams: usize,
    pub(super) initial_window: i64,
    pub(super) max_frame: usize,
    /// What we may still send on the connection.
    pub(super) send_window: i64,
    /// What the server may still send us on the connection, and what we read
    /// since our last WINDOW_UPDATE.
    pub(super) recv_window: i64,
    pub(super) recv_unacked: u32,
    /// Streams with body left to send, waiting for window.
    pub(super) blocked: VecDeque<u32>,
    /// Requests waiting for a stream, by ticket, oldest first.
    pub(super) waiters: VecDeque<(u64, Waker)>,
    pub(super) next_ticket: u64,
    pub(super) driver: Option<Waker>,
    /// Whether the driver was woken since it last took `out`.
    pub(super) notified: bool,
    /// Set once the connection is unusable; every later request gets it.
    pub(super) error: Option<Error>,
    /// After a GOAWAY: no new streams.
    pub(super) going_away: bool,
}

pub(super) struct Stream {
    pub(super) send_window: i64,
    /// Body not yet sent.
    pub(super) body: Bytes,
    /// Bytes read on this stream since our last WINDOW_UPDATE for it.
    pub(super) recv_unacked: u32,
    pub(super) status: Option<u16>,
    pub(super) retry_after: Option<u64>,
    pub(super) head_at: Option<Instant>,
    pub(super) data: Vec<u8>,
    /// The answer, once it is whole (or failed).
    pub(super) done: Option<Result<(), Error>>,
    pub(super) waker: Option<Waker>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection is over: every stream and waiting request gets `e`.
    pub(super) fn fail(&self, e: Error) {
        let mut wake = Vec::new();
        self.lock().fail(e, &mut wake);
        self.closed.store(true, Ordering::Release);
        wake.into_iter().for_each(Waker::wake);
    }
}

impl State {
    /// Queues HEADERS (and CONTINUATIONs if the block exceeds the frame size).
    #[inline]
    pub(super) fn headers(&mut self, id: u32, head: &[&[u8]], end_stream: bool) {
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
    #[inline]
    pub(super) fn send_data(&mut self, id: u32, s: &mut Stream) -> bool {
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
    pub(super) fn unblock(&mut self) {
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
    pub(super) fn unqueue(&mut self, ticket: u64) -> bool {
        match self.waiters.iter().position(|(k, _)| *k == ticket) {
            Some(i) => {
                self.waiters.remove(i);
                true
            }
            None => false,
        }
    }

    /// Wakes the driver if it has not been since it last took the output.
    #[inline]
    pub(super) fn notify(&mut self, wake: &mut Vec<Waker>) {
        if !self.notified {
            self.notified = true;
            if let Some(w) = &self.driver {
                wake.push(w.clone());
            }
        }
    }

    /// A stream's answer is in (or it failed): frees its slot for a waiting request.
    #[inline]
    pub(super) fn finish_active(&mut self, wake: &mut Vec<Waker>) {
        self.active -= 1;
        if let Some((_, w)) = self.waiters.pop_front() {
            wake.push(w);
        }
    }

    /// Ends stream `id` with `result` and wakes its request.
    #[inline]
    pub(super) fn complete(&mut self, id: u32, result: Result<(), Error>, wake: &mut Vec<Waker>) {
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
    pub(super) fn settings(&mut self, payload: &[u8]) -> Result<(), ConnError> {
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
    pub(super) fn fail(&mut self, e: Error, wake: &mut Vec<Waker>) {
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
