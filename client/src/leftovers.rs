//! What a client could not deliver when it ends, and the one place that decides what becomes
//! of it when nobody can take it any more.
//!
//! A [`Client::close`](crate::Client::close) that returns hands its leftovers to its caller
//! ([`CloseReport::undelivered`](crate::CloseReport::undelivered)). Every other end leaves
//! them with nobody: the last handle dropped without `close`, a `close` whose future was
//! dropped before it returned, the runtime stopped under the driver task, the client's state
//! dropped with messages still queued or written. Each of those ends calls [`abandon`], which
//! names them in one ERROR line with their counts per message type and state (promise two:
//! never lose a metering message silently, also at the end of a process).
//!
//! [`abandon`] is where the fate of such messages is decided, and the only such place: without
//! a spool they are discarded (and named); a client with a durable spool keeps them on disk
//! for the next process instead, and would say so here rather than call them lost.

use std::collections::BTreeMap;
use std::fmt;

use usageflow_socket_core::{Stats, Undelivered};

/// The state a message was in when it was left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LeftState {
    /// Still in the outbox, never written.
    Queued,
    /// Written (maybe more than once), never confirmed: the server may have it.
    Written,
    /// Handed back by a close drain that ended (never written).
    HandedBackQueued,
    /// Handed back by a close drain that ended, written before: the server may have it.
    HandedBackWritten,
}

impl LeftState {
    fn name(self) -> &'static str {
        match self {
            LeftState::Queued => "queued",
            LeftState::Written => "written",
            LeftState::HandedBackQueued => "handed back (never written)",
            LeftState::HandedBackWritten => "handed back (written, unconfirmed)",
        }
    }
}

/// How a client ended without anybody to take its leftovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The last handle was dropped without `close()`; the drain ran in the background.
    Dropped,
    /// A `close()` was abandoned (its future dropped) before it returned.
    CloseAbandoned,
    /// The driver task ended without the client closing: its runtime stopped or dropped it.
    DriverGone,
    /// The client's state was dropped with messages still held (the runtime stopped in the
    /// middle of a drain, or the driver task never ran).
    StateDropped,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ending::Dropped => "the client was dropped without close() and the close drain could not deliver them",
            Ending::CloseAbandoned => "close() was abandoned before it returned and the close drain could not deliver them",
            Ending::DriverGone => "the client's driver task ended (its runtime stopped or has no timers) before they were delivered",
            Ending::StateDropped => "the client's state was dropped (its runtime stopped) while they were still held",
        })
    }
}

/// Counts of messages left behind, per message type and state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Leftovers {
    counts: BTreeMap<(String, LeftState), u64>,
}

impl Leftovers {
    /// The messages a close drain handed back.
    pub(crate) fn handed_back(undelivered: &[Undelivered]) -> Self {
        let mut left = Self::default();
        for m in undelivered {
            let state = if m.written_before {
                LeftState::HandedBackWritten
            } else {
                LeftState::HandedBackQueued
            };
            left.add(&m.kind, state, 1);
        }
        left
    }

    /// The messages still live in a pool with these counters: queued and written, not yet
    /// ended.
    pub(crate) fn live(stats: &Stats) -> Self {
        let mut left = Self::default();
        for (kind, s) in &stats.sends_by_type {
            left.add(kind, LeftState::Queued, s.queued);
            left.add(kind, LeftState::Written, s.written);
        }
        left
    }

    /// Adds `other`'s counts.
    pub(crate) fn merge(&mut self, other: Leftovers) {
        for ((kind, state), n) in other.counts {
            *self.counts.entry((kind, state)).or_default() += n;
        }
    }

    fn add(&mut self, kind: &str, state: LeftState, n: u64) {
        if n > 0 {
            *self.counts.entry((kind.to_owned(), state)).or_default() += n;
        }
    }

    /// Whether nothing was left behind.
    pub(crate) fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// How many messages were left behind.
    pub(crate) fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

impl fmt::Display for Leftovers {
    /// `kind: n state, n state; kind: ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last_kind: Option<&str> = None;
        for ((kind, state), n) in &self.counts {
            match last_kind {
                Some(k) if k == kind => f.write_str(", ")?,
                Some(_) => write!(f, "; {kind}: ")?,
                None => write!(f, "{kind}: ")?,
            }
            write!(f, "{n} {}", state.name())?;
            last_kind = Some(kind);
        }
        Ok(())
    }
}

/// Messages nobody can take any more, and how the client ended; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Abandoned {
    /// What was left.
    pub(crate) left: Leftovers,
    /// How the client ended.
    pub(crate) ending: Ending,
    /// The client's URL, credentials redacted (which client of a process this was).
    pub(crate) url: String,
    /// The client had a spool: the messages stay on disk for the next process, not lost.
    pub(crate) kept_in_spool: bool,
}

/// Decides the fate of messages nobody can take any more: without a spool, they are
/// discarded, and the returned line (written by the caller once it holds no lock) names them.
/// `None` when nothing was left.
/// With a spool (`kept_in_spool`), they stay on disk for the next process: the line says so
/// at WARN instead.
pub(crate) fn abandon(left: Leftovers, ending: Ending, url: &str, kept_in_spool: bool) -> Option<Abandoned> {
    (!left.is_empty()).then(|| Abandoned {
        left,
        ending,
        url: url.to_owned(),
        kept_in_spool,
    })
}

impl Abandoned {
    /// Writes the ERROR line (a WARN line when the spool keeps them).
    pub(crate) fn log(&self) {
        if self.kept_in_spool {
            tracing::warn!(
                client = %self.url,
                count = self.left.total(),
                counts = %self.left,
                "usageflow-socket: {} messages not delivered, kept in the spool for the next process: {}",
                self.left.total(),
                self.ending
            );
            return;
        }
        tracing::error!(
            client = %self.url,
            count = self.left.total(),
            counts = %self.left,
            "usageflow-socket: {} messages not delivered and discarded: {}",
            self.left.total(),
            self.ending
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use usageflow_socket_core::{MessageId, SendStats};

    fn undelivered(kind: &str, written_before: bool) -> Undelivered {
        Undelivered::new(MessageId(1), kind, String::new(), written_before)
    }

    #[test]
    fn counts_per_type_and_state() {
        let mut left = Leftovers::handed_back(&[
            undelivered("usage", false),
            undelivered("usage", true),
            undelivered("usage", true),
            undelivered("report", false),
        ]);
        let mut stats = Stats::default();
        let mut usage = SendStats::default();
        usage.queued = 3;
        stats.sends_by_type.insert("usage".into(), usage);
        left.merge(Leftovers::live(&stats));
        assert_eq!(left.total(), 7);
        assert_eq!(
            left.to_string(),
            "report: 1 handed back (never written); usage: 3 queued, 1 handed back (never written), 2 handed back (written, unconfirmed)"
        );
        assert!(abandon(Leftovers::default(), Ending::Dropped, "ws://x", false).is_none());
        let line = abandon(left, Ending::Dropped, "ws://x", false).unwrap();
        assert_eq!(line.left.total(), 7);
    }
}
