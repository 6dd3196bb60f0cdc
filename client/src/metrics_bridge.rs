//! The `metrics` feature: the client's counters and gauges through the [`metrics`] facade.
//!
//! Nothing here runs on the request path but [`RequestTimer`] (one `Instant::now()` pair and
//! one histogram record per request). Everything else is *published* from the [`Stats`] the
//! core keeps anyway: the driver task publishes at most once per [`PUBLISH_INTERVAL`] (it
//! wakes for it when nothing else would wake it), `Client::stats` publishes on every call, and
//! the driver task publishes once more when it stops. A publication compares the snapshot with
//! the last one published and hands the recorder the differences: counters grow by their
//! delta, and the gauges of live quantities (open connections, pending requests, messages
//! queued or written) move by theirs, so several clients in one process add up. Only
//! `usageflow_availability` is set outright (the last client to publish wins).
//!
//! Message-type labels are bounded: the core keeps 64 named types and counts the rest
//! together as `"*other*"`.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use usageflow_socket_core::{Availability, Incoming, LatencySummary, SendStats, Stats};

use crate::ClientError;

/// The driver task publishes at most this often.
pub(crate) const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

const REQUESTS: &str = "usageflow_requests_total";
const REQUESTS_PENDING: &str = "usageflow_requests_pending";
const REQUESTS_RESENT: &str = "usageflow_requests_resent_total";
const REQUEST_DURATION: &str = "usageflow_request_duration_seconds";
const MESSAGES: &str = "usageflow_messages_total";
const MESSAGES_LIVE: &str = "usageflow_messages";
const MESSAGES_REWRITTEN: &str = "usageflow_messages_rewritten_total";
const OUTBOX: &str = "usageflow_outbox_messages";
const CONFIRM: &str = "usageflow_message_confirm_seconds";
const OPEN: &str = "usageflow_open_connections";
const AVAILABILITY: &str = "usageflow_availability";
const DIALS: &str = "usageflow_dials_total";
const DIAL_FAILURES: &str = "usageflow_dial_failures_total";
const REJECTED: &str = "usageflow_handshakes_rejected_total";
const DISCONNECTS: &str = "usageflow_disconnects_total";
const RECONNECTS: &str = "usageflow_reconnects_total";
const ROTATIONS: &str = "usageflow_rotations_total";

/// Describes every metric to the recorder installed now (HELP lines and units). Called when
/// a client starts.
pub(crate) fn describe() {
    describe_counter!(REQUESTS, Unit::Count, "Requests by outcome: reply, denied, timeout, connection_lost, cancelled, closed (pending when the pool closed, or refused after close), not_connected (refused: no open connection, including while the API key is rejected), backpressure (refused: every connection at its in-flight cap).");
    describe_gauge!(REQUESTS_PENDING, Unit::Count, "Requests awaiting their outcome.");
    describe_counter!(
        REQUESTS_RESENT,
        Unit::Count,
        "Requests re-sent once on another connection after theirs was lost."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request call to its outcome, by outcome (as usageflow_requests_total, plus rejected)."
    );
    describe_counter!(MESSAGES, Unit::Count, "Fire-and-forget messages in a final state, by type and state: confirmed, unconfirmed, dropped, expired, closed, and written (with confirmation off, once flushed).");
    describe_gauge!(
        MESSAGES_LIVE,
        Unit::Count,
        "Fire-and-forget messages in a live state now, by type and state: queued, written (awaiting confirmation, or with confirmation off not yet flushed)."
    );
    describe_counter!(
        MESSAGES_REWRITTEN,
        Unit::Count,
        "Writes of at-least-once messages again after their connection died before confirming them, by type."
    );
    describe_gauge!(OUTBOX, Unit::Count, "Messages waiting in the outbox now.");
    describe_histogram!(
        CONFIRM,
        Unit::Seconds,
        "Write-to-confirmation latency of confirmed messages (each recorded at the mean of its power-of-two microsecond bucket, so the sum is exact)."
    );
    describe_gauge!(OPEN, Unit::Count, "Open connections now.");
    describe_gauge!(
        AVAILABILITY,
        "Availability: 0 unavailable, 1 degraded, 2 available."
    );
    describe_counter!(DIALS, Unit::Count, "Dials started.");
    describe_counter!(
        DIAL_FAILURES,
        Unit::Count,
        "Dials that failed (network, handshake timeout, or rejection)."
    );
    describe_counter!(
        REJECTED,
        Unit::Count,
        "Dials the server refused because of the API key (401/403)."
    );
    describe_counter!(
        DISCONNECTS,
        Unit::Count,
        "Open connections that were lost or closed."
    );
    describe_counter!(RECONNECTS, Unit::Count, "Reconnects scheduled.");
    describe_counter!(
        ROTATIONS,
        Unit::Count,
        "Connections replaced after reaching their maximum age."
    );
}

