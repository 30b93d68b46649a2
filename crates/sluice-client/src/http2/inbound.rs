//! What the driver does with each frame the server sends (RFC 9113 §6): answers
//! are completed on their streams, windows and settings applied, PINGs answered,
//! GOAWAY and RST_STREAM turned into errors. A connection error is returned as
//! the GOAWAY code and reason, and ends the connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use super::driver::{Driver, Partial};
use super::frame::*;
use super::hpack::DecodeError;
use super::state::State;
use super::{Error, CONN_WINDOW, MAX_BODY, MAX_HEADER_BLOCK, STREAM_WINDOW};

impl<IO> Driver<IO> {
    /// Handles one frame from the server.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn frame(
        &mut self,
        st: &mut State,
        ty: u8,
        flags: u8,
        id: u32,
        payload: &[u8],
        now: Instant,
        wake: &mut Vec<Waker>,
    ) -> Result<(), ConnError> {
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
    pub(super) fn head(
        &mut self,
        st: &mut State,
        p: Partial,
        now: Instant,
        wake: &mut Vec<Waker>,
    ) -> Result<(), ConnError> {
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
