//! The checker's reading of each output: dials, transmits, pings, disconnects and
//! completions, each applied to the shadow model after it is checked.

use super::*;

impl Checker {
    pub(super) fn on_dial(&mut self, now: Instant, conn: ConnId) -> Result<(), Violation> {
        ensure!(!self.closing || self.draining, 13, "Dial {conn} after close");
        if self.drain_dial {
            // The drain's dial at once, in the close step, when nothing could carry messages.
            ensure!(
                matches!(self.step, Step::Close { .. }) && conn.slot == 0,
                13,
                "Dial {conn} after close"
            );
            self.drain_dial = false;
            let hs = self.config.handshake_timeout();
            let s = &mut self.slots[usize::from(conn.slot)];
            ensure!(
                conn.generation == s.next_generation,
                10,
                "Dial {conn}: wrong generation"
            );
            s.next_generation += 1;
            s.phase = Phase::Dialing {
                generation: conn.generation,
                deadline: now + hs,
            };
            self.stats.dials += 1;
            return Ok(());
        }
        let hs = self.config.handshake_timeout();
        let step = self.step.clone();
        let Some(s) = self.slots.get_mut(usize::from(conn.slot)) else {
            return Err(Violation {
                invariant: 10,
                message: format!("Dial of unknown slot {conn}"),
            });
        };
        ensure!(
            conn.generation == s.next_generation,
            10,
            "Dial {conn}: expected generation {}",
            s.next_generation
        );
        s.next_generation += 1;
        self.stats.dials += 1;
        if let Some((_, open)) = &s.open {
            // A replacement for a connection that reached its maximum age.
            ensure!(s.replacement.is_none(), 10, "second replacement dial {conn}");
            let (lo, _) = open.rotate.ok_or_else(|| Violation {
                invariant: 10,
                message: format!("replacement dial {conn} without a maximum age"),
            })?;
            ensure!(
                step == Step::Timeout && lo <= now,
                4,
                "replacement dial {conn} before its time ({:?} early) in {step:?}",
                lo.saturating_duration_since(now)
            );
            s.replacement = Some((conn.generation, now + hs));
            if let Some((_, open)) = &mut s.open {
                open.rotate = None;
            }
            return Ok(());
        }
        match s.phase {
            Phase::Idle { spread_until } => ensure!(
                step == Step::Connect || step == Step::Timeout && spread_until.is_some(),
                4,
                "first dial {conn} outside connect/spread ({step:?}, {spread_until:?})"
            ),
            Phase::Backoff { due } => ensure!(
                now >= due,
                4,
                "Dial {conn} {:?} before its backoff ended",
                due - now
            ),
            Phase::Exhausted => {
                return Err(Violation {
                    invariant: 4,
                    message: format!("resting slot dialed ({conn}) without SlotRearmed in {step:?}"),
                })
            }
            other => {
                return Err(Violation {
                    invariant: 10,
                    message: format!("Dial {conn} while the slot is {other:?}"),
                })
            }
        }
        s.phase = Phase::Dialing {
            generation: conn.generation,
            deadline: now + hs,
        };
        Ok(())
    }

