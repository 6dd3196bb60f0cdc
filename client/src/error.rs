//! [`ClientError`]: what a request or a send can end with, split for fail-open hosts into
//! *unavailable* (the service could not be asked) and *denied* (the service answered no).

use thiserror::Error;
use usageflow_socket_core::{
    DisconnectReason, Incoming, MessageFate, MessageId, Outcome, Outgoing, RequestError, RequestFailure,
    SendError,
};

/// The three families of [`ClientError`], for hosts that decide by family rather than by variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The service could not be asked or did not answer in time: a fail-open host lets the
    /// call through (not connected, timeout, connection lost, closed, backpressure, outbox full).
    Unavailable,
    /// The service answered and said no: a complete round trip whose content is a denial.
    Denied,
    /// The caller's options or the server's reply did not make sense (invalid options, a reply
    /// payload of the wrong shape). Neither a transport failure nor a denial.
    Invalid,
}

/// Why a request or a send did not succeed.
///
/// `Clone + PartialEq`, so it can be handed to several waiters and compared in tests. No
/// variant ever carries the API key: the key lives only in [`usageflow_socket_core::ApiKey`],
/// whose `Debug` and `Display` are redacted.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection is open; nothing was sent. Resting slots were re-armed and dial again.
    #[error("UsageFlow unavailable: not connected (no open connection in the pool)")]
    NotConnected,
    /// No reply within the request's timeout.
    #[error("UsageFlow unavailable: no reply within the request timeout")]
    Timeout,
    /// The request's connection died before the reply came.
    #[error("UsageFlow unavailable: connection lost before the reply ({0})")]
    ConnectionLost(DisconnectReason),
    /// The client is closed (or closed while the request waited). For a send, the message
    /// is dropped and counted as `closed` in the stats.
    #[error("UsageFlow unavailable: the client is closed")]
    Closed,
    /// Every open connection has `max_in_flight` requests pending; nothing was sent.
    #[error(
        "UsageFlow unavailable: backpressure, every open connection has {max_in_flight} requests in flight"
    )]
    Backpressure {
        /// The configured per-connection cap.
        max_in_flight: u32,
    },
    /// A fire-and-forget message found no open connection and the outbox was full. The
    /// message is handed back; the drop is counted in the stats.
    #[error("UsageFlow unavailable: outbox full, message of type {:?} dropped", .0.kind)]
    OutboxFull(Outgoing),
    /// A fire-and-forget message found no open connection and the outbox held
    /// `max_outbox_bytes` already. The message is handed back; the drop is counted.
    #[error("UsageFlow unavailable: outbox full (bytes), message of type {:?} dropped", .0.kind)]
    OutboxBytesFull(Outgoing),
    /// A fire-and-forget message whose frame is larger than `max_frame_size`: no peer would
    /// read it, so it is refused up front (handed back, counted as dropped). A caller error,
    /// not an outage.
    #[error("message of type {:?} too large: {len} bytes, limit {max}", .message.kind)]
    TooLarge {
        /// The message, handed back.
        message: Outgoing,
        /// Its frame's length in bytes.
        len: usize,
        /// The limit (`max_frame_size`).
        max: usize,
    },
    /// No connection is open because the server refused the API key (HTTP 401 or 403) on
    /// every slot's most recent dial: fix the key. Still *unavailable* for a fail-open host
    /// (the service could not be asked); [`ClientError::is_rejected`] tells it apart.
    #[error("UsageFlow unavailable: the server rejected the API key (HTTP {status})")]
    Rejected {
        /// The HTTP status of the latest refusal.
        status: u16,
    },
    /// No connection is open because the HTTP proxy refused (407: credentials missing or
    /// wrong; 403: the proxy forbids the host; any 4xx) the most recent dial of every slot:
    /// fix the proxy settings. The key was never sent. Still *unavailable* for a fail-open
    /// host; [`ClientError::is_proxy_refused`] tells it apart. A proxy's 5xx is an outage
    /// ([`ClientError::NotConnected`]).
    #[error("UsageFlow unavailable: the HTTP proxy refused the connection (HTTP {status}); check the proxy settings")]
    ProxyRefused {
        /// The HTTP status of the latest refusal.
        status: u16,
    },
    /// The client's driver task is gone although the client was not closed: its runtime shut
    /// down (or dropped the task before it ran), or cannot run it (a Tokio runtime without
    /// timers). The client can do no more work; what it held was ended as by a close (handed
    /// back to [`Client::close`](crate::Client::close), else named in an ERROR line).
    #[error("UsageFlow unavailable: the client's driver task is gone (its runtime shut down or cannot run it); start a new client")]
    DriverGone,
    /// The server answered with an error (`error` set, or `type` `"error"`). The whole reply
    /// is kept; [`ClientError::denial_text`] gives its text.
    #[error("denied by UsageFlow: {}", .0.denial_text())]
    Denied(Box<Incoming>),
    /// The reply's payload did not have the shape of the typed reply.
    #[error("unexpected reply payload for {kind:?}: {error}")]
    InvalidReply {
        /// The request's message type.
        kind: String,
        /// What did not match.
        error: String,
    },
    /// A fire-and-forget message that was waited for ([`Client::send_confirmed`](crate::Client::send_confirmed))
    /// ended without being delivered: unconfirmed (its connection died; the server may or
    /// may not have it), expired in the outbox, or handed back by close.
    #[error("UsageFlow unavailable: {0}")]
    NotDelivered(MessageFate),
    /// The wait for a message's confirmation ended first; the message itself goes on (it
    /// still ends as counted in the stats).
    #[error("UsageFlow unavailable: {id} not confirmed within the wait")]
    NotYetConfirmed {
        /// The message.
        id: MessageId,
    },
    /// [`Client::flush`](crate::Client::flush) ended before every message sent so far ended.
    #[error("UsageFlow unavailable: {remaining} messages still queued or unconfirmed when the flush ended")]
    FlushTimeout {
        /// Messages still queued or awaiting confirmation.
        remaining: usize,
    },
    /// The client options cannot work (for example an unparsable root certificate).
    #[error("invalid client options: {0}")]
    InvalidOptions(String),
    /// A blocking call (of a blocking client, such as `usageflow_socket_tokio::blocking::Client`)
    /// was made on an async runtime's thread, where blocking would stall the executor (or
    /// deadlock it). Nothing was done: use the async client there, or call from a plain
    /// thread (Tokio's `spawn_blocking`).
    #[error("a blocking UsageFlow call was made inside an async runtime; use the async client there, or spawn_blocking")]
    BlockingInAsyncContext,
    /// The spool holds `max_spool_bytes` of messages not yet confirmed: the message is
    /// handed back, counted as dropped (`spool_full`). Room comes back as confirmations
    /// release records.
    #[error("UsageFlow unavailable: spool full, message of type {:?} not sent", .0.kind)]
    SpoolFull(Outgoing),
    /// The spool failed: it could not be opened (locked by another process, not writable,
    /// written by an incompatible version) or its disk failed.
    #[cfg(feature = "spool")]
    #[error("spool: {0}")]
    Spool(crate::spool::SpoolError),
    /// Under the `EverySend` sync policy, the message was accepted and goes out, but its
    /// record was not durable within the wait.
    #[error("the message was accepted but its spool record was not durable within {waited:?}")]
    SpoolNotDurable {
        /// How long the send waited.
        waited: std::time::Duration,
    },
}

