//! The rustls client configuration (ring provider, TLS 1.2 and 1.3): trusted roots
//! from a PEM bundle, ALPN from the protocol the client wants.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::error::BuildError;

/// Where the system keeps its CA bundle (Debian/Ubuntu, then Fedora/RHEL).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The roots in a PEM bundle.
pub fn roots_from_pem(path: &Path) -> Result<rustls::RootCertStore, BuildError> {
    let ca_err = |source| BuildError::Ca {
        path: path.display().to_string(),
        source,
    };
    let pem = std::fs::read(path).map_err(ca_err)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ca_err(std::io::Error::other(e.to_string())))?;
        roots.add(cert).map_err(BuildError::Tls)?;
    }
    if roots.is_empty() {
        return Err(ca_err(std::io::Error::other("no certificate in the file")));
    }
    Ok(roots)
}

/// The system's roots, or an empty store when no bundle is found.
pub fn system_roots() -> rustls::RootCertStore {
    SYSTEM_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .and_then(|p| roots_from_pem(p).ok())
        .unwrap_or_else(rustls::RootCertStore::empty)
}

/// A client configuration trusting `roots` and offering `alpn`.
pub fn client_config(
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, BuildError> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(BuildError::Tls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