    pub(super) fn on_transmit(&mut self, now: Instant, conn: ConnId, frame: &str) -> Result<(), Violation> {
        let open = self
            .slots
            .get(usize::from(conn.slot))
            .and_then(|s| s.open.as_ref());
        ensure!(
            open.is_some_and(|(g, _)| *g == conn.generation),
            10,
            "Transmit on {conn}, which is not an open connection"
        );
        let id = frame::decode(frame, usize::MAX)
            .ok()
            .and_then(|f| f.id)
            .and_then(|s| Uuid::try_parse(&s).ok())
            .map(RequestId);
        let affinity = match self.step {
            Step::Request {
                id: Some(i),
                affinity,
                ..
            } if !self.request_transmitted && id == Some(i) => affinity,
            _ => None,
        };
        if id.is_some() {
            let expected = self.select(affinity);
            ensure!(
                expected == Some(usize::from(conn.slot)),
                6,
                "Transmit on {conn}, but selection picks slot {expected:?} (pending per slot {:?})",
                self.pending_per_slot()
            );
        } else {
            // A message goes to an open connection whose window and write queue have room;
            // like any pick without a preference, it moves the rotation.
            let c = &open.expect("checked open").1;
            ensure!(
                c.unflushed() < u64::from(self.config.max_unflushed_writes()),
                6,
                "message on {conn} with {} unflushed writes",
                c.unflushed()
            );
            let bytes: usize = c.flights.iter().map(|f| f.2).sum();
            ensure!(
                c.flights.len() < self.config.max_unconfirmed() as usize
                    && (c.flights.is_empty() || bytes + frame.len() <= self.config.max_unconfirmed_bytes()),
                7,
                "message on {conn} beyond its window ({} messages, {bytes} bytes unconfirmed)",
                c.flights.len()
            );
            self.cursor = Some(usize::from(conn.slot));
        }
        let write_no = self.write(now, conn);
        match id {
            Some(id) => {
                let step_id = match self.step {
                    Step::Request { id: Some(i), .. } if !self.request_transmitted => Some(i),
                    _ => None,
                };
                let lost = &self.lost;
                let Some(r) = self.pending.get_mut(&id) else {
                    return Err(Violation {
                        invariant: 12,
                        message: format!("Transmit of request {id}, which is not pending"),
                    });
                };
                if step_id == Some(id) {
                    self.request_transmitted = true;
                } else {
                    ensure!(
                        r.transmits == 1 && r.resendable && lost.contains_key(&r.conn) && r.deadline > now,
                        12,
                        "request {id} transmitted again (transmits {}, resendable {}, its connection {} lost: {})",
                        r.transmits,
                        r.resendable,
                        r.conn,
                        lost.contains_key(&r.conn)
                    );
                    self.stats.resent += 1;
                }
                r.transmits += 1;
                r.conn = conn;
                let c = self.slots[usize::from(conn.slot)]
                    .live_mut(conn.generation)
                    .expect("checked open");
                c.pending += 1;
                ensure!(
                    c.pending <= self.config.max_in_flight(),
                    6,
                    "{conn} has {} requests in flight, above the cap",
                    c.pending
                );
            }
            None => {
                let name = frame::decode(frame, usize::MAX)
                    .map(|f| f.kind)
                    .map_err(|e| Violation {
                        invariant: 7,
                        message: format!("a message transmitted as an unreadable frame {frame}: {e}"),
                    })?;
                let kind = self
                    .kind_index
                    .get(&name)
                    .copied()
                    .or_else(|| self.kind_index.get(OTHER_KIND).copied());
                let kind = kind.ok_or_else(|| Violation {
                    invariant: 7,
                    message: format!("Transmit of a message of type {name}, which was never sent"),
                })?;
                self.transmitted_sends += 1;
                let confirm = self.config.confirm_delivery();
                let c = self.slots[usize::from(conn.slot)]
                    .live_mut(conn.generation)
                    .expect("checked open");
                c.flights.push_back((write_no, kind, frame.len()));
                if confirm {
                    c.since += 1;
                    c.since_bytes += frame.len();
                    c.barrier_due_at.get_or_insert(now + self.config.confirm_after());
                }
            }
        }
        Ok(())
    }

    /// (5) A ping goes to a live connection with its token (the same in every ping of the
    /// connection) and the next sequence number; with
    /// confirmation on, never while another is unanswered. It is the keep-alive when one is
    /// due (in a timeout step), or else a barrier for messages written since the last ping.
    pub(super) fn on_ping(&mut self, now: Instant, conn: ConnId, payload: [u8; 16]) -> Result<(), Violation> {
        let period = self.config.ping_period();
        let confirm = self.config.confirm_delivery();
        let pong_wait = self.config.pong_wait();
        let step = self.step.clone();
        let c = self
            .slots
            .get_mut(usize::from(conn.slot))
            .and_then(|s| s.live_mut(conn.generation))
            .ok_or_else(|| Violation {
                invariant: 5,
                message: format!("Ping on {conn}, which is not live"),
            })?;
        let (token, seq) = payload.split_at(8);
        let token: [u8; 8] = token.try_into().expect("8 bytes");
        let seq = u64::from_be_bytes(seq.try_into().expect("8 bytes"));
        ensure!(
            *c.ping_token.get_or_insert(token) == token,
            5,
            "Ping on {conn} carries token {token:?}, its earlier pings {:?}",
            c.ping_token
        );
        ensure!(
            seq == c.ping_seq + 1,
            5,
            "Ping on {conn} carries sequence {seq}, expected {}",
            c.ping_seq + 1
        );
        ensure!(
            !confirm || c.unanswered.is_none(),
            5,
            "Ping on {conn} while ping {:?} is unanswered",
            c.unanswered
        );
        // Any ping written while the keep-alive is due is the keep-alive too.
        let keep_alive = now >= c.next_ping;
        ensure!(
            (keep_alive && step == Step::Timeout) || (confirm && c.since > 0),
            5,
            "Ping on {conn} in {step:?}: no keep-alive due ({:?} early) and no message to confirm",
            c.next_ping.saturating_duration_since(now)
        );
        if keep_alive {
            c.next_ping += period;
            if c.next_ping <= now {
                c.next_ping = now + period;
            }
        }
        c.ping_seq = seq;
        c.since = 0;
        c.since_bytes = 0;
        c.barrier_due_at = None;
        self.stats.pings += 1;
        let n = self.write(now, conn);
        if let Some(c) = self.slots[usize::from(conn.slot)].live_mut(conn.generation) {
            c.last_ping = n;
            c.unanswered = Some((seq, n, now + pong_wait));
        }
        Ok(())
    }

