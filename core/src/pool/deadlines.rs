//! [`Deadlines`]: the pending requests' deadlines, in the order they fall due.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use crate::io::RequestId;

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

    #[test]
    fn earliest_first_in_and_out_of_order() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut pending: HashSet<RequestId> = HashSet::new();
        let mut d = Deadlines::default();
        for (n, at) in [(1, 10), (2, 20), (3, 5), (4, 20), (5, 7)] {
            d.insert(s(at), id(n));
            pending.insert(id(n));
        }
        assert_eq!(d.first(), Some((s(5), id(3))));
        pending.remove(&id(3));
        d.remove(s(5), id(3), |i| pending.contains(i));
        assert_eq!(d.first(), Some((s(7), id(5))));
        // The FIFO's front completes: the next live one becomes the front.
        pending.remove(&id(1));
        d.remove(s(10), id(1), |i| pending.contains(i));
        pending.remove(&id(5));
        d.remove(s(7), id(5), |i| pending.contains(i));
        assert_eq!(d.first(), Some((s(20), id(2))));
        pending.remove(&id(4));
        d.remove(s(20), id(4), |i| pending.contains(i));
        assert_eq!(d.first(), Some((s(20), id(2))));
        pending.remove(&id(2));
        d.remove(s(20), id(2), |i| pending.contains(i));
        assert_eq!(d.first(), None);
        assert_eq!(d.held(), 0);
    }

    #[test]
    fn stale_entries_stay_bounded_behind_a_slow_front() {
        let t0 = Instant::now();
        let mut pending: HashSet<RequestId> = HashSet::new();
        let mut d = Deadlines::default();
        // One request never completes; 100,000 behind it complete one by one.
        d.insert(t0, id(0));
        pending.insert(id(0));
        for n in 1..=100_000u128 {
            let at = t0 + Duration::from_millis(n as u64);
            d.insert(at, id(n));
            pending.insert(id(n));
            pending.remove(&id(n));
            d.remove(at, id(n), |i| pending.contains(i));
            assert!(d.held() <= 2 * pending.len() + COMPACT_SLACK + 1, "{}", d.held());
        }
        assert_eq!(d.first(), Some((t0, id(0))));
    }
}
