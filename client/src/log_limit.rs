//! The rate limits of the driver's warnings that can come once per frame or per send: a
//! misbehaving server that sends garbage or binary frames, or a service that keeps sending
//! into a full outbox during an outage, must not flood the host's logs with one WARN line
//! each ([`SkipLimiter`], [`DropLimiter`]).
//!
//! The first skipped frame is logged at WARN with its error; the ones that follow within
//! [`SKIP_WARN_WINDOW`] are only counted (and logged at debug level); once the window has
//! passed, the next skipped frame, or the driver's next timeout turn, logs one WARN summary
//! with their count and the last error, and opens a new window. A window that passes without
//! a skipped frame ends the flood: the next one is a first again.
//!
//! The limiter is a plain state machine over the `now` the driver is given: it reads no clock,
//! and it decides without logging, so it is tested with synthetic instants.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use usageflow_socket_core::{ConnId, DropReason, FrameError};

/// How long the skipped frames after a WARN are counted before the next WARN (a summary).
pub(crate) const SKIP_WARN_WINDOW: Duration = Duration::from_secs(10);

/// What to log for a skipped frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SkipLog {
    /// The first skipped frame of a flood: log it at WARN with its error.
    Warn,
    /// Counted for the next summary: log it at debug level only.
    Quiet,
    /// The window passed: log this summary at WARN (it counts this frame too).
    Summary(SkipSummary),
}

/// A WARN line for the frames skipped since the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SkipSummary {
    /// Frames skipped (and not logged at WARN) since the last WARN.
    pub(crate) count: u64,
    /// The time since the last WARN.
    pub(crate) over: Duration,
    /// The connection of the last of them.
    pub(crate) conn: ConnId,
    /// The error of the last of them.
    pub(crate) error: FrameError,
}

/// The rate limit of skipped-frame warnings of one client. See the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct SkipLimiter {
    window: Duration,
    /// When the last WARN was logged; `None` while no flood is going on.
    since: Option<Instant>,
    /// Frames skipped since `since` and not logged at WARN.
    count: u64,
    /// The last of them.
    last: Option<(ConnId, FrameError)>,
}

impl SkipLimiter {
    /// A limiter with one WARN per `window` at most.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            since: None,
            count: 0,
            last: None,
        }
    }

    /// A frame of `conn` was skipped at `now` for `error`: what to log.
    pub(crate) fn skipped(&mut self, now: Instant, conn: ConnId, error: &FrameError) -> SkipLog {
        match self.since {
            Some(since) if now.saturating_duration_since(since) < self.window => {
                self.count += 1;
                self.last = Some((conn, error.clone()));
                SkipLog::Quiet
            }
            Some(since) if self.count > 0 => {
                let summary = SkipSummary {
                    count: self.count + 1,
                    over: now.saturating_duration_since(since),
                    conn,
                    error: error.clone(),
                };
                self.restart(Some(now));
                SkipLog::Summary(summary)
            }
            _ => {
                self.restart(Some(now));
                SkipLog::Warn
            }
        }
    }

    /// The driver's timeout turn at `now`: the summary to log if the window has passed with
    /// frames counted. A window that passed without any ends the flood.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<SkipSummary> {
        let since = self.since?;
        let over = now.saturating_duration_since(since);
        if over < self.window {
            return None;
        }
        let Some((conn, error)) = self.last.take() else {
            self.restart(None);
            return None;
        };
        let summary = SkipSummary {
            count: self.count,
            over,
            conn,
            error,
        };
        self.restart(Some(now));
        Some(summary)
    }

    fn restart(&mut self, since: Option<Instant>) {
        self.since = since;
        self.count = 0;
        self.last = None;
    }
}

/// How long the dropped messages after a WARN are counted before the next WARN (a summary).
pub(crate) const DROP_WARN_WINDOW: Duration = Duration::from_secs(10);

/// Most (type, reason) pairs a drop summary counts apart; the rest count under `"*other*"`.
const DROP_KINDS: usize = 64;

/// What to log for a dropped message (or a batch of one type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DropLog {
    /// The first drop of a flood: log it at WARN.
    Warn,
    /// Counted for the next summary: log it at debug level only.
    Quiet,
    /// The window passed: log this summary at WARN (it counts this drop too).
    Summary(DropSummary),
}

/// A WARN line for the messages dropped since the last one, per type and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DropSummary {
    /// Messages dropped (and not logged at WARN) since the last WARN, per (type, reason).
    pub(crate) counts: BTreeMap<(String, DropReason), u64>,
    /// The time since the last WARN.
    pub(crate) over: Duration,
}

