//! Availability: `Available`, `Degraded` or `Unavailable`, from the open connections and the
//! moving ratio of timeouts, with hysteresis so the state does not flap.

use std::time::{Duration, Instant};

use super::Pool;
use crate::{Availability, Event, Outcome, Output, RequestFailure};

/// Weight of one completion in the moving timeout ratio.
pub(super) const TIMEOUT_EWMA_ALPHA: f64 = 0.05;
/// How long a pool that was `Available` before must look healthy again before `Degraded`
/// turns back into `Available` (the hysteresis that keeps the state from flapping).
pub const AVAILABILITY_HOLD: Duration = Duration::from_secs(5);

impl Pool {
    /// Feeds a request's outcome into the timeout ratio.
    pub(super) fn note_outcome(&mut self, now: Instant, outcome: &Outcome) {
        match outcome {
            Outcome::Reply(_) | Outcome::Denied(_) => {
                self.timeout_ratio *= 1.0 - TIMEOUT_EWMA_ALPHA;
                // Replies are what brings a pool degraded by timeouts back; look now rather
                // than at the next timer (up to a ping period away).
                if self.availability != Availability::Available {
                    self.update_availability(now);
                }
            }
            Outcome::Failed(RequestFailure::Timeout) => {
                self.timeout_ratio = self.timeout_ratio * (1.0 - TIMEOUT_EWMA_ALPHA) + TIMEOUT_EWMA_ALPHA;
                self.update_availability(now);
            }
            _ => {}
        }
    }

    pub(super) fn update_availability(&mut self, now: Instant) {
        let threshold = self.config.degraded_timeout_ratio;
        let timeouts_high = if self.availability == Availability::Degraded {
            // Hysteresis in value too: a degraded pool needs the ratio well below the mark.
            self.timeout_ratio > threshold / 2.0
        } else {
            self.timeout_ratio > threshold
        };
        let raw = if self.open_count == 0 {
            Availability::Unavailable
        } else if self.closing || self.open_count < u32::from(self.config.pool_size) || timeouts_high {
            Availability::Degraded
        } else {
            Availability::Available
        };
        let change = if raw >= self.availability
            || self.availability == Availability::Unavailable
            || !self.ever_available
        {
            // Worse, back from nothing, or still starting up: at once (a host should use a
            // connection as soon as there is one, and a clean start is not a flap).
            self.upgrade_at = None;
            raw != self.availability
        } else {
            match self.upgrade_at {
                None => {
                    self.upgrade_at = Some(now + AVAILABILITY_HOLD);
                    false
                }
                Some(t) => t <= now,
            }
        };
        if change {
            self.upgrade_at = None;
            self.availability = raw;
            self.ever_available |= raw == Availability::Available;
            self.outputs
                .push_back(Output::Event(Event::AvailabilityChanged { availability: raw }));
        }
    }
}
