//! The connection pool: our own TCP (and TLS) connections with the HTTP handshake
//! on top (hyper's `client::conn` for HTTP/1.1 and for gRPC's HTTP/2, the client's
//! own [`crate::http2`] for the ingest API's HTTP/2), so every phase of making a
//! connection can be timed.
//!
//! - HTTP/1.1: one request per connection at a time. Idle connections wait on a
//!   stack (most recently used first, so the hot ones stay warm); at most
//!   `max_connections` exist, and a request past that waits for one to be checked
//!   back in (that wait is [`Timings::pool_wait`](crate::Timings::pool_wait)).
//! - HTTP/2: `max_connections` slots, each one multiplexed connection; requests go
//!   round-robin over the slots. A slot whose connection closed is reconnected by
//!   the next request that lands on it (only that one connects; the others wait).
//!
//! With `Protocol::Auto` over TLS, ALPN decides per connection, and the first
//! connection's answer fixes which of the two structures the pool uses.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::builder::Protocol;
use crate::error::ClientError;
use crate::timing::{ConnectTimings, HttpVersion};

/// What a connection is made to.
#[derive(Debug, Clone)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Set when `host` is an IP literal: no DNS phase.
    pub ip: Option<IpAddr>,
}

/// How connections are made.
pub struct Connector {
    pub target: Target,
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub http2_keep_alive: Option<Duration>,
    /// Speak HTTP/2 with the client's own [`crate::http2`] connection rather than
    /// hyper's (the ingest client does; gRPC, which needs hyper's bodies, does not).
    pub own_http2: bool,
}

/// A connection's request handle.
pub enum Sender<B> {
    H1(http1::SendRequest<B>),
    H2(http2::SendRequest<B>),
    /// HTTP/2 on the client's own connection ([`crate::http2`]).
    Own(crate::http2::Connection),
}

impl<B> Sender<B> {
    pub fn version(&self) -> HttpVersion {
        match self {
            Sender::H1(_) => HttpVersion::Http1,
            Sender::H2(_) | Sender::Own(_) => HttpVersion::Http2,
        }
    }

    /// Another handle to a multiplexed (HTTP/2) connection; `None` for HTTP/1.1.
    fn share(&self) -> Option<Sender<B>> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
            Sender::Own(c) => Some(Sender::Own(c.clone())),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
            Sender::Own(c) => c.is_closed(),
        }
    }
}

/// The bounds hyper puts on a request body.
pub trait RequestBody:
    hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}
impl<T> RequestBody for T where
    T: hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

impl Connector {
    /// Resolves, connects, shakes hands (TLS, then HTTP) and spawns the connection task.
    pub async fn connect<B: RequestBody>(
        &self,
    ) -> Result<(Sender<B>, ConnectTimings), ClientError> {
        let t = &self.target;
        let (addr, dns) = match t.ip {
            Some(ip) => (SocketAddr::new(ip, t.port), None),
            None => {
                let start = Instant::now();
                let mut addrs = tokio::net::lookup_host((t.host.as_str(), t.port))
                    .await
                    .map_err(|source| ClientError::Resolve {
                        host: t.host.clone(),
                        source,
                    })?;
                let addr = addrs.next().ok_or_else(|| ClientError::Resolve {
                    host: t.host.clone(),
                    source: std::io::Error::other("no address found"),
                })?;
                (addr, Some(start.elapsed()))
            }
        };
        let start = Instant::now();
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Connect {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let connect = start.elapsed();
        let _ = tcp.set_nodelay(true);
        let Some((config, name)) = &self.tls else {
            let sender = self
                .handshake(addr, tcp, self.protocol == Protocol::Http2)
                .await?;
            return Ok((
                sender,
                ConnectTimings {
                    dns,
                    connect,
                    tls: None,
                },
            ));
        };
        let start = Instant::now();
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name.clone(), tcp)
            .await
            .map_err(|source| ClientError::Tls {
                server: t.host.clone(),
                source,
            })?;
        let tls_time = start.elapsed();
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let sender = self.handshake(addr, tls, h2).await?;
        Ok((
            sender,
            ConnectTimings {
                dns,
                connect,
                tls: Some(tls_time),
            },
        ))
    }

