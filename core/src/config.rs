//! Pool configuration: every knob of [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md) with its default, validated once.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use crate::delivery::Delivery;

mod env;
pub use env::{EnvError, ENV_PREFIX};

/// The production endpoint.
pub const PRODUCTION_URL: &str = "wss://api.usageflow.io/ws";
/// The local development endpoint (what `ufsock serve` listens on by default).
pub const LOCAL_URL: &str = "ws://localhost:9000/ws";

/// An API key. Its `Debug` and `Display` never show the key itself, so it cannot leak into
/// logs or error messages by accident; [`ApiKey::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Checks a key: non-empty, at most 4096 bytes, visible ASCII only (it travels in an
    /// HTTP header, so control characters or non-ASCII would break or smuggle headers).
    pub fn new(key: impl Into<String>) -> Result<Self, ConfigError> {
        let key = key.into();
        if key.is_empty() {
            return Err(ConfigError::EmptyApiKey);
        }
        if key.len() > 4096 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::InvalidApiKey);
        }
        Ok(Self(key))
    }

    /// The key itself, for the `x-usage-key` header. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `url` with its credentials replaced by `***`, for logs, `Debug` output and error messages.
///
/// The userinfo becomes `***` (`ws://user:pass@host/ws` → `ws://***@host/ws`), the value of
/// each query parameter becomes `***` (`?key=abc&a=1` → `?key=***&a=***`; a parameter without
/// `=` may be a token itself and becomes `***`), and a fragment becomes `***`. The scheme, the
/// host, the port and the path are kept, and a URL without userinfo, query or fragment comes
/// back unchanged. Text without `scheme://` is read as starting with the host.
///
/// A URL that does not say where its userinfo ends (an `@` after the host part when the host
/// part has none, as an unencoded `/`, `?` or `#` in a password makes) keeps only its scheme:
/// `ws://user:pa#ss@host/ws` → `ws://***`. The result may hide more than needed, never less.
/// Any input is accepted: this never panics.
pub fn redact_url(url: &str) -> String {
    const HIDDEN: &str = "***";
    let (scheme, rest) = match url.find("://") {
        Some(i) if is_scheme(&url[..i]) => url.split_at(i + 3),
        _ => ("", url),
    };
    // The authority ends at the first `/`, `?` or `#`; its userinfo at its last `@`.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host) = match authority.rfind('@') {
        Some(at) => (true, &authority[at + 1..]),
        None => (false, authority),
    };
    let (before_fragment, fragment) = tail.split_at(tail.find('#').unwrap_or(tail.len()));
    let (path, query) = before_fragment.split_at(before_fragment.find('?').unwrap_or(before_fragment.len()));
    if !userinfo {
        // An `@` before the path (behind a `?` or `#` right after the host) or in the path
        // may end a userinfo that holds an unencoded `?`, `#` or `/`.
        let before_path = rest.find('/').map_or(rest, |slash| &rest[..slash]);
        if before_path.contains('@') || path.contains('@') {
            return format!("{scheme}{HIDDEN}");
        }
    }
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    if userinfo {
        out.push_str(HIDDEN);
        out.push('@');
    }
    out.push_str(host);
    out.push_str(path);
    if let Some(query) = query.strip_prefix('?') {
        out.push('?');
        for (i, param) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match param.split_once('=') {
                Some((name, _)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(HIDDEN);
                }
                None if param.is_empty() => {}
                None => out.push_str(HIDDEN),
            }
        }
    }
    if let Some(fragment) = fragment.strip_prefix('#') {
        out.push('#');
        if !fragment.is_empty() {
            out.push_str(HIDDEN);
        }
    }
    out
}

/// Whether `s` is a URL scheme: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// A URL whose `Debug` hides its credentials (see [`redact_url`]).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedactedUrl(String);

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

/// A configuration value that cannot work. Never a panic: every field is checked by
/// [`ConfigBuilder::build`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The API key is empty.
    #[error("the API key is empty")]
    EmptyApiKey,
    /// The API key has characters that cannot travel in an HTTP header, or is over 4096 bytes.
    #[error("the API key must be visible ASCII (no spaces or control characters), at most 4096 bytes")]
    InvalidApiKey,
    /// The URL is not a `ws://` or `wss://` URL with a host. It holds the URL with its
    /// credentials redacted ([`redact_url`]).
    #[error("the URL must start with ws:// or wss:// and name a host, got {0:?}")]
    InvalidUrl(String),
    /// A numeric setting is out of its range.
    #[error("{name} must be in {range}, got {value}")]
    OutOfRange {
        /// The setting's name.
        name: &'static str,
        /// The allowed range, for humans.
        range: &'static str,
        /// The rejected value, for humans.
        value: String,
    },
    /// Two settings contradict each other.
    #[error("{0}")]
    Inconsistent(&'static str),
}

