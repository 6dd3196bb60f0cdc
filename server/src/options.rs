//! Static options of a [`Server`](super::Server): what is fixed when it starts.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

/// How a reply names the request it answers ([PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)'s correlation rule accepts all three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum ReplyStyle {
    /// `replyTo` = the request id, `id` = a fresh UUID of the server's own. The default.
    #[default]
    ReplyTo,
    /// `replyTo` and `id` both equal the request id.
    Both,
    /// No `replyTo`; `id` = the request id.
    IdOnly,
    /// A careless server: `replyTo` = the request id, `id` = a number, and a denial's `error`
    /// is an object (`{"code":429,"text":...}`), not a string. Clients must still correlate
    /// and recognise the denial.
    Hostile,
}

impl ReplyStyle {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            ReplyStyle::ReplyTo => 0,
            ReplyStyle::Both => 1,
            ReplyStyle::IdOnly => 2,
            ReplyStyle::Hostile => 3,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => ReplyStyle::Both,
            2 => ReplyStyle::IdOnly,
            3 => ReplyStyle::Hostile,
            _ => ReplyStyle::ReplyTo,
        }
    }
}

impl std::str::FromStr for ReplyStyle {
    type Err = String;

    /// Parses `reply-to`, `both` or `id-only` (case-insensitive, `_` or `-`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "reply-to" | "replyto" => Ok(ReplyStyle::ReplyTo),
            "both" => Ok(ReplyStyle::Both),
            "id-only" | "idonly" | "id" => Ok(ReplyStyle::IdOnly),
            other => Err(format!("unknown reply style {other:?} (reply-to, both, id-only)")),
        }
    }
}

/// A certificate chain and its private key, to serve `wss://`.
#[derive(Debug)]
pub struct TlsOptions {
    /// The certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// When not empty, the server requires a client certificate (mTLS) issued by one of these
    /// roots, and refuses the TLS handshake without one. Empty by default: no client
    /// authentication.
    pub client_auth_roots: Vec<CertificateDer<'static>>,
}

impl Clone for TlsOptions {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            client_auth_roots: self.client_auth_roots.clone(),
        }
    }
}

/// The payloads the server answers with. Defaults are small but realistic.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyData {
    /// The `policies` array of `get_application_policies` (`total` is its length).
    pub policies: Vec<Value>,
    /// The whole reply payload of `get_application_config`.
    pub application_config: Value,
    /// The `endpoints` array of `get_blocked_endpoints` (`total` is its length).
    pub blocked_endpoints: Vec<Value>,
}

impl Default for ReplyData {
    fn default() -> Self {
        Self {
            policies: vec![
                json!({
                    "policyId": "pol-ledger-1",
                    "ledgerId": "ledger-1",
                    "endpointMethod": "POST",
                    "endpointPattern": "/api/v1/orders",
                    "identityField": "userId",
                    "identityLocation": "body",
                    "rateLimit": 100,
                    "rateLimitInterval": "minute",
                    "hasRateLimit": true
                }),
                json!({
                    "policyId": "pol-ledger-2",
                    "ledgerId": "ledger-2",
                    "endpointMethod": "GET",
                    "endpointPattern": "/api/v1/reports/:id",
                    "identityField": "authorization",
                    "identityLocation": "bearer_token",
                    "hasRateLimit": false
                }),
            ],
            application_config: json!({
                "monitoringPaths": ["/api/v1/*"],
                "whitelistEndpoints": [
                    {"method": "GET", "url": "/health"},
                    {"method": "GET", "url": "/metrics"}
                ],
                "discoveryDisabled": false,
                "reportAllFunctionAllocations": false,
                "accountReachLimit": false
            }),
            blocked_endpoints: vec![json!({
                "url": "/api/v1/admin/*",
                "method": "DELETE",
                "identity": "blocked-user-1"
            })],
        }
    }
}

