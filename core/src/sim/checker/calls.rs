//! The checker's reading of each call on the pool: what its immediate result must be, and
//! what the step's outputs must then show.

use super::*;

impl Checker {
    pub(super) fn on_request_call(
        &mut self,
        _now: Instant,
        message: &Outgoing,
        options: RequestOptions,
        result: &Result<RequestId, RequestError>,
    ) -> Result<Step, Violation> {
        if self.closing {
            ensure!(
                *result == Err(RequestError::Closed),
                13,
                "request after close returned {result:?}"
            );
            self.stats.refused_closed += 1;
            return Ok(Step::Request {
                id: None,
                not_connected: false,
                affinity: options.affinity,
            });
        }
        let open = self.open_count();
        match (self.peek_select(true, options.affinity), result) {
            (Some(_), Ok(id)) => {
                ensure!(self.issued.insert(*id), 1, "request id {id} returned twice");
                let timeout = options
                    .timeout
                    .unwrap_or(self.config.request_timeout())
                    .min(MAX_TIMEOUT);
                // Its own reading of the rule: the allocationId counts only where the server
                // deduplicates on it.
                let idempotent = options.idempotent
                    || (message.idempotency_key().is_some()
                        && self.config.server_deduplicates_allocation_ids());
                // Registered now; its connection is set by the transmit that must follow.
                self.pending.insert(
                    *id,
                    ReqS {
                        conn: ConnId {
                            slot: u16::MAX,
                            generation: u32::MAX,
                        },
                        deadline: self.now + timeout,
                        resendable: idempotent && self.config.resend_idempotent(),
                        transmits: 0,
                    },
                );
                self.deadlines.insert((self.now + timeout, *id));
                self.stats.requests += 1;
                Ok(Step::Request {
                    id: Some(*id),
                    not_connected: false,
                    affinity: options.affinity,
                })
            }
            (None, Err(RequestError::NotConnected)) if open == 0 && !self.key_rejected_everywhere() => {
                self.stats.refused_not_connected += 1;
                Ok(Step::Request {
                    id: None,
                    not_connected: true,
                    affinity: options.affinity,
                })
            }
            (None, Err(RequestError::Rejected { status }))
                if open == 0 && self.key_rejected_everywhere() && self.rejected_status == Some(*status) =>
            {
                self.stats.refused_not_connected += 1;
                Ok(Step::Request {
                    id: None,
                    not_connected: true,
                    affinity: options.affinity,
                })
            }
            (None, Err(RequestError::Backpressure { max_in_flight }))
                if open > 0 && *max_in_flight == self.config.max_in_flight() =>
            {
                self.stats.refused_backpressure += 1;
                Ok(Step::Request {
                    id: None,
                    not_connected: false,
                    affinity: options.affinity,
                })
            }
            (pick, result) => Err(Violation {
                invariant: 6,
                message: format!(
                    "request returned {result:?} with {open} open connection(s), selection {pick:?}"
                ),
            }),
        }
    }

    pub(super) fn on_send_call(
        &mut self,
        now: Instant,
        message: &Outgoing,
        result: &Result<(), SendRefusal>,
    ) -> Result<Step, Violation> {
        let kind = self.intern(&message.kind);
        self.sends[usize::from(kind)].sends += 1;
        if self.closing {
            ensure!(
                matches!(result, Err(SendRefusal::Closed)),
                13,
                "send after close returned {result:?}"
            );
            self.sends[usize::from(kind)].closed += 1;
            return Ok(Step::Send {
                direct: None,
                open_was_zero: false,
            });
        }
        let encoded = frame::encode(message, None);
        if self.outbox.is_empty() && self.peek_select(false, None).is_some() {
            ensure!(
                result.is_ok(),
                7,
                "send refused ({result:?}) with a connection able to take it"
            );
            return Ok(Step::Send {
                direct: Some((encoded, kind)),
                open_was_zero: false,
            });
        }
        let open_was_zero = self.open_count() == 0;
        if self.outbox.len() >= self.config.outbox_capacity() as usize {
            ensure!(
                matches!(result, Err(SendRefusal::OutboxFull)),
                7,
                "send with a full outbox returned {result:?}"
            );
            self.sends[usize::from(kind)].dropped += 1;
            // Named as its counters are (`*other*` past the tracked types).
            let name = self.kind_names[usize::from(kind)].clone();
            self.expected_drops.insert((name, DropReason::OutboxFull), 1);
        } else {
            ensure!(
                result.is_ok(),
                7,
                "send refused ({result:?}) with room in the outbox"
            );
            self.sends[usize::from(kind)].queued += 1;
            self.outbox.push_back(QueuedS {
                frame: encoded,
                kind,
                expires: now + self.config.outbox_ttl(),
            });
        }
        Ok(Step::Send {
            direct: None,
            open_was_zero,
        })
    }

