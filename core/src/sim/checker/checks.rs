//! The end-of-step checks: nothing overdue, nothing promised late, the getters, the state of
//! every slot and the counters agree with the shadow model.

use super::*;

impl Checker {
    /// After demand (a request, send or connect), no slot rests that demand may re-arm: one
    /// not re-armed within the backoff cap, whatever else is open.
    pub(super) fn check_rearmed(&self, step: &Step) -> Result<(), Violation> {
        if self.closing {
            return Ok(());
        }
        let cap = self.config.backoff_cap();
        for (i, s) in self.slots.iter().enumerate() {
            ensure!(
                s.phase != Phase::Exhausted || s.rearmed_at.is_some_and(|t| self.now < t + cap),
                4,
                "slot {i} still resting after {step:?} (last re-armed {:?} ago)",
                s.rearmed_at.map(|t| self.now - t)
            );
            ensure!(
                *step != Step::Connect || s.phase != (Phase::Idle { spread_until: None }),
                4,
                "slot {i} not dialed by connect"
            );
        }
        Ok(())
    }

    /// Every deadline the shadow model knows, with what it is.
    pub(super) fn deadlines_known(&self, mut f: impl FnMut(Instant, &dyn Fn() -> String, u8)) {
        let pong_wait = self.config.pong_wait();
        if let Some(&(t, id)) = self.deadlines.first() {
            f(t, &|| format!("deadline of request {id}"), 2);
        }
        if let Some(t) = self.drain_deadline {
            f(t, &|| "close drain deadline".to_owned(), 13);
        }
        for (conn, &t) in &self.lingering {
            f(t, &|| format!("{conn}: end of the close linger"), 13);
        }
        for (i, s) in self.slots.iter().enumerate() {
            match s.phase {
                Phase::Idle {
                    spread_until: Some(t),
                } => f(t, &|| format!("slot {i}: first dial"), 4),
                Phase::Dialing { deadline, .. } => {
                    f(deadline, &|| format!("slot {i}: handshake deadline"), 4)
                }
                Phase::Backoff { due } => f(due, &|| format!("slot {i}: reconnect"), 4),
                _ => {}
            }
            if let Some((_, t)) = s.replacement {
                f(t, &|| format!("slot {i}: replacement handshake deadline"), 4);
            }
            let conns = s
                .open
                .iter()
                .map(|(g, c)| (*g, c))
                .chain(s.retiring.iter().map(|(g, c)| (*g, c)));
            for (g, c) in conns {
                f(
                    c.read_deadline(pong_wait),
                    &|| format!("{i}#{g}: read deadline"),
                    5,
                );
                f(c.next_ping, &|| format!("{i}#{g}: ping"), 5);
                match c.unanswered {
                    Some((_, _, t)) if self.config.confirm_delivery() => {
                        f(t, &|| format!("{i}#{g}: pong deadline"), 5)
                    }
                    Some(_) => {}
                    None => {
                        if let Some(t) = c.barrier_due_at {
                            f(t, &|| format!("{i}#{g}: barrier"), 7);
                        }
                    }
                }
                if let Some(t) = c.write_deadline {
                    f(t, &|| format!("{i}#{g}: write deadline"), 3);
                }
                if let (Some((_, hi)), None) = (c.rotate, s.replacement) {
                    f(hi, &|| format!("{i}#{g}: rotation"), 4);
                }
            }
        }
    }

    /// (5) A ping that fell due while the last ping is not even flushed is not sent (it
    /// would only queue behind it): it waits for the write deadline, which decides the
    /// connection's fate. Applies that rule to the shadow after a `handle_timeout` that sent
    /// no ping for such a connection.
    pub(super) fn defer_stuck_pings(&mut self) {
        let now = self.now;
        let period = self.config.ping_period();
        let confirm = self.config.confirm_delivery();
        for s in &mut self.slots {
            for c in s.open.iter_mut().map(|(_, c)| c).chain(s.retiring.values_mut()) {
                if let (true, true, Some((_, _, deadline))) = (c.next_ping <= now, confirm, c.unanswered) {
                    // The unanswered ping's deadline decides; no keep-alive queues behind it.
                    c.next_ping += period;
                    if c.next_ping <= now {
                        c.next_ping = now + period;
                    }
                    c.next_ping = c.next_ping.max(deadline);
                } else if c.next_ping <= now && c.last_ping > c.flushed {
                    c.next_ping += period;
                    if c.next_ping <= now {
                        c.next_ping = now + period;
                    }
                    if let Some(deadline) = c.write_deadline {
                        c.next_ping = c.next_ping.max(deadline);
                    }
                }
            }
        }
    }

