//! What the pool tells the application or its logs: [`Event`], with [`DisconnectReason`],
//! [`DropReason`] and [`Availability`].

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use crate::frame::FrameError;
use crate::input::{CloseReason, DialError};
use crate::request::ConnId;
#[cfg(doc)]
use crate::RequestError;

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
    /// A ping was not answered within the pong wait, even if other frames arrived (the
    /// "ping failure" of [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)): messages written on it would never be confirmed.
    #[error("a ping was not answered within the pong wait")]
    PongTimeout,
    /// A write did not complete within the write wait.
    #[error("write did not complete within the write deadline")]
    WriteTimeout,
    /// The pool is closing.
    #[error("the pool is closing")]
    PoolClosing,
    /// The connection reached its maximum age and was replaced.
    #[error("connection replaced after reaching its maximum age")]
    Rotated,
}

/// Why a fire-and-forget message ended without being confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// The outbox was full (the message was handed back).
    OutboxFull,
    /// It waited longer than the outbox TTL.
    Expired,
    /// It was written, and its connection died before a pong confirmed it: whether the
    /// server read it is unknown (at most once: it is not written again).
    Unconfirmed,
    /// It was written again `max_rewrites` times (at least once) and its connection died
    /// unconfirmed every time.
    RewritesExhausted,
    /// The pool closed before it was delivered (handed back by close).
    Closed,
    /// The outbox held `max_outbox_bytes` already (the message was handed back).
    OutboxBytesFull,
    /// Its frame was larger than `max_frame_size` (refused up front, handed back).
    TooLarge,
    /// The spool was full (`max_spool_bytes`): the message was refused and handed back.
    SpoolFull,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::OutboxFull => "outbox full",
            DropReason::Expired => "expired in the outbox",
            DropReason::Unconfirmed => "unconfirmed when its connection died",
            DropReason::RewritesExhausted => "unconfirmed after every rewrite",
            DropReason::Closed => "client closed",
            DropReason::OutboxBytesFull => "outbox full (bytes)",
            DropReason::TooLarge => "larger than the frame limit",
            DropReason::SpoolFull => "spool full",
        })
    }
}

/// The pool's availability, for fail-open hosts (one value instead of error strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
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
    /// Confirmation is off ([`ConfigBuilder::confirm_delivery`](crate::ConfigBuilder)):
    /// messages end as written, never as confirmed. Reported once, when the first
    /// connection opens.
    ConfirmationOff,
    /// A connection died because its peer never answered a ping (it had answered none):
    /// a server with automatic pongs turned off. Its messages cannot be confirmed; if that
    /// server never answers pings, turn confirmation off. Reported once per pool.
    PongsMissing {
        /// The connection.
        conn: ConnId,
    },
    /// The pool's availability changed.
    AvailabilityChanged {
        /// The new state.
        availability: Availability,
    },
}