/// A validated pool configuration. Build one with [`Config::builder`]. Its `Debug` shows
/// neither the API key nor the URL's credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub(crate) url: RedactedUrl,
    pub(crate) api_key: ApiKey,
    pub(crate) pool_size: u16,
    pub(crate) request_timeout: Duration,
    pub(crate) ping_period: Duration,
    pub(crate) pong_wait: Duration,
    pub(crate) write_wait: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_cap: Duration,
    pub(crate) backoff_attempts: u32,
    pub(crate) backoff_jitter: f64,
    pub(crate) initial_dial_spread: Duration,
    pub(crate) max_in_flight: u32,
    pub(crate) max_unflushed_writes: u32,
    pub(crate) outbox_capacity: u32,
    pub(crate) max_outbox_bytes: usize,
    pub(crate) outbox_ttl: Duration,
    pub(crate) max_frame_size: usize,
    pub(crate) close_drain: Duration,
    pub(crate) max_connection_age: Option<Duration>,
    pub(crate) resend_idempotent: bool,
    pub(crate) server_deduplicates_allocation_ids: bool,
    pub(crate) degraded_timeout_ratio: f64,
    pub(crate) delivery: Delivery,
    pub(crate) confirm_delivery: bool,
    pub(crate) confirm_every: u32,
    pub(crate) confirm_after: Duration,
    pub(crate) max_unconfirmed: u32,
    pub(crate) max_unconfirmed_bytes: usize,
    pub(crate) max_rewrites: u32,
}

impl Config {
    /// Starts a builder with [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)'s defaults for `url` and `api_key`.
    pub fn builder(url: impl Into<String>, api_key: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder {
            url: RedactedUrl(url.into()),
            // Held redacted from the start; checked by `build`.
            api_key: ApiKey(api_key.into()),
            pool_size: 10,
            request_timeout: Duration::from_secs(2),
            ping_period: Duration::from_secs(30),
            pong_wait: Duration::from_secs(60),
            write_wait: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(60),
            backoff_attempts: 5,
            backoff_jitter: 0.2,
            initial_dial_spread: Duration::ZERO,
            max_in_flight: 1024,
            max_unflushed_writes: 4096,
            outbox_capacity: 10_000,
            max_outbox_bytes: DEFAULT_MAX_OUTBOX_BYTES,
            outbox_ttl: Duration::from_secs(60),
            max_frame_size: 1 << 20,
            close_drain: DEFAULT_CLOSE_DRAIN,
            max_connection_age: None,
            resend_idempotent: true,
            server_deduplicates_allocation_ids: false,
            degraded_timeout_ratio: 0.2,
            delivery: Delivery::AtMostOnce,
            confirm_delivery: true,
            confirm_every: 256,
            confirm_after: Duration::from_secs(1),
            max_unconfirmed: 1024,
            max_unconfirmed_bytes: 1 << 20,
            max_rewrites: 3,
        }
    }

