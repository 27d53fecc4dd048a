//! `wss://`: a rustls server configuration from PEM certificate and key files.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The TLS side of the `wss://` listener.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1
    /// or SEC1).
    ///
    /// # Errors
    /// [`TlsError`] naming the file that is unreadable, empty or does not match.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|error| {
                TlsError(format!(
                    "cannot read certificate {}: {error}",
                    cert.display()
                ))
            })?
            .collect::<Result<_, _>>()
            .map_err(|error| {
                TlsError(format!("invalid certificate {}: {error}", cert.display()))
            })?;
        if certs.is_empty() {
            return Err(TlsError(format!("no certificate in {}", cert.display())));
        }
        // The key's own error text could quote key material: name the file only.
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|_| TlsError(format!("no usable private key in {}", key.display())))?;
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError(error.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|error| TlsError(format!("certificate and key do not match: {error}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The acceptor connections go through.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}
