//! The dial (TCP on the runtime, TLS, WebSocket upgrade) and its helpers: the upgrade request, the TLS and WebSocket configurations, and the mapping of
//! tungstenite errors to the core's [`DialError`] and [`CloseReason`].

use std::io;
use std::pin::Pin;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use futures_io::{AsyncRead, AsyncWrite};
#[cfg(feature = "tls")]
use futures_rustls::client::TlsStream;
#[cfg(feature = "tls")]
use futures_rustls::TlsConnector;
#[cfg(feature = "tls")]
use rustls::pki_types::ServerName;
#[cfg(feature = "tls")]
use rustls::{ClientConfig, RootCertStore};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Request;
use tungstenite::http::header::{HeaderValue, RETRY_AFTER, USER_AGENT};
use tungstenite::protocol::WebSocketConfig;
use usageflow_socket_core::{CloseReason, Config, DialError, DialIoError, DialStage};

use crate::eyeballs::{self, Eyeballs};
use crate::proxy::{self, Proxy};
use crate::{ClientError, ClientOptions, Runtime};

/// The header that carries the API key ([PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)).
pub(crate) const API_KEY_HEADER: &str = "x-usage-key";

/// Where to open the TCP connection for a dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DialTarget {
    /// Host name or IP address (IPv6 without brackets).
    pub(crate) host: String,
    /// Port (the URL's, or 80 for `ws`, 443 for `wss`).
    pub(crate) port: u16,
    /// Whether the URL is `wss://` (TLS).
    pub(crate) tls: bool,
}

/// What every dial of a client needs, built once: the pool configuration, the TLS connector
/// (made from [`tls_client_config`]), the WebSocket limits and the `User-Agent`.
pub(crate) struct DialContext {
    config: Config,
    #[cfg(feature = "tls")]
    tls: TlsConnector,
    websocket: WebSocketConfig,
    user_agent: &'static str,
    proxy: Option<Proxy>,
    eyeballs: Eyeballs,
}

impl DialContext {
    /// The pool configuration it dials for.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Builds the context of `options`. Fails on unusable TLS options.
    pub(crate) fn new(options: &ClientOptions, user_agent: &'static str) -> Result<Self, ClientError> {
        let config = options.config().clone();
        let proxy = resolve_proxy(options, |name| std::env::var(name).ok())?;
        if let Some(proxy) = &proxy {
            tracing::info!(
                proxy = proxy.redacted(),
                "usageflow-socket: dialing through an HTTP CONNECT proxy"
            );
        }
        #[cfg(not(feature = "tls"))]
        if config.url().starts_with("wss://") {
            return Err(ClientError::InvalidOptions(
                "wss:// needs TLS: build usageflow-socket with its `tls` feature".into(),
            ));
        }
        Ok(Self {
            #[cfg(feature = "tls")]
            tls: TlsConnector::from(tls_client_config(options)?),
            websocket: websocket_config(&config),
            config,
            user_agent,
            proxy,
            eyeballs: Eyeballs {
                delay: options.connect_attempt_delay(),
                attempt_timeout: options.connect_attempt_timeout(),
            },
        })
    }

    /// TCP connect (on `runtime`), TLS for `wss://`, WebSocket upgrade; the socket's two
    /// halves. No timeout here: the core's handshake deadline aborts the dial's task.
    pub(crate) async fn dial<R: Runtime>(&self, runtime: &R) -> Result<Socket<R::Tcp>, DialError> {
        let request = upgrade_request(&self.config, self.user_agent)?;
        let target = dial_target(&request)?;
        let tcp = match &self.proxy {
            None => {
                let (tcp, peer) = eyeballs::connect(runtime, &target.host, target.port, self.eyeballs)
                    .await
                    .map_err(|e| io_error(DialStage::Connect, &target.host, target.port, e))?;
                tracing::Span::current().record("peer", tracing::field::display(peer));
                tcp
            }
            Some(proxy) => {
                let connect = eyeballs::connect(runtime, &proxy.host, proxy.port, self.eyeballs);
                let (mut tcp, peer) = connect
                    .await
                    .map_err(|e| io_error(DialStage::Proxy, &proxy.host, proxy.port, e))?;
                tracing::Span::current().record("peer", tracing::field::display(peer));
                proxy::connect_tunnel(&mut tcp, proxy, &target.host, target.port).await?;
                tcp
            }
        };
        #[cfg(not(feature = "tls"))]
        let stream = MaybeTls::Plain(tcp);
        #[cfg(feature = "tls")]
        let stream = if target.tls {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| DialError::Network(format!("invalid TLS server name {:?}: {e}", target.host)))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| io_error(DialStage::Tls, &target.host, target.port, e))?;
            MaybeTls::Tls(Box::new(tls))
        } else {
            MaybeTls::Plain(tcp)
        };
        let (socket, _response) =
            async_tungstenite::client_async_with_config(request, stream, Some(self.websocket))
                .await
                .map_err(|e| match e {
                    tungstenite::Error::Io(e) => io_error(DialStage::Upgrade, &target.host, target.port, e),
                    other => dial_error(other),
                })?;
        Ok(socket.split())
    }
}

