//! [`ClientOptions`]: the core [`Config`] plus what only the client needs (TLS trust, seed,
//! the event stream's byte budget, the proxy, Happy Eyeballs).

#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "tls")]
use rustls_pki_types::CertificateDer;
use usageflow_socket_core::Config;

use crate::events::DEFAULT_MAX_UNSOLICITED_BYTES;

/// Default of [`ClientOptionsBuilder::connect_attempt_delay`] (RFC 8305's recommended 250 ms).
pub const DEFAULT_CONNECT_ATTEMPT_DELAY: Duration = Duration::from_millis(250);
/// Default of [`ClientOptionsBuilder::connect_attempt_timeout`].
pub const DEFAULT_CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a client needs: the pool's [`Config`] and the client-level options.
///
/// Build one with [`ClientOptions::builder`], or convert a [`Config`] with `From` to take the
/// defaults (webpki roots, random seed, 4 MiB of unsolicited frames held for subscribers).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    config: Config,
    #[cfg(feature = "tls")]
    root_certificates: Vec<CertificateDer<'static>>,
    #[cfg(feature = "tls")]
    webpki_roots: bool,
    #[cfg(feature = "native-roots")]
    native_roots: bool,
    #[cfg(feature = "platform-verifier")]
    platform_verifier: bool,
    #[cfg(feature = "tls")]
    tls_config: Option<Arc<rustls::ClientConfig>>,
    connect_attempt_delay: Duration,
    connect_attempt_timeout: Duration,
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
    #[cfg(feature = "tls")]
    pub fn root_certificates(&self) -> &[CertificateDer<'static>] {
        &self.root_certificates
    }

    /// Whether the Mozilla roots of `webpki-roots` are trusted too (default yes).
    #[cfg(feature = "tls")]
    pub fn webpki_roots(&self) -> bool {
        self.webpki_roots
    }

    /// Whether the platform's root certificates are trusted too (default no; feature
    /// `native-roots`); see [`ClientOptionsBuilder::native_roots`].
    #[cfg(feature = "native-roots")]
    pub fn native_roots(&self) -> bool {
        self.native_roots
    }

    /// Whether server certificates are verified by the platform's verifier (default no;
    /// feature `platform-verifier`); see [`ClientOptionsBuilder::platform_verifier`].
    #[cfg(feature = "platform-verifier")]
    pub fn platform_verifier(&self) -> bool {
        self.platform_verifier
    }

    /// The rustls configuration given with [`ClientOptionsBuilder::tls_config`], if any.
    #[cfg(feature = "tls")]
    pub fn tls_config(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls_config.as_ref()
    }

    /// How long a dial waits for one address before it also tries the next (default
    /// 250 ms); see [`ClientOptionsBuilder::connect_attempt_delay`].
    pub fn connect_attempt_delay(&self) -> Duration {
        self.connect_attempt_delay
    }

    /// How long one TCP connect attempt to one address may take (default 2 s); see
    /// [`ClientOptionsBuilder::connect_attempt_timeout`].
    pub fn connect_attempt_timeout(&self) -> Duration {
        self.connect_attempt_timeout
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

    /// The proxy the client's dials would go through, with its credentials redacted: the
    /// explicit one, else (with [`ClientOptionsBuilder::proxy_from_env`]) the one the
    /// environment gives for the configured URL, by the rules described there, read now;
    /// `None` for direct connections. Fails as building the client would on an unusable
    /// proxy URL. For tools that must know whether a proxy is in the way (`ufsock bench`
    /// refuses to compare against its direct bare clients through one).
    pub fn resolve_proxy_redacted(&self) -> Result<Option<String>, crate::ClientError> {
        let proxy = crate::handshake::resolve_proxy(self, |name| std::env::var(name).ok())?;
        Ok(proxy.map(|proxy| proxy.redacted().to_owned()))
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
            #[cfg(feature = "tls")]
            root_certificates: Vec::new(),
            #[cfg(feature = "tls")]
            webpki_roots: true,
            #[cfg(feature = "native-roots")]
            native_roots: false,
            #[cfg(feature = "platform-verifier")]
            platform_verifier: false,
            #[cfg(feature = "tls")]
            tls_config: None,
            connect_attempt_delay: DEFAULT_CONNECT_ATTEMPT_DELAY,
            connect_attempt_timeout: DEFAULT_CONNECT_ATTEMPT_TIMEOUT,
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
    #[cfg(feature = "tls")]
    pub fn add_root_certificate(mut self, der: impl Into<CertificateDer<'static>>) -> Self {
        self.options.root_certificates.push(der.into());
        self
    }

    /// Whether to trust the Mozilla roots of `webpki-roots` as well (default true).
    #[cfg(feature = "tls")]
    pub fn webpki_roots(mut self, enabled: bool) -> Self {
        self.options.webpki_roots = enabled;
        self
    }

    /// Whether to trust the platform's root certificates as well (default false): the
    /// system's trust store as `rustls-native-certs` finds it, where a TLS-inspecting proxy's
    /// (Zscaler-style) root is usually installed; on Linux and other Unix systems the files
    /// named by `SSL_CERT_FILE` and `SSL_CERT_DIR` when set. Read once, when the client is
    /// built; a store that yields no certificate while nothing else is trusted fails the build
    /// with [`crate::ClientError::InvalidOptions`].
    #[cfg(feature = "native-roots")]
    pub fn native_roots(mut self, enabled: bool) -> Self {
        self.options.native_roots = enabled;
        self
    }

    /// Whether to verify server certificates with the platform's verifier
    /// (`rustls-platform-verifier`: the OS's own certificate verification on Windows, macOS,
    /// iOS and Android, the system's roots through webpki elsewhere), the way browsers do, so
    /// enterprise roots and policies apply. Default false. The certificates of
    /// [`ClientOptionsBuilder::add_root_certificate`] are trusted too; `webpki-roots` is not
    /// consulted then.
    #[cfg(feature = "platform-verifier")]
    pub fn platform_verifier(mut self, enabled: bool) -> Self {
        self.options.platform_verifier = enabled;
        self
    }

    /// Uses this rustls configuration for `wss://` as given, instead of building one from the
    /// other TLS options (roots, verifier): for client certificates (mTLS), a custom
    /// verifier, pinned protocol versions or a crypto provider of your own. Its ALPN list
    /// should be empty (the WebSocket upgrade is HTTP/1.1).
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.options.tls_config = Some(config);
        self
    }

    /// How long a dial waits for a TCP connect to one of the host's addresses before it also
    /// tries the next, in parallel (Happy Eyeballs, RFC 8305: addresses alternate between
    /// IPv6 and IPv4, IPv6 first). Default 250 ms, bounded to 10 ms–2 s. A failed attempt starts the
    /// next one at once.
    pub fn connect_attempt_delay(mut self, delay: Duration) -> Self {
        self.options.connect_attempt_delay = delay.clamp(Duration::from_millis(10), Duration::from_secs(2));
        self
    }

    /// How long one TCP connect attempt to one address may take before it counts as failed
    /// (default 2 s, at least 10 ms), so a black-holed address does not take the whole
    /// handshake timeout. The handshake timeout still bounds the dial as a whole.
    pub fn connect_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_attempt_timeout = timeout.max(Duration::from_millis(10));
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
    /// more than [`crate::EVENT_CAPACITY`] events behind). So a subscriber that stops
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
    /// `wss://`, only lower-case `http_proxy` for `ws://` (never `HTTP_PROXY`, which a
    /// CGI-style host sets from a request header), else `all_proxy`/`ALL_PROXY` (the
    /// lower-case name first; an empty value is unset; a value without a scheme is taken as
    /// `http://`). `no_proxy`/`NO_PROXY` exempts hosts: a comma-separated list of names
    /// (matching the name and its subdomains, with or without a leading dot), IP addresses,
    /// CIDR ranges, each optionally with `:port`, or `*` as the whole value for every host;
    /// an IP host is matched only by addresses and ranges. The environment is read once,
    /// when the client is built.
    pub fn proxy_from_env(mut self, enabled: bool) -> Self {
        self.options.proxy_from_env = enabled;
        self
    }

    /// Keeps every accepted message in the spool directory of `spool` until a pong confirms
    /// it (or it expires, or ends unconfirmed under at-most-once), and replays what an
    /// earlier process left there first. `spool.max_bytes` (`max_spool_bytes`) bounds the live
    /// records: past it `send` refuses with [`crate::ClientError::SpoolFull`], counted.
    /// Each `send` writes its record to the OS before it returns, so killing the process
    /// loses no accepted message (`spool.write_through`, on by default).
    /// `spool.sync` chooses when records are made durable against a power cut
    /// ([`crate::spool::SyncPolicy`]: group commit by default; `EverySend` makes `send` wait
    /// for its record; `Never` never syncs).
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
