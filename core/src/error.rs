//! Why a request or a send did not go as asked: [`RequestError`] and [`SendError`] (refused
//! at once), [`SendRefusal`], and [`RequestFailure`] (failed later, without an answer).

use thiserror::Error;

use crate::event::DisconnectReason;
use crate::frame::Outgoing;
#[cfg(doc)]
use crate::Event;

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
    /// No connection could take it and the outbox holds `max_outbox_bytes` already (counted
    /// as dropped).
    #[error("outbox full (bytes): message of type {:?} dropped", .0.kind)]
    OutboxBytesFull(Outgoing),
    /// Its frame is larger than the frame limit (`max_frame_size`), so no peer would read it;
    /// refused up front (counted as dropped).
    #[error("message of type {:?} too large: {len} bytes, limit {max}", .message.kind)]
    TooLarge {
        /// The message.
        message: Outgoing,
        /// Its frame's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The spool holds `max_spool_bytes` already (counted as dropped and as `spool_full`).
    #[error("spool full: message of type {:?} not sent", .0.kind)]
    SpoolFull(Outgoing),
}

impl SendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Outgoing {
        match self {
            SendError::OutboxFull(m)
            | SendError::Closed(m)
            | SendError::OutboxBytesFull(m)
            | SendError::SpoolFull(m) => m,
            SendError::TooLarge { message, .. } => message,
        }
    }

    /// A refusal of [`Pool::send`](crate::Pool::send) with `message` handed back.
    pub fn from_refusal(refusal: SendRefusal, message: Outgoing) -> Self {
        match refusal {
            SendRefusal::OutboxFull => SendError::OutboxFull(message),
            SendRefusal::Closed => SendError::Closed(message),
            SendRefusal::OutboxBytesFull => SendError::OutboxBytesFull(message),
            SendRefusal::TooLarge { len, max } => SendError::TooLarge { message, len, max },
            SendRefusal::SpoolFull => SendError::SpoolFull(message),
        }
    }
}

/// Why [`Pool::send`](crate::Pool::send) refused a message; counted as dropped. A caller that
/// kept the message turns it into a [`SendError`] with [`SendError::from_refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendRefusal {
    /// No connection could take it and the outbox is full.
    #[error("outbox full: message dropped")]
    OutboxFull,
    /// The pool is closed.
    #[error("client closed: message not sent")]
    Closed,
    /// No connection could take it and the outbox holds `max_outbox_bytes` already.
    #[error("outbox full (bytes): message dropped")]
    OutboxBytesFull,
    /// Its frame is larger than `max_frame_size`.
    #[error("message too large: {len} bytes, limit {max}")]
    TooLarge {
        /// Its frame's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The spool is open and holds `max_spool_bytes` already: keeping this message would
    /// pass the limit.
    #[error("spool full: message not sent")]
    SpoolFull,
}