    /// A tracked message ended: it was sent with `notify`, and ends once.
    pub(super) fn on_settled(&mut self, id: MessageId, fate: MessageFate) -> Result<(), Violation> {
        ensure!(
            self.notified.remove(&id.0),
            7,
            "Settled {id} ({fate:?}): not a tracked message, or settled twice"
        );
        if fate == MessageFate::Confirmed {
            ensure!(
                matches!(self.step, Step::Pong { confirms: Some(n), .. } if n > 0),
                7,
                "{id} confirmed in {:?}, which confirms nothing",
                self.step
            );
        }
        Ok(())
    }

    pub(super) fn write(&mut self, now: Instant, conn: ConnId) -> u64 {
        let write_wait = self.config.write_wait();
        let c = self.slots[usize::from(conn.slot)]
            .live_mut(conn.generation)
            .expect("writes go to live connections");
        c.issued += 1;
        c.issue_times.push_back(now);
        if c.write_deadline.is_none() {
            c.write_deadline = Some(now + write_wait);
        }
        c.issued
    }

    pub(super) fn on_disconnect(
        &mut self,
        now: Instant,
        conn: ConnId,
        graceful: bool,
    ) -> Result<(), Violation> {
        let step = self.step.clone();
        let closing = self.closing;
        if let Some(deadline) = self.lingering.get(&conn).copied() {
            ensure!(
                !graceful && step == Step::Timeout && now >= deadline,
                13,
                "{conn} closing gracefully was disconnected again (graceful {graceful}) {:?} before its linger ended",
                deadline.saturating_duration_since(now)
            );
            self.lingering.remove(&conn);
            return Ok(());
        }
        let Some(s) = self.slots.get_mut(usize::from(conn.slot)) else {
            return Err(Violation {
                invariant: 10,
                message: format!("Disconnect of unknown slot {conn}"),
            });
        };
        // A dial in progress: abandoned by close, or by its handshake deadline.
        if self.aborts.contains(&conn) {
            ensure!(!graceful, 13, "graceful Disconnect of dial {conn} at close");
            self.aborts.remove(&conn);
            return Ok(());
        }
        let timed_out = step == Step::Timeout
            && match s.phase {
                Phase::Dialing { generation, deadline } if generation == conn.generation => deadline <= now,
                _ => s
                    .replacement
                    .is_some_and(|(g, t)| g == conn.generation && t <= now),
            };
        if self.draining && s.dialing(conn.generation) && !graceful && !timed_out {
            // The drain ended in this step (a dial under way is abandoned).
            if let Phase::Dialing { generation, .. } = s.phase {
                if generation == conn.generation {
                    s.phase = Phase::Closed;
                }
            }
            if s.replacement.is_some_and(|(g, _)| g == conn.generation) {
                s.replacement = None;
            }
            self.drain_finished_in_step = true;
            return Ok(());
        }
        if s.dialing(conn.generation) {
            ensure!(!graceful, 10, "graceful Disconnect of dial {conn}");
            let deadline = match s.phase {
                Phase::Dialing { generation, deadline } if generation == conn.generation => deadline,
                _ => s.replacement.expect("dialing").1,
            };
            ensure!(
                step == Step::Timeout && now >= deadline,
                4,
                "dial {conn} abandoned {:?} before its handshake deadline",
                deadline.saturating_duration_since(now)
            );
            self.awaiting = Some(Await::DialTimeout(conn));
            return Ok(());
        }
        let was_open = s.open.as_ref().is_some_and(|(g, _)| *g == conn.generation);
        let c = if was_open {
            s.open.take().map(|(_, c)| c)
        } else {
            s.retiring.remove(&conn.generation)
        };
        let Some(c) = c else {
            // A dial the pool gave up on reported Connected anyway: abort it.
            ensure!(
                step == Step::Connected(conn) && !graceful && !self.late_abort,
                10,
                "Disconnect of {conn}, which is neither live nor dialing (step {step:?})"
            );
            self.late_abort = true;
            return Ok(());
        };
        if graceful {
            // An open connection retires only when the close drain ends (in this step).
            ensure!(
                (!was_open || self.draining) && c.pending == 0 && c.unflushed() == 0,
                10,
                "graceful Disconnect of {conn} (open {was_open}, pending {}, unflushed {})",
                c.pending,
                c.unflushed()
            );
            if was_open {
                self.drain_finished_in_step = true;
            }
            self.lingering.insert(conn, now + self.config.write_wait());
        } else {
            if was_open && closing && !self.draining {
                return Err(Violation {
                    invariant: 13,
                    message: format!("open connection {conn} after close"),
                });
            }
            if was_open {
                // While the close drains, a lost connection's slot dials no more.
                s.phase = if closing { Phase::Closed } else { Phase::Lost };
            }
            // Keep the connection's shadow for the reason checks of the Disconnected event.
            self.lost.insert(conn, None);
            self.dead_conn = Some(c);
        }
        self.awaiting = Some(Await::Disconnected {
            conn,
            graceful,
            was_open,
        });
        Ok(())
    }