    async fn handshake<B: RequestBody, IO>(
        &self,
        addr: SocketAddr,
        io: IO,
        h2: bool,
    ) -> Result<Sender<B>, ClientError>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Handshake {
            addr,
            source,
        };
        if h2 && self.own_http2 {
            let opts = crate::http2::Options {
                keep_alive: self.http2_keep_alive,
            };
            // The handshake waits for the server's SETTINGS: bound it like the connect.
            let (c, driver) =
                tokio::time::timeout(self.connect_timeout, crate::http2::handshake(io, opts))
                    .await
                    .map_err(|_| err("no HTTP/2 SETTINGS from the server in time".into()))?
                    .map_err(|e| err(e.into()))?;
            tokio::spawn(driver);
            return Ok(Sender::Own(c));
        }
        let io = TokioIo::new(io);
        if h2 {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(4 << 20);
            if let Some(k) = self.http2_keep_alive {
                b.keep_alive_interval(k).keep_alive_while_idle(true);
            }
            let (s, conn) = b.handshake(io).await.map_err(|e| err(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "http/2 connection ended");
                }
            });
            Ok(Sender::H2(s))
        } else {
            let (s, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| err(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "http/1.1 connection ended");
                }
            });
            Ok(Sender::H1(s))
        }
    }
}

/// A connection checked out for one request.
pub struct Checkout<B> {
    pub sender: Sender<B>,
    /// `None` when the connection was reused.
    pub fresh: Option<ConnectTimings>,
    /// Time spent waiting for a connection (including another request's connect).
    pub wait: Duration,
    /// Held while an HTTP/1.1 connection is out of the pool.
    permit: Option<OwnedSemaphorePermit>,
}

/// One HTTP/2 connection slot.
struct Slot<B> {
    sender: Mutex<Option<Sender<B>>>,
    connecting: tokio::sync::Mutex<()>,
}

/// Pooled connections to one target.
pub struct Pool<B> {
    connector: Connector,
    /// What the connections speak, once known (always known unless `Auto` over TLS).
    version: OnceLock<HttpVersion>,
    idle: Mutex<Vec<http1::SendRequest<B>>>,
    permits: Arc<Semaphore>,
    slots: Box<[Slot<B>]>,
    next: AtomicUsize,
}