/// Fault settings, as plain data: the initial state of a server's [`Faults`](super::Faults),
/// and what [`Faults::set`](super::Faults::set) / [`Faults::get`](super::Faults::get) exchange.
///
/// Counts and periods of `0` mean "off".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// Delay before each reply is sent, in milliseconds. Delayed replies do not hold up reading:
    /// a pipelined client still has all its requests read at once.
    pub reply_delay_ms: u64,
    /// Extra random delay, uniform in `0..=reply_jitter_ms`, added to each reply's delay.
    pub reply_jitter_ms: u64,
    /// Drop every k-th reply (server-wide reply sequence).
    pub drop_every: u64,
    /// Send every reply twice.
    pub duplicate_replies: bool,
    /// After every n-th reply, also send a text frame that is not JSON.
    pub garbage_every: u64,
    /// After every n-th reply, also send a binary frame.
    pub binary_every: u64,
    /// After every n-th reply, also send a stray reply (`replyTo` a random UUID).
    pub stray_every: u64,
    /// Never answer pings: outgoing pong frames are filtered out of the byte stream.
    pub no_pongs: bool,
    /// Freeze every connection now (and every new one): it stops reading and writing but keeps
    /// its TCP socket open, until the server is killed or shut down.
    pub freeze: bool,
    /// Freeze a connection after it has received this many text frames.
    pub freeze_after_messages: u64,
    /// Freeze a connection this many milliseconds after it opened.
    pub freeze_after_ms: u64,
    /// Stop reading every connection while set (reversible): the client's writes stall once
    /// the socket buffers fill, pings go unanswered. Replies already due are still sent.
    pub stop_reading: bool,
    /// Send a close frame (code [`close_code`](Self::close_code)) after a connection has
    /// received this many text frames.
    pub close_after_messages: u64,
    /// The code of the close frames sent by `close_after_messages`; `0` means 1000.
    pub close_code: u16,
    /// Drop the TCP connection abruptly (no close frame) after it received this many text frames.
    pub drop_after_messages: u64,
    /// Reject every WebSocket upgrade with 401.
    pub reject_handshakes: bool,
    /// Answer every WebSocket upgrade with this HTTP status instead of 101 (0 = off), for
    /// example 503 or 429: the service unavailable rather than the key refused.
    /// [`reject_handshakes`](Self::reject_handshakes) (401) takes precedence.
    pub handshake_status: u16,
    /// With [`handshake_status`](Self::handshake_status): send `Retry-After` with this many
    /// seconds (0 = no header).
    pub retry_after_secs: u64,
    /// Send a ping to every connection this often, in milliseconds (0 = off): a server that
    /// pings, as some gateways do.
    pub ping_every_ms: u64,
    /// Send every connection, this often in milliseconds (0 = off), unsolicited pongs carrying
    /// every small counter (0 to [`FORGED_PONG_MAX`](super::FORGED_PONG_MAX)) as 8 bytes in
    /// both byte orders: a peer or middlebox that guesses ping payloads (RFC 6455 allows
    /// unsolicited pongs). With `stop_reading`, none of them may confirm anything.
    pub forge_pongs_every_ms: u64,
    /// Accept TCP connections but never answer the upgrade request.
    pub hang_handshakes: bool,
    /// One-shot: drop the TCP connection abruptly (no close frame, no reply) that receives the
    /// first text frame containing this text, then disarm. The frame is counted as received
    /// (as a request or a fire-and-forget message). Lets a test kill exactly the connection that
    /// carries one given request; `None` (or an empty text) is off.
    pub drop_once_on: Option<String>,
    /// One-shot: one connection sends this many unsolicited frames in a row, then the switch
    /// returns to 0: the first to open when it is set at start, any open one (the first to
    /// wake) when it is set at run time with
    /// [`Faults::set_push_frames`](super::Faults::set_push_frames). Each is
    /// `{"type":"push","payload":"xx…","id":"push-<n>"}`: its `id` answers no request, so a
    /// client hands it to its subscribers as an unsolicited frame. Lets a test flood a client's
    /// event stream.
    pub push_frames: u64,
    /// The length of each pushed frame's payload, a JSON string of this many characters
    /// (quotes included, at least 2).
    pub push_size: u64,
    /// One-shot: once the server has received this many messages (requests and
    /// fire-and-forget messages, over all connections) since the switch was set, abort every
    /// connection, as [`ServerHandle::abort_connections`](super::ServerHandle::abort_connections)
    /// does, then return to 0. The message that reaches the count is counted as received and
    /// not answered; messages the server had not read yet are lost, as in an abrupt restart.
    /// The listener keeps accepting.
    pub abort_after_messages: u64,
    /// Abort every connection this often, in milliseconds, as
    /// [`ServerHandle::abort_connections`](super::ServerHandle::abort_connections) does, for as
    /// long as the switch is set. The listener keeps accepting, so clients can reconnect
    /// between two aborts.
    pub abort_every_ms: u64,
    /// Pause reading a connection for this many microseconds after each text frame it receives,
    /// so a fast client fills the socket buffers and its writes stall. Pings are still answered
    /// in order, when they are read. The pause is kept on average: the timer has a resolution of
    /// a millisecond, so sub-millisecond pauses are taken several at a time.
    pub read_delay_us: u64,
}

/// Everything fixed when a [`Server`](super::Server) starts. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct ServerOptions {
    /// Where to listen. Default `127.0.0.1:0` (an ephemeral port).
    pub addr: SocketAddr,
    /// The accepted API key. `None` accepts any non-empty `x-usage-key`; a missing or empty
    /// header is always rejected with 401.
    pub key: Option<String>,
    /// Initial reply style; changeable at run time with
    /// [`Faults::set_reply_style`](super::Faults::set_reply_style).
    pub reply_style: ReplyStyle,
    /// Initial faults.
    pub faults: FaultConfig,
    /// Serve `wss://` with this certificate when set.
    pub tls: Option<TlsOptions>,
    /// Maximum WebSocket frame and message size accepted from clients. Default 1 MiB.
    pub max_frame_size: usize,
    /// Time allowed for the TLS and WebSocket handshakes. Default 10 s.
    pub handshake_timeout: Duration,
    /// `SO_RCVBUF` of the listening socket (inherited by accepted sockets). Small values make a
    /// `stop_reading` server stall a client's writes sooner.
    pub recv_buffer_size: Option<u32>,
    /// The payloads of the replies.
    pub data: ReplyData,
    /// How long [`ServerHandle::restart`](super::ServerHandle::restart) keeps retrying to bind
    /// the same port. Default 2 s.
    pub rebind_timeout: Duration,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("addr", &self.addr)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("reply_style", &self.reply_style)
            .field("faults", &self.faults)
            .field("tls", &self.tls.is_some())
            .field("max_frame_size", &self.max_frame_size)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("recv_buffer_size", &self.recv_buffer_size)
            .field("rebind_timeout", &self.rebind_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            key: None,
            reply_style: ReplyStyle::default(),
            faults: FaultConfig::default(),
            tls: None,
            max_frame_size: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            recv_buffer_size: None,
            data: ReplyData::default(),
            rebind_timeout: Duration::from_secs(2),
        }
    }
}
