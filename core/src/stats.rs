//! Counters. Two conservation laws hold at every moment:
//! requests = replies + denials + timeouts + connection_lost + cancelled + closed + pending, and,
//! for every message type, sends = queued + unflushed + sent + dropped + expired + lost + closed.

use std::collections::BTreeMap;

/// Fire-and-forget counters of one message type (non-exhaustive: counters may be added).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SendStats {
    /// `send` calls of this type, accepted or not.
    pub sends: u64,
    /// Waiting in the outbox now.
    pub queued: u64,
    /// Handed to a connection, not yet flushed.
    pub unflushed: u64,
    /// Written and flushed to the socket.
    pub sent: u64,
    /// Refused because the outbox was full.
    pub dropped: u64,
    /// Waited in the outbox past the TTL.
    pub expired: u64,
    /// Written, but the connection died before the write was flushed.
    pub lost: u64,
    /// Refused or dropped because the pool was closed.
    pub closed: u64,
}

impl SendStats {
    /// Whether `sends` equals the sum of where the messages ended (always true).
    pub fn conserved(&self) -> bool {
        self.sends
            == self.queued
                + self.unflushed
                + self.sent
                + self.dropped
                + self.expired
                + self.lost
                + self.closed
    }

    pub(crate) fn add(&mut self, other: &SendStats) {
        self.sends += other.sends;
        self.queued += other.queued;
        self.unflushed += other.unflushed;
        self.sent += other.sent;
        self.dropped += other.dropped;
        self.expired += other.expired;
        self.lost += other.lost;
        self.closed += other.closed;
    }
}

/// A snapshot of the pool's counters (serializable, for metrics exporters and `ufsock bench
/// --json`; non-exhaustive: counters may be added).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Open connections now.
    pub open_connections: u32,
    /// Pending requests per slot.
    pub pending_per_slot: Vec<u32>,
    /// Pending requests now.
    pub pending: u64,
    /// Requests accepted by `request`.
    pub requests: u64,
    /// Answered with a reply.
    pub replies: u64,
    /// Answered with a denial.
    pub denials: u64,
    /// Timed out.
    pub timeouts: u64,
    /// Failed because their connection died.
    pub connection_lost: u64,
    /// Cancelled by the caller.
    pub cancelled: u64,
    /// Failed because the pool closed.
    pub closed: u64,
    /// Requests re-sent once on another connection after their connection was lost.
    pub resent: u64,
    /// `request` calls refused: no connection open.
    pub refused_not_connected: u64,
    /// `request` calls refused: every connection at its in-flight cap.
    pub refused_backpressure: u64,
    /// `request` calls refused: pool closed.
    pub refused_closed: u64,
    /// Frames that matched no pending request.
    pub orphan_replies: u64,
    /// Frames skipped as malformed, oversized or binary.
    pub skipped_frames: u64,
    /// Inputs naming an old generation, ignored.
    pub stale_inputs: u64,
    /// Dials started.
    pub dials: u64,
    /// Dials that failed (network, handshake timeout, or rejection).
    pub dial_failures: u64,
    /// Dials the server refused because of the API key (401/403).
    pub rejections: u64,
    /// `Some(HTTP status)` while no connection is open because the server refused the API
    /// key on every slot's most recent dial: why requests fail and sends wait.
    pub rejected_status: Option<u16>,
    /// Open connections that were lost or closed.
    pub disconnects: u64,
    /// Reconnects scheduled.
    pub reconnects: u64,
    /// Times a slot used up its attempts.
    pub exhausted: u64,
    /// Times a resting slot was re-armed by demand (request, send or connect).
    pub rearms: u64,
    /// Connections replaced after reaching their maximum age.
    pub rotations: u64,
    /// Pings written.
    pub pings: u64,
    /// Outbox depth now.
    pub outbox_depth: u64,
    /// Fire-and-forget counters, all types together.
    pub sends: SendStats,
    /// Fire-and-forget counters per message type (64 named types; the rest count together as
    /// `"*other*"`).
    pub sends_by_type: BTreeMap<String, SendStats>,
}

impl Stats {
    /// Whether the request conservation law holds (always true).
    pub fn requests_conserved(&self) -> bool {
        self.requests
            == self.replies
                + self.denials
                + self.timeouts
                + self.connection_lost
                + self.cancelled
                + self.closed
                + self.pending
    }
}