    /// The WebSocket URL every connection dials.
    pub fn url(&self) -> &str {
        &self.url.0
    }
    /// [`Config::url`] with its credentials (userinfo, query values) replaced by `***`, for
    /// logs and error messages (see [`redact_url`]). `Debug` of `Config` shows this one.
    pub fn url_redacted(&self) -> String {
        redact_url(&self.url.0)
    }
    /// The API key sent as `x-usage-key`.
    pub fn api_key(&self) -> &ApiKey {
        &self.api_key
    }
    /// Number of connections in the pool (1..=64).
    pub fn pool_size(&self) -> u16 {
        self.pool_size
    }
    /// Default per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
    /// Interval between pings on an open connection. A ping that falls due while the last
    /// one is not yet flushed is not queued behind it; the next one waits for the write
    /// deadline.
    pub fn ping_period(&self) -> Duration {
        self.ping_period
    }
    /// How long a connection may stay silent (no frame, no pong) before it counts as dead.
    pub fn pong_wait(&self) -> Duration {
        self.pong_wait
    }
    /// How long a write may take before the connection counts as dead.
    pub fn write_wait(&self) -> Duration {
        self.write_wait
    }
    /// How long a dial (TCP + TLS + WebSocket upgrade) may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
    /// Delay before the first reconnect attempt; doubles each attempt.
    pub fn backoff_base(&self) -> Duration {
        self.backoff_base
    }
    /// Largest reconnect delay.
    pub fn backoff_cap(&self) -> Duration {
        self.backoff_cap
    }
    /// Reconnect attempts before a slot rests until it is asked for again.
    pub fn backoff_attempts(&self) -> u32 {
        self.backoff_attempts
    }
    /// Jitter fraction `j`: a delay `d` becomes a value in `[(1-j)·d, d]`.
    pub fn backoff_jitter(&self) -> f64 {
        self.backoff_jitter
    }
    /// Window over which the first dials of a pool are spread (zero: all at once).
    pub fn initial_dial_spread(&self) -> Duration {
        self.initial_dial_spread
    }
    /// Largest number of pending requests on one connection.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight
    }
    /// Largest number of writes handed to one connection and not yet flushed.
    pub fn max_unflushed_writes(&self) -> u32 {
        self.max_unflushed_writes
    }
    /// Largest number of fire-and-forget messages waiting for a connection.
    pub fn outbox_capacity(&self) -> u32 {
        self.outbox_capacity
    }
    /// Largest number of bytes (frame lengths) of fire-and-forget messages waiting for a
    /// connection.
    pub fn max_outbox_bytes(&self) -> usize {
        self.max_outbox_bytes
    }
    /// How long a fire-and-forget message may wait in the outbox.
    pub fn outbox_ttl(&self) -> Duration {
        self.outbox_ttl
    }
    /// Largest accepted incoming frame, in bytes. A larger frame is skipped and counted
    /// ([`crate::FrameError::TooLarge`]) while the connection stays up; the adapters bound the
    /// socket layer at twice this (at least 64 KiB), beyond which a frame fails the read and
    /// the connection is replaced, so no frame can exhaust memory.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
    /// How long `close` lets pending requests wait for their replies and fire-and-forget
    /// messages be written and confirmed before it hands back what is left.
    pub fn close_drain(&self) -> Duration {
        self.close_drain
    }
    /// Age after which a connection is replaced gracefully, if set.
    pub fn max_connection_age(&self) -> Option<Duration> {
        self.max_connection_age
    }
    /// Whether idempotent requests are re-sent once when their connection is lost.
    pub fn resend_idempotent(&self) -> bool {
        self.resend_idempotent
    }
    /// Whether the server is known to deduplicate on `allocationId`, so that a request
    /// carrying one may be re-sent (see [`ConfigBuilder::server_deduplicates_allocation_ids`]).
    pub fn server_deduplicates_allocation_ids(&self) -> bool {
        self.server_deduplicates_allocation_ids
    }
    /// Share of recent requests timing out above which the pool reports itself degraded.
    pub fn degraded_timeout_ratio(&self) -> f64 {
        self.degraded_timeout_ratio
    }
    /// The delivery guarantee of a send that names none (see [`SendOptions`](crate::SendOptions)).
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }
    /// Whether fire-and-forget messages are confirmed by ping barriers.
    pub fn confirm_delivery(&self) -> bool {
        self.confirm_delivery
    }
    /// Messages written on a connection after which a barrier ping is due.
    pub fn confirm_every(&self) -> u32 {
        self.confirm_every
    }
    /// Time after the first unbarriered message after which a barrier ping is due.
    pub fn confirm_after(&self) -> Duration {
        self.confirm_after
    }
    /// Most messages written and unconfirmed on one connection.
    pub fn max_unconfirmed(&self) -> u32 {
        self.max_unconfirmed
    }
    /// Most bytes of messages written and unconfirmed on one connection.
    pub fn max_unconfirmed_bytes(&self) -> usize {
        self.max_unconfirmed_bytes
    }
    /// Times an at-least-once message is written again before it ends unconfirmed.
    pub fn max_rewrites(&self) -> u32 {
        self.max_rewrites
    }
}

/// The default [`Config::max_outbox_bytes`]: 64 MiB, room for the default 10,000 queued
/// messages at over 6 KiB each, so the count cap binds first for ordinary metering messages.
pub const DEFAULT_MAX_OUTBOX_BYTES: usize = 64 << 20;

/// The default [`Config::close_drain`]: long enough for a request within its default 2 s
/// timeout and for a pong round trip, short enough for a host's shutdown grace period.
pub const DEFAULT_CLOSE_DRAIN: Duration = Duration::from_secs(3);

