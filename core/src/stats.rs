//! Counters. Two conservation laws hold at every moment:
//! requests = replies + denials + timeouts + connection_lost + cancelled + closed + pending, and,
//! for every message type, sends = queued + written + confirmed + unconfirmed + dropped +
//! expired + closed.

use std::collections::BTreeMap;
use std::time::Duration;

/// Fire-and-forget counters of one message type (non-exhaustive: counters may be added).
/// Every message accepted or refused by `send` is in exactly one of `queued`, `written`,
/// `confirmed`, `unconfirmed`, `dropped`, `expired` and `closed`; the first two are the live
/// states, the others final.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SendStats {
    /// `send` calls of this type, accepted or not, and messages replayed from the spool.
    pub sends: u64,
    /// Waiting in the outbox now (including messages back from a dead connection).
    pub queued: u64,
    /// Written on a connection and awaiting confirmation now; with confirmation off, also
    /// every message written and flushed (their final state, counted in `written_final`).
    pub written: u64,
    /// Of `written`, with confirmation off: the messages flushed, which ended as written (a
    /// final state, so it only grows; `written - written_final` are in flight now). Always 0
    /// with confirmation on.
    pub written_final: u64,
    /// Confirmed: a pong answered a ping written after them, so the server's WebSocket
    /// endpoint read them.
    pub confirmed: u64,
    /// Written, and their connection died before a confirmation: the server may or may not
    /// have read them (at most once; or at least once after `max_rewrites`, counted also in
    /// `rewrites_exhausted`, or at close).
    pub unconfirmed: u64,
    /// Refused because the outbox was full (handed back to the caller).
    pub dropped: u64,
    /// Waited in the outbox past the TTL.
    pub expired: u64,
    /// Refused after close, or undelivered when the close drain ended (handed back).
    pub closed: u64,
    /// Of `unconfirmed`: at-least-once messages whose rewrites ran out.
    pub rewrites_exhausted: u64,
    /// Writes of a message again after its connection died before confirming it (at least
    /// once), counted when issued. The server sees these messages at most `rewritten` times
    /// more than once in all.
    pub rewritten: u64,
    /// Messages an earlier process left in the spool, restored and sent again by this one
    /// (counted in `sends` too, and then in the state they reach).
    pub replayed: u64,
    /// Undelivered when the close drain ended, and kept in the spool for the next process
    /// (instead of handed back).
    pub spooled: u64,
    /// Of `dropped`: refused because the spool was full.
    pub spool_full: u64,
}

impl SendStats {
    /// Whether `sends` equals the sum of the states (always true).
    pub fn conserved(&self) -> bool {
        self.sends
            == self.queued
                + self.written
                + self.confirmed
                + self.unconfirmed
                + self.dropped
                + self.expired
                + self.closed
                + self.spooled
    }

    pub(crate) fn add(&mut self, other: &SendStats) {
        self.sends += other.sends;
        self.queued += other.queued;
        self.written += other.written;
        self.written_final += other.written_final;
        self.confirmed += other.confirmed;
        self.unconfirmed += other.unconfirmed;
        self.dropped += other.dropped;
        self.expired += other.expired;
        self.closed += other.closed;
        self.rewrites_exhausted += other.rewrites_exhausted;
        self.rewritten += other.rewritten;
        self.replayed += other.replayed;
        self.spooled += other.spooled;
        self.spool_full += other.spool_full;
    }
}

/// Number of buckets of a [`LatencySummary`]: bucket `i` holds latencies below 2^i µs.
const LATENCY_BUCKETS: usize = 32;

/// A summary of latencies (count, mean, maximum, and a log2 histogram for quantiles), as
/// the confirmation latency: the time from a message's write to its confirmation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Latencies recorded.
    pub count: u64,
    /// Their sum, in microseconds.
    pub total_micros: u64,
    /// The largest, in microseconds.
    pub max_micros: u64,
    /// `buckets[i]`: latencies in `[2^(i-1), 2^i)` µs (bucket 0: under 1 µs); the last
    /// bucket also holds everything longer.
    pub buckets: Vec<u64>,
    /// `bucket_micros[i]`: the sum of the latencies in `buckets[i]`, in microseconds (so a
    /// histogram exported from the buckets keeps the exact sum).
    pub bucket_micros: Vec<u64>,
}

impl Default for LatencySummary {
    fn default() -> Self {
        Self {
            count: 0,
            total_micros: 0,
            max_micros: 0,
            buckets: vec![0; LATENCY_BUCKETS],
            bucket_micros: vec![0; LATENCY_BUCKETS],
        }
    }
}

impl LatencySummary {
    /// Records `n` latencies of `latency`.
    pub(crate) fn record(&mut self, latency: Duration, n: u64) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.count += n;
        self.total_micros = self.total_micros.saturating_add(micros.saturating_mul(n));
        self.max_micros = self.max_micros.max(micros);
        let bucket = ((u64::BITS - micros.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1);
        self.buckets[bucket] += n;
        self.bucket_micros[bucket] = self.bucket_micros[bucket].saturating_add(micros.saturating_mul(n));
    }

    /// The mean, or `None` when nothing was recorded.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.total_micros / self.count))
    }

    /// An upper bound of the `q` quantile (0.0..=1.0): the top of the power-of-two bucket it
    /// falls in, capped at the maximum; `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let top = if i == 0 { 1 } else { 1u64 << i };
                return Some(Duration::from_micros(top.min(self.max_micros.max(1))));
            }
        }
        Some(Duration::from_micros(self.max_micros))
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
    /// Pings written (keep-alives and barriers).
    pub pings: u64,
    /// Pongs that confirmed a ping of this pool.
    pub pongs: u64,
    /// Outbox depth now.
    pub outbox_depth: u64,
    /// Fire-and-forget counters, all types together.
    pub sends: SendStats,
    /// Time from a message's write to its confirmation, all types together.
    pub confirm_latency: LatencySummary,
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
