//! [`Deadlines`]: the pending requests' deadlines, in the order they fall due.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use crate::RequestId;

/// Slack before the FIFO is compacted: small queues are never worth a pass.
const COMPACT_SLACK: usize = 64;

/// The pending requests' deadlines. Most requests share one timeout, so their deadlines come
/// in order: those join a FIFO in O(1). The few that come out of order (a per-request timeout
/// shorter than an earlier one) go to an ordered set. A request that completes leaves its FIFO
/// entry behind: entries at the front are dropped as soon as they are stale, and the whole
/// FIFO is compacted once stale entries outnumber live ones, so it never holds much more than
/// twice the pending requests. The front of the FIFO is always live.
///
/// Liveness is asked of the caller (`is_pending`): a request id is never reused, so an entry
/// is live exactly while its request is pending.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    in_order: VecDeque<(Instant, RequestId)>,
    /// Live entries of `in_order`.
    live_in_order: usize,
    out_of_order: BTreeSet<(Instant, RequestId)>,
}

impl Deadlines {
    /// Adds a pending request's deadline.
    pub(super) fn insert(&mut self, deadline: Instant, id: RequestId) {
        if self.in_order.back().is_none_or(|&(last, _)| last <= deadline) {
            self.in_order.push_back((deadline, id));
            self.live_in_order += 1;
        } else {
            self.out_of_order.insert((deadline, id));
        }
    }

    /// Forgets the deadline of a request that just completed (`is_pending` already says no
    /// for it).
    pub(super) fn remove(
        &mut self,
        deadline: Instant,
        id: RequestId,
        is_pending: impl Fn(&RequestId) -> bool,
    ) {
        if self.out_of_order.remove(&(deadline, id)) {
            return;
        }
        self.live_in_order -= 1;
        while self.in_order.front().is_some_and(|(_, id)| !is_pending(id)) {
            self.in_order.pop_front();
        }
        if self.in_order.len() > 2 * self.live_in_order + COMPACT_SLACK {
            self.in_order.retain(|(_, id)| is_pending(id));
        }
    }

    /// The earliest deadline and its request.
    pub(super) fn first(&self) -> Option<(Instant, RequestId)> {
        match (self.in_order.front(), self.out_of_order.first()) {
            (Some(&a), Some(&b)) => Some(a.min(b)),
            (a, b) => a.or(b).copied(),
        }
    }

    /// Entries held, live or stale (for tests and memory accounting).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;

    fn id(n: u128) -> RequestId {
        RequestId(Uuid::from_u128(n))
    }

    /// Deadlines with the pending set they are checked against.
    #[derive(Default)]
    struct Tracked {
        d: Deadlines,
        pending: HashSet<RequestId>,
    }

    impl Tracked {
        fn insert(&mut self, at: Instant, n: u128) {
            self.d.insert(at, id(n));
            self.pending.insert(id(n));
        }

        /// Request `n` (deadline `at`) completes.
        fn complete(&mut self, at: Instant, n: u128) {
            self.pending.remove(&id(n));
            let pending = &self.pending;
            self.d.remove(at, id(n), |i| pending.contains(i));
        }
    }

    #[test]
    fn earliest_first_in_and_out_of_order() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut t = Tracked::default();
        for (n, at) in [(1, 10), (2, 20), (3, 5), (4, 20), (5, 7)] {
            t.insert(s(at), n);
        }
        assert_eq!(t.d.first(), Some((s(5), id(3))));
        t.complete(s(5), 3);
        assert_eq!(t.d.first(), Some((s(7), id(5))));
        // The FIFO's front completes: the next live one becomes the front.
        t.complete(s(10), 1);
        t.complete(s(7), 5);
        assert_eq!(t.d.first(), Some((s(20), id(2))));
        t.complete(s(20), 4);
        assert_eq!(t.d.first(), Some((s(20), id(2))));
        t.complete(s(20), 2);
        assert_eq!(t.d.first(), None);
        assert_eq!(t.d.held(), 0);
    }

    #[test]
    fn stale_entries_stay_bounded_behind_a_slow_front() {
        let t0 = Instant::now();
        let mut t = Tracked::default();
        // One request never completes; 100,000 behind it complete one by one.
        t.insert(t0, 0);
        for n in 1..=100_000u128 {
            let at = t0 + Duration::from_millis(n as u64);
            t.insert(at, n);
            t.complete(at, n);
            assert!(
                t.d.held() <= 2 * t.pending.len() + COMPACT_SLACK + 1,
                "{}",
                t.d.held()
            );
        }
        assert_eq!(t.d.first(), Some((t0, id(0))));
    }

    /// Many requests completing in random order, some with shorter per-request timeouts: the
    /// earliest deadline is always the live minimum (checked against an ordered model), and
    /// memory stays within twice the pending requests plus the slack, through many
    /// compactions.
    #[test]
    fn random_removals_keep_the_minimum_and_stay_bounded() {
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(14);
        let mut t = Tracked::default();
        let mut model: BTreeSet<(Instant, RequestId)> = BTreeSet::new();
        let mut next = 0u128;
        let mut clock = 0u64;
        for step in 0..200_000u32 {
            if model.is_empty() || rng.u8(..100) < 52 {
                clock += rng.u64(0..3);
                let timeout = if rng.u8(..10) == 0 { rng.u64(0..500) } else { 1000 };
                let at = t0 + Duration::from_millis(clock + timeout);
                next += 1;
                t.insert(at, next);
                model.insert((at, id(next)));
            } else {
                let k = rng.usize(..model.len());
                let &(at, victim) = model.iter().nth(k).expect("in range");
                model.remove(&(at, victim));
                t.complete(at, victim.0.as_u128());
            }
            assert_eq!(t.d.first(), model.first().copied(), "step {step}");
            assert!(
                t.d.held() <= 2 * model.len() + COMPACT_SLACK + 1,
                "step {step}: {} held for {} pending",
                t.d.held(),
                model.len()
            );
            if step % 50_000 == 0 {
                // Drain now and then, so the queue passes through empty.
                while let Some((at, victim)) = model.pop_first() {
                    t.complete(at, victim.0.as_u128());
                }
                assert_eq!(t.d.held(), 0);
            }
        }
    }
}