/// A connection's two halves (they share the stream under a lock of their own).
pub(crate) type Socket<S> = (WebSocketSender<MaybeTls<S>>, WebSocketReceiver<MaybeTls<S>>);

/// A TCP stream, or TLS over it for `wss://`.
pub(crate) enum MaybeTls<S> {
    /// `ws://`.
    Plain(S),
    /// `wss://`.
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_close(cx),
            #[cfg(feature = "tls")]
            MaybeTls::Tls(s) => Pin::new(s).poll_close(cx),
        }
    }
}

/// Builds the upgrade request for `config.url()` with the `x-usage-key` header (marked
/// sensitive, so `http` never prints it) and `User-Agent: <user_agent>`. A fresh request per
/// dial: it carries a new `Sec-WebSocket-Key`.
pub(crate) fn upgrade_request(config: &Config, user_agent: &str) -> Result<Request, DialError> {
    let mut request = config
        .url()
        .into_client_request()
        .map_err(|e| DialError::Network(format!("invalid URL {:?}: {e}", config.url_redacted())))?;
    // `ApiKey` guarantees visible ASCII, so this cannot fail; the message names no key.
    let mut key = HeaderValue::from_str(config.api_key().expose())
        .map_err(|_| DialError::Network("the API key is not a valid header value".into()))?;
    key.set_sensitive(true);
    let agent = HeaderValue::from_str(user_agent)
        .map_err(|_| DialError::Network(format!("invalid User-Agent {user_agent:?}")))?;
    let headers = request.headers_mut();
    headers.insert(API_KEY_HEADER, key);
    headers.insert(USER_AGENT, agent);
    Ok(request)
}