    pub(super) fn on_close_call(&mut self, now: Instant) -> Step {
        if self.closing {
            return Step::Quiet;
        }
        self.closing = true;
        for q in std::mem::take(&mut self.outbox) {
            let s = &mut self.sends[usize::from(q.kind)];
            s.queued -= 1;
            s.closed += 1;
            let name = self.kind_names[usize::from(q.kind)].clone();
            *self.expected_drops.entry((name, DropReason::Closed)).or_default() += 1;
        }
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Phase::Dialing { generation, .. } = s.phase {
                self.aborts.insert(ConnId {
                    slot: i as u16,
                    generation,
                });
            }
            if let Some((generation, _)) = s.replacement.take() {
                self.aborts.insert(ConnId {
                    slot: i as u16,
                    generation,
                });
            }
            if let Some((generation, mut conn)) = s.open.take() {
                conn.rotate = None;
                s.retiring.insert(generation, conn);
            }
            s.phase = Phase::Closed;
        }
        let fail_now = self.config.close_drain().is_zero() || self.pending.is_empty();
        if !fail_now {
            self.drain_deadline = Some(now + self.config.close_drain());
        }
        Step::Close { fail_now }
    }

    pub(super) fn on_input_call(&mut self, now: Instant, input: &Input<'_>) -> Step {
        let conn = input.conn();
        let write_wait = self.config.write_wait();
        let max_frame = self.config.max_frame_size();
        if self.lingering.contains_key(&conn) {
            // Closing gracefully: only its end matters, and it ends the linger.
            if matches!(input, Input::WriteFailed { .. } | Input::Closed { .. }) {
                self.lingering.remove(&conn);
            }
            return Step::Quiet;
        }
        let Some(slot) = self.slots.get_mut(usize::from(conn.slot)) else {
            return Step::Quiet;
        };
        if conn.generation >= slot.next_generation {
            // Never dialed: ignored and counted.
            return Step::Quiet;
        }
        match input {
            Input::Connected { .. } => return Step::Connected(conn),
            Input::ConnectFailed { .. } if slot.dialing(conn.generation) => return Step::ConnectFailed(conn),
            _ => {}
        }
        let Some(c) = slot.live_mut(conn.generation) else {
            return Step::Quiet;
        };
        match input {
            Input::Text { text, .. } => {
                c.last_heard = now;
                let decoded = frame::decode(text, max_frame);
                let (answers, denial) = match &decoded {
                    Ok(f) => (
                        f.correlation_id()
                            .and_then(|s| Uuid::try_parse(s).ok())
                            .map(RequestId)
                            .filter(|id| self.pending.contains_key(id)),
                        f.is_denial(),
                    ),
                    Err(_) => (None, false),
                };
                Step::Text {
                    conn,
                    answers,
                    denial,
                    valid: decoded.is_ok(),
                }
            }
            Input::Binary { .. } => {
                c.last_heard = now;
                Step::Binary(conn)
            }
            Input::Pong { .. } | Input::Ping { .. } => {
                c.last_heard = now;
                Step::Quiet
            }
            Input::Flushed { writes, .. } => {
                let writes = (*writes).min(c.issued);
                if writes > c.flushed {
                    for _ in c.flushed..writes {
                        c.issue_times.pop_front();
                    }
                    c.flushed = writes;
                    c.write_deadline = c.issue_times.front().map(|&t| t + write_wait);
                    while c.unflushed_sends.front().is_some_and(|&(n, _)| n <= writes) {
                        let (_, kind) = c.unflushed_sends.pop_front().expect("front exists");
                        let s = &mut self.sends[usize::from(kind)];
                        s.unflushed -= 1;
                        s.sent += 1;
                    }
                }
                // A flush may drain a retiring connection or the outbox: not quiet.
                Step::Flushed
            }
            Input::WriteFailed { .. } | Input::Closed { .. } => Step::Ends(conn),
            _ => Step::Quiet,
        }
    }
}
