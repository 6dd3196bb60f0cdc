//! What goes into the pool ([`Input`]) and what comes out ([`Output`], [`Event`]).

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Duration;

use thiserror::Error;
use uuid::Uuid;

use crate::frame::{FrameError, Incoming, Outgoing};

/// One socket of the pool: its slot and the dial generation. The generation grows with every
/// dial, so a late event from an old socket names a stale generation and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ConnId {
    /// Slot index, `0..pool_size`.
    pub slot: u16,
    /// Dial generation of the slot.
    pub generation: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.slot, self.generation)
    }
}

/// A request's id: a UUID drawn from the pool's seeded generator, unique for the pool's life.
///
/// It hashes as one `u64` (its two halves folded), which [`RequestIdHasher`] takes as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestId(pub Uuid);

impl Hash for RequestId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (high, low) = self.0.as_u64_pair();
        state.write_u64(high ^ low);
    }
}

/// The hasher of maps keyed by [`RequestId`]: the id's folded bits, unmixed.
///
/// The pool's ids are random already (UUID v4 bits from its seeded generator; the fixed
/// version and variant bits are folded into random ones), so mixing them again buys nothing,
/// and a fixed hasher keeps iteration order a function of the inputs. Flooding is not a
/// concern: only the pool inserts ids (its own); a server's reply is only looked up, after
/// parsing into a UUID.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdHasher(u64);

impl Hasher for RequestIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `RequestId`; any other key still hashes deterministically.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

/// Builds [`RequestIdHasher`]s.
pub type RequestIdBuildHasher = BuildHasherDefault<RequestIdHasher>;

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Why a dial failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum DialError {
    /// The server refused the API key: it answered the upgrade with 401 or 403. Permanent
    /// for this key; the slot still backs off rather than hammering, and a pool whose every
    /// slot was last refused this way reports [`RequestError::Rejected`].
    #[error("the server rejected the API key (HTTP {status})")]
    Rejected {
        /// The HTTP status (401 or 403 from the adapters).
        status: u16,
    },
    /// The server answered the upgrade with another non-101 status: 429 or 5xx (the service
    /// is unavailable for now), or anything else. The slot backs off as for any failed dial,
    /// and no sooner than `retry_after` (bounded by the backoff cap) when the server sent one.
    #[error("handshake answered with HTTP status {status}{}", retry_after_text(*.retry_after))]
    HttpStatus {
        /// The HTTP status.
        status: u16,
        /// The server's `Retry-After`, turned into a delay by the adapter at receipt (the
        /// core has no wall clock).
        retry_after: Option<Duration>,
    },
    /// TCP, TLS or the upgrade failed for a transient reason.
    #[error("network error: {0}")]
    Network(String),
    /// The dial did not finish within the handshake timeout (the pool decides this itself).
    #[error("handshake did not finish within the handshake timeout")]
    Timeout,
}

impl DialError {
    /// Whether the server refused the credentials (401 or 403).
    pub fn is_auth_rejection(&self) -> bool {
        matches!(self, DialError::Rejected { status: 401 | 403 })
    }

    /// The least delay before the next dial that the server asked for (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DialError::HttpStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    retry_after.map_or_else(String::new, |d| format!(" (retry after {d:?})"))
}

/// How the adapter saw a connection end.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent a close frame.
    Frame {
        /// Close code.
        code: u16,
        /// Close reason text.
        reason: String,
    },
    /// The stream ended without a close frame.
    Eof,
    /// Reading failed.
    Error(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Frame { code, reason } if reason.is_empty() => write!(f, "close frame {code}"),
            CloseReason::Frame { code, reason } => write!(f, "close frame {code} ({reason})"),
            CloseReason::Eof => f.write_str("end of stream"),
            CloseReason::Error(e) => write!(f, "read error: {e}"),
        }
    }
}