/// The proxy to dial through: the explicit one, else (when enabled) the environment's for the
/// URL's scheme and host, read through `lookup`. An unusable proxy URL is
/// [`ClientError::InvalidOptions`] (its credentials redacted).
pub(crate) fn resolve_proxy(
    options: &ClientOptions,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, ClientError> {
    if let Some(url) = options.proxy_url() {
        return Proxy::parse(url, false)
            .map(Some)
            .map_err(ClientError::InvalidOptions);
    }
    if !options.proxy_from_env() {
        return Ok(None);
    }
    // An URL the HTTP layer refuses fails every dial anyway: no proxy to choose then.
    let Ok(target) = upgrade_request(options.config(), "probe").and_then(|r| dial_target(&r)) else {
        return Ok(None);
    };
    match proxy::proxy_from_env(target.tls, &target.host, target.port, lookup) {
        None => Ok(None),
        Some(url) => Proxy::parse(&url, true)
            .map(Some)
            .map_err(|e| ClientError::InvalidOptions(format!("from the environment: {e}"))),
    }
}

/// The TCP target of an upgrade request.
pub(crate) fn dial_target(request: &Request) -> Result<DialTarget, DialError> {
    let uri = request.uri();
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => return Err(DialError::Network(format!("unsupported URL scheme {other:?}"))),
    };
    let host = uri
        .host()
        .ok_or_else(|| DialError::Network("the URL has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(DialTarget { host, port, tls })
}

/// The crypto provider the client builds its TLS configuration on: `aws-lc-rs` when that
/// feature is on, else `ring` when that one is; with neither, the process-wide default that
/// the application installed (`CryptoProvider::install_default`), so a host that already
/// links one compiles no second. Never a provider picked implicitly from whatever is linked.
#[cfg(feature = "tls")]
fn crypto_provider() -> Result<Arc<rustls::crypto::CryptoProvider>, ClientError> {
    #[cfg(feature = "aws-lc-rs")]
    return Ok(Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return Ok(Arc::new(rustls::crypto::ring::default_provider()));
    #[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| {
            ClientError::InvalidOptions(
                "TLS needs a crypto provider: enable the `ring` or `aws-lc-rs` feature, or install a process default with rustls::crypto::CryptoProvider::install_default".into(),
            )
        })
}

/// The rustls client configuration for `wss://`: the one given with
/// [`crate::ClientOptionsBuilder::tls_config`] as is; else, on [`crypto_provider`], the
/// platform's verifier (feature `platform-verifier`, when chosen) or webpki over the trusted
/// roots (webpki roots, the platform's roots, the options' extra roots), without client
/// authentication.
#[cfg(feature = "tls")]
pub(crate) fn tls_client_config(options: &ClientOptions) -> Result<Arc<ClientConfig>, ClientError> {
    if let Some(config) = options.tls_config() {
        return Ok(Arc::clone(config));
    }
    let provider = crypto_provider()?;
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::InvalidOptions(format!("TLS configuration: {e}")))?;
    #[cfg(feature = "platform-verifier")]
    if options.platform_verifier() {
        let extra = options.root_certificates().iter().cloned();
        let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider)
            .map_err(|e| ClientError::InvalidOptions(format!("the platform verifier: {e}")))?;
        let config = builder
            .dangerous() // Not dangerous: the platform's own verification replaces webpki's.
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        return Ok(Arc::new(config));
    }
    let roots = root_store(options)?;
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// The roots webpki trusts: the webpki roots (if enabled), the platform's (if chosen), and the
/// options' extra roots. Empty is an error for a `wss://` URL.
#[cfg(feature = "tls")]
fn root_store(options: &ClientOptions) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    if options.webpki_roots() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    #[cfg(feature = "native-roots")]
    if options.native_roots() {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "usageflow-socket: a platform root certificate store could not be read");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(
            added,
            ignored,
            "usageflow-socket: trusting the platform's root certificates"
        );
    }
    for (i, der) in options.root_certificates().iter().enumerate() {
        roots
            .add(der.clone())
            .map_err(|e| ClientError::InvalidOptions(format!("root certificate #{i} is not usable: {e}")))?;
    }
    if roots.is_empty() && options.config().url().starts_with("wss://") {
        return Err(ClientError::InvalidOptions(
            "wss:// needs trusted roots: enable webpki or platform roots, or add a root certificate".into(),
        ));
    }
    Ok(roots)
}

/// Size of a connection's read buffer. tungstenite zero-fills the free part of this buffer
/// before every socket read (the reads that find nothing included), so its default
/// (128 KiB) costs a 128 KiB memset per read; our frames are small JSON objects, and 8 KiB
/// still takes about forty replies per read (more than one connection's share of 256
/// requests in flight over 10 connections). Measured: at 16 KiB the memset was 40 % of the
/// client's instructions per request (callgrind, 16 in flight). Larger frames grow the
/// buffer as they need.
pub(crate) const READ_BUFFER_SIZE: usize = 8 << 10;

/// The WebSocket configuration: incoming frames and messages are bounded at twice
/// `max_frame_size` (at least 64 KiB). Frames a little over the limit still reach the core,
/// which skips and counts them while the connection stays up; far larger ones cannot exhaust
/// memory (tungstenite fails the read and the connection is replaced). The read buffer is
/// [`READ_BUFFER_SIZE`].
pub(crate) fn websocket_config(config: &Config) -> WebSocketConfig {
    let limit = config.max_frame_size().saturating_mul(2).max(64 << 10);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .max_frame_size(Some(limit))
        .max_message_size(Some(limit))
}

/// Maps a failed dial: a 401 or 403 answer is [`DialError::Rejected`] (the key was refused);
/// any other non-101 answer is [`DialError::HttpStatus`] (429 and 5xx: unavailable for now),
/// carrying the server's `Retry-After` read against the system clock now; anything else is
/// [`DialError::Network`]. Texts never include request headers.
pub(crate) fn dial_error(error: tungstenite::Error) -> DialError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            match status {
                401 | 403 => DialError::Rejected { status },
                _ => DialError::HttpStatus {
                    status,
                    retry_after: response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry_after(v, SystemTime::now())),
                },
            }
        }
        other => DialError::Network(other.to_string()),
    }
}

/// Reads a `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP date taken
/// against `now` (a date in the past is no delay). `None` when it is neither. The pool bounds
/// the delay by its backoff cap.
pub(crate) fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate rather than fail: the cap bounds them anyway.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A dial's I/O failure at `stage` towards `host:port`, kept whole ([`DialError::Io`]).
pub(crate) fn io_error(stage: DialStage, host: &str, port: u16, error: io::Error) -> DialError {
    DialError::Io(DialIoError::new(stage, host_port(host, port), error))
}