impl DropSummary {
    /// Every message the summary counts.
    pub(crate) fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// The rate limit of dropped-message warnings of one client, as [`SkipLimiter`]'s: the first
/// drop at WARN, then one summary per window with the counts per type and reason. A plain
/// state machine over the `now` it is given.
#[derive(Debug, Clone)]
pub(crate) struct DropLimiter {
    window: Duration,
    /// When the last WARN was logged; `None` while no flood is going on.
    since: Option<Instant>,
    /// Messages dropped since `since` and not logged at WARN.
    counts: BTreeMap<(String, DropReason), u64>,
}

impl DropLimiter {
    /// A limiter with one WARN per `window` at most.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            since: None,
            counts: BTreeMap::new(),
        }
    }

    /// `count` messages of type `kind` were dropped at `now` for `reason`: what to log.
    pub(crate) fn dropped(&mut self, now: Instant, kind: &str, reason: DropReason, count: u64) -> DropLog {
        match self.since {
            Some(since) if now.saturating_duration_since(since) < self.window => {
                self.count(kind, reason, count);
                DropLog::Quiet
            }
            Some(since) if !self.counts.is_empty() => {
                self.count(kind, reason, count);
                let summary = DropSummary {
                    counts: std::mem::take(&mut self.counts),
                    over: now.saturating_duration_since(since),
                };
                self.since = Some(now);
                DropLog::Summary(summary)
            }
            _ => {
                self.since = Some(now);
                DropLog::Warn
            }
        }
    }

    fn count(&mut self, kind: &str, reason: DropReason, count: u64) {
        let key = if self.counts.len() < DROP_KINDS || self.counts.contains_key(&(kind.to_owned(), reason)) {
            kind.to_owned()
        } else {
            "*other*".to_owned()
        };
        *self.counts.entry((key, reason)).or_default() += count;
    }

    /// When the counted drops are due to be summarized (`None` when none are counted).
    pub(crate) fn due(&self) -> Option<Instant> {
        let since = self.since?;
        (!self.counts.is_empty()).then(|| since.checked_add(self.window).unwrap_or(since))
    }

    /// The driver's turn at `now`: the summary to log if the window has passed with drops
    /// counted. A window that passed without any ends the flood.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<DropSummary> {
        let since = self.since?;
        let over = now.saturating_duration_since(since);
        if over < self.window {
            return None;
        }
        self.finish(over, Some(now))
    }

    /// Whatever is counted, at once (the client stops: no later turn would log it).
    pub(crate) fn flush(&mut self, now: Instant) -> Option<DropSummary> {
        let since = self.since?;
        self.finish(now.saturating_duration_since(since), None)
    }

    fn finish(&mut self, over: Duration, restart: Option<Instant>) -> Option<DropSummary> {
        if self.counts.is_empty() {
            self.since = None;
            return None;
        }
        self.since = restart;
        Some(DropSummary {
            counts: std::mem::take(&mut self.counts),
            over,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_warn_first_then_one_summary_per_window_with_counts() {
        let t0 = Instant::now();
        let mut l = DropLimiter::new(secs(10));
        assert_eq!(l.dropped(t0, "usage", DropReason::OutboxFull, 1), DropLog::Warn);
        assert_eq!(l.due(), None, "nothing counted yet");
        for i in 1..=1000u64 {
            let at = t0 + Duration::from_millis(i * 5);
            assert_eq!(l.dropped(at, "usage", DropReason::OutboxFull, 1), DropLog::Quiet);
        }
        assert_eq!(
            l.dropped(t0 + secs(6), "report", DropReason::Expired, 3),
            DropLog::Quiet
        );
        assert_eq!(l.due(), Some(t0 + secs(10)));
        assert_eq!(l.poll(t0 + secs(9)), None);
        let summary = l.poll(t0 + secs(10)).unwrap();
        assert_eq!(summary.total(), 1003);
        assert_eq!(
            summary.counts[&("usage".to_owned(), DropReason::OutboxFull)],
            1000
        );
        assert_eq!(summary.counts[&("report".to_owned(), DropReason::Expired)], 3);
        assert_eq!(l.poll(t0 + secs(11)), None, "summarized once");
        // The next drop within the new window is counted; one after it with counts summarizes.
        assert_eq!(
            l.dropped(t0 + secs(12), "usage", DropReason::OutboxFull, 1),
            DropLog::Quiet
        );
        let DropLog::Summary(s) = l.dropped(t0 + secs(25), "usage", DropReason::OutboxFull, 1) else {
            panic!("a summary");
        };
        assert_eq!(s.total(), 2);
        // The client stops: what is counted is flushed at once.
        assert_eq!(
            l.dropped(t0 + secs(26), "usage", DropReason::Closed, 4),
            DropLog::Quiet
        );
        assert_eq!(l.flush(t0 + secs(27)).unwrap().total(), 4);
        assert_eq!(l.flush(t0 + secs(28)), None);
        // A quiet window ends the flood: the next drop warns again.
        assert_eq!(l.poll(t0 + secs(60)), None);
        assert_eq!(
            l.dropped(t0 + secs(61), "usage", DropReason::OutboxFull, 1),
            DropLog::Warn
        );
    }

    #[test]
    fn drop_summary_kinds_are_bounded() {
        let t0 = Instant::now();
        let mut l = DropLimiter::new(secs(10));
        l.dropped(t0, "k", DropReason::OutboxFull, 1);
        for i in 0..500 {
            l.dropped(t0, &format!("kind-{i}"), DropReason::OutboxFull, 1);
        }
        let s = l.flush(t0).unwrap();
        assert_eq!(s.counts.len(), DROP_KINDS + 1);
        assert_eq!(s.total(), 500);
    }

    const CONN: ConnId = ConnId {
        slot: 0,
        generation: 1,
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn error(n: usize) -> FrameError {
        FrameError::Binary { len: n }
    }

    #[test]
    fn first_warns_then_counts_then_summarizes_once_per_window() {
        let t0 = Instant::now();
        let mut l = SkipLimiter::new(secs(10));
        assert_eq!(l.skipped(t0, CONN, &error(1)), SkipLog::Warn);
        // A flood within the window: counted, not warned.
        for i in 2..=100 {
            let at = t0 + Duration::from_millis(i * 50);
            assert_eq!(l.skipped(at, CONN, &error(i as usize)), SkipLog::Quiet);
        }
        // A timeout turn inside the window logs nothing.
        assert_eq!(l.poll(t0 + secs(9)), None);
        // The next frame after the window: one summary, this frame included, its error last.
        let other = ConnId {
            slot: 1,
            generation: 3,
        };
        assert_eq!(
            l.skipped(t0 + secs(11), other, &error(101)),
            SkipLog::Summary(SkipSummary {
                count: 100,
                over: secs(11),
                conn: other,
                error: error(101),
            })
        );
        // A new window opened at the summary: still quiet.
        assert_eq!(l.skipped(t0 + secs(12), CONN, &error(102)), SkipLog::Quiet);
        assert_eq!(l.skipped(t0 + secs(13), CONN, &error(103)), SkipLog::Quiet);
        // The driver's timeout turn after the window summarizes without waiting for a frame.
        assert_eq!(
            l.poll(t0 + secs(21)),
            Some(SkipSummary {
                count: 2,
                over: secs(10),
                conn: CONN,
                error: error(103),
            })
        );
        assert_eq!(l.poll(t0 + secs(22)), None, "summarized once");
        // A window without a skipped frame ends the flood; the next one warns again.
        assert_eq!(l.poll(t0 + secs(31)), None);
        assert_eq!(l.skipped(t0 + secs(32), CONN, &error(104)), SkipLog::Warn);
        assert_eq!(l.skipped(t0 + secs(33), CONN, &error(105)), SkipLog::Quiet);
    }

    #[test]
    fn a_lone_frame_after_a_quiet_window_warns_again() {
        let t0 = Instant::now();
        let mut l = SkipLimiter::new(secs(10));
        assert_eq!(l.skipped(t0, CONN, &error(1)), SkipLog::Warn);
        // Nothing was counted in the window: no summary, the frame is a first.
        assert_eq!(l.skipped(t0 + secs(15), CONN, &error(2)), SkipLog::Warn);
        assert_eq!(l.skipped(t0 + secs(16), CONN, &error(3)), SkipLog::Quiet);
        // Without a timeout turn, the summary comes with the next frame after the window.
        assert!(matches!(
            l.skipped(t0 + secs(40), CONN, &error(4)),
            SkipLog::Summary(SkipSummary { count: 2, .. })
        ));
    }

    #[test]
    fn an_earlier_now_counts_as_within_the_window() {
        let t0 = Instant::now() + secs(60);
        let mut l = SkipLimiter::new(secs(10));
        assert_eq!(l.skipped(t0, CONN, &error(1)), SkipLog::Warn);
        assert_eq!(l.skipped(t0 - secs(5), CONN, &error(2)), SkipLog::Quiet);
        assert_eq!(l.poll(t0 - secs(30)), None);
    }

    #[test]
    fn idle_limiter_polls_nothing() {
        let mut l = SkipLimiter::new(SKIP_WARN_WINDOW);
        assert_eq!(l.poll(Instant::now() + secs(100)), None);
    }
}
