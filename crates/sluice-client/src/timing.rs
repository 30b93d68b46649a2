//! Per-request phase timings, like Go's `httptrace`.
//!
//! ```text
//! start ─ pool wait ─ DNS ─ TCP connect ─ TLS handshake ─ request sent … first byte … last byte
//!         └──────── only on a fresh connection ────────┘
//! |──────────────────────────── first_byte ─────────────────────────────────────|
//! |──────────────────────────── total ──────────────────────────────────────────────────────|
//! ```
//!
//! Every duration is measured from the start of the attempt, except the three
//! connection phases, which are their own lengths. A request on a reused connection
//! has no DNS, connect or TLS phase and `reused` is true. Each finished request is
//! also emitted as a `tracing` event (target `sluice_client::timing`, level DEBUG)
//! inside the `sluice_client.request` span.

use std::time::Duration;

/// Where the time of one attempt went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Waiting for a pooled connection to be free (HTTP/1.1 at its connection limit).
    pub pool_wait: Duration,
    /// DNS resolution; `None` when the host is an IP literal or the connection was reused.
    pub dns: Option<Duration>,
    /// The TCP handshake; `None` on a reused connection.
    pub connect: Option<Duration>,
    /// The TLS handshake; `None` over plain TCP or on a reused connection.
    pub tls: Option<Duration>,
    /// Whether the request went over a connection that already existed.
    pub reused: bool,
    /// From the start to the response's status line and headers.
    pub first_byte: Duration,
    /// From the start to the end of the response body.
    pub total: Duration,
    /// The HTTP version used.
    pub version: HttpVersion,
}

/// HTTP/1.1 or HTTP/2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HttpVersion {
    #[default]
    Http1,
    Http2,
}

/// The phases of making a connection (what a fresh connection adds to a request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectTimings {
    pub dns: Option<Duration>,
    pub connect: Duration,
    pub tls: Option<Duration>,
}

impl Timings {
    /// The end of the connection phases, from the start of the attempt (zero when reused).
    pub fn connected_at(&self) -> Duration {
        self.pool_wait
            + self.dns.unwrap_or_default()
            + self.connect.unwrap_or_default()
            + self.tls.unwrap_or_default()
    }

    /// Emits these timings as a `tracing` DEBUG event.
    pub fn emit(&self) {
        tracing::debug!(
            target: "sluice_client::timing",
            pool_wait_us = self.pool_wait.as_micros() as u64,
            dns_us = self.dns.map(|d| d.as_micros() as u64),
            connect_us = self.connect.map(|d| d.as_micros() as u64),
            tls_us = self.tls.map(|d| d.as_micros() as u64),
            reused = self.reused,
            first_byte_us = self.first_byte.as_micros() as u64,
            total_us = self.total.as_micros() as u64,
            version = ?self.version,
            "request timing"
        );
    }
}

impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        if self.reused {
            write!(f, "reused connection")?;
        } else {
            if let Some(d) = self.dns {
                write!(f, "dns {:.3} ms, ", ms(d))?;
            }
            if let Some(d) = self.connect {
                write!(f, "connect {:.3} ms", ms(d))?;
            }
            if let Some(d) = self.tls {
                write!(f, ", tls {:.3} ms", ms(d))?;
            }
        }
        write!(
            f,
            ", first byte {:.3} ms, total {:.3} ms ({:?})",
            ms(self.first_byte),
            ms(self.total),
            self.version
        )
    }
}