/// An I/O result the adapter reports to [`crate::Pool::handle_input`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Input<'a> {
    /// The dial of `conn` finished: the WebSocket is open.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// The dial of `conn` failed.
    ConnectFailed {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: DialError,
    },
    /// A text frame arrived.
    Text {
        /// The connection.
        conn: ConnId,
        /// The frame's text.
        text: &'a str,
    },
    /// A binary frame arrived (not part of the protocol: skipped and counted).
    Binary {
        /// The connection.
        conn: ConnId,
        /// Its length.
        len: usize,
    },
    /// A pong arrived.
    Pong {
        /// The connection.
        conn: ConnId,
    },
    /// A ping from the server arrived (the adapter's WebSocket library answers it). Like any
    /// frame, it shows the peer is alive and pushes the read deadline.
    Ping {
        /// The connection.
        conn: ConnId,
    },
    /// The adapter flushed writes: `writes` is how many [`Output::Transmit`] and
    /// [`Output::Ping`] of this connection have been written and flushed so far, in total.
    Flushed {
        /// The connection.
        conn: ConnId,
        /// Total writes completed on this connection.
        writes: u64,
    },
    /// A write failed; the connection is dead.
    WriteFailed {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: String,
    },
    /// The connection ended.
    Closed {
        /// The connection.
        conn: ConnId,
        /// How.
        reason: CloseReason,
    },
}

impl Input<'_> {
    /// The connection this input is about.
    pub fn conn(&self) -> ConnId {
        match self {
            Input::Connected { conn }
            | Input::ConnectFailed { conn, .. }
            | Input::Text { conn, .. }
            | Input::Binary { conn, .. }
            | Input::Pong { conn }
            | Input::Ping { conn }
            | Input::Flushed { conn, .. }
            | Input::WriteFailed { conn, .. }
            | Input::Closed { conn, .. } => *conn,
        }
    }
}

/// Why the pool stopped using a connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed, the stream ended, or reading failed.
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// A write failed.
    #[error("write failed: {0}")]
    WriteFailed(String),
    /// Nothing arrived (no frame, no pong) within the pong wait.
    #[error("no frame or pong within the read deadline")]
    ReadTimeout,
    /// A write did not complete within the write wait.
    #[error("write did not complete within the write deadline")]
    WriteTimeout,
    /// The dial did not finish within the handshake timeout.
    #[error("handshake did not finish within the handshake timeout")]
    HandshakeTimeout,
    /// The pool is closing.
    #[error("the pool is closing")]
    PoolClosing,
    /// The connection reached its maximum age and was replaced.
    #[error("connection replaced after reaching its maximum age")]
    Rotated,
    /// The adapter reported a connection the pool was not dialing.
    #[error("unexpected connection")]
    Unexpected,
}

/// Why a request failed without an answer from the server.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RequestFailure {
    /// No reply within the request's timeout.
    #[error("no reply within the request timeout")]
    Timeout,
    /// The request's connection died before the reply came.
    #[error("connection lost before the reply: {0}")]
    ConnectionLost(DisconnectReason),
    /// The caller cancelled it.
    #[error("request cancelled")]
    Cancelled,
    /// The pool closed before the reply came.
    #[error("client closed before the reply")]
    Closed,
}

/// How a request ended. Every request that [`crate::Pool::request`] accepted ends exactly once.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The server answered.
    Reply(Incoming),
    /// The server answered no (`error` set, or `type` "error"): a complete round trip.
    Denied(Incoming),
    /// No answer.
    Failed(RequestFailure),
}

/// Why a fire-and-forget message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// The outbox was full.
    OutboxFull,
    /// It waited longer than the outbox TTL.
    Expired,
    /// It was written but its connection died before the write was flushed.
    Lost,
    /// The pool closed while it waited in the outbox.
    Closed,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::OutboxFull => "outbox full",
            DropReason::Expired => "expired in the outbox",
            DropReason::Lost => "lost with its connection",
            DropReason::Closed => "client closed",
        })
    }
}