    pub(super) fn on_disconnected(
        &mut self,
        conn: ConnId,
        graceful: bool,
        was_open: bool,
        reason: &DisconnectReason,
    ) -> Result<(), Violation> {
        let now = self.now;
        if graceful {
            let expected = if self.closing {
                DisconnectReason::PoolClosing
            } else {
                DisconnectReason::Rotated
            };
            ensure!(
                *reason == expected,
                10,
                "retired {conn} with reason {reason:?}, expected {expected:?}"
            );
            return Ok(());
        }
        let c = self.dead_conn.take().expect("set with the Disconnect");
        let step = &self.step;
        let ok = match reason {
            DisconnectReason::Closed(_) | DisconnectReason::WriteFailed(_) => *step == Step::Ends(conn),
            // A pong deadline in the same tick is reported instead (the more specific cause).
            DisconnectReason::ReadTimeout => {
                *step == Step::Timeout
                    && c.read_deadline(self.config.pong_wait()) <= now
                    && !(self.config.confirm_delivery() && c.unanswered.is_some_and(|(_, _, t)| t <= now))
            }
            DisconnectReason::WriteTimeout => {
                *step == Step::Timeout && c.write_deadline.is_some_and(|t| t <= now)
            }
            DisconnectReason::PongTimeout => {
                *step == Step::Timeout
                    && self.config.confirm_delivery()
                    && c.unanswered.is_some_and(|(_, _, t)| t <= now)
            }
            _ => false,
        };
        ensure!(
            ok,
            if matches!(reason, DisconnectReason::ReadTimeout) {
                5
            } else {
                3
            },
            "{conn} lost with reason {reason:?} in step {step:?} (last heard {:?} ago, write deadline {:?})",
            now - c.last_heard,
            c.write_deadline.map(|t| t.saturating_duration_since(now))
        );
        self.lost.insert(conn, Some(reason.clone()));
        self.stats.disconnects += 1;
        if was_open {
            let closing = self.closing;
            let s = &mut self.slots[usize::from(conn.slot)];
            match s.replacement.take() {
                // The rotation's dial already in progress is the reconnect.
                Some((generation, deadline)) => s.phase = Phase::Dialing { generation, deadline },
                // Closed: the slot dials no more (no decision to report). While a close
                // drains, the pool may also decide so (see `check`).
                None if closing && !self.draining => s.phase = Phase::Closed,
                None => *self.owed.entry(conn.slot).or_default() += 1,
            }
        }
        Ok(())
    }

