//! What goes into the pool: [`Input`], the I/O results an adapter reports, with why a dial
//! failed ([`DialError`]) and how a connection ended ([`CloseReason`]).

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use crate::request::ConnId;
use crate::DialIoError;
#[cfg(doc)]
use crate::{Output, RequestError};

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
    /// TCP, TLS or the upgrade failed for a transient reason (described in words).
    #[error("network error: {0}")]
    Network(String),
    /// TCP, the proxy exchange, TLS or the upgrade failed with an I/O error, kept whole: its
    /// [`std::io::ErrorKind`] and its `source()` chain (for TLS, the rustls error).
    #[error(transparent)]
    Io(DialIoError),
    /// The dial did not finish within the handshake timeout (the pool decides this itself).
    #[error("handshake did not finish within the handshake timeout")]
    Timeout,
    /// The HTTP proxy answered the `CONNECT` with a non-2xx status: 407 (it requires
    /// credentials, or refused the ones given), 403 (it refused the tunnel), 5xx (it is
    /// unavailable, or could not reach the server), or another refusal. Never a rejection of
    /// the API key (the UsageFlow server was not reached): the slot backs off as for a network
    /// error.
    #[error("{}", proxy_text(*.status))]
    Proxy {
        /// The HTTP status of the proxy's answer.
        status: u16,
    },
}

impl DialError {
    /// Whether the server refused the credentials (401 or 403).
    ///
    /// Never true for [`DialError::Proxy`]: a proxy's 407 is about the proxy's credentials.
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

fn proxy_text(status: u16) -> String {
    match status {
        407 => format!("the proxy requires credentials (HTTP {status})"),
        500..=599 => format!("the proxy is unavailable (HTTP {status})"),
        _ => format!("the proxy refused the tunnel (HTTP {status})"),
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
    /// A pong arrived, with its application data (the payload of the
    /// [`Output::Ping`] it answers, or anything an unsolicited pong carries).
    Pong {
        /// The connection.
        conn: ConnId,
        /// Its application data.
        payload: &'a [u8],
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
    /// The adapter discarded the writes of a connection the pool dropped (after an
    /// [`Output::Disconnect`] that was not graceful): writes numbered `first` and later were
    /// never started on the socket, so their messages certainly did not arrive and are
    /// written again elsewhere. Without this report, the pool must assume every unflushed
    /// write may have arrived; it waits for it up to the write wait.
    Unwritten {
        /// The connection.
        conn: ConnId,
        /// The number of the first write never started (writes are numbered from 1).
        first: u64,
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
            | Input::Pong { conn, .. }
            | Input::Ping { conn }
            | Input::Unwritten { conn, .. }
            | Input::Flushed { conn, .. }
            | Input::WriteFailed { conn, .. }
            | Input::Closed { conn, .. } => *conn,
        }
    }
}
