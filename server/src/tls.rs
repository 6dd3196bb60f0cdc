//! TLS for `wss://`: the rustls server configuration and a self-signed certificate helper.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::options::TlsOptions;
use super::ServerError;

/// Builds the rustls server configuration with the `ring` provider, explicitly (never the
/// process-wide default provider, which may be absent); with client authentication (mTLS)
/// when [`TlsOptions::client_auth_roots`] names roots.
pub(crate) fn server_config(tls: &TlsOptions) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(ServerError::Tls)?;
    let builder = if tls.client_auth_roots.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for der in &tls.client_auth_roots {
            roots.add(der.clone()).map_err(ServerError::Tls)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| ServerError::Certificate(format!("client authentication: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let config = builder
        .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())
        .map_err(ServerError::Tls)?;
    Ok(Arc::new(config))
}

#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
/// A private certificate authority for tests of TLS trust: a CA certificate (DER and PEM, to
/// trust it as a root or to put it in a file for `SSL_CERT_FILE`) that issues a `localhost`
/// server certificate ([`TestCa::server_tls`]) and client certificates for mTLS
/// ([`TestCa::client_certificate`]).
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

#[cfg(feature = "tls")]
impl TestCa {
    /// A fresh CA with a new key.
    pub fn generate() -> Result<Self, ServerError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(certificate_error)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "usageflow-socket test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().map_err(certificate_error)?;
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).map_err(certificate_error)?;
        Ok(Self { issuer })
    }

    /// The CA certificate, DER.
    pub fn cert(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// TLS options for a server certificate for `localhost` and `127.0.0.1` issued by this CA
    /// (chain: the leaf, then the CA), without client authentication.
    pub fn server_tls(&self) -> Result<TlsOptions, ServerError> {
        let (chain, key) = self.issue(
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        Ok(TlsOptions {
            cert_chain: chain,
            key,
            client_auth_roots: Vec::new(),
        })
    }

    /// A client certificate for `name` issued by this CA, with its key (chain: the leaf, then
    /// the CA), for a client's mTLS configuration.
    pub fn client_certificate(
        &self,
        name: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ServerError> {
        self.issue(&[name], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ServerError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).map_err(certificate_error)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().map_err(certificate_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(certificate_error)?;
        let key = PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert()], key))
    }
}

#[cfg(feature = "tls")]
fn certificate_error(e: rcgen::Error) -> ServerError {
    ServerError::Certificate(e.to_string())
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
                client_auth_roots: Vec::new(),
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
        Ok(Self {
            cert_chain,
            key,
            client_auth_roots: Vec::new(),
        })
    }
}
