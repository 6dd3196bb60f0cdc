//! [`ClientOptions`]: the core [`Config`] plus what only the client needs (TLS roots, seed,
//! the event stream's byte budget).

use rustls_pki_types::CertificateDer;
use usageflow_socket_core::Config;

use crate::events::DEFAULT_MAX_UNSOLICITED_BYTES;

/// Everything a client needs: the pool's [`Config`] and the client-level options.
///
/// Build one with [`ClientOptions::builder`], or convert a [`Config`] with `From` to take the
/// defaults (webpki roots, random seed, 4 MiB of unsolicited frames held for subscribers).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    config: Config,
    root_certificates: Vec<CertificateDer<'static>>,
    webpki_roots: bool,
    seed: Option<u64>,
    max_unsolicited_bytes: usize,
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

    /// Most bytes of unsolicited frames the event stream holds for subscribers that have not
    /// received them yet (default [`DEFAULT_MAX_UNSOLICITED_BYTES`], 4 MiB); see
    /// [`ClientOptionsBuilder::max_unsolicited_bytes`].
    pub fn max_unsolicited_bytes(&self) -> usize {
        self.max_unsolicited_bytes
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
            max_unsolicited_bytes: DEFAULT_MAX_UNSOLICITED_BYTES,
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

    /// Bounds the bytes of unsolicited frames ([`crate::ClientEvent::Unsolicited`], counted as
    /// their payload's JSON text plus type and ids) that the event stream holds for
    /// subscribers that have not received them yet. Default 4 MiB.
    ///
    /// Before a frame would take the held bytes over `bytes`, the oldest events are dropped,
    /// and a subscriber that missed any is told how many on its next receive (as when it falls
    /// more than [`crate::shared::EVENT_CAPACITY`] events behind). So a subscriber that stops
    /// reading makes the client hold at most `bytes` plus one frame (at most the configured
    /// `max_frame_size`), however large the frames; `0` keeps only the newest frame.
    pub fn max_unsolicited_bytes(mut self, bytes: usize) -> Self {
        self.options.max_unsolicited_bytes = bytes;
        self
    }

    /// The options. Certificates are checked when the client is built (the TLS
    /// configuration is made then), with [`crate::ClientError::InvalidOptions`] on failure.
    pub fn build(self) -> ClientOptions {
        self.options
    }
}