    pub(super) fn check_nothing_overdue(&mut self, pool: &Pool) -> Result<(), Violation> {
        let now = self.now;
        let next = pool.poll_timeout();
        ensure!(
            next.is_none_or(|t| t >= now),
            9,
            "poll_timeout {:?} in the past after handle_timeout",
            now - next.expect("some")
        );
        if self.drain_deadline.is_some_and(|t| t <= now) {
            ensure!(
                self.pending.is_empty(),
                13,
                "close drain passed with requests pending"
            );
            self.drain_deadline = None;
        }
        let mut overdue = None;
        self.deadlines_known(|t, what, inv| {
            if t <= now && overdue.is_none() {
                overdue = Some((inv, what(), now - t));
            }
        });
        if let Some((inv, what, by)) = overdue {
            return Err(Violation {
                invariant: inv,
                message: format!("{what} overdue by {by:?} after handle_timeout"),
            });
        }
        Ok(())
    }

    /// (14) the getter matches the events; `Unavailable` exactly when nothing is open;
    /// `Available` only with every slot open and the pool not closing.
    pub(super) fn check_availability(&self, pool: &Pool) -> Result<(), Violation> {
        let a = pool.availability();
        ensure!(
            a == self.availability,
            14,
            "availability() is {a:?}, the events said {:?}",
            self.availability
        );
        let open = self.slots.iter().filter(|s| s.open.is_some()).count();
        ensure!(
            (a == Availability::Unavailable) == (open == 0),
            14,
            "availability {a:?} with {open} open connection(s)"
        );
        if a == Availability::Available {
            ensure!(
                open == self.slots.len() && !self.closing,
                14,
                "Available with {open} of {} open (closing {})",
                self.slots.len(),
                self.closing
            );
        }
        Ok(())
    }

    pub(super) fn check_not_late(&self, pool: &Pool) -> Result<(), Violation> {
        let mut first: Option<(Instant, String, u8)> = None;
        self.deadlines_known(|t, what, inv| {
            if first.as_ref().is_none_or(|(f, _, _)| t < *f) {
                first = Some((t, what(), inv));
            }
        });
        if let Some((t, what, inv)) = first {
            let next = pool.poll_timeout();
            ensure!(
                next.is_some_and(|n| n <= t),
                inv,
                "poll_timeout {:?} is later than the {what} (in {:?})",
                next.map(|n| n.saturating_duration_since(self.now)),
                t.saturating_duration_since(self.now)
            );
        }
        Ok(())
    }

    pub(super) fn check_state(&self, pool: &Pool) -> Result<(), Violation> {
        ensure!(
            pool.pending_len() == self.pending.len(),
            1,
            "pool has {} pending requests, the shadow {}",
            pool.pending_len(),
            self.pending.len()
        );
        let queued: u64 = pool.stats().sends.queued;
        ensure!(
            pool.outbox_len() as u64 == queued,
            7,
            "outbox holds {}, the counters say {queued} queued",
            pool.outbox_len()
        );
        for (i, s) in self.slots.iter().enumerate() {
            let slot = i as u16;
            let open = s.open.as_ref().map(|(g, _)| ConnId { slot, generation: *g });
            ensure!(
                pool.open_conn(slot) == open,
                10,
                "slot {i}: pool's open connection {:?}, shadow {open:?}",
                pool.open_conn(slot)
            );
            let expected = match s.phase {
                Phase::Idle { .. } => SlotState::Idle,
                Phase::Dialing { .. } => SlotState::Dialing,
                Phase::Open => SlotState::Open,
                Phase::Backoff { .. } => SlotState::Backoff,
                Phase::Exhausted => SlotState::Exhausted,
                Phase::Closed => SlotState::Closed,
                Phase::Lost => unreachable!("owed reconnects are checked first"),
            };
            ensure!(
                pool.slot_state(slot) == Some(expected),
                10,
                "slot {i}: pool says {:?}, shadow {:?}",
                pool.slot_state(slot),
                s.phase
            );
            for (g, c) in &s.retiring {
                ensure!(
                    c.pending > 0 || c.unflushed() > 0 || !c.flights.is_empty(),
                    13,
                    "retiring connection {i}#{g} is drained but was not disconnected"
                );
            }
        }
        let closed = self.closing
            && !self.draining
            && pool.live_messages() == 0
            && self.pending.is_empty()
            && self.lingering.is_empty()
            && self
                .slots
                .iter()
                .all(|s| s.phase == Phase::Closed && s.retiring.is_empty());
        ensure!(
            pool.is_closed() == closed,
            13,
            "pool.is_closed() is {}, the shadow says {closed}",
            pool.is_closed()
        );
        Ok(())
    }