/// The pool's availability, for fail-open hosts (one value instead of error strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Availability {
    /// Every slot is open and requests are not timing out.
    Available,
    /// Some slots are down, or many recent requests timed out.
    Degraded,
    /// No open connection: requests fail at once.
    Unavailable,
}

/// Something worth telling the application or its logs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A connection opened.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// A dial failed.
    ConnectFailed {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: DialError,
    },
    /// An open connection was lost or closed.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: DisconnectReason,
    },
    /// A slot will dial again after `delay`.
    ReconnectScheduled {
        /// The slot.
        slot: u16,
        /// Attempt number, from 0.
        attempt: u32,
        /// Delay before the dial.
        delay: Duration,
    },
    /// A slot used up its attempts and rests until a request, send or connect re-arms it.
    AttemptsExhausted {
        /// The slot.
        slot: u16,
    },
    /// A resting slot was re-armed by demand (a request, send or connect): its attempt
    /// budget starts afresh and it dials after `delay`, a jittered fraction of the backoff
    /// base, so a busy pool does not re-dial every resting slot in the same instant. A slot
    /// is re-armed this way at most once per backoff cap.
    SlotRearmed {
        /// The slot.
        slot: u16,
        /// Delay before its dial.
        delay: Duration,
    },
    /// No connection is open and every slot's most recent dial was refused because of the
    /// API key (401/403): requests fail with [`RequestError::Rejected`] and sends wait in
    /// the outbox until a dial succeeds. Reported once each time the pool enters this state.
    KeyRejected {
        /// The HTTP status of the latest refusal.
        status: u16,
    },
    /// The replacement of a connection that reached its maximum age failed its whole attempt
    /// budget; the old connection stays in service until it dies.
    RotationAbandoned {
        /// The slot.
        slot: u16,
    },
    /// An incoming frame was skipped; the connection stays up.
    FrameSkipped {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: FrameError,
    },
    /// A fire-and-forget message was not delivered.
    MessageDropped {
        /// Its type.
        kind: String,
        /// Why.
        reason: DropReason,
        /// How many messages of this kind (for batch expiries and losses).
        count: u64,
    },
    /// The pool's availability changed.
    AvailabilityChanged {
        /// The new state.
        availability: Availability,
    },
}

/// An action for the adapter, or a result for the application. Drain with
/// [`crate::Pool::poll_output`] after every call.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Output {
    /// Open a WebSocket for `conn` (URL and key from the config, `x-usage-key` header), then
    /// report [`Input::Connected`] or [`Input::ConnectFailed`].
    Dial {
        /// The new connection.
        conn: ConnId,
    },
    /// Write this text frame on `conn`, then report progress with [`Input::Flushed`].
    Transmit {
        /// The connection.
        conn: ConnId,
        /// The encoded JSON frame.
        frame: String,
    },
    /// Write a ping on `conn` (counts as one write for [`Input::Flushed`]).
    Ping {
        /// The connection.
        conn: ConnId,
    },
    /// Stop using `conn`. Without `graceful`: drop the socket (or abandon the dial) and report
    /// nothing more about it. With `graceful`: send a normal close frame (1000) after the
    /// queued writes, and report [`Input::Closed`] when the close handshake finished; the pool
    /// waits up to the write wait for that, then emits a non-graceful `Disconnect` for it.
    Disconnect {
        /// The connection.
        conn: ConnId,
        /// Close frame 1000 first (true), or abort (false).
        graceful: bool,
    },
    /// A request ended.
    Completed {
        /// The request.
        id: RequestId,
        /// How.
        outcome: Outcome,
    },
    /// A frame that answers no pending request (late, duplicate, stray, push).
    Unsolicited {
        /// Where it came from.
        conn: ConnId,
        /// The frame.
        frame: Incoming,
    },
    /// Something to report.
    Event(Event),
}

