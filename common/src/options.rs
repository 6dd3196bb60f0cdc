//! [`ClientOptions`]: the core [`Config`] plus what only an adapter needs (TLS roots, seed).

use rustls_pki_types::CertificateDer;
use usageflow_socket_core::Config;

/// Everything a client needs: the pool's [`Config`] and the adapter-level options.
///
/// Build one with [`ClientOptions::builder`], or convert a [`Config`] with `From` to take the
/// defaults (webpki roots, random seed).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    config: Config,
    root_certificates: Vec<CertificateDer<'static>>,
    webpki_roots: bool,
    seed: Option<u64>,
}

impl ClientOptions {
    /// Starts a builder over `config`.
    pub fn builder(config: Config) -> ClientOptionsBuilder {
        ClientOptionsBuilder {
            options: ClientOptions::from(config),
        }
    }

    /// The pool configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Extra trusted root certificates (DER) for `wss://`.
    pub fn root_certificates(&self) -> &[CertificateDer<'static>] {
        &self.root_certificates
    }

    /// Whether the Mozilla roots of `webpki-roots` are trusted too (default yes).
    pub fn webpki_roots(&self) -> bool {
        self.webpki_roots
    }

    /// The seed override, if any (default: a random seed per client).
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// The seed to build the pool with: the override, or a fresh random one (from the
    /// process's OS-seeded generator), logged at debug level so a run can be replayed.
    pub fn resolve_seed(&self) -> u64 {
        match self.seed {
            Some(seed) => {
                tracing::debug!(seed, "usageflow-socket: using the configured pool seed");
                seed
            }
            None => {
                let seed = fastrand::u64(..);
                tracing::debug!(seed, "usageflow-socket: drew a random pool seed");
                seed
            }
        }
    }
}

impl From<Config> for ClientOptions {
    fn from(config: Config) -> Self {
        Self {
            config,
            root_certificates: Vec::new(),
            webpki_roots: true,
            seed: None,
        }
    }
}

/// Builder for [`ClientOptions`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientOptionsBuilder {
    options: ClientOptions,
}

impl ClientOptionsBuilder {
    /// Trusts one more root certificate (DER), for example a test server's self-signed one.
    pub fn add_root_certificate(mut self, der: impl Into<CertificateDer<'static>>) -> Self {
        self.options.root_certificates.push(der.into());
        self
    }

    /// Whether to trust the Mozilla roots of `webpki-roots` as well (default true).
    pub fn webpki_roots(mut self, enabled: bool) -> Self {
        self.options.webpki_roots = enabled;
        self
    }

    /// Fixes the pool's seed (request ids, backoff jitter), to replay a run.
    pub fn seed(mut self, seed: u64) -> Self {
        self.options.seed = Some(seed);
        self
    }

    /// The options. Certificates are checked when the client is built (the TLS
    /// configuration is made then), with [`crate::ClientError::InvalidOptions`] on failure.
    pub fn build(self) -> ClientOptions {
        self.options
    }
}
