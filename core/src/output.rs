//! What comes out of the pool: [`Output`], the actions for the adapter and the results for
//! the application, with a request's [`Outcome`].

use crate::delivery::{MessageFate, MessageId};
use crate::error::RequestFailure;
use crate::event::Event;
use crate::frame::Incoming;
use crate::request::{ConnId, RequestId};
use crate::spool::SpoolRecord;
#[cfg(doc)]
use crate::Input;
use std::time::Instant;

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
    /// Write a ping carrying `payload` on `conn` (counts as one write for
    /// [`Input::Flushed`]), and report its pong with the pong's data ([`Input::Pong`]).
    Ping {
        /// The connection.
        conn: ConnId,
        /// The ping's application data: the connection's random token (8 bytes, drawn from
        /// the pool's seeded randomness when the connection opened) followed by its ping
        /// sequence number (8 bytes big endian). Its pong, carrying exactly these bytes,
        /// confirms every message written before it; the token makes the payload unguessable,
        /// so an unsolicited pong (RFC 6455 allows them) or a guess confirms nothing.
        payload: [u8; 16],
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
    /// A fire-and-forget message sent with [`SendOptions::notify`](crate::SendOptions) ended.
    Settled {
        /// The message.
        id: MessageId,
        /// How.
        fate: MessageFate,
    },
    /// With the spool open: keep this accepted message on disk until its
    /// [`Output::Release`] (a keep of an id already kept replaces that record: its
    /// write count grew). Comes before any other output about the message.
    Keep {
        /// The record.
        record: SpoolRecord,
        /// When the message was first sent (its TTL runs from then); the client stores it
        /// as wall-clock time.
        first_sent: Instant,
    },
    /// With the spool open: the message ended in this process; remove its record.
    Release {
        /// The message.
        id: MessageId,
        /// How it ended.
        fate: MessageFate,
    },
    /// Something to report.
    Event(Event),
}