/// `host:port`, with an IPv6 address in brackets.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Maps a read error to how the connection ended.
pub(crate) fn close_reason(error: tungstenite::Error) -> CloseReason {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => CloseReason::Eof,
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::Eof,
        tungstenite::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => CloseReason::Eof,
        other => CloseReason::Error(other.to_string()),
    }
}

/// Maps a received close frame (`None`: a close frame without a status, code 1005).
pub(crate) fn close_frame_reason(frame: Option<tungstenite::protocol::CloseFrame>) -> CloseReason {
    match frame {
        Some(frame) => CloseReason::Frame {
            code: frame.code.into(),
            reason: frame.reason.as_str().to_owned(),
        },
        None => CloseReason::Frame {
            code: 1005,
            reason: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> Config {
        Config::builder(url, "secret-key-42").build().unwrap()
    }

    #[test]
    fn request_carries_key_and_agent_and_never_prints_the_key() {
        let request = upgrade_request(&config("ws://127.0.0.1:9000/ws"), "ua/1.0").unwrap();
        assert_eq!(request.headers()[API_KEY_HEADER], "secret-key-42");
        assert!(request.headers()[API_KEY_HEADER].is_sensitive());
        assert_eq!(request.headers()[USER_AGENT], "ua/1.0");
        assert!(!format!("{request:?}").contains("secret-key-42"));
        assert_eq!(
            dial_target(&request).unwrap(),
            DialTarget {
                host: "127.0.0.1".into(),
                port: 9000,
                tls: false
            }
        );
    }

    #[test]
    fn invalid_url_error_hides_url_credentials() {
        // Valid for the config (ws://, a host, visible ASCII), not for the HTTP layer (a `"`).
        let url = "ws://alice:hunter2@h:9/ws?key=qk-777&token=tk-888&bad=\"";
        let err = upgrade_request(&config(url), "ua").unwrap_err();
        let DialError::Network(message) = &err else {
            panic!("{err:?}")
        };
        for secret in ["secret-key-42", "hunter2", "qk-777", "tk-888"] {
            assert!(!message.contains(secret), "{message}");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
        assert!(
            message.contains("ws://***@h:9/ws?key=***&token=***&bad=***"),
            "{message}"
        );
    }

    #[test]
    fn targets() {
        let r = upgrade_request(&config("wss://api.usageflow.io/ws"), "ua").unwrap();
        assert_eq!(dial_target(&r).unwrap().port, 443);
        assert!(dial_target(&r).unwrap().tls);
        let r = upgrade_request(&config("ws://[::1]:1234/ws"), "ua").unwrap();
        assert_eq!(dial_target(&r).unwrap().host, "::1");
        let r = upgrade_request(&config("ws://localhost/ws"), "ua").unwrap();
        assert_eq!(dial_target(&r).unwrap().port, 80);
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_tls_wss_is_refused_and_ws_builds() {
        let err = DialContext::new(&ClientOptions::from(config("wss://api.usageflow.io/ws")), "ua")
            .err()
            .unwrap();
        assert!(err.to_string().contains("`tls` feature"), "{err}");
        assert!(DialContext::new(&ClientOptions::from(config("ws://127.0.0.1:9/ws")), "ua").is_ok());
    }

    #[cfg(any(feature = "ring", feature = "aws-lc-rs"))]
    #[test]
    fn tls_config_builds_on_the_features_provider() {
        // aws-lc-rs when its feature is on (it offers a post-quantum hybrid key exchange, which
        // ring has not), else ring.
        let provider = crypto_provider().unwrap();
        let post_quantum = provider
            .kx_groups
            .iter()
            .any(|g| format!("{:?}", g.name()).contains("MLKEM"));
        assert_eq!(post_quantum, cfg!(feature = "aws-lc-rs"));
        let options = ClientOptions::from(config("wss://api.usageflow.io/ws"));
        assert!(tls_client_config(&options).is_ok());
        let options = ClientOptions::builder(config("wss://x/ws"))
            .webpki_roots(false)
            .build();
        assert!(matches!(
            tls_client_config(&options),
            Err(ClientError::InvalidOptions(_))
        ));
        let options = ClientOptions::builder(config("wss://x/ws"))
            .add_root_certificate(vec![1u8, 2, 3])
            .build();
        assert!(matches!(
            tls_client_config(&options),
            Err(ClientError::InvalidOptions(_))
        ));
    }

    #[test]
    fn proxy_resolution() {
        let no_env = |_: &str| None;
        let env = |name: &str| match name {
            "https_proxy" => Some("http://u:hunter2@envproxy:3128".to_owned()),
            "no_proxy" => Some(".internal".to_owned()),
            _ => None,
        };
        let opts = |url: &str, explicit: Option<&str>, from_env: bool| {
            let mut b = ClientOptions::builder(config(url)).proxy_from_env(from_env);
            if let Some(p) = explicit {
                b = b.proxy(p);
            }
            b.build()
        };
        assert_eq!(
            resolve_proxy(&opts("wss://api.usageflow.io/ws", None, false), env).unwrap(),
            None
        );
        let p = resolve_proxy(&opts("wss://api.usageflow.io/ws", None, true), env)
            .unwrap()
            .unwrap();
        assert_eq!((p.host.as_str(), p.port), ("envproxy", 3128));
        assert_eq!(
            resolve_proxy(&opts("wss://api.internal/ws", None, true), env).unwrap(),
            None
        );
        assert_eq!(
            resolve_proxy(&opts("ws://api.usageflow.io/ws", None, true), env).unwrap(),
            None
        );
        // The explicit proxy wins over the environment.
        let o = opts(
            "wss://api.usageflow.io/ws",
            Some("http://alice:hunter2@proxy:8080"),
            true,
        );
        let p = resolve_proxy(&o, env).unwrap().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy", 8080));
        assert_eq!(o.proxy_redacted().as_deref(), Some("http://***@proxy:8080"));
        assert!(!format!("{o:?}").contains("hunter2"), "{o:?}");
        assert!(!format!("{p:?}").contains("hunter2"), "{p:?}");
        // Other schemes are refused with a clear, redacted message.
        for bad in ["socks5://alice:hunter2@proxy:1080", "https://alice:hunter2@proxy"] {
            let err = resolve_proxy(&opts("ws://h/ws", Some(bad), false), no_env).unwrap_err();
            let ClientError::InvalidOptions(message) = &err else {
                panic!("{err:?}")
            };
            assert!(message.contains("only http://"), "{message}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        let bad_env = |name: &str| (name == "ALL_PROXY").then(|| "ftp://u:hunter2@x".to_owned());
        let err = resolve_proxy(&opts("ws://h/ws", None, true), bad_env).unwrap_err();
        assert!(matches!(err, ClientError::InvalidOptions(_)) && !err.to_string().contains("hunter2"));
    }

    #[test]
    fn retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(retry_after(" 42 ", now), Some(Duration::from_secs(42)));
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past is no delay"
        );
        assert_eq!(retry_after("-5", now), None);
        assert_eq!(retry_after("", now), None);
        assert_eq!(retry_after("tomorrow", now), None);
    }

    #[test]
    fn error_mapping() {
        let response = tungstenite::http::Response::builder()
            .status(401)
            .body(None)
            .unwrap();
        assert_eq!(
            dial_error(tungstenite::Error::Http(Box::new(response))),
            DialError::Rejected { status: 401 }
        );
        assert!(matches!(
            dial_error(tungstenite::Error::AttackAttempt),
            DialError::Network(_)
        ));
        let status = |code: u16, retry: Option<&str>| {
            let mut b = tungstenite::http::Response::builder().status(code);
            if let Some(r) = retry {
                b = b.header(RETRY_AFTER, r);
            }
            dial_error(tungstenite::Error::Http(Box::new(b.body(None).unwrap())))
        };
        assert_eq!(status(403, None), DialError::Rejected { status: 403 });
        assert!(status(403, None).is_auth_rejection());
        assert_eq!(
            status(503, Some("120")),
            DialError::HttpStatus {
                status: 503,
                retry_after: Some(Duration::from_secs(120))
            }
        );
        assert_eq!(
            status(429, None),
            DialError::HttpStatus {
                status: 429,
                retry_after: None
            }
        );
        assert!(!status(429, None).is_auth_rejection());
        assert_eq!(
            status(404, Some("soon")),
            DialError::HttpStatus {
                status: 404,
                retry_after: None
            }
        );
        assert_eq!(
            close_reason(tungstenite::Error::ConnectionClosed),
            CloseReason::Eof
        );
        assert_eq!(
            close_frame_reason(None),
            CloseReason::Frame {
                code: 1005,
                reason: String::new()
            }
        );
    }
}