/// Builder for [`Config`]; [`ConfigBuilder::build`] checks every value. Its `Debug` shows
/// neither the API key nor the URL's credentials.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    url: RedactedUrl,
    /// Not checked yet: [`ConfigBuilder::build`] does that.
    api_key: ApiKey,
    pool_size: u16,
    request_timeout: Duration,
    ping_period: Duration,
    pong_wait: Duration,
    write_wait: Duration,
    handshake_timeout: Duration,
    backoff_base: Duration,
    backoff_cap: Duration,
    backoff_attempts: u32,
    backoff_jitter: f64,
    initial_dial_spread: Duration,
    max_in_flight: u32,
    max_unflushed_writes: u32,
    outbox_capacity: u32,
    max_outbox_bytes: usize,
    outbox_ttl: Duration,
    max_frame_size: usize,
    close_drain: Duration,
    max_connection_age: Option<Duration>,
    resend_idempotent: bool,
    server_deduplicates_allocation_ids: bool,
    degraded_timeout_ratio: f64,
    delivery: Delivery,
    confirm_delivery: bool,
    confirm_every: u32,
    confirm_after: Duration,
    max_unconfirmed: u32,
    max_unconfirmed_bytes: usize,
    max_rewrites: u32,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.$name = value;
                self
            }
        )*
    };
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn check_duration(
    name: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
    range: &'static str,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            name,
            range,
            value: format!("{value:?}"),
        });
    }
    Ok(())
}

fn check_int(
    name: &'static str,
    value: u64,
    min: u64,
    max: u64,
    range: &'static str,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            name,
            range,
            value: value.to_string(),
        });
    }
    Ok(())
}

fn check_fraction(name: &'static str, value: f64) -> Result<(), ConfigError> {
    // `contains` is false for NaN, so NaN is rejected too.
    if !(0.0..=1.0).contains(&value) {
        return Err(ConfigError::OutOfRange {
            name,
            range: "0.0..=1.0",
            value: value.to_string(),
        });
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| ConfigError::InvalidUrl(redact_url(url)))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.len() > 2048 || !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::InvalidUrl(redact_url(url)));
    }
    Ok(())
}

