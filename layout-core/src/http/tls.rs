//! TLS for endpoints and their clients (feature `tls`): rustls with the ring provider,
//! PEM certificates and keys, optional client-certificate verification (mTLS).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::connections::TrackingAcceptor;

/// A TLS problem: a certificate, key or CA that cannot be read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("cannot use the {what} {source_name}: {reason}")]
    Pem {
        /// What it should hold (certificate, private key, CA certificate).
        what: &'static str,
        /// The file, or "(in memory)".
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match the certificate...).
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// PEM bytes and where they came from (for errors).
#[derive(Clone)]
struct Pem {
    bytes: Vec<u8>,
    name: String,
}

impl Pem {
    fn file(path: &Path, what: &'static str) -> Result<Self, TlsError> {
        let bytes = std::fs::read(path).map_err(|e| TlsError::Pem {
            what,
            source_name: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            bytes,
            name: path.display().to_string(),
        })
    }

    fn memory(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            name: "(in memory)".to_owned(),
        }
    }

    fn certificates(&self, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(what, &e.to_string()))?;
        if certs.is_empty() {
            return Err(self.error(what, "no PEM certificate in it"));
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.bytes)
            .map_err(|e| self.error("private key", &format!("no usable PEM private key ({e})")))
    }

    fn error(&self, what: &'static str, reason: &str) -> TlsError {
        TlsError::Pem {
            what,
            source_name: self.name.clone(),
            reason: reason.to_owned(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An endpoint's TLS: its certificate chain and key, and optionally a CA whose
/// certificates clients must present (mutual TLS).
///
/// ```no_run
/// use std::path::Path;
/// use layout_core::http::{EndpointConfig, ServerTls};
///
/// let tls = ServerTls::from_pem_files(Path::new("server.pem"), Path::new("server.key"))?
///     .with_client_ca_file(Path::new("ca.pem"))?;
/// let config = EndpointConfig::loopback(9868).with_tls(tls);
/// # Ok::<(), layout_core::http::TlsError>(())
/// ```
pub struct ServerTls {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<Pem>,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl Clone for ServerTls {
    fn clone(&self) -> Self {
        Self {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            client_ca: self.client_ca.clone(),
            config: Arc::clone(&self.config),
            handshake_timeout: self.handshake_timeout,
        }
    }
}

impl ServerTls {
    /// The certificate chain (leaf first) and private key, both PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs = Pem::file(cert, "certificate")?.certificates("certificate")?;
        let key = Pem::file(key, "private key")?.private_key()?;
        Self::build(certs, key, None)
    }

    /// The certificate chain and private key as PEM text.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let certs = Pem::memory(cert).certificates("certificate")?;
        let key = Pem::memory(key).private_key()?;
        Self::build(certs, key, None)
    }

    /// Require client certificates issued by the CA(s) in this PEM file.
    pub fn with_client_ca_file(self, ca: &Path) -> Result<Self, TlsError> {
        let ca = Pem::file(ca, "CA certificate")?;
        Self::build(self.certs, self.key, Some(ca))
            .map(|t| t.with_handshake_timeout(self.handshake_timeout))
    }

    /// Require client certificates issued by the CA(s) in this PEM text.
    pub fn with_client_ca_pem(self, ca: &[u8]) -> Result<Self, TlsError> {
        Self::build(self.certs, self.key, Some(Pem::memory(ca)))
            .map(|t| t.with_handshake_timeout(self.handshake_timeout))
    }

    /// How long a client has to complete the TLS handshake (default 5 s).
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    fn build(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_ca: Option<Pem>,
    ) -> Result<Self, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &client_ca {
            Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| TlsError::Config(format!("the certificate and key do not fit: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            certs,
            key,
            client_ca,
            config: Arc::new(config),
            handshake_timeout: Duration::from_secs(5),
        })
    }

    pub(crate) fn acceptor(&self, inner: TrackingAcceptor) -> RustlsAcceptor<TrackingAcceptor> {
        RustlsAcceptor::new(RustlsConfig::from_config(Arc::clone(&self.config)))
            .handshake_timeout(self.handshake_timeout)
            .acceptor(inner)
    }
}

fn client_verifier(
    ca: &Pem,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in ca.certificates("CA certificate")? {
        roots
            .add(cert)
            .map_err(|e| ca.error("CA certificate", &e.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Config(format!("cannot verify clients against the CA: {e}")))
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_certificates_required", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// A client's TLS: the CA that signed the server's certificate (instead of the system's
/// roots, which a private cluster's CA is not among) and, for mTLS, the client's own
/// certificate and key.
#[derive(Clone)]
pub struct ClientTls {
    ca: Arc<Vec<ureq::tls::Certificate<'static>>>,
    identity: Option<ureq::tls::ClientCert>,
}

impl ClientTls {
    /// Trust servers whose certificate the CA(s) in this PEM file signed.
    pub fn with_ca_file(ca: &Path) -> Result<Self, TlsError> {
        Self::with_ca(&Pem::file(ca, "CA certificate")?)
    }

    /// Trust servers whose certificate the CA(s) in this PEM text signed.
    pub fn with_ca_pem(ca: &[u8]) -> Result<Self, TlsError> {
        Self::with_ca(&Pem::memory(ca))
    }

    fn with_ca(ca: &Pem) -> Result<Self, TlsError> {
        let certs = ca.certificates("CA certificate")?;
        Ok(Self {
            ca: Arc::new(certs.iter().map(to_ureq).collect()),
            identity: None,
        })
    }

    /// Present this certificate chain and key (PEM files) to servers that ask for one.
    pub fn with_identity_files(self, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        self.with_identity(
            &Pem::file(cert, "certificate")?,
            &Pem::file(key, "private key")?,
        )
    }

    /// Present this certificate chain and key (PEM text) to servers that ask for one.
    pub fn with_identity_pem(self, cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        self.with_identity(&Pem::memory(cert), &Pem::memory(key))
    }

    fn with_identity(mut self, cert: &Pem, key: &Pem) -> Result<Self, TlsError> {
        let chain: Vec<_> = cert
            .certificates("certificate")?
            .iter()
            .map(to_ureq)
            .collect();
        // Checked by rustls' parser first, for an error that names the file.
        key.private_key()?;
        let key = ureq::tls::PrivateKey::from_pem(&key.bytes)
            .map_err(|e| key.error("private key", &e.to_string()))?;
        self.identity = Some(ureq::tls::ClientCert::new_with_certs(&chain, key));
        Ok(self)
    }

    pub(crate) fn ureq_config(&self) -> ureq::tls::TlsConfig {
        use ureq::tls::{RootCerts, TlsProvider};
        ureq::tls::TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::clone(&self.ca)))
            .client_cert(self.identity.clone())
            .unversioned_rustls_crypto_provider(provider())
            .build()
    }
}

fn to_ureq(cert: &CertificateDer<'static>) -> ureq::tls::Certificate<'static> {
    ureq::tls::Certificate::from_der(cert.as_ref()).to_owned()
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_certificates", &self.ca.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}
