//! Log lines the driver decides under its lock and writes once the lock is released: writing a
//! line (formatting, the subscriber's I/O) must never make every request of the client wait
//! behind it. The driver collects [`LogLine`]s; whoever released the lock writes them
//! ([`Logs::write`]).

use std::sync::Arc;

use tracing::{debug, error, info, warn};
use usageflow_socket_core::{ConnId, DialError, DisconnectReason, DropReason, Event, FrameError};

use crate::leftovers::Abandoned;
use crate::log_limit::{DropSummary, SkipSummary, DROP_WARN_WINDOW, SKIP_WARN_WINDOW};

/// One line to write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LogLine {
    /// A pool event, at the level [`log_event`] gives it.
    Event(Event),
    /// The first skipped frame of a flood.
    Skipped {
        /// Its connection.
        conn: ConnId,
        /// Why it was skipped.
        error: FrameError,
    },
    /// The frames skipped since the last warning.
    SkipSummary(SkipSummary),
    /// The first dropped message (or batch of one type) of a flood.
    Dropped {
        /// Its type.
        kind: String,
        /// Why.
        reason: DropReason,
        /// How many.
        count: u64,
    },
    /// The messages dropped since the last warning.
    DropSummary(DropSummary),
    /// Messages nobody can take any more (an ERROR line).
    Abandoned(Abandoned),
    /// The spool could not keep a message (the first failure, then one line per thousand).
    #[cfg(feature = "spool")]
    SpoolFailed {
        /// The message.
        id: usageflow_socket_core::MessageId,
        /// Why.
        error: String,
        /// Failures so far.
        failures: u64,
    },
}

/// The lines one lock holder collected, and the client they are about.
#[derive(Debug, Default)]
pub(crate) struct Logs {
    /// The client's URL, credentials redacted (set when there are lines).
    pub(crate) client: Option<Arc<str>>,
    /// The lines, in order.
    pub(crate) lines: Vec<LogLine>,
}

impl Logs {
    /// Writes every line (call without the driver's lock).
    pub(crate) fn write(self) {
        let Some(client) = self.client else {
            return;
        };
        for line in &self.lines {
            line.write(&client);
        }
    }
}

impl LogLine {
    /// Writes the line; the lines a flood could repeat name their `client`.
    pub(crate) fn write(&self, client: &str) {
        match self {
            LogLine::Event(event) => log_event(event),
            LogLine::Skipped { conn, error } => warn!(
                client,
                %conn,
                %error,
                "usageflow-socket: skipped a frame (more within {}s are summarized)",
                SKIP_WARN_WINDOW.as_secs()
            ),
            LogLine::SkipSummary(summary) => log_skip_summary(client, summary),
            LogLine::Dropped { kind, reason, count } => warn!(
                client,
                kind = %kind,
                %reason,
                count,
                "usageflow-socket: fire-and-forget message not delivered (more within {}s are summarized)",
                DROP_WARN_WINDOW.as_secs()
            ),
            LogLine::DropSummary(summary) => {
                let counts = summary
                    .counts
                    .iter()
                    .map(|((kind, reason), n)| format!("{kind} {reason}: {n}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                warn!(
                    client,
                    count = summary.total(),
                    %counts,
                    "usageflow-socket: {} fire-and-forget messages not delivered in the last {}s",
                    summary.total(),
                    summary.over.as_secs()
                );
            }
            LogLine::Abandoned(abandoned) => abandoned.log(),
            #[cfg(feature = "spool")]
            LogLine::SpoolFailed { id, error, failures } => tracing::error!(
                client,
                %id,
                %error,
                failures,
                "usageflow-socket: the spool could not keep a message; it is still sent from memory, but would not survive a crash"
            ),
        }
    }
}

/// Logs the summary of the frames skipped since the last warning.
fn log_skip_summary(client: &str, summary: &SkipSummary) {
    let SkipSummary {
        count,
        over,
        conn,
        error,
    } = summary;
    warn!(
        client,
        count,
        %conn,
        %error,
        "usageflow-socket: {count} frames skipped in the last {}s, last error: {error}",
        over.as_secs()
    );
}

/// Logs a pool event at a level that fits it. Never logs the API key (events do not hold it).
///
/// [`Event::FrameSkipped`] and [`Event::MessageDropped`] are logged at WARN each time here; the
/// driver does not call this for them but rate-limits its own warnings (the first of a flood,
/// then one summary with the counts every 10 s).
pub(crate) fn log_event(event: &Event) {
    match event {
        Event::Connected { conn } => info!(%conn, "usageflow-socket: connected"),
        Event::ConnectFailed { conn, error } => match error {
            DialError::Rejected { status } if error.is_auth_rejection() => error!(
                %conn,
                status,
                "usageflow-socket: the server rejected the API key; check the key (it is not logged)"
            ),
            DialError::Proxy { .. } => warn!(
                %conn,
                %error,
                "usageflow-socket: the HTTP proxy refused the tunnel (not the server: the key was not sent)"
            ),
            _ => warn!(%conn, %error, "usageflow-socket: dial failed"),
        },
        Event::Disconnected { conn, reason } => match reason {
            DisconnectReason::PoolClosing | DisconnectReason::Rotated => {
                debug!(%conn, %reason, "usageflow-socket: disconnected")
            }
            _ => warn!(%conn, %reason, "usageflow-socket: disconnected"),
        },
        Event::ReconnectScheduled { slot, attempt, delay } => {
            info!(slot, attempt, ?delay, "usageflow-socket: reconnect scheduled")
        }
        Event::SlotRearmed { slot, delay } => {
            info!(slot, ?delay, "usageflow-socket: resting slot re-armed by demand")
        }
        Event::KeyRejected { status } => error!(
            status,
            "usageflow-socket: no connection is open because the server rejected the API key on every slot; check the key (it is not logged)"
        ),
        Event::RotationAbandoned { slot } => warn!(
            slot,
            "usageflow-socket: replacing an aged connection failed every attempt; it stays in service until it dies"
        ),
        Event::AttemptsExhausted { slot } => warn!(
            slot,
            "usageflow-socket: reconnect attempts exhausted; the slot rests until the next request, send or connect"
        ),
        Event::FrameSkipped { conn, error } => warn!(%conn, %error, "usageflow-socket: skipped a frame"),
        Event::MessageDropped { kind, reason, count } => {
            warn!(kind = %kind, %reason, count, "usageflow-socket: fire-and-forget message not delivered")
        }
        Event::ConfirmationOff => warn!(
            "usageflow-socket: delivery confirmation is off; messages end as written, never confirmed"
        ),
        Event::PongsMissing { conn } => warn!(
            %conn,
            "usageflow-socket: the server never answered a ping, so no message can be confirmed; if it never answers pings, turn confirmation off"
        ),
        Event::AvailabilityChanged { availability } => {
            info!(?availability, "usageflow-socket: availability changed")
        }
        other => debug!(?other, "usageflow-socket: event"),
    }
}
