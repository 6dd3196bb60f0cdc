//! The rate limit of the driver's per-frame warnings: a misbehaving server that sends garbage
//! or binary frames must not flood the host's logs with one WARN line per frame.
//!
//! The first skipped frame is logged at WARN with its error; the ones that follow within
//! [`SKIP_WARN_WINDOW`] are only counted (and logged at debug level); once the window has
//! passed, the next skipped frame, or the driver's next timeout turn, logs one WARN summary
//! with their count and the last error, and opens a new window. A window that passes without
//! a skipped frame ends the flood: the next one is a first again.
//!
//! The limiter is a plain state machine over the `now` the driver is given: it reads no clock,
//! and it decides without logging, so it is tested with synthetic instants.

use std::time::{Duration, Instant};

use usageflow_socket_core::{ConnId, FrameError};

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

#[cfg(test)]
mod tests {
    use super::*;

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
