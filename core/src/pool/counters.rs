//! The counters, and the [`Stats`] snapshot built from them.

use std::collections::BTreeMap;

use super::Pool;
use crate::stats::{SendStats, Stats};
use crate::{Outcome, RequestFailure};

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) requests: u64,
    pub(super) replies: u64,
    pub(super) denials: u64,
    pub(super) timeouts: u64,
    pub(super) connection_lost: u64,
    pub(super) cancelled: u64,
    pub(super) closed: u64,
    pub(super) resent: u64,
    pub(super) refused_not_connected: u64,
    pub(super) refused_backpressure: u64,
    pub(super) refused_closed: u64,
    pub(super) orphan_replies: u64,
    pub(super) skipped_frames: u64,
    pub(super) stale_inputs: u64,
    pub(super) dials: u64,
    pub(super) dial_failures: u64,
    pub(super) rejections: u64,
    pub(super) disconnects: u64,
    pub(super) reconnects: u64,
    pub(super) exhausted: u64,
    pub(super) rearms: u64,
    pub(super) rotations: u64,
    pub(super) pings: u64,
    pub(super) pongs: u64,
}

impl Counters {
    /// Counts a request's outcome.
    pub(super) fn count_outcome(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Reply(_) => self.replies += 1,
            Outcome::Denied(_) => self.denials += 1,
            Outcome::Failed(RequestFailure::Timeout) => self.timeouts += 1,
            Outcome::Failed(RequestFailure::ConnectionLost(_)) => self.connection_lost += 1,
            Outcome::Failed(RequestFailure::Cancelled) => self.cancelled += 1,
            Outcome::Failed(RequestFailure::Closed) => self.closed += 1,
        }
    }
}

impl Pool {
    /// The body of [`Pool::stats`].
    pub(super) fn snapshot(&self) -> Stats {
        let c = &self.counters;
        let mut sends = SendStats::default();
        let mut sends_by_type = BTreeMap::new();
        for (name, s) in self.kinds.names.iter().zip(&self.kinds.stats) {
            sends.add(s);
            sends_by_type.insert(name.clone(), s.clone());
        }
        Stats {
            open_connections: self.open_count,
            pending_per_slot: self
                .slots
                .iter()
                .map(|s| {
                    s.open_conn().map_or(0, |c| c.pending) + s.retiring.iter().map(|c| c.pending).sum::<u32>()
                })
                .collect(),
            pending: self.pending.len() as u64,
            requests: c.requests,
            replies: c.replies,
            denials: c.denials,
            timeouts: c.timeouts,
            connection_lost: c.connection_lost,
            cancelled: c.cancelled,
            closed: c.closed,
            resent: c.resent,
            refused_not_connected: c.refused_not_connected,
            refused_backpressure: c.refused_backpressure,
            refused_closed: c.refused_closed,
            orphan_replies: c.orphan_replies,
            skipped_frames: c.skipped_frames,
            stale_inputs: c.stale_inputs,
            dials: c.dials,
            dial_failures: c.dial_failures,
            rejections: c.rejections,
            rejected_status: self.rejected_status,
            disconnects: c.disconnects,
            reconnects: c.reconnects,
            exhausted: c.exhausted,
            rearms: c.rearms,
            rotations: c.rotations,
            pings: c.pings,
            pongs: c.pongs,
            outbox_depth: self.outbox.len() as u64,
            sends,
            sends_by_type,
            confirm_latency: self.confirm_latency.clone(),
        }
    }
}