impl ClientError {
    /// The family of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            ClientError::Denied(_) => ErrorClass::Denied,
            ClientError::InvalidReply { .. }
            | ClientError::InvalidOptions(_)
            | ClientError::BlockingInAsyncContext
            | ClientError::TooLarge { .. } => ErrorClass::Invalid,
            #[cfg(feature = "spool")]
            ClientError::Spool(_) => ErrorClass::Invalid,
            ClientError::NotConnected
            | ClientError::Rejected { .. }
            | ClientError::ProxyRefused { .. }
            | ClientError::DriverGone
            | ClientError::Timeout
            | ClientError::ConnectionLost(_)
            | ClientError::Closed
            | ClientError::Backpressure { .. }
            | ClientError::OutboxFull(_)
            | ClientError::OutboxBytesFull(_)
            | ClientError::NotDelivered(_)
            | ClientError::NotYetConfirmed { .. }
            | ClientError::FlushTimeout { .. }
            | ClientError::SpoolFull(_)
            | ClientError::SpoolNotDurable { .. } => ErrorClass::Unavailable,
        }
    }

    /// Whether the service could not be asked or did not answer (a fail-open host lets the
    /// call through).
    pub fn is_unavailable(&self) -> bool {
        self.class() == ErrorClass::Unavailable
    }

    /// Whether the server refused the API key: nothing is open because every slot's most
    /// recent dial was answered 401 or 403 (a configuration error, not an outage).
    pub fn is_rejected(&self) -> bool {
        matches!(self, ClientError::Rejected { .. })
    }

    /// Whether the HTTP proxy refused every slot's most recent dial (a configuration error,
    /// not an outage).
    pub fn is_proxy_refused(&self) -> bool {
        matches!(self, ClientError::ProxyRefused { .. })
    }

    /// Whether the server answered with a denial.
    pub fn is_denied(&self) -> bool {
        self.class() == ErrorClass::Denied
    }

    /// The server's reply, for a denial.
    pub fn denial(&self) -> Option<&Incoming> {
        match self {
            ClientError::Denied(reply) => Some(&**reply),
            _ => None,
        }
    }

    /// The denial's text (`error`, else `message`, else the type), for a denial.
    pub fn denial_text(&self) -> Option<&str> {
        self.denial().map(Incoming::denial_text)
    }

    /// Turns a request's [`Outcome`] into the reply or the error.
    pub fn from_outcome(outcome: Outcome) -> Result<Incoming, ClientError> {
        match outcome {
            Outcome::Reply(reply) => Ok(reply),
            Outcome::Denied(reply) => Err(ClientError::Denied(Box::new(reply))),
            Outcome::Failed(failure) => Err(failure.into()),
        }
    }
}