impl ConfigBuilder {
    setters! {
        /// Number of connections (1..=64; default 10).
        pool_size: u16;
        /// Default request timeout (1 ms..=1 h; default 2 s).
        request_timeout: Duration;
        /// Ping period (10 ms..=1 h; default 30 s).
        ping_period: Duration;
        /// Silence after which a connection is dead (10 ms..=1 h, above the ping period; default 60 s).
        pong_wait: Duration;
        /// Write deadline (10 ms..=1 h; default 10 s).
        write_wait: Duration;
        /// Handshake deadline (10 ms..=1 h; default 10 s).
        handshake_timeout: Duration;
        /// First reconnect delay (0..=1 h; default 5 s).
        backoff_base: Duration;
        /// Largest reconnect delay (at least the base, at most 1 day; default 60 s).
        backoff_cap: Duration;
        /// Reconnect attempts before resting (1..=1000; default 5).
        backoff_attempts: u32;
        /// Jitter fraction (0.0..=1.0; default 0.2, so slots never reconnect in lockstep; 0 gives
        /// the exact 5/10/20/40/60 s schedule).
        backoff_jitter: f64;
        /// Spread of the first dials of the pool (0..=1 h; default 0, all at once).
        initial_dial_spread: Duration;
        /// Pending requests per connection (1..=1,000,000; default 1024).
        max_in_flight: u32;
        /// Unflushed writes per connection (1..=1,000,000; default 4096).
        max_unflushed_writes: u32;
        /// Outbox capacity (0..=1,000,000; default 10,000; 0 disables queueing).
        outbox_capacity: u32;
        /// Outbox bytes, the frames' lengths summed (0..=16 GiB; default 64 MiB,
        /// [`DEFAULT_MAX_OUTBOX_BYTES`]; 0 disables queueing). A send that would pass it is
        /// refused and counted like one past `outbox_capacity`
        /// ([`SendRefusal::OutboxBytesFull`](crate::SendRefusal::OutboxBytesFull)).
        max_outbox_bytes: usize;
        /// Outbox time-to-live (1 ms..=1 day; default 60 s).
        outbox_ttl: Duration;
        /// Largest incoming frame in bytes (64 B..=64 MiB; default 1 MiB).
        max_frame_size: usize;
        /// How long `close` waits for pending replies and for queued and written
        /// fire-and-forget messages to be written and confirmed (0..=1 h; default 3 s,
        /// [`DEFAULT_CLOSE_DRAIN`]); what is left then is handed back.
        close_drain: Duration;
        /// Replace connections older than this, gracefully (1 s..=1 day; default none).
        max_connection_age: Option<Duration>;
        /// Re-send idempotent requests once on connection loss (default true). Only requests
        /// marked idempotent ([`RequestOptions::idempotent`](crate::RequestOptions)) count,
        /// plus those carrying an `allocationId` when
        /// [`server_deduplicates_allocation_ids`](Self::server_deduplicates_allocation_ids) is on.
        resend_idempotent: bool;
        /// Turn on when the server deduplicates on `allocationId` (default off): a
        /// `request_for_allocation` or `use_allocation` whose payload carries one may then be
        /// written again after its connection died, since the server counts it once. Off, such
        /// a request is never sent twice, because nothing in the protocol says the server
        /// deduplicates and a second write could meter twice.
        server_deduplicates_allocation_ids: bool;
        /// Timeout share that marks the pool degraded (0.0..=1.0; default 0.2).
        degraded_timeout_ratio: f64;
        /// The guarantee of sends that name none (default [`Delivery::AtMostOnce`]; see
        /// [`SendOptions::delivery`](crate::SendOptions) for the `allocationId` rule).
        delivery: Delivery;
        /// Confirm fire-and-forget messages with ping barriers (default true). Turn off only
        /// for a server that never answers pings: messages then end as `written` once
        /// flushed, never as confirmed, an unanswered ping no longer kills a connection, and
        /// [`Event::ConfirmationOff`](crate::Event::ConfirmationOff) says so once.
        confirm_delivery: bool;
        /// Messages written on a connection after which a barrier ping is due (1..=65,536;
        /// default 256).
        confirm_every: u32;
        /// Time after the first message written since the last barrier after which a
        /// barrier ping is due (1 ms..=1 h; default 1 s: a gentle stream costs the server one
        /// ping per second, not one per message).
        confirm_after: Duration;
        /// Most messages written and unconfirmed on one connection (1..=1,000,000; default
        /// 1024). With the byte window, it bounds what a dying connection takes with it, what
        /// a fast client piles into a slow server's kernel, and the client's own bookkeeping
        /// (about 90 bytes per message: with 4096, a pool of 10 held 5–9 MiB more at peak
        /// under a flood). A connection confirms about one window per round trip, so at
        /// 200 ms RTT the default carries roughly 5k messages/s per connection (50k/s for a
        /// pool of 10); for a long link or a higher rate, size it to the rate times the RTT.
        max_unconfirmed: u32;
        /// Most bytes of messages written and unconfirmed on one connection (1 KiB..=1 GiB;
        /// default 1 MiB). One message larger than this still goes when nothing else awaits
        /// confirmation.
        max_unconfirmed_bytes: usize;
        /// Times an at-least-once message is written again after its connection died
        /// unconfirmed, before it ends unconfirmed (0..=100; default 3, so a message a server
        /// closes on does not block the queue forever).
        max_rewrites: u32;
    }

