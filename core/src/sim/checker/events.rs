//! The checker's reading of each event: connections opened or failed, reconnect decisions,
//! re-arms, rejections, skipped frames, drops and availability.

use super::*;

impl Checker {
    /// (14) availability: a change is a change; from `Degraded` back to `Available`, once the
    /// pool has been `Available`, only after the hold.
    pub(super) fn on_availability(&mut self, now: Instant, to: Availability) -> Result<(), Violation> {
        ensure!(
            to != self.availability,
            14,
            "AvailabilityChanged to {to:?}, which it already was"
        );
        // Leaving Unavailable is immediate (a pool of one goes straight back to Available).
        if to == Availability::Available && self.ever_available && self.availability == Availability::Degraded
        {
            let left = self.left_available_at.expect("left Available before");
            ensure!(
                now >= left + AVAILABILITY_HOLD,
                14,
                "Available again {:?} after leaving it, before the {AVAILABILITY_HOLD:?} hold",
                now - left
            );
        }
        if self.availability == Availability::Available {
            self.left_available_at = Some(now);
        }
        self.ever_available |= to == Availability::Available;
        self.availability = to;
        Ok(())
    }

    pub(super) fn on_event(&mut self, now: Instant, event: &Event) -> Result<(), Violation> {
        match event {
            Event::Connected { conn } => {
                ensure!(
                    self.step == Step::Connected(*conn),
                    10,
                    "Connected event for {conn} in step {:?}",
                    self.step
                );
                let mut conn_s = self.new_conn(now);
                if self.closing {
                    // No rotation while closing.
                    conn_s.rotate = None;
                }
                let s = &mut self.slots[usize::from(conn.slot)];
                if matches!(s.phase, Phase::Dialing { generation, .. } if generation == conn.generation) {
                    s.open = Some((conn.generation, conn_s));
                    s.attempt = 0;
                    s.rejected = None;
                    s.phase = Phase::Open;
                } else if s.replacement.is_some_and(|(g, _)| g == conn.generation) {
                    s.replacement = None;
                    let (g, mut old) = s.open.take().expect("a replacement replaces an open connection");
                    old.rotate = None;
                    s.retiring.insert(g, old);
                    s.open = Some((conn.generation, conn_s));
                    self.stats.rotations += 1;
                } else {
                    return Err(Violation {
                        invariant: 10,
                        message: format!("Connected event for {conn}, which was not dialing"),
                    });
                }
                Ok(())
            }
            Event::ConnectFailed { conn, error } => {
                ensure!(
                    self.step == Step::ConnectFailed(*conn),
                    10,
                    "ConnectFailed event for {conn} in step {:?}",
                    self.step
                );
                self.on_connect_failed(*conn, error)
            }
            Event::Disconnected { conn, .. } => Err(Violation {
                invariant: 10,
                message: format!("Disconnected event for {conn} without a Disconnect"),
            }),
            Event::ReconnectScheduled { slot, attempt, delay } => {
                self.take_owed(*slot, "ReconnectScheduled")?;
                let attempts = self.config.backoff_attempts();
                let retry_after = self.slots[usize::from(*slot)].retry_after.take();
                let (lo, hi) = self.delay_window(*attempt, retry_after);
                let s = &mut self.slots[usize::from(*slot)];
                ensure!(
                    *attempt == s.attempt && *attempt < attempts,
                    4,
                    "slot {slot}: reconnect attempt {attempt}, expected {} (budget {attempts})",
                    s.attempt
                );
                ensure!(
                    lo <= *delay && *delay <= hi,
                    4,
                    "slot {slot}: attempt {attempt} delay {delay:?} outside [{lo:?}, {hi:?}] (Retry-After {retry_after:?})"
                );
                s.attempt += 1;
                s.phase = Phase::Backoff { due: now + *delay };
                self.stats.reconnects += 1;
                Ok(())
            }
            Event::AttemptsExhausted { slot } => {
                self.take_owed(*slot, "AttemptsExhausted")?;
                let attempts = self.config.backoff_attempts();
                let s = &mut self.slots[usize::from(*slot)];
                ensure!(
                    s.attempt >= attempts,
                    4,
                    "slot {slot} exhausted after {} of {attempts} attempts",
                    s.attempt
                );
                s.phase = Phase::Exhausted;
                s.retry_after = None;
                self.stats.exhausted += 1;
                Ok(())
            }
            Event::SlotRearmed { slot, delay } => {
                let demand = matches!(
                    self.step,
                    Step::Connect | Step::Request { .. } | Step::Send { .. }
                );
                ensure!(
                    demand && !self.closing,
                    4,
                    "slot {slot} re-armed by {:?}",
                    self.step
                );
                let cap = self.config.backoff_cap();
                let window = self.config.backoff_base().mul_f64(self.config.backoff_jitter());
                let s = self.slots.get_mut(usize::from(*slot)).ok_or_else(|| Violation {
                    invariant: 10,
                    message: format!("SlotRearmed for unknown slot {slot}"),
                })?;
                ensure!(
                    s.phase == Phase::Exhausted,
                    4,
                    "slot {slot} re-armed while {:?}",
                    s.phase
                );
                ensure!(
                    s.rearmed_at.is_none_or(|t| now >= t + cap),
                    4,
                    "slot {slot} re-armed {:?} after its last re-arm, within the cap {cap:?}",
                    s.rearmed_at.map(|t| now - t)
                );
                ensure!(
                    *delay <= window,
                    4,
                    "slot {slot} re-armed with delay {delay:?} beyond {window:?}"
                );
                s.attempt = 0;
                s.rearmed_at = Some(now);
                s.phase = Phase::Backoff { due: now + *delay };
                self.stats.rearms += 1;
                Ok(())
            }
            Event::KeyRejected { status } => {
                ensure!(
                    matches!(self.step, Step::ConnectFailed(c) if self.slots[usize::from(c.slot)].rejected == Some(*status)),
                    4,
                    "KeyRejected {status} in {:?}",
                    self.step
                );
                ensure!(!self.key_rejected_seen, 4, "KeyRejected twice in one step");
                self.key_rejected_seen = true;
                Ok(())
            }
            Event::RotationAbandoned { slot } => {
                let attempts = self.config.backoff_attempts();
                // A replacement dial fails by input, or by its handshake deadline.
                let abandoned = matches!(self.step, Step::ConnectFailed(c) if c.slot == *slot)
                    | (self.step == Step::Timeout)
                    && self.slots[usize::from(*slot)]
                        .open
                        .as_ref()
                        .is_some_and(|(_, c)| c.rotate.is_none() && c.rotation_attempt >= attempts);
                ensure!(
                    abandoned,
                    4,
                    "RotationAbandoned for slot {slot} in {:?} before its budget was spent",
                    self.step
                );
                Ok(())
            }
            Event::FrameSkipped { conn, .. } => {
                let ok = match &self.step {
                    Step::Text {
                        conn: c,
                        valid: false,
                        ..
                    } => c == conn,
                    Step::Binary(c) => c == conn,
                    _ => false,
                };
                ensure!(
                    ok && !self.skipped,
                    1,
                    "FrameSkipped on {conn} in {:?}",
                    self.step
                );
                self.skipped = true;
                self.stats.skipped_frames += 1;
                Ok(())
            }
            Event::MessageDropped { kind, reason, count } => {
                if matches!(
                    reason,
                    DropReason::OutboxFull
                        | DropReason::OutboxBytesFull
                        | DropReason::TooLarge
                        | DropReason::SpoolFull
                ) {
                    let expected = self.expected_drops.remove(&(kind.clone(), *reason));
                    ensure!(
                        expected == Some(*count),
                        7,
                        "MessageDropped {kind} {reason:?} x{count}, expected {expected:?}"
                    );
                } else {
                    // Checked against the counters' deltas at the end of the step.
                    ensure!(
                        self.kind_index.contains_key(kind),
                        7,
                        "MessageDropped of {kind}, a type never sent"
                    );
                    *self.step_drops.entry(*reason).or_default() += count;
                }
                Ok(())
            }
            Event::ConfirmationOff => {
                ensure!(
                    !self.config.confirm_delivery() && !self.confirmation_off_seen,
                    7,
                    "ConfirmationOff with confirmation {}, seen before {}",
                    self.config.confirm_delivery(),
                    self.confirmation_off_seen
                );
                self.confirmation_off_seen = true;
                Ok(())
            }
            Event::PongsMissing { conn } => {
                ensure!(
                    !self.pongs_missing_seen && self.config.confirm_delivery(),
                    5,
                    "PongsMissing for {conn} twice, or with confirmation off"
                );
                self.pongs_missing_seen = true;
                Ok(())
            }
            // Hysteresis makes these timing-dependent; they are not anomalies.
            Event::AvailabilityChanged { availability } => self.on_availability(now, *availability),
        }
    }

    pub(super) fn take_owed(&mut self, slot: u16, what: &str) -> Result<(), Violation> {
        let n = self.owed.entry(slot).or_default();
        ensure!(
            *n > 0,
            11,
            "{what} for slot {slot}, which lost nothing in this drain"
        );
        *n -= 1;
        Ok(())
    }

    pub(super) fn new_conn(&self, now: Instant) -> ConnS {
        let rotate = self.config.max_connection_age().map(|age| {
            let j = self.config.backoff_jitter().max(0.1);
            (now + age.mul_f64(1.0 - j), now + age)
        });
        ConnS {
            last_heard: now,
            next_ping: now + self.config.ping_period(),
            issued: 0,
            flushed: 0,
            write_deadline: None,
            pending: 0,
            flights: VecDeque::new(),
            last_ping: 0,
            ping_seq: 0,
            ping_token: None,
            unanswered: None,
            since: 0,
            since_bytes: 0,
            barrier_due_at: None,
            rotate,
            rotation_attempt: 0,
            issue_times: VecDeque::new(),
        }
    }
}
