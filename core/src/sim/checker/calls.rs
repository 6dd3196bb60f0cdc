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
        match (self.peek_select(options.affinity), result) {
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
        _now: Instant,
        message: &Outgoing,
        options: SendOptions,
        result: &Result<MessageId, SendRefusal>,
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
            return Ok(Step::Send { open_was_zero: false });
        }
        let open_was_zero = self.open_count() == 0;
        // Exactly the frames past the limit are refused as too large, before anything else.
        let frame_len = crate::frame::EncodedSend::new(message).frame_len();
        let max = self.config.max_frame_size();
        ensure!(
            matches!(result, Err(SendRefusal::TooLarge { .. })) == (frame_len > max),
            7,
            "a send of a {frame_len}-byte frame (limit {max}) returned {result:?}"
        );
        // Then the spool's limit, before the outbox.
        let spool_full = frame_len <= max && self.spool_refuses(frame_len);
        ensure!(
            matches!(result, Err(SendRefusal::SpoolFull)) == spool_full,
            7,
            "a send of a {frame_len}-byte frame with {} spool bytes (limit {:?}) returned {result:?}",
            self.ledger.bytes,
            self.ledger.open
        );
        let refused = |checker: &mut Self, reason: DropReason| {
            checker.sends[usize::from(kind)].dropped += 1;
            // Named as its counters are (`*other*` past the tracked types).
            let name = checker.kind_names[usize::from(kind)].clone();
            checker.expected_drops.insert((name, reason), 1);
        };
        match result {
            Ok(id) => {
                // Ids count up from 1, one per accepted send.
                let expected = self.message_ids.last().map_or(1, |last| last + 1);
                ensure!(
                    id.0 >= expected,
                    7,
                    "send returned {id}, expected an id above {}",
                    expected - 1
                );
                self.message_ids.insert(id.0);
                self.owe_keep(*id);
                if options.notify {
                    self.notified.insert(id.0);
                }
            }
            Err(SendRefusal::OutboxFull) => {
                // Only a full outbox refuses, and only behind queued messages (a message with
                // an empty outbox goes to a connection or into it).
                ensure!(
                    self.outbox_len >= self.config.outbox_capacity() as usize,
                    7,
                    "send refused as OutboxFull with {} of {} queued",
                    self.outbox_len,
                    self.config.outbox_capacity()
                );
                refused(self, DropReason::OutboxFull);
            }
            Err(SendRefusal::OutboxBytesFull) => {
                // Only behind queued messages, or alone past the byte cap.
                ensure!(
                    self.outbox_len > 0 || frame_len > self.config.max_outbox_bytes(),
                    7,
                    "send of {frame_len} bytes refused as OutboxBytesFull with an empty outbox"
                );
                refused(self, DropReason::OutboxBytesFull);
            }
            Err(SendRefusal::SpoolFull) => {
                refused(self, DropReason::SpoolFull);
                self.sends[usize::from(kind)].spool_full += 1;
            }
            Err(SendRefusal::TooLarge { len, max: limit }) => {
                ensure!(
                    (*len, *limit) == (frame_len, max),
                    7,
                    "TooLarge names {len} of {limit}, the frame is {frame_len} of {max}"
                );
                refused(self, DropReason::TooLarge);
            }
            Err(other) => {
                return Err(Violation {
                    invariant: 7,
                    message: format!("send before close refused with {other:?}"),
                })
            }
        }
        Ok(Step::Send { open_was_zero })
    }

    pub(super) fn on_close_call(&mut self, now: Instant) -> Step {
        if self.closing {
            return Step::Quiet;
        }
        self.closing = true;
        let messages = self.live_messages > 0;
        if self.config.close_drain().is_zero() || (!messages && self.pending.is_empty()) {
            self.finish_close_now();
            return Step::Close { fail_now: true };
        }
        // The drain: open connections stay, dials stay when they may carry messages; one
        // dial may start when nothing is open or dialing.
        self.draining = true;
        self.drain_deadline = Some(now + self.config.close_drain());
        let mut dialing = false;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some((_, open)) = &mut s.open {
                // No rotation while closing: a replacement under way is abandoned.
                open.rotate = None;
                if let Some((generation, _)) = s.replacement.take() {
                    self.aborts.insert(ConnId {
                        slot: i as u16,
                        generation,
                    });
                }
            }
            match s.phase {
                Phase::Open => {}
                Phase::Dialing { .. } if messages => dialing = true,
                Phase::Backoff { .. }
                | Phase::Idle {
                    spread_until: Some(_),
                } if messages => {}
                Phase::Dialing { generation, .. } => {
                    self.aborts.insert(ConnId {
                        slot: i as u16,
                        generation,
                    });
                    s.phase = Phase::Closed;
                }
                _ => s.phase = Phase::Closed,
            }
        }
        self.drain_dial = messages && self.open_count() == 0 && !dialing && self.rejected_status.is_none();
        Step::Close { fail_now: false }
    }

    /// The end of a close (at once, or when its drain ends): dials abandoned, open
    /// connections retired, slots closed.
    pub(super) fn finish_close_now(&mut self) {
        self.draining = false;
        self.drain_dial = false;
        self.drain_deadline = None;
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
                conn.flights.clear();
                s.retiring.insert(generation, conn);
            }
            for conn in s.retiring.values_mut() {
                conn.flights.clear();
            }
            s.phase = Phase::Closed;
        }
    }

    pub(super) fn on_input_call(&mut self, now: Instant, input: &Input<'_>) -> Step {
        let conn = input.conn();
        if let Input::Unwritten { .. } = input {
            return Step::Unwritten;
        }
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
            Input::Ping { .. } => {
                c.last_heard = now;
                Step::Quiet
            }
            Input::Pong { payload, .. } => {
                c.last_heard = now;
                // Only the exact payload of the unanswered ping answers it.
                let answers = |seq: u64| {
                    c.ping_token
                        .is_some_and(|token| *payload == [token, seq.to_be_bytes()].concat())
                };
                let confirms = match c.unanswered {
                    Some((expected, write, _)) if answers(expected) => {
                        c.unanswered = None;
                        c.next_ping = c.next_ping.min(now + self.config.ping_period());
                        if self.config.confirm_delivery() {
                            // Every message written before the ping, and only those.
                            let mut n = 0;
                            while c.flights.front().is_some_and(|&(w, _, _)| w < write) {
                                let (_, kind, _) = c.flights.pop_front().expect("front exists");
                                self.sends[usize::from(kind)].confirmed += 1;
                                n += 1;
                            }
                            Some(n)
                        } else {
                            Some(0)
                        }
                    }
                    _ => None,
                };
                Step::Pong { conn, confirms }
            }
            Input::Flushed { writes, .. } => {
                let writes = (*writes).min(c.issued);
                if writes > c.flushed {
                    for _ in c.flushed..writes {
                        c.issue_times.pop_front();
                    }
                    c.flushed = writes;
                    c.write_deadline = c.issue_times.front().map(|&t| t + write_wait);
                    if !self.config.confirm_delivery() {
                        // Without confirmation, a flushed message has ended (as written).
                        while c.flights.front().is_some_and(|&(n, _, _)| n <= writes) {
                            if let Some((_, kind, _)) = c.flights.pop_front() {
                                self.sends[usize::from(kind)].written_final += 1;
                            }
                        }
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