    /// Checks every value and builds the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        let ms = Duration::from_millis(1);
        let ten_ms = Duration::from_millis(10);
        check_url(&self.url.0)?;
        let api_key = ApiKey::new(self.api_key.0)?;
        check_int("pool_size", self.pool_size.into(), 1, 64, "1..=64")?;
        check_duration("request_timeout", self.request_timeout, ms, HOUR, "1ms..=1h")?;
        check_duration("ping_period", self.ping_period, ten_ms, HOUR, "10ms..=1h")?;
        check_duration("pong_wait", self.pong_wait, ten_ms, HOUR, "10ms..=1h")?;
        check_duration("write_wait", self.write_wait, ten_ms, HOUR, "10ms..=1h")?;
        check_duration(
            "handshake_timeout",
            self.handshake_timeout,
            ten_ms,
            HOUR,
            "10ms..=1h",
        )?;
        check_duration("backoff_base", self.backoff_base, Duration::ZERO, HOUR, "0..=1h")?;
        check_duration("backoff_cap", self.backoff_cap, Duration::ZERO, DAY, "0..=1d")?;
        if self.backoff_cap < self.backoff_base {
            return Err(ConfigError::Inconsistent(
                "backoff_cap must be at least backoff_base",
            ));
        }
        if self.pong_wait <= self.ping_period {
            return Err(ConfigError::Inconsistent(
                "pong_wait must be longer than ping_period, or every connection would die between pings",
            ));
        }
        check_int(
            "backoff_attempts",
            self.backoff_attempts.into(),
            1,
            1000,
            "1..=1000",
        )?;
        check_fraction("backoff_jitter", self.backoff_jitter)?;
        check_duration(
            "initial_dial_spread",
            self.initial_dial_spread,
            Duration::ZERO,
            HOUR,
            "0..=1h",
        )?;
        check_int(
            "max_in_flight",
            self.max_in_flight.into(),
            1,
            1_000_000,
            "1..=1000000",
        )?;
        check_int(
            "max_unflushed_writes",
            self.max_unflushed_writes.into(),
            1,
            1_000_000,
            "1..=1000000",
        )?;
        check_int(
            "outbox_capacity",
            self.outbox_capacity.into(),
            0,
            1_000_000,
            "0..=1000000",
        )?;
        check_int(
            "max_outbox_bytes",
            self.max_outbox_bytes as u64,
            0,
            16 << 30,
            "0..=17179869184",
        )?;
        check_duration("outbox_ttl", self.outbox_ttl, ms, DAY, "1ms..=1d")?;
        check_int(
            "max_frame_size",
            self.max_frame_size as u64,
            64,
            64 << 20,
            "64..=67108864",
        )?;
        check_duration("close_drain", self.close_drain, Duration::ZERO, HOUR, "0..=1h")?;
        if let Some(age) = self.max_connection_age {
            check_duration("max_connection_age", age, Duration::from_secs(1), DAY, "1s..=1d")?;
        }
        check_fraction("degraded_timeout_ratio", self.degraded_timeout_ratio)?;
        check_int("confirm_every", self.confirm_every.into(), 1, 65_536, "1..=65536")?;
        check_duration("confirm_after", self.confirm_after, ms, HOUR, "1ms..=1h")?;
        check_int(
            "max_unconfirmed",
            self.max_unconfirmed.into(),
            1,
            1_000_000,
            "1..=1000000",
        )?;
        check_int(
            "max_unconfirmed_bytes",
            self.max_unconfirmed_bytes as u64,
            1024,
            1 << 30,
            "1024..=1073741824",
        )?;
        check_int("max_rewrites", self.max_rewrites.into(), 0, 100, "0..=100")?;
        Ok(Config {
            url: self.url,
            api_key,
            pool_size: self.pool_size,
            request_timeout: self.request_timeout,
            ping_period: self.ping_period,
            pong_wait: self.pong_wait,
            write_wait: self.write_wait,
            handshake_timeout: self.handshake_timeout,
            backoff_base: self.backoff_base,
            backoff_cap: self.backoff_cap,
            backoff_attempts: self.backoff_attempts,
            backoff_jitter: self.backoff_jitter,
            initial_dial_spread: self.initial_dial_spread,
            max_in_flight: self.max_in_flight,
            max_unflushed_writes: self.max_unflushed_writes,
            outbox_capacity: self.outbox_capacity,
            max_outbox_bytes: self.max_outbox_bytes,
            outbox_ttl: self.outbox_ttl,
            max_frame_size: self.max_frame_size,
            close_drain: self.close_drain,
            max_connection_age: self.max_connection_age,
            resend_idempotent: self.resend_idempotent,
            server_deduplicates_allocation_ids: self.server_deduplicates_allocation_ids,
            degraded_timeout_ratio: self.degraded_timeout_ratio,
            delivery: self.delivery,
            confirm_delivery: self.confirm_delivery,
            confirm_every: self.confirm_every,
            confirm_after: self.confirm_after,
            max_unconfirmed: self.max_unconfirmed,
            max_unconfirmed_bytes: self.max_unconfirmed_bytes,
            max_rewrites: self.max_rewrites,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL carrying a password in its userinfo and keys in its query.
    const SECRET_URL: &str = "ws://alice:hunter2@h.example:9000/ws?key=qk-777&token=tk-888";
    const SECRETS: [&str; 4] = ["secret-123", "hunter2", "qk-777", "tk-888"];

    fn assert_hidden(what: &str, text: &str) {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
        }
    }

    #[test]
    fn config_builder_debug_hides_key_and_url_credentials() {
        let builder = Config::builder(SECRET_URL, "secret-123").pool_size(3);
        let debug = format!("{builder:?}");
        assert_hidden("ConfigBuilder's Debug", &debug);
        assert_hidden("ConfigBuilder's pretty Debug", &format!("{builder:#?}"));
        assert!(debug.contains("h.example:9000/ws"), "{debug}");
        assert!(debug.contains("pool_size: 3"), "{debug}");
        // The builder still hands the key through unchanged.
        assert_eq!(builder.build().unwrap().api_key().expose(), "secret-123");
    }

    #[test]
    fn config_debug_hides_key_and_url_credentials() {
        let config = Config::builder(SECRET_URL, "secret-123").build().unwrap();
        let debug = format!("{config:?}");
        assert_hidden("Config's Debug", &debug);
        assert_hidden("Config's pretty Debug", &format!("{config:#?}"));
        assert!(
            debug.contains("ws://***@h.example:9000/ws?key=***&token=***"),
            "{debug}"
        );
        assert_hidden("Config::url_redacted", &config.url_redacted());
        // The URL itself is still the one dialed.
        assert_eq!(config.url(), SECRET_URL);
        // A URL without credentials shows as it is.
        let plain = Config::builder(LOCAL_URL, "secret-123").build().unwrap();
        assert!(format!("{plain:?}").contains(LOCAL_URL));
    }

    #[test]
    fn invalid_url_error_hides_url_credentials() {
        let err = Config::builder("http://alice:hunter2@h/ws?key=qk-777&token=tk-888", "k")
            .build()
            .unwrap_err();
        assert_hidden("InvalidUrl's Display", &err.to_string());
        assert_hidden("InvalidUrl's Debug", &format!("{err:?}"));
        assert_eq!(
            err,
            ConfigError::InvalidUrl("http://***@h/ws?key=***&token=***".into())
        );
        let err = Config::builder("ws://alice:hunter2@h/a b?key=qk-777", "k")
            .build()
            .unwrap_err();
        assert_hidden("InvalidUrl's Display", &err.to_string());
    }

    #[test]
    fn redact_url_userinfo_with_and_without_password() {
        assert_eq!(redact_url("ws://user:pass@host/ws"), "ws://***@host/ws");
        assert_eq!(redact_url("wss://user@host:443/ws"), "wss://***@host:443/ws");
        assert_eq!(redact_url("ws://:pass@host"), "ws://***@host");
        // An unencoded `@` in the password: the last `@` ends the userinfo.
        assert_eq!(redact_url("ws://u:p@ss@host/ws"), "ws://***@host/ws");
    }

    #[test]
    fn redact_url_query_values() {
        assert_eq!(
            redact_url("ws://host/ws?key=abc&a=1&token=xyz"),
            "ws://host/ws?key=***&a=***&token=***"
        );
        assert_eq!(
            redact_url("ws://u:p@host:9000/ws?key=abc"),
            "ws://***@host:9000/ws?key=***"
        );
        // A parameter without `=` may be a token itself; empty ones stay empty.
        assert_eq!(redact_url("ws://host/ws?abc&&k="), "ws://host/ws?***&&k=***");
        assert_eq!(redact_url("ws://host/ws?"), "ws://host/ws?");
        // A query straight after the host.
        assert_eq!(redact_url("ws://host?key=abc"), "ws://host?key=***");
        // An email in a query value is a value, not userinfo.
        assert_eq!(
            redact_url("ws://host/ws?email=a@b.example&key=abc"),
            "ws://host/ws?email=***&key=***"
        );
    }

    #[test]
    fn redact_url_fragment() {
        assert_eq!(redact_url("ws://host/ws#access_token=abc"), "ws://host/ws#***");
        assert_eq!(
            redact_url("ws://u:p@host/ws?key=abc#frag"),
            "ws://***@host/ws?key=***#***"
        );
        // The query ends at the fragment.
        assert_eq!(redact_url("ws://host/ws?a=1#b=2&c=3"), "ws://host/ws?a=***#***");
        assert_eq!(redact_url("ws://host/ws#"), "ws://host/ws#");
    }

    #[test]
    fn redact_url_ipv6_host() {
        assert_eq!(redact_url("ws://[::1]:9000/ws"), "ws://[::1]:9000/ws");
        assert_eq!(
            redact_url("ws://user:pw@[::1]:9000/ws?key=abc"),
            "ws://***@[::1]:9000/ws?key=***"
        );
        assert_eq!(
            redact_url("wss://u@[fe80::1%25eth0]/"),
            "wss://***@[fe80::1%25eth0]/"
        );
    }

    #[test]
    fn redact_url_leaves_urls_without_credentials_unchanged() {
        for url in [
            LOCAL_URL,
            PRODUCTION_URL,
            "ws://127.0.0.1:9000/ws",
            "ws://[::1]:1234/ws",
            "ws://h",
            "wss://host.example/a/b/c",
            "",
            "not a url",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn redact_url_ambiguous_urls_hide_everything_after_the_scheme() {
        // Unencoded `#`, `?` or `/` in a password: where the userinfo ends cannot be told,
        // so nothing after the scheme is shown.
        assert_eq!(redact_url("ws://user:pa#ss@host/ws"), "ws://***");
        assert_eq!(redact_url("ws://user:pa?ss@host/ws"), "ws://***");
        assert_eq!(redact_url("ws://user:12/34@host/ws"), "ws://***");
        assert_eq!(redact_url("ws://host?email=a@b.example&key=abc"), "ws://***");
        // No scheme: the text starts with the authority.
        assert_eq!(redact_url("user:pass@host/ws?k=v"), "***@host/ws?k=***");
    }

    #[test]
    fn redact_url_never_panics_and_never_shows_credentials() {
        let pieces = [
            "ws://",
            "wss://",
            "://",
            ":",
            "@",
            "/",
            "?",
            "#",
            "&",
            "=",
            "[",
            "]",
            "%",
            "é",
            "\u{0}",
            "user",
            "host",
            "ws",
            " ",
            "\u{1F600}",
            "::",
            "9000",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..12);
            let tail: String = (0..len).map(|_| pieces[rng.usize(0..pieces.len())]).collect();
            let _ = redact_url(&tail);
            for url in [
                format!("ws://user:hunter2@{tail}"),
                format!("wss://hunter2@{tail}"),
                format!("ws://host/ws?key=hunter2{tail}"),
                format!("ws://host?a=1&key=hunter2{tail}"),
            ] {
                let redacted = redact_url(&url);
                assert!(!redacted.contains("hunter2"), "{url:?} -> {redacted:?}");
            }
        }
        for url in [
            "\u{0}@\u{0}",
            "@",
            "@@",
            "ws://@",
            "ws://@/",
            "?@",
            "#@",
            "ws://[",
            "ws://]@[",
        ] {
            let _ = redact_url(url);
        }
    }

    #[test]
    fn defaults_match_protocol() {
        let c = Config::builder(LOCAL_URL, "k").build().unwrap();
        assert_eq!(c.pool_size(), 10);
        assert_eq!(c.request_timeout(), Duration::from_secs(2));
        assert_eq!(c.ping_period(), Duration::from_secs(30));
        assert_eq!(c.pong_wait(), Duration::from_secs(60));
        assert_eq!(c.write_wait(), Duration::from_secs(10));
        assert_eq!(c.handshake_timeout(), Duration::from_secs(10));
        assert_eq!(c.backoff_base(), Duration::from_secs(5));
        assert_eq!(c.backoff_cap(), Duration::from_secs(60));
        assert_eq!(c.backoff_attempts(), 5);
    }

    #[test]
    fn api_key_is_checked_and_redacted() {
        assert_eq!(ApiKey::new(""), Err(ConfigError::EmptyApiKey));
        assert_eq!(ApiKey::new("a b"), Err(ConfigError::InvalidApiKey));
        assert_eq!(ApiKey::new("a\r\nx: y"), Err(ConfigError::InvalidApiKey));
        assert_eq!(ApiKey::new("clé"), Err(ConfigError::InvalidApiKey));
        let key = ApiKey::new("secret-123").unwrap();
        assert!(!format!("{key:?}").contains("secret"));
        assert!(!format!("{key}").contains("secret"));
        let c = Config::builder(LOCAL_URL, "secret-123").build().unwrap();
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn bad_values_are_typed_errors() {
        let b = || Config::builder(LOCAL_URL, "k");
        assert!(matches!(
            b().pool_size(0).build(),
            Err(ConfigError::OutOfRange {
                name: "pool_size",
                ..
            })
        ));
        assert!(matches!(
            b().pool_size(65).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            b().backoff_jitter(f64::NAN).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            b().backoff_jitter(1.5).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            b().backoff_base(Duration::from_secs(10))
                .backoff_cap(Duration::from_secs(5))
                .build(),
            Err(ConfigError::Inconsistent(_))
        ));
        assert!(matches!(
            b().pong_wait(Duration::from_secs(30)).build(),
            Err(ConfigError::Inconsistent(_))
        ));
        assert!(matches!(
            b().request_timeout(Duration::ZERO).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            Config::builder("http://x/ws", "k").build(),
            Err(ConfigError::InvalidUrl(_))
        ));
        assert!(matches!(
            Config::builder("ws:///ws", "k").build(),
            Err(ConfigError::InvalidUrl(_))
        ));
        assert!(Config::builder(PRODUCTION_URL, "k").build().is_ok());
    }
}
