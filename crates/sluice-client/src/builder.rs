//! [`ClientBuilder`]: the URL, TLS roots, HTTP version, API key, timeouts, retry
//! budget and pool size of a [`Client`] (or, through
//! [`build_grpc`](ClientBuilder::build_grpc), of a [`GrpcClient`](crate::GrpcClient)).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Uri};
use rustls::pki_types::ServerName;

use crate::client::{Client, Inner};
use crate::error::BuildError;
use crate::http2;
use crate::pool::{Connector, Pool, Target};
use crate::retry::RetryPolicy;

/// Which HTTP version the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: prior knowledge (h2c) over TCP, ALPN `h2` over TLS.
    Http2,
    /// HTTP/1.1 over TCP; over TLS whatever ALPN picks (h2 first).
    #[default]
    Auto,
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    protocol: Protocol,
    ca: Option<PathBuf>,
    roots: Option<rustls::RootCertStore>,
    api_key: Option<String>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    retry: RetryPolicy,
    max_connections: Option<usize>,
    http2_keep_alive: Option<Duration>,
}

impl ClientBuilder {
    /// HTTP version (default [`Protocol::Auto`]).
    pub fn protocol(mut self, p: Protocol) -> Self {
        self.protocol = p;
        self
    }
    /// Trust the CA certificates in this PEM file (default: the system bundle).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }
    /// Trust exactly these roots.
    pub fn roots(mut self, roots: rustls::RootCertStore) -> Self {
        self.roots = Some(roots);
        self
    }
    /// Send `authorization: Bearer KEY` with every request.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
    /// Give up on an attempt after this long (default: none).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Give up on a TCP connect after this long (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// The retry budget (default [`RetryPolicy::default`]).
    pub fn retry(mut self, r: RetryPolicy) -> Self {
        self.retry = r;
        self
    }
    /// Connections: the most HTTP/1.1 connections open at once (default 64), or
    /// the number of multiplexed HTTP/2 connections (default 1).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n.max(1));
        self
    }
    /// HTTP/2 PING interval that keeps idle connections alive (default 30 s).
    pub fn http2_keep_alive(mut self, every: Option<Duration>) -> Self {
        self.http2_keep_alive = every;
        self
    }

    /// Parses the URL and sets up TLS.
    pub fn build(self) -> Result<Client, BuildError> {
        let (connector, base) = self.connector()?;
        let max = self.max_connections.unwrap_or(match self.protocol {
            Protocol::Http2 => 1,
            _ => 64,
        });
        let api_key =
            match &self.api_key {
                Some(k) => Some(HeaderValue::try_from(format!("Bearer {k}")).map_err(|_| {
                    BuildError::Url {
                        url: self.url.clone(),
                        reason: "the API key is not a valid header value",
                    }
                })?),
                None => None,
            };
        let h2_auth = api_key.as_ref().map(|k| {
            Bytes::from(http2::encode_field(
                http2::Field::Authorization,
                k.as_bytes(),
            ))
        });
        Ok(Client::new(Inner {
            pool: Arc::new(Pool::new(connector, max)),
            base,
            api_key,
            h2_auth,
            timeout: self.timeout,
            retry: self.retry,
        }))
    }

    /// The connector for this URL, and the base URL (`scheme://authority`).
    pub(crate) fn connector(&self) -> Result<(Connector, String), BuildError> {
        let bad = |reason| BuildError::Url {
            url: self.url.clone(),
            reason,
        };
        let uri: Uri = self.url.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let ip = host.parse::<IpAddr>().ok();
        let tls = if https {
            let roots = match (&self.roots, &self.ca) {
                (Some(r), _) => r.clone(),
                (None, Some(path)) => crate::tls::roots_from_pem(path)?,
                (None, None) => crate::tls::system_roots(),
            };
            let alpn: &[&[u8]] = match self.protocol {
                Protocol::Http1 => &[b"http/1.1"],
                Protocol::Http2 => &[b"h2"],
                Protocol::Auto => &[b"h2", b"http/1.1"],
            };
            let name =
                ServerName::try_from(host.clone()).map_err(|_| bad("bad TLS server name"))?;
            Some((crate::tls::client_config(roots, alpn)?, name))
        } else {
            None
        };
        let base = format!("{}://{}", if https { "https" } else { "http" }, authority);
        Ok((
            Connector {
                target: Target {
                    https,
                    host,
                    port,
                    ip,
                },
                tls,
                protocol: self.protocol,
                connect_timeout: self.connect_timeout,
                http2_keep_alive: self.http2_keep_alive,
                own_http2: true,
            },
            base,
        ))
    }

    pub(crate) fn api_key_value(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    pub(crate) fn timeout_value(&self) -> Option<Duration> {
        self.timeout
    }

    pub(crate) fn connections(&self) -> usize {
        self.max_connections.unwrap_or(1)
    }
}

impl Client {
    /// A builder for `url` (`http://host:port` or `https://host:port`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            protocol: Protocol::Auto,
            ca: None,
            roots: None,
            api_key: None,
            timeout: None,
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            max_connections: None,
            http2_keep_alive: Some(Duration::from_secs(30)),
        }
    }
}