    pub(super) fn on_connect_failed(&mut self, conn: ConnId, error: &DialError) -> Result<(), Violation> {
        let now = self.now;
        let attempts = self.config.backoff_attempts();
        let retry_after = match error {
            DialError::HttpStatus { retry_after, .. } => *retry_after,
            _ => None,
        };
        let rejected = match error {
            DialError::Rejected { status } => Some(*status),
            _ => None,
        };
        self.stats.dial_failures += 1;
        if rejected.is_some() {
            self.stats.rejections += 1;
        }
        let window = |attempt: u32| self.delay_window(attempt, retry_after);
        let s = &self.slots[usize::from(conn.slot)];
        if matches!(s.phase, Phase::Dialing { generation, .. } if generation == conn.generation) {
            let s = &mut self.slots[usize::from(conn.slot)];
            s.phase = Phase::Lost;
            s.rejected = rejected;
            s.retry_after = retry_after;
            self.step_rejection = rejected;
            *self.owed.entry(conn.slot).or_default() += 1;
            return Ok(());
        }
        ensure!(
            s.replacement.is_some_and(|(g, _)| g == conn.generation),
            10,
            "ConnectFailed for {conn}, which is not dialing"
        );
        // A rotation's replacement: the backoff schedule and budget of any dial.
        let rotate = s.open.as_ref().and_then(|(_, open)| {
            (open.rotation_attempt < attempts).then(|| {
                let (lo, hi) = window(open.rotation_attempt);
                (now + lo, now + hi)
            })
        });
        let s = &mut self.slots[usize::from(conn.slot)];
        s.replacement = None;
        if let Some((_, open)) = &mut s.open {
            open.rotate = rotate;
            if rotate.is_some() {
                open.rotation_attempt += 1;
            }
        }
        Ok(())
    }

    /// The range a retry's delay must fall in: the jittered schedule for `attempt`, and no
    /// sooner than the server's `Retry-After`, itself bounded by the cap.
    pub(super) fn delay_window(&self, attempt: u32, retry_after: Option<Duration>) -> (Duration, Duration) {
        let (base, cap, jitter) = (
            self.config.backoff_base(),
            self.config.backoff_cap(),
            self.config.backoff_jitter(),
        );
        let nominal = nominal_delay(attempt, base, cap);
        let lo = nominal.mul_f64(1.0 - jitter);
        let floor = retry_after.map_or(Duration::ZERO, |r| r.min(cap));
        (lo.max(floor), nominal.max(floor))
    }

    pub(super) fn on_completed(
        &mut self,
        now: Instant,
        id: RequestId,
        outcome: &Outcome,
    ) -> Result<(), Violation> {
        let Some(r) = self.pending.remove(&id) else {
            return Err(Violation {
                invariant: 1,
                message: if self.issued.contains(&id) {
                    format!("request {id} completed twice (again with {outcome:?})")
                } else {
                    format!("unknown request {id} completed with {outcome:?}")
                },
            });
        };
        self.deadlines.remove(&(r.deadline, id));
        if let Some(c) = self.slots[usize::from(r.conn.slot)].live_mut(r.conn.generation) {
            c.pending -= 1;
        }
        let step = &self.step;
        match outcome {
            Outcome::Reply(_) | Outcome::Denied(_) => {
                let denied = matches!(outcome, Outcome::Denied(_));
                let ok = matches!(step, Step::Text { answers: Some(a), denial, .. } if *a == id && *denial == denied);
                ensure!(
                    ok && !self.text_answered,
                    1,
                    "request {id} completed with {outcome:?} in step {step:?}"
                );
                self.text_answered = true;
                if denied {
                    self.stats.denials += 1;
                } else {
                    self.stats.replies += 1;
                }
            }
            Outcome::Failed(RequestFailure::Timeout) => {
                ensure!(
                    *step == Step::Timeout && now >= r.deadline,
                    2,
                    "request {id} timed out {:?} before its deadline, in {step:?}",
                    r.deadline.saturating_duration_since(now)
                );
                self.stats.timeouts += 1;
            }
            Outcome::Failed(RequestFailure::ConnectionLost(reason)) => {
                ensure!(
                    self.lost.get(&r.conn).and_then(Option::as_ref) == Some(reason),
                    3,
                    "request {id} failed as lost ({reason:?}) but its connection {} was not lost so",
                    r.conn
                );
                self.stats.connection_lost += 1;
            }
            Outcome::Failed(RequestFailure::Cancelled) => {
                ensure!(
                    *step == Step::Cancel { id },
                    1,
                    "request {id} cancelled in {step:?}"
                );
                self.stats.cancelled += 1;
            }
            Outcome::Failed(RequestFailure::Closed) => {
                // At close without a drain, or when the drain ends (checked at the step's end).
                let ok = self.closing && (*step == Step::Close { fail_now: true } || self.draining);
                ensure!(ok, 13, "request {id} failed as closed in {step:?}");
                if self.draining {
                    self.drain_finished_in_step = true;
                }
                self.stats.closed += 1;
            }
        }
        Ok(())
    }
}
