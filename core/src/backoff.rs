//! Reconnect delays: `base · 2ⁿ`, capped, with optional downward jitter.

use std::time::Duration;

/// The delay before attempt `attempt` (from 0) without jitter: `base · 2^attempt`, at most `cap`.
pub fn nominal_delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(cap, |d| d.min(cap))
}

/// The delay with jitter: `nominal · (1 - jitter · unit)`, where `unit` is a uniform draw
/// in `[0, 1)`. The result lies in `[(1 - jitter) · nominal, nominal]`: jitter only shortens,
/// so the documented schedule stays an upper bound and the cap is never exceeded.
pub fn jittered_delay(nominal: Duration, jitter: f64, unit: f64) -> Duration {
    let factor = (1.0 - jitter * unit.clamp(0.0, 1.0)).clamp(0.0, 1.0);
    nominal.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_schedule() {
        let s = |n| nominal_delay(n, Duration::from_secs(5), Duration::from_secs(60)).as_secs();
        assert_eq!(
            [s(0), s(1), s(2), s(3), s(4), s(5), s(40)],
            [5, 10, 20, 40, 60, 60, 60]
        );
    }

    #[test]
    fn jitter_bounds() {
        let d = Duration::from_secs(10);
        assert_eq!(jittered_delay(d, 0.0, 0.7), d);
        assert_eq!(jittered_delay(d, 0.5, 0.0), d);
        assert_eq!(jittered_delay(d, 0.5, 1.0), Duration::from_secs(5));
        let j = jittered_delay(d, 0.2, 0.5);
        assert!(j >= Duration::from_secs(8) && j <= d);
    }
}