/// What was published last, to publish differences against.
struct Published {
    stats: Stats,
    /// `None` before the first publication.
    at: Option<Instant>,
}

/// A client's publisher: the last snapshot published, behind a lock that also orders
/// publications (a snapshot is taken and published under it, so none goes backwards).
pub(crate) struct Publisher {
    last: Mutex<Published>,
}

impl Publisher {
    /// A publisher that has published nothing yet.
    pub(crate) fn new() -> Self {
        Self {
            last: Mutex::new(Published {
                stats: Stats::default(),
                at: None,
            }),
        }
    }

    /// When the next periodic publication is due (now, if none was made yet).
    pub(crate) fn next_due(&self, now: Instant) -> Instant {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.at.map_or(now, |at| at + PUBLISH_INTERVAL)
    }

    /// Publishes the snapshot `snapshot` takes (called under the publisher's lock, so it may
    /// take the driver's lock, never the other way around) if `force` or a periodic
    /// publication is due; returns the snapshot when one was taken.
    pub(crate) fn publish_with(
        &self,
        force: bool,
        snapshot: impl FnOnce() -> (Stats, Availability),
    ) -> Option<Stats> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if !force && last.at.is_some_and(|at| now < at + PUBLISH_INTERVAL) {
            return None;
        }
        let (stats, availability) = snapshot();
        publish(&last.stats, &stats, availability, last.at.is_none());
        last.stats = stats.clone();
        last.at = Some(now);
        Some(stats)
    }
}

/// Hands the recorder the differences from `old` to `new`; `first`: every fixed series is
/// registered, even at zero.
fn publish(old: &Stats, new: &Stats, availability: Availability, first: bool) {
    let inc = |name: &'static str, old: u64, new: u64| {
        if first || new != old {
            counter!(name).increment(new.saturating_sub(old));
        }
    };
    let outcome = |outcome: &'static str, old: u64, new: u64| {
        if first || new != old {
            counter!(REQUESTS, "outcome" => outcome).increment(new.saturating_sub(old));
        }
    };
    outcome("reply", old.replies, new.replies);
    outcome("denied", old.denials, new.denials);
    outcome("timeout", old.timeouts, new.timeouts);
    outcome("connection_lost", old.connection_lost, new.connection_lost);
    outcome("cancelled", old.cancelled, new.cancelled);
    outcome(
        "closed",
        old.closed + old.refused_closed,
        new.closed + new.refused_closed,
    );
    outcome(
        "not_connected",
        old.refused_not_connected,
        new.refused_not_connected,
    );
    outcome("backpressure", old.refused_backpressure, new.refused_backpressure);
    inc(REQUESTS_RESENT, old.resent, new.resent);
    inc(DIALS, old.dials, new.dials);
    inc(DIAL_FAILURES, old.dial_failures, new.dial_failures);
    inc(REJECTED, old.rejections, new.rejections);
    inc(DISCONNECTS, old.disconnects, new.disconnects);
    inc(RECONNECTS, old.reconnects, new.reconnects);
    inc(ROTATIONS, old.rotations, new.rotations);

    let level = |name: &'static str, old: u64, new: u64| {
        if first || new != old {
            gauge!(name).increment(new as f64 - old as f64);
        }
    };
    level(REQUESTS_PENDING, old.pending, new.pending);
    level(OUTBOX, old.outbox_depth, new.outbox_depth);
    level(
        OPEN,
        u64::from(old.open_connections),
        u64::from(new.open_connections),
    );
    publish_confirm_latency(&old.confirm_latency, &new.confirm_latency, first);
    gauge!(AVAILABILITY).set(match availability {
        Availability::Unavailable => 0.0,
        Availability::Degraded => 1.0,
        Availability::Available => 2.0,
        // `Availability` is non-exhaustive: a state added later is neither fully up nor down.
        _ => 1.0,
    });

    publish_messages(&old.sends_by_type, &new.sends_by_type);
}

