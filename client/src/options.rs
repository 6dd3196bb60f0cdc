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
    proxy: Option<ProxyUrl>,
    proxy_from_env: bool,
    #[cfg(feature = "spool")]
    spool: Option<crate::spool::SpoolOptions>,
}

/// A proxy URL as given; `Debug` hides its credentials.
#[derive(Clone)]
struct ProxyUrl(String);

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&usageflow_socket_core::redact_url(&self.0), f)
    }
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

    /// The explicit HTTP proxy URL ([`ClientOptionsBuilder::proxy`]), with its credentials
    /// redacted; `None` when none was set.
    pub fn proxy_redacted(&self) -> Option<String> {
        self.proxy
            .as_ref()
            .map(|p| usageflow_socket_core::redact_url(&p.0))
    }

    /// The explicit HTTP proxy URL as given, credentials included (the dial needs them);
    /// never log it, use [`ClientOptions::proxy_redacted`].
    pub(crate) fn proxy_url(&self) -> Option<&str> {
        self.proxy.as_ref().map(|p| p.0.as_str())
    }

    /// Whether the proxy is read from the environment when no explicit one is set
    /// ([`ClientOptionsBuilder::proxy_from_env`], default false).
    pub fn proxy_from_env(&self) -> bool {
        self.proxy_from_env
    }

    /// The spool ([`ClientOptionsBuilder::spool`]), if any.
    #[cfg(feature = "spool")]
    pub fn spool(&self) -> Option<&crate::spool::SpoolOptions> {
        self.spool.as_ref()
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
            proxy: None,
            proxy_from_env: false,
            #[cfg(feature = "spool")]
            spool: None,
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

    /// Dials through the HTTP proxy at `url`: `http://host:port`, optionally with basic
    /// credentials `http://user:pass@host:port` (percent-encoded where needed; sent as
    /// `Proxy-Authorization: Basic`). Port 1080 when omitted, as curl. Each dial opens TCP to
    /// the proxy, asks it for a tunnel with `CONNECT host:port` to the URL's host, then runs
    /// TLS (for `wss://`, end to end with the server) and the WebSocket upgrade through it, all
    /// within the handshake timeout.
    ///
    /// Only `http://` proxies are supported: another scheme (`https://`, `socks5://`) fails
    /// the client's construction with [`crate::ClientError::InvalidOptions`]. A proxy's
    /// refusal is reported as [`usageflow_socket_core::DialError::Proxy`], never as a
    /// rejected key. The credentials never appear in `Debug`, logs or errors. Takes
    /// precedence over [`ClientOptionsBuilder::proxy_from_env`].
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.options.proxy = Some(ProxyUrl(url.into()));
        self
    }

    /// Whether to take the proxy from the environment as curl does (default false), when no
    /// explicit [`ClientOptionsBuilder::proxy`] is set: `https_proxy`/`HTTPS_PROXY` for
    /// `wss://`, `http_proxy`/`HTTP_PROXY` for `ws://`, else `all_proxy`/`ALL_PROXY` (the
    /// lower-case name first; an empty value is unset; a value without a scheme is taken as
    /// `http://`). `no_proxy`/`NO_PROXY` exempts hosts: a comma-separated list of names
    /// (matching the name and its subdomains, with or without a leading dot), IP addresses,
    /// CIDR ranges, each optionally with `:port`, or `*` for every host. The environment is
    /// read once, when the client is built.
    pub fn proxy_from_env(mut self, enabled: bool) -> Self {
        self.options.proxy_from_env = enabled;
        self
    }

    /// Keeps every accepted message in the spool directory of `spool` until a pong confirms
    /// it (or it expires, or ends unconfirmed under at-most-once), and replays what an
    /// earlier process left there first. `spool.max_bytes` (`max_spool_bytes`) bounds the live
    /// records: past it `send` refuses with [`crate::ClientError::SpoolFull`], counted.
    /// `spool.sync` chooses when records are made durable
    /// ([`crate::spool::SyncPolicy`]: group commit by default; `EverySend` makes `send` wait
    /// for its record; `Never` survives a process crash but not a power cut).
    /// The client fails to start with [`crate::ClientError::Spool`] when the directory cannot
    /// be opened (another process holds it, not writable, an incompatible version).
    #[cfg(feature = "spool")]
    pub fn spool(mut self, spool: crate::spool::SpoolOptions) -> Self {
        self.options.spool = Some(spool);
        self
    }

    /// The options. Certificates are checked when the client is built (the TLS
    /// configuration is made then), with [`crate::ClientError::InvalidOptions`] on failure.
    pub fn build(self) -> ClientOptions {
        self.options
    }
}