impl From<RequestError> for ClientError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::NotConnected => ClientError::NotConnected,
            RequestError::Backpressure { max_in_flight } => ClientError::Backpressure { max_in_flight },
            RequestError::Closed => ClientError::Closed,
            RequestError::Rejected { status } => ClientError::Rejected { status },
            // `RequestError` is non-exhaustive: a future refusal is still a refusal to send.
            #[allow(unreachable_patterns)]
            _ => ClientError::NotConnected,
        }
    }
}

impl From<RequestFailure> for ClientError {
    fn from(f: RequestFailure) -> Self {
        match f {
            RequestFailure::Timeout => ClientError::Timeout,
            RequestFailure::ConnectionLost(reason) => ClientError::ConnectionLost(reason),
            // Only a dropped request future cancels, and the driver drops its waiter first:
            // no caller ever sees this outcome. Were one to, the request was given up on.
            RequestFailure::Cancelled => ClientError::Closed,
            RequestFailure::Closed => ClientError::Closed,
            #[allow(unreachable_patterns)]
            _ => ClientError::Timeout,
        }
    }
}

impl From<SendError> for ClientError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::OutboxFull(message) => ClientError::OutboxFull(message),
            SendError::OutboxBytesFull(message) => ClientError::OutboxBytesFull(message),
            SendError::TooLarge { message, len, max } => ClientError::TooLarge { message, len, max },
            SendError::Closed(_) => ClientError::Closed,
            SendError::SpoolFull(message) => ClientError::SpoolFull(message),
            #[allow(unreachable_patterns)]
            other => ClientError::OutboxFull(other.into_message()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use usageflow_socket_core::{CloseReason, Payload};

    fn reply(kind: &str, error: Option<&str>) -> Incoming {
        Incoming {
            kind: kind.into(),
            payload: Payload::null(),
            id: None,
            reply_to: Some("r".into()),
            message: None,
            error: error.map(Into::into),
        }
    }

    #[test]
    fn classes() {
        assert!(ClientError::NotConnected.is_unavailable());
        assert!(ClientError::Timeout.is_unavailable());
        assert!(ClientError::ConnectionLost(DisconnectReason::Closed(CloseReason::Eof)).is_unavailable());
        assert!(ClientError::Closed.is_unavailable());
        assert!(ClientError::Backpressure { max_in_flight: 3 }.is_unavailable());
        let proxy = ClientError::ProxyRefused { status: 407 };
        assert!(proxy.is_unavailable() && proxy.is_proxy_refused() && !proxy.is_rejected());
        assert!(proxy
            .to_string()
            .contains("proxy refused the connection (HTTP 407)"));
        assert!(ClientError::DriverGone.is_unavailable() && !ClientError::DriverGone.is_proxy_refused());
        assert!(ClientError::OutboxFull(Outgoing::new("x", Value::Null)).is_unavailable());
        let denied = ClientError::Denied(Box::new(reply("error", Some("limit reached"))));
        assert!(denied.is_denied() && !denied.is_unavailable());
        assert_eq!(denied.denial_text(), Some("limit reached"));
        assert_eq!(denied.to_string(), "denied by UsageFlow: limit reached");
        assert_eq!(
            ClientError::InvalidReply {
                kind: "k".into(),
                error: "e".into()
            }
            .class(),
            ErrorClass::Invalid
        );
    }

    #[test]
    fn conversions() {
        assert_eq!(
            ClientError::from(RequestError::NotConnected),
            ClientError::NotConnected
        );
        assert_eq!(
            ClientError::from(RequestError::Backpressure { max_in_flight: 7 }),
            ClientError::Backpressure { max_in_flight: 7 }
        );
        let rejected = ClientError::from(RequestError::Rejected { status: 401 });
        assert_eq!(rejected, ClientError::Rejected { status: 401 });
        assert!(rejected.is_unavailable() && rejected.is_rejected() && !rejected.is_denied());
        assert!(rejected
            .to_string()
            .contains("the server rejected the API key (HTTP 401)"));
        assert!(!ClientError::NotConnected.is_rejected());
        assert_eq!(ClientError::from(RequestFailure::Timeout), ClientError::Timeout);
        assert_eq!(ClientError::from(RequestFailure::Closed), ClientError::Closed);
        let m = Outgoing::new("report_call_chain", Value::Null);
        assert_eq!(
            ClientError::from(SendError::OutboxFull(m.clone())),
            ClientError::OutboxFull(m.clone())
        );
        assert_eq!(ClientError::from(SendError::Closed(m)), ClientError::Closed);
        let ok = reply("success", None);
        assert_eq!(ClientError::from_outcome(Outcome::Reply(ok.clone())), Ok(ok));
        let no = reply("error", None);
        assert_eq!(
            ClientError::from_outcome(Outcome::Denied(no.clone())),
            Err(ClientError::Denied(Box::new(no)))
        );
    }
}