    pub(super) fn check_stats(&mut self, pool: &Pool) -> Result<(), Violation> {
        let actual = pool.stats();
        ensure!(
            actual.requests_conserved(),
            8,
            "requests not conserved: {actual:?}"
        );
        for (kind, s) in &actual.sends_by_type {
            ensure!(s.conserved(), 7, "sends of {kind} not conserved: {s:?}");
        }
        let e = &mut self.stats;
        e.open_connections = self.slots.iter().filter(|s| s.open.is_some()).count() as u32;
        e.pending_per_slot = self
            .slots
            .iter()
            .map(|s| {
                s.open
                    .iter()
                    .map(|(_, c)| c.pending)
                    .chain(s.retiring.values().map(|c| c.pending))
                    .sum()
            })
            .collect();
        e.pending = self.pending.len() as u64;
        e.outbox_depth = actual.outbox_depth;
        e.stale_inputs = actual.stale_inputs;
        e.pongs = actual.pongs;
        e.confirm_latency = actual.confirm_latency.clone();
        e.sends = SendStats::default();
        e.sends_by_type.clear();
        // Shadowed exactly: sends, drops of a full outbox, confirmations. The other states
        // follow the dead connections' fates (at most / at least once, limbo, rewrites):
        // they must conserve, never go back, and move with the step's events.
        for (name, s) in self.kind_names.iter().zip(&self.sends) {
            let mut s = s.clone();
            if let Some(a) = actual.sends_by_type.get(name) {
                let before = self
                    .last_stats
                    .sends_by_type
                    .get(name)
                    .cloned()
                    .unwrap_or_default();
                for (what, now, then) in [
                    ("unconfirmed", a.unconfirmed, before.unconfirmed),
                    ("expired", a.expired, before.expired),
                    ("closed", a.closed, before.closed),
                    ("spooled", a.spooled, before.spooled),
                    ("rewritten", a.rewritten, before.rewritten),
                    (
                        "rewrites_exhausted",
                        a.rewrites_exhausted,
                        before.rewrites_exhausted,
                    ),
                ] {
                    ensure!(now >= then, 7, "{name}: {what} went back from {then} to {now}");
                }
                ensure!(
                    a.rewrites_exhausted <= a.unconfirmed,
                    7,
                    "{name}: more rewrites exhausted than unconfirmed: {a:?}"
                );
                s.queued = a.queued;
                s.written = a.written;
                s.unconfirmed = a.unconfirmed;
                s.expired = a.expired;
                s.closed = a.closed;
                s.spooled = a.spooled;
                s.rewritten = a.rewritten;
                s.rewrites_exhausted = a.rewrites_exhausted;
            }
            e.sends.add(&s);
            e.sends_by_type.insert(name.clone(), s);
        }
        // The step's drop events match the counters' moves.
        let (now_s, then_s) = (&actual.sends, &self.last_stats.sends);
        let drops = |r: DropReason| self.step_drops.get(&r).copied().unwrap_or(0);
        ensure!(
            now_s.expired - then_s.expired == drops(DropReason::Expired),
            7,
            "expired moved by {}, events say {}",
            now_s.expired - then_s.expired,
            drops(DropReason::Expired)
        );
        ensure!(
            now_s.unconfirmed - then_s.unconfirmed
                == drops(DropReason::Unconfirmed) + drops(DropReason::RewritesExhausted),
            7,
            "unconfirmed moved by {}, events say {} + {}",
            now_s.unconfirmed - then_s.unconfirmed,
            drops(DropReason::Unconfirmed),
            drops(DropReason::RewritesExhausted)
        );
        ensure!(
            now_s.rewrites_exhausted - then_s.rewrites_exhausted == drops(DropReason::RewritesExhausted),
            7,
            "rewrites_exhausted moved by {}, events say {}",
            now_s.rewrites_exhausted - then_s.rewrites_exhausted,
            drops(DropReason::RewritesExhausted)
        );
        self.step_drops.clear();
        self.check_spool(pool, &actual)?;
        let e = &mut self.stats;
        if actual != *e {
            let a = format!("{actual:#?}");
            let b = format!("{e:#?}");
            let diff: Vec<String> = a
                .lines()
                .zip(b.lines())
                .filter(|(x, y)| x != y)
                .map(|(x, y)| format!("pool {} / shadow {}", x.trim(), y.trim()))
                .take(8)
                .collect();
            return Err(Violation {
                invariant: 8,
                message: format!("stats differ from the shadow model: {}", diff.join("; ")),
            });
        }
        self.live_messages = pool.live_messages();
        self.outbox_len = pool.outbox_len();
        self.last_stats = actual;
        Ok(())
    }