impl<B: RequestBody> Pool<B> {
    pub fn new(connector: Connector, max_connections: usize) -> Pool<B> {
        let max = max_connections.max(1);
        let version = OnceLock::new();
        match (connector.protocol, connector.tls.is_some()) {
            (Protocol::Http1, _) | (Protocol::Auto, false) => {
                let _ = version.set(HttpVersion::Http1);
            }
            (Protocol::Http2, _) => {
                let _ = version.set(HttpVersion::Http2);
            }
            (Protocol::Auto, true) => {}
        }
        Pool {
            connector,
            version,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max)),
            slots: (0..max)
                .map(|_| Slot {
                    sender: Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn target(&self) -> &Target {
        &self.connector.target
    }

    /// The protocol in use, once known.
    pub fn version(&self) -> Option<HttpVersion> {
        self.version.get().copied()
    }

    /// A connection for one request: reused when one is free, else a new one.
    pub async fn checkout(&self) -> Result<Checkout<B>, ClientError> {
        match self.version.get() {
            Some(HttpVersion::Http2) => self.checkout_h2().await,
            Some(HttpVersion::Http1) => self.checkout_h1().await,
            None => {
                // Auto over TLS before the first connection: let ALPN decide.
                let start = Instant::now();
                let permit = self
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let (sender, timings) = Box::pin(self.connector.connect::<B>()).await?;
                let _ = self.version.set(sender.version());
                let permit = match sender.share() {
                    None => Some(permit),
                    Some(shared) => {
                        let mut slot = self.slots[0].sender.lock().expect("not poisoned");
                        if slot.is_none() {
                            *slot = Some(shared);
                        }
                        None
                    }
                };
                let connect = timings.dns.unwrap_or_default()
                    + timings.connect
                    + timings.tls.unwrap_or_default();
                Ok(Checkout {
                    sender,
                    fresh: Some(timings),
                    wait: start.elapsed().saturating_sub(connect),
                    permit,
                })
            }
        }
    }

    async fn checkout_h1(&self) -> Result<Checkout<B>, ClientError> {
        let start = Instant::now();
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => self
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("never closed"),
        };
        let wait = start.elapsed();
        loop {
            let popped = self.idle.lock().expect("not poisoned").pop();
            let Some(mut s) = popped else { break };
            // A connection is checked in as soon as its response was read, which can be
            // before its dispatcher (another task, maybe another thread) has asked for
            // the next request. Waiting for that is short; only a connection the server
            // closed while idle fails here and is dropped.
            if s.is_ready() || (!s.is_closed() && s.ready().await.is_ok()) {
                return Ok(Checkout {
                    sender: Sender::H1(s),
                    fresh: None,
                    wait: start.elapsed(),
                    permit: Some(permit),
                });
            }
        }
        let (sender, timings) = Box::pin(self.connector.connect::<B>()).await?;
        Ok(Checkout {
            sender,
            fresh: Some(timings),
            wait,
            permit: Some(permit),
        })
    }

    async fn checkout_h2(&self) -> Result<Checkout<B>, ClientError> {
        let start = Instant::now();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        if let Some(s) = live(&slot.sender) {
            return Ok(Checkout {
                sender: s,
                fresh: None,
                wait: Duration::ZERO,
                permit: None,
            });
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(s) = live(&slot.sender) {
            return Ok(Checkout {
                sender: s,
                fresh: None,
                wait: start.elapsed(),
                permit: None,
            });
        }
        let wait = start.elapsed();
        let (sender, timings) = Box::pin(self.connector.connect::<B>()).await?;
        if let Some(shared) = sender.share() {
            *slot.sender.lock().expect("not poisoned") = Some(shared);
        }
        Ok(Checkout {
            sender,
            fresh: Some(timings),
            wait,
            permit: None,
        })
    }

    /// Hands a connection back after its response was read whole.
    pub fn checkin(&self, checkout: Checkout<B>) {
        if let Sender::H1(s) = checkout.sender {
            if !s.is_closed() {
                self.idle.lock().expect("not poisoned").push(s);
            }
        }
        drop(checkout.permit);
    }

    /// Opens `n` connections up front (up to the pool's size), at most 256 at once.
    pub async fn warm(self: &Arc<Self>, n: usize) -> Result<(), ClientError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let n = n.min(self.slots.len());
        if self.version.get().is_none() {
            let c = self.checkout().await?;
            self.checkin(c);
        }
        let h2 = self.version.get() == Some(&HttpVersion::Http2);
        let checkouts: Vec<_> = stream::iter(0..n)
            .map(|_| async move {
                if h2 {
                    self.checkout_h2().await.map(|_| None)
                } else {
                    self.checkout_h1().await.map(Some)
                }
            })
            .buffer_unordered(256)
            .try_collect()
            .await?;
        for c in checkouts.into_iter().flatten() {
            self.checkin(c);
        }
        Ok(())
    }
}

/// The slot's connection, if it is still open.
fn live<B>(m: &Mutex<Option<Sender<B>>>) -> Option<Sender<B>> {
    let mut guard = m.lock().expect("not poisoned");
    match guard.as_ref() {
        Some(s) if !s.is_closed() => s.share(),
        Some(_) => {
            *guard = None;
            None
        }
        None => None,
    }
}