/// The confirmations since `old` into the histogram: the core keeps power-of-two buckets
/// with their sums, so each new latency is recorded at the mean of its bucket's new ones
/// (within its bucket, and the histogram's sum stays exact).
fn publish_confirm_latency(old: &LatencySummary, new: &LatencySummary, first: bool) {
    let histogram = histogram!(CONFIRM);
    if first {
        // Registered (and rendered) before the first confirmation.
        histogram.record_many(0.0, 0);
    }
    let zero = (0, 0);
    for (i, (&count, &micros)) in new.buckets.iter().zip(&new.bucket_micros).enumerate() {
        let (old_count, old_micros) = old
            .buckets
            .get(i)
            .zip(old.bucket_micros.get(i))
            .map_or(zero, |(&c, &m)| (c, m));
        let n = count.saturating_sub(old_count);
        if n > 0 {
            let mean_micros = micros.saturating_sub(old_micros) as f64 / n as f64;
            histogram.record_many(mean_micros / 1e6, n as usize);
        }
    }
}

/// The per-type message series (at most 65 types: 64 named and `"*other*"`).
fn publish_messages(old: &BTreeMap<String, SendStats>, new: &BTreeMap<String, SendStats>) {
    let zero = SendStats::default();
    for (ty, n) in new {
        let (o, seen) = old.get(ty).map_or((&zero, false), |o| (o, true));
        let finals = [
            ("confirmed", o.confirmed, n.confirmed),
            ("unconfirmed", o.unconfirmed, n.unconfirmed),
            ("dropped", o.dropped, n.dropped),
            ("expired", o.expired, n.expired),
            ("closed", o.closed, n.closed),
            ("written", o.written_final, n.written_final),
        ];
        for (state, o, n) in finals {
            if !seen || n != o {
                counter!(MESSAGES, "type" => ty.clone(), "state" => state).increment(n.saturating_sub(o));
            }
        }
        if !seen || n.rewritten != o.rewritten {
            counter!(MESSAGES_REWRITTEN, "type" => ty.clone())
                .increment(n.rewritten.saturating_sub(o.rewritten));
        }
        let in_flight = |s: &SendStats| s.written - s.written_final;
        for (state, o, n) in [
            ("queued", o.queued, n.queued),
            ("written", in_flight(o), in_flight(n)),
        ] {
            if !seen || n != o {
                gauge!(MESSAGES_LIVE, "type" => ty.clone(), "state" => state).increment(n as f64 - o as f64);
            }
        }
    }
}

/// Times one request, from its call to its outcome, into `usageflow_request_duration_seconds`
/// (labelled by outcome); a request whose future is dropped first counts as `cancelled`.
pub(crate) struct RequestTimer {
    started: Instant,
    done: bool,
}

impl RequestTimer {
    /// Starts timing.
    pub(crate) fn start() -> Self {
        Self {
            started: Instant::now(),
            done: false,
        }
    }

    /// Records the request's `result`.
    pub(crate) fn finish(mut self, result: &Result<Incoming, ClientError>) {
        self.done = true;
        self.record(outcome_label(result));
    }

    fn record(&self, outcome: &'static str) {
        let secs = self.started.elapsed().as_secs_f64();
        // Literal labels: the key is static (nothing allocated per request).
        macro_rules! record {
            ($($label:literal),*) => {
                match outcome {
                    $($label => histogram!(REQUEST_DURATION, "outcome" => $label).record(secs),)*
                    _ => histogram!(REQUEST_DURATION, "outcome" => "error").record(secs),
                }
            };
        }
        record!(
            "reply",
            "denied",
            "timeout",
            "connection_lost",
            "not_connected",
            "backpressure",
            "rejected",
            "closed",
            "cancelled"
        );
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        if !self.done {
            self.record("cancelled");
        }
    }
}

/// The `outcome` label of a request's result.
fn outcome_label(result: &Result<Incoming, ClientError>) -> &'static str {
    match result {
        Ok(_) => "reply",
        Err(ClientError::Denied(_)) => "denied",
        Err(ClientError::Timeout) => "timeout",
        Err(ClientError::ConnectionLost(_)) => "connection_lost",
        Err(ClientError::NotConnected) => "not_connected",
        Err(ClientError::Backpressure { .. }) => "backpressure",
        Err(ClientError::Rejected { .. }) => "rejected",
        Err(ClientError::Closed) => "closed",
        Err(_) => "error",
    }
}
