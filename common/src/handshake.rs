//! Dial helpers: the upgrade request, the TLS and WebSocket configurations, and the mapping of
//! tungstenite errors to the core's [`DialError`] and [`CloseReason`].

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Request;
use tungstenite::http::header::{HeaderValue, USER_AGENT};
use tungstenite::protocol::WebSocketConfig;
use usageflow_socket_core::{CloseReason, Config, DialError};

use crate::{ClientError, ClientOptions};

/// The header that carries the API key (PROTOCOL.md).
pub const API_KEY_HEADER: &str = "x-usage-key";

/// The `User-Agent` of an adapter: `crate/version`, for example
/// `user_agent(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))`.
pub fn user_agent(crate_name: &str, version: &str) -> String {
    format!("{crate_name}/{version}")
}

/// Where to open the TCP connection for a dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTarget {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (the URL's, or 80 for `ws`, 443 for `wss`).
    pub port: u16,
    /// Whether the URL is `wss://` (TLS).
    pub tls: bool,
}

/// What every dial of a client needs, built once: the pool configuration, the runtime's TLS
/// connector `C` (made from [`tls_client_config`]), the WebSocket limits and the `User-Agent`.
pub struct DialContext<C> {
    config: Config,
    tls: C,
    websocket: WebSocketConfig,
    user_agent: String,
}

impl<C: Clone> DialContext<C> {
    /// The pool configuration it dials for.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Builds the context of `options`; `connector` wraps the rustls configuration in the
    /// runtime's TLS connector. Fails on unusable TLS options.
    pub fn new(
        options: &ClientOptions,
        user_agent: String,
        connector: impl FnOnce(Arc<ClientConfig>) -> C,
    ) -> Result<Self, ClientError> {
        let config = options.config().clone();
        Ok(Self {
            tls: connector(tls_client_config(options)?),
            websocket: websocket_config(&config),
            config,
            user_agent,
        })
    }

    /// The WebSocket configuration of every connection.
    pub fn websocket(&self) -> WebSocketConfig {
        self.websocket
    }

    /// A fresh upgrade request (see [`upgrade_request`]), its TCP target, and the TLS
    /// connector when the URL is `wss://`.
    pub fn prepare(&self) -> Result<(Request, DialTarget, Option<C>), DialError> {
        let request = upgrade_request(&self.config, &self.user_agent)?;
        let target = dial_target(&request)?;
        let connector = target.tls.then(|| self.tls.clone());
        Ok((request, target, connector))
    }
}

/// Builds the upgrade request for `config.url()` with the `x-usage-key` header (marked
/// sensitive, so `http` never prints it) and `User-Agent: <user_agent>`. A fresh request per
/// dial: it carries a new `Sec-WebSocket-Key`.
pub fn upgrade_request(config: &Config, user_agent: &str) -> Result<Request, DialError> {
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

/// The TCP target of an upgrade request.
pub fn dial_target(request: &Request) -> Result<DialTarget, DialError> {
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

/// The rustls client configuration for `wss://`: built explicitly on the `ring` provider (never
/// a process-wide default provider, which may be absent), trusting the webpki roots (if
/// enabled) and the options' extra roots.
pub fn tls_client_config(options: &ClientOptions) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    if options.webpki_roots() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for (i, der) in options.root_certificates().iter().enumerate() {
        roots
            .add(der.clone())
            .map_err(|e| ClientError::InvalidOptions(format!("root certificate #{i} is not usable: {e}")))?;
    }
    if roots.is_empty() && options.config().url().starts_with("wss://") {
        return Err(ClientError::InvalidOptions(
            "wss:// needs trusted roots: enable webpki roots or add a root certificate".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::InvalidOptions(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Size of a connection's read buffer. tungstenite zero-fills the free part of this buffer
/// before every socket read, so its default (128 KiB) costs a 128 KiB memset per read; our
/// frames are small JSON objects, and 16 KiB still takes about a hundred replies per read.
/// Larger frames grow the buffer as they need.
pub const READ_BUFFER_SIZE: usize = 16 << 10;

/// The WebSocket configuration: incoming frames and messages are bounded at twice
/// `max_frame_size` (at least 64 KiB). Frames a little over the limit still reach the core,
/// which skips and counts them while the connection stays up; far larger ones cannot exhaust
/// memory (tungstenite fails the read and the connection is replaced). The read buffer is
/// [`READ_BUFFER_SIZE`].
pub fn websocket_config(config: &Config) -> WebSocketConfig {
    let limit = config.max_frame_size().saturating_mul(2).max(64 << 10);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .max_frame_size(Some(limit))
        .max_message_size(Some(limit))
}

/// Maps a failed dial: a non-101 answer is [`DialError::Rejected`] (permanent for the key),
/// anything else is [`DialError::Network`]. Texts never include request headers.
pub fn dial_error(error: tungstenite::Error) -> DialError {
    match error {
        tungstenite::Error::Http(response) => DialError::Rejected {
            status: response.status().as_u16(),
        },
        other => DialError::Network(other.to_string()),
    }
}

/// Maps a TCP connect failure.
pub fn connect_error(target: &DialTarget, error: &std::io::Error) -> DialError {
    DialError::Network(format!(
        "TCP connect to {}:{} failed: {error}",
        target.host, target.port
    ))
}

/// Maps a read error to how the connection ended.
pub fn close_reason(error: tungstenite::Error) -> CloseReason {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => CloseReason::Eof,
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::Eof,
        tungstenite::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => CloseReason::Eof,
        other => CloseReason::Error(other.to_string()),
    }
}

/// Maps a received close frame (`None`: a close frame without a status, code 1005).
pub fn close_frame_reason(frame: Option<tungstenite::protocol::CloseFrame>) -> CloseReason {
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

    #[test]
    fn tls_config_builds_with_ring() {
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
