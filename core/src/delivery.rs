//! Fire-and-forget delivery: the guarantee a message is sent with ([`Delivery`]), the options
//! of one send ([`SendOptions`]), how a tracked message ended ([`MessageFate`]) and what a
//! closing pool hands back ([`Undelivered`]).
//!
//! "Confirmed" means that the WebSocket endpoint the pool is connected to read the frame: a
//! ping written after it came back as a pong carrying the same sequence number (RFC 6455
//! §5.5.2–5.5.3: an endpoint reads frames in order and answers a ping with its data). Behind
//! a proxy that terminates WebSocket frames and answers pings itself, that endpoint is the
//! proxy; and it never proves that the server's application processed the message.

use std::fmt;

use thiserror::Error;

use crate::frame::Outgoing;

/// How often a fire-and-forget message may reach the server when its connection dies before
/// the message is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Delivery {
    /// Never written twice if it may have arrived. Written and unconfirmed when its connection
    /// dies, it ends as [`MessageFate::Unconfirmed`] (its fate is unknown); a frame that
    /// certainly never reached the socket is written again.
    #[default]
    AtMostOnce,
    /// Kept until confirmed: when its connection dies first, it goes back to the head of the
    /// outbox (in send order) and is written again on the next open connection, at most
    /// `max_rewrites` times. The server may see it twice: use it for messages the server
    /// deduplicates (an `allocationId`).
    AtLeastOnce,
}

/// Options of one fire-and-forget send. `SendOptions::default()` takes the configured
/// guarantee; non-exhaustive, so options can be added without breaking callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// The guarantee; `None`: at least once for a message carrying an `allocationId` when the
    /// server deduplicates on it
    /// ([`ConfigBuilder::server_deduplicates_allocation_ids`](crate::ConfigBuilder)), else the
    /// configured default ([`ConfigBuilder::delivery`](crate::ConfigBuilder)).
    pub delivery: Option<Delivery>,
    /// Report this message's end as [`Output::Settled`](crate::Output::Settled).
    pub notify: bool,
}

impl SendOptions {
    /// These options with a guarantee.
    #[must_use]
    pub fn with_delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// These options asking for [`Output::Settled`](crate::Output::Settled) when the message ends.
    #[must_use]
    pub fn with_notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }
}

/// A fire-and-forget message's number: its place in the pool's send order (1, 2, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message #{}", self.0)
    }
}

/// Why a written message ended unconfirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum UnconfirmedReason {
    /// Its connection died after it may have reached the server, before a pong confirmed it.
    #[error("its connection died before the server confirmed it")]
    ConnectionDied,
    /// It was written `max_rewrites` times again and its connection died every time.
    #[error("its connection died every time it was written")]
    RewritesExhausted,
    /// The pool closed before a pong confirmed it (an at-most-once message is not kept).
    #[error("the client closed before the server confirmed it")]
    Closed,
}

/// How a tracked message ([`SendOptions::notify`]) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageFate {
    /// A pong for a ping written after it came back: the server's WebSocket endpoint read it.
    Confirmed,
    /// Written and flushed; confirmation is off
    /// ([`ConfigBuilder::confirm_delivery`](crate::ConfigBuilder)), so nothing more is known.
    Written,
    /// Written, but whether it arrived is unknown.
    Unconfirmed(UnconfirmedReason),
    /// It waited in the outbox past the TTL.
    Expired,
    /// The pool closed before it could be delivered; [`Pool::take_undelivered`](crate::Pool::take_undelivered) hands it back.
    Closed,
    /// The pool closed before it could be delivered, and it stays in the spool for the next
    /// process to send (see [`crate::spool`]).
    Spooled,
}

impl fmt::Display for MessageFate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageFate::Confirmed => f.write_str("the message was confirmed"),
            MessageFate::Written => f.write_str("the message was written (confirmation is off)"),
            MessageFate::Unconfirmed(reason) => write!(f, "the message is unconfirmed: {reason}"),
            MessageFate::Expired => f.write_str("the message expired in the outbox"),
            MessageFate::Closed => f.write_str("the message was handed back by close"),
            MessageFate::Spooled => f.write_str("the message stays in the spool for the next process"),
        }
    }
}

impl MessageFate {
    /// Whether the message reached the server (confirmed, or written with confirmation off).
    pub fn is_delivered(self) -> bool {
        matches!(self, MessageFate::Confirmed | MessageFate::Written)
    }
}

/// A message a closing pool could not deliver, handed back to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Undelivered {
    /// Its number.
    pub id: MessageId,
    /// Its message type.
    pub kind: String,
    /// Its encoded frame (`{"type":..,"payload":..}`), as it would have been written.
    pub frame: String,
    /// Whether it was written (at least once) before: the server may have it already.
    pub written_before: bool,
}

impl Undelivered {
    /// A handed-back message (for code that builds them outside this crate, such as tests of
    /// what a service does with a `CloseReport`).
    pub fn new(
        id: MessageId,
        kind: impl Into<String>,
        frame: impl Into<String>,
        written_before: bool,
    ) -> Self {
        Self {
            id,
            kind: kind.into(),
            frame: frame.into(),
            written_before,
        }
    }

    /// The message itself, decoded from its frame.
    pub fn to_outgoing(&self) -> Result<Outgoing, serde_json::Error> {
        serde_json::from_str(&self.frame)
    }
}
