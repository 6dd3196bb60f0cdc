//! TLS for `wss://`: the rustls server configuration and a self-signed certificate helper.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::options::TlsOptions;
use super::ServerError;

/// Builds the rustls server configuration with the `ring` provider, explicitly (never the
/// process-wide default provider, which may be absent).
pub(crate) fn server_config(tls: &TlsOptions) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServerError::Tls)?
        .with_no_client_auth()
        .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())
        .map_err(ServerError::Tls)?;
    Ok(Arc::new(config))
}

#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
/// A freshly generated self-signed certificate for `localhost` and `127.0.0.1`, with its
/// private key (PKCS#8), both DER. A client that trusts the certificate (adds it as its only
/// root) can connect to `wss://localhost:PORT/ws` or `wss://127.0.0.1:PORT/ws`.
pub fn self_signed_localhost() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), ServerError> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| ServerError::Certificate(e.to_string()))?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    Ok((cert, key))
}

impl TlsOptions {
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    /// A self-signed `localhost` certificate, from [`self_signed_localhost`]. Returns the
    /// options and the certificate (for the client's trust store).
    pub fn self_signed() -> Result<(Self, CertificateDer<'static>), ServerError> {
        let (cert, key) = self_signed_localhost()?;
        Ok((
            Self {
                cert_chain: vec![cert.clone()],
                key,
            },
            cert,
        ))
    }

    /// Reads a PEM certificate chain and a PEM private key from files.
    pub fn from_pem_files(
        cert_path: &std::path::Path,
        key_path: &std::path::Path,
    ) -> Result<Self, ServerError> {
        use rustls_pki_types::pem::PemObject;
        let bad =
            |what: &str, e: rustls_pki_types::pem::Error| ServerError::Certificate(format!("{what}: {e}"));
        let cert_chain = CertificateDer::pem_file_iter(cert_path)
            .map_err(|e| bad("certificate file", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate file", e))?;
        if cert_chain.is_empty() {
            return Err(ServerError::Certificate(
                "certificate file holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| bad("key file", e))?;
        Ok(Self { cert_chain, key })
    }
}