/// Why `request` refused at once. Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No connection is open. Resting slots were re-armed (at most once per backoff cap).
    #[error("not connected: no open connection in the pool")]
    NotConnected,
    /// Every open connection is at its in-flight cap.
    #[error("backpressure: every open connection has {max_in_flight} requests in flight")]
    Backpressure {
        /// The configured cap.
        max_in_flight: u32,
    },
    /// The pool is closed.
    #[error("client closed")]
    Closed,
    /// No connection is open because the server refused the API key on every slot's most
    /// recent dial (see [`Event::KeyRejected`]). Resting slots were re-armed (at most once
    /// per backoff cap).
    #[error("the server rejected the API key (HTTP {status})")]
    Rejected {
        /// The HTTP status of the latest refusal (401 or 403).
        status: u16,
    },
}

/// Why `send` refused; the message is handed back.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SendError {
    /// No connection could take it and the outbox is full (counted as dropped).
    #[error("outbox full: message of type {:?} dropped", .0.kind)]
    OutboxFull(Outgoing),
    /// The pool is closed (counted as dropped).
    #[error("client closed: message of type {:?} not sent", .0.kind)]
    Closed(Outgoing),
}

impl SendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Outgoing {
        match self {
            SendError::OutboxFull(m) | SendError::Closed(m) => m,
        }
    }

    /// The error of [`Pool::send`](crate::Pool::send) for a refusal of
    /// [`Pool::send_encoded`](crate::Pool::send_encoded), giving `message` back.
    pub fn from_refusal(refusal: SendRefusal, message: Outgoing) -> Self {
        match refusal {
            SendRefusal::OutboxFull => SendError::OutboxFull(message),
            SendRefusal::Closed => SendError::Closed(message),
        }
    }
}

/// Why [`Pool::send_encoded`](crate::Pool::send_encoded) refused a frame; counted as dropped,
/// like the matching [`SendError`]. The caller still holds the message to hand back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefusal {
    /// No connection could take it and the outbox is full.
    OutboxFull,
    /// The pool is closed.
    Closed,
}

/// Options of one request: `RequestOptions::default()`, or [`RequestOptions::timeout`], then
/// the `with_` methods. Non-exhaustive, so options can be added without breaking callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RequestOptions {
    /// Overrides the configured request timeout.
    pub timeout: Option<Duration>,
    /// Marks the request safe to re-send once if its connection is lost before the reply.
    /// A request whose payload carries a client-made `allocationId` is idempotent without
    /// this flag only when the server deduplicates on it
    /// ([`ConfigBuilder::server_deduplicates_allocation_ids`](crate::ConfigBuilder)).
    pub idempotent: bool,
    /// The slot this request leans to (any number, taken modulo the pool size). It only
    /// breaks ties: the request still goes to an open connection with the fewest pending
    /// requests, and among those tied for fewest, the preferred slot wins; without a
    /// preference, ties rotate round-robin. A caller that keeps to one slot keeps to one
    /// connection while the pool is balanced, so requests whose replies arrived together go
    /// out together, in one write, as a pipelined client's would.
    pub affinity: Option<u32>,
}

impl RequestOptions {
    /// Options with a timeout.
    pub fn timeout(timeout: Duration) -> Self {
        Self::default().with_timeout(timeout)
    }

    /// These options with a timeout ([`RequestOptions::timeout`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// These options with the request marked idempotent or not
    /// ([`RequestOptions::idempotent`]).
    #[must_use]
    pub fn with_idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// These options with a preferred slot ([`RequestOptions::affinity`]).
    #[must_use]
    pub fn with_affinity(mut self, slot: u32) -> Self {
        self.affinity = Some(slot);
        self
    }
}

/// The state of one slot, for [`crate::Pool::slot_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotState {
    /// Never dialed (waiting for `connect`, or a staggered first dial).
    Idle,
    /// Dialing.
    Dialing,
    /// Open.
    Open,
    /// Waiting to dial again.
    Backoff,
    /// Out of attempts; re-armed by the next request, send or connect.
    Exhausted,
    /// The pool is closed.
    Closed,
}