    /// (13) The close drain ends exactly when it must: at its deadline, once nothing is left
    /// to wait for, once nothing can deliver any more, or on a rejected key; never earlier.
    pub(super) fn check_drain(&mut self, pool: &Pool) -> Result<(), Violation> {
        if !self.draining {
            return Ok(());
        }
        let finished = !pool.is_draining();
        let now = self.now;
        let deadline = self.drain_deadline.is_some_and(|t| t <= now);
        let idle = self.pending.is_empty() && pool.live_messages() == 0;
        let stuck = self.slots.iter().all(|s| {
            !matches!(
                s.phase,
                Phase::Open
                    | Phase::Dialing { .. }
                    | Phase::Backoff { .. }
                    | Phase::Idle {
                        spread_until: Some(_)
                    }
            )
        });
        let rejected = self.key_rejected_everywhere();
        if finished {
            ensure!(
                deadline || idle || stuck || rejected || self.drain_finished_in_step,
                13,
                "the close drain ended early (pending {}, messages {})",
                self.pending.len(),
                pool.live_messages()
            );
            ensure!(
                self.pending.is_empty(),
                13,
                "the close drain ended with requests pending"
            );
            ensure!(
                self.slots
                    .iter()
                    .all(|s| !matches!(s.phase, Phase::Dialing { .. }) && s.replacement.is_none()),
                13,
                "the close drain ended but a dial goes on"
            );
            self.finish_close_now();
        } else {
            ensure!(
                !(deadline || stuck || (idle && pool.live_messages() == 0)),
                13,
                "the close drain should have ended (deadline {deadline}, stuck {stuck}, idle {idle})"
            );
            ensure!(
                !self.drain_finished_in_step,
                13,
                "outputs of a drain's end, but the drain goes on"
            );
        }
        Ok(())
    }

    /// (7) No barrier is overdue: with confirmation on, a connection with messages written
    /// since its last ping and no ping unanswered has no barrier due now.
    pub(super) fn check_barriers(&self) -> Result<(), Violation> {
        if !self.config.confirm_delivery() {
            return Ok(());
        }
        let now = self.now;
        for (i, s) in self.slots.iter().enumerate() {
            for c in s.open.iter().map(|(_, c)| c).chain(s.retiring.values()) {
                if c.unanswered.is_some() || c.since == 0 {
                    continue;
                }
                let due = c.since >= self.config.confirm_every()
                    || c.since_bytes * 2 >= self.config.max_unconfirmed_bytes()
                    || c.flights.len() >= self.config.max_unconfirmed() as usize
                    || self.draining
                    || (self.step == Step::Timeout && c.barrier_due_at.is_some_and(|t| t <= now));
                ensure!(
                    !due,
                    7,
                    "slot {i}: a barrier is due ({} messages, {} bytes since the last ping) but none was written",
                    c.since,
                    c.since_bytes
                );
            }
        }
        Ok(())
    }

    /// The pool is down because of the key: nothing open, and every slot's most recent own
    /// dial was refused with 401/403. Reported once per entry, visible in the getter and stats.
    pub(super) fn check_rejection(&mut self, pool: &Pool) -> Result<(), Violation> {
        let down = self.key_rejected_everywhere();
        ensure!(
            !down || self.rejected_down || self.key_rejected_seen,
            4,
            "the pool went down on key rejections without a KeyRejected event"
        );
        ensure!(
            down || !self.key_rejected_seen,
            4,
            "KeyRejected while some slot is open or was not rejected"
        );
        self.rejected_status = match (down, self.step_rejection) {
            (false, _) => None,
            (true, Some(status)) => Some(status),
            (true, None) => self.rejected_status,
        };
        ensure!(
            pool.rejection() == self.rejected_status,
            4,
            "rejection() is {:?}, the shadow says {:?}",
            pool.rejection(),
            self.rejected_status
        );
        self.rejected_down = down;
        self.stats.rejected_status = self.rejected_status;
        Ok(())
    }

    pub(super) fn key_rejected_everywhere(&self) -> bool {
        self.open_count() == 0 && self.slots.iter().all(|s| s.rejected.is_some())
    }
}
