//! The connection's one task: the handshake, then a loop that writes everything
//! requests queued since its last write in one syscall and reads every frame that
//! arrived in one (each frame is then applied by `inbound.rs`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::frame::*;
use super::hpack;
use super::state::{Shared, State};
use super::{Connection, Error, Options, CONN_WINDOW, POLL_BUDGET, STREAM_WINDOW};

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

/// A header block being received across HEADERS and CONTINUATION frames.
pub(super) struct Partial {
    pub(super) id: u32,
    pub(super) end_stream: bool,
    pub(super) block: Vec<u8>,
}

/// Runs one connection: writes what requests queued, reads and dispatches what
/// the server sent. Spawn it; it ends when the connection closes.
pub struct Driver<IO> {
    io: IO,
    pub(super) shared: Arc<Shared>,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    pub(super) decoder: hpack::Decoder,
    pub(super) partial: Option<Partial>,
    /// The PING timer, its period, and whether a PING is unanswered.
    pub(super) keep_alive: Option<(Pin<Box<tokio::time::Sleep>>, Duration, bool)>,
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
    fn dispatch(&mut self) -> Result<(), ConnError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::encode_post;
    use bytes::Bytes;

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
