//! TLS for the listeners (rustls, ring): TLS 1.2 and 1.3 only, ALPN `h2` and
//! `http/1.1`, certificate and key from PEM files, and optionally client
//! certificates checked against a CA bundle (mTLS).
//!
//! Certificates are reloaded without dropping connections: [`TlsReloader::reload`]
//! builds a new `ServerConfig` from the files and swaps it in; connections already
//! open keep the one they were accepted with, new ones get the new one. A reload that
//! fails (a half-written file, a key that does not match) keeps the old config and
//! logs why. The node reloads on SIGHUP and when the files change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{key} = {path}: {message}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("building the TLS configuration")]
    Rustls(#[source] rustls::Error),
    /// The client CA bundle cannot verify anything.
    #[error("tls.client_ca = {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
}

/// The current server config of a listener, swapped on reload.
pub struct TlsReloader {
    config: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// Modification times the current config was built from.
    stamp: RwLock<Vec<Option<SystemTime>>>,
}

impl TlsReloader {
    /// Builds the first config; errors here stop the node from starting.
    pub fn new(config: TlsConfig) -> Result<TlsReloader, TlsError> {
        let stamp = stamps(&config);
        let server = build(&config)?;
        Ok(TlsReloader {
            config,
            current: RwLock::new(Arc::new(server)),
            stamp: RwLock::new(stamp),
        })
    }

    /// The config new connections are accepted with.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().expect("tls lock poisoned").clone()
    }

    /// Rebuilds the config from the files and swaps it in; on error the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = stamps(&self.config);
        let server = build(&self.config)?;
        *self.current.write().expect("tls lock poisoned") = Arc::new(server);
        *self.stamp.write().expect("tls lock poisoned") = stamp;
        Ok(())
    }

    /// True when a file's modification time changed since the last (re)load.
    pub fn files_changed(&self) -> bool {
        *self.stamp.read().expect("tls lock poisoned") != stamps(&self.config)
    }
}

fn stamps(config: &TlsConfig) -> Vec<Option<SystemTime>> {
    config
        .files()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// The provider every sluice TLS endpoint uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(config: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let (cert_path, key_path) = match (&config.cert, &config.key) {
        (Some(c), Some(k)) => (c, k),
        _ => unreachable!("validated: tls.cert and tls.key come together"),
    };
    let certs = read_certs("tls.cert", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Pem {
        key: "tls.key",
        path: key_path.clone(),
        message: format!("no usable private key: {e}"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("tls.client_ca", ca_path)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: ca_path.clone(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca_path.clone(),
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |message: String| TlsError::Pem {
        key,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no certificate in the file".into()));
    }
    Ok(certs)
}
