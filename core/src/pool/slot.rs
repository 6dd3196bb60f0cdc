//! Slots and their connections: dialing, dial failure, reconnection with backoff, re-arming
//! resting slots, key rejection, and losing a connection.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::message::{Barrier, Flight};
use super::Pool;
use crate::backoff::{jittered_delay, nominal_delay};
use crate::config::Config;
use crate::{ConnId, DialError, DisconnectReason, Event, Output, SlotState};

/// One open (or retiring) WebSocket.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) generation: u32,
    pub(super) pending: u32,
    pub(super) writes_issued: u64,
    pub(super) writes_flushed: u64,
    pub(super) read_deadline: Instant,
    pub(super) next_ping: Instant,
    pub(super) rotate_at: Option<Instant>,
    /// Fire-and-forget messages written and awaiting confirmation, in write order.
    pub(super) flights: VecDeque<Flight>,
    /// Their bytes.
    pub(super) window_bytes: usize,
    /// How many flights at the front are flushed and had their frames released.
    pub(super) released: usize,
    /// Pings: the barrier and keep-alive state.
    pub(super) barrier: Barrier,
    /// The write deadlines of the unflushed writes, run-length encoded: (first write number
    /// issued at one instant, that instant plus the write wait). Empty exactly when every
    /// write is flushed; its front is the connection's write deadline, which belongs to the
    /// oldest unflushed write, so a partial flush does not restart it.
    pub(super) write_deadlines: VecDeque<(u64, Instant)>,
    /// Failed replacement dials since this connection opened (its rotation's attempts).
    pub(super) rotation_attempt: u32,
}

impl Conn {
    /// A connection of `generation` that opened at `now`.
    pub(super) fn new(config: &Config, rng: &mut fastrand::Rng, generation: u32, now: Instant) -> Conn {
        let rotate_at = config.max_connection_age.map(|age| {
            // Jitter the age too, so connections opened together are not replaced together.
            now + jittered_delay(age, config.backoff_jitter.max(0.1), rng.f64())
        });
        Conn {
            generation,
            pending: 0,
            writes_issued: 0,
            writes_flushed: 0,
            read_deadline: now + config.pong_wait,
            next_ping: now + config.ping_period,
            rotate_at,
            flights: VecDeque::new(),
            window_bytes: 0,
            released: 0,
            barrier: Barrier {
                token: rng.u64(..).to_be_bytes(),
                ..Barrier::default()
            },
            write_deadlines: VecDeque::new(),
            rotation_attempt: 0,
        }
    }

    /// When the oldest unflushed write must be flushed by, if any is unflushed.
    #[inline]
    pub(super) fn write_deadline(&self) -> Option<Instant> {
        self.write_deadlines.front().map(|&(_, deadline)| deadline)
    }

    /// Writes issued and not yet flushed.
    pub(super) fn unflushed(&self) -> u64 {
        self.writes_issued - self.writes_flushed
    }
}

/// Where a slot is in its life.
// `Open` holds its connection inline: a pool has at most 64 slots, and every write goes
// through it, so a box would cost an indirection per write to save a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Phase {
    Idle {
        dial_at: Option<Instant>,
    },
    Dialing {
        generation: u32,
        deadline: Instant,
    },
    Open {
        conn: Conn,
        replacement: Option<(u32, Instant)>,
    },
    Backoff {
        until: Instant,
    },
    Exhausted,
    Closed,
}

impl Phase {
    /// The public name of this phase.
    pub(super) fn state(&self) -> SlotState {
        match self {
            Phase::Idle { .. } => SlotState::Idle,
            Phase::Dialing { .. } => SlotState::Dialing,
            Phase::Open { .. } => SlotState::Open,
            Phase::Backoff { .. } => SlotState::Backoff,
            Phase::Exhausted => SlotState::Exhausted,
            Phase::Closed => SlotState::Closed,
        }
    }
}

/// One place in the pool: at most one open connection at a time, plus the retiring ones.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) next_generation: u32,
    pub(super) attempt: u32,
    pub(super) phase: Phase,
    /// When demand last re-armed this slot after it rested (at most once per backoff cap).
    pub(super) rearmed_at: Option<Instant>,
    /// The status of this slot's most recent dial failure when it was a key rejection;
    /// cleared by any other failure and by a successful dial.
    pub(super) rejected: Option<u16>,
    /// Connections that take no new work and close once drained (rotation, close).
    pub(super) retiring: Vec<Conn>,
}

impl Slot {
    /// A slot never dialed.
    pub(super) fn new() -> Slot {
        Slot {
            next_generation: 0,
            attempt: 0,
            phase: Phase::Idle { dial_at: None },
            rearmed_at: None,
            rejected: None,
            retiring: Vec::new(),
        }
    }

    pub(super) fn open_conn(&self) -> Option<&Conn> {
        match &self.phase {
            Phase::Open { conn, .. } => Some(conn),
            _ => None,
        }
    }

    pub(super) fn open_conn_mut(&mut self) -> Option<&mut Conn> {
        match &mut self.phase {
            Phase::Open { conn, .. } => Some(conn),
            _ => None,
        }
    }

    pub(super) fn conn(&self, generation: u32) -> Option<&Conn> {
        match &self.phase {
            Phase::Open { conn, .. } if conn.generation == generation => Some(conn),
            _ => self.retiring.iter().find(|c| c.generation == generation),
        }
    }

    pub(super) fn conn_mut(&mut self, generation: u32) -> Option<&mut Conn> {
        if let Phase::Open { conn, .. } = &mut self.phase {
            if conn.generation == generation {
                return Some(conn);
            }
        }
        self.retiring.iter_mut().find(|c| c.generation == generation)
    }

    /// Hands every instant at which this slot's timers fire to `consider`.
    #[inline] // On the request path: see `Conn::timers`.
    pub(super) fn timers(&self, config: &Config, consider: &mut impl FnMut(Instant)) {
        match &self.phase {
            Phase::Idle { dial_at: Some(t) } => consider(*t),
            Phase::Dialing { deadline, .. } => consider(*deadline),
            Phase::Backoff { until } => consider(*until),
            Phase::Open { conn, replacement } => {
                conn.timers(config, consider);
                if let Some(t) = conn.rotate_at.filter(|_| replacement.is_none()) {
                    consider(t);
                }
                if let Some((_, t)) = replacement {
                    consider(*t);
                }
            }
            _ => {}
        }
        for conn in &self.retiring {
            conn.timers(config, consider);
        }
    }
}

pub(super) fn conn_id(slot: usize, generation: u32) -> ConnId {
    ConnId {
        slot: slot as u16,
        generation,
    }
}

/// The delay before retry `attempt`: the jittered schedule, and no sooner than the server's
/// `Retry-After` (bounded by the cap).
pub(super) fn backoff_delay(
    config: &Config,
    rng: &mut fastrand::Rng,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let nominal = nominal_delay(attempt, config.backoff_base, config.backoff_cap);
    let delay = jittered_delay(nominal, config.backoff_jitter, rng.f64());
    match retry_after {
        Some(asked) => delay.max(asked.min(config.backoff_cap)),
        None => delay,
    }
}

impl Pool {
    /// Dials every slot that has never been dialed, spread over `initial_dial_spread`.
    pub(super) fn dial_first(&mut self, now: Instant) {
        let spread = self.config.initial_dial_spread;
        for i in 0..self.slots.len() {
            if let Phase::Idle { dial_at: None } = self.slots[i].phase {
                if spread.is_zero() || i == 0 {
                    self.dial(i, now);
                } else {
                    let at = now + spread.mul_f64(self.rng.f64());
                    self.slots[i].phase = Phase::Idle { dial_at: Some(at) };
                }
            }
        }
    }

    /// Whether an input about `id` concerns a connection the pool still uses; counts stale
    /// ones. `ends`: the input reports the connection's end, which finishes a graceful close.
    pub(super) fn admit(&mut self, id: ConnId, ends: bool) -> bool {
        let slot = usize::from(id.slot);
        if slot >= self.slots.len() || id.generation >= self.slots[slot].next_generation {
            self.counters.stale_inputs += 1;
            return false;
        }
        if let Some(i) = self.lingering.iter().position(|(c, _)| *c == id) {
            // A connection closing gracefully: its end finishes the close; nothing else
            // about it matters any more (it had no pending request and no unflushed write).
            if ends {
                self.lingering.swap_remove(i);
            }
            return false;
        }
        true
    }

    pub(super) fn dial(&mut self, slot: usize, now: Instant) {
        let s = &mut self.slots[slot];
        let generation = s.next_generation;
        s.next_generation += 1;
        s.phase = Phase::Dialing {
            generation,
            deadline: now + self.config.handshake_timeout,
        };
        self.counters.dials += 1;
        self.outputs.push_back(Output::Dial {
            conn: conn_id(slot, generation),
        });
    }

    /// Demand (a request, send or connect) re-arms every resting slot that demand has not
    /// re-armed within the backoff cap, whatever else is open: a pool in use is never down
    /// for good, and a rejected key is not retried faster than the schedule.
    pub(super) fn rearm_resting(&mut self, now: Instant) {
        debug_assert_eq!(
            self.resting as usize,
            self.slots
                .iter()
                .filter(|s| matches!(s.phase, Phase::Exhausted))
                .count(),
            "the resting count follows the slots"
        );
        if self.resting == 0 {
            return;
        }
        let cap = self.config.backoff_cap;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if matches!(s.phase, Phase::Exhausted) && s.rearmed_at.is_none_or(|t| now >= t + cap) {
                self.rearm(i, now);
            }
        }
    }

    fn rearm(&mut self, slot: usize, now: Instant) {
        self.resting -= 1;
        self.counters.rearms += 1;
        let s = &mut self.slots[slot];
        s.attempt = 0;
        s.rearmed_at = Some(now);
        // Spread over the jitter's share of the base delay (none with jitter 0, the exact
        // schedule), so slots resting together do not dial together.
        let window = self.config.backoff_base.mul_f64(self.config.backoff_jitter);
        let delay = if window.is_zero() {
            Duration::ZERO
        } else {
            window.mul_f64(self.rng.f64())
        };
        self.outputs.push_back(Output::Event(Event::SlotRearmed {
            slot: slot as u16,
            delay,
        }));
        if delay.is_zero() {
            self.dial(slot, now);
        } else {
            self.slots[slot].phase = Phase::Backoff { until: now + delay };
        }
    }

    fn schedule_reconnect(&mut self, slot: usize, now: Instant, retry_after: Option<Duration>) {
        // Closing: only a drain with messages to deliver dials again.
        if self.closing && (self.drain_deadline.is_none() || self.live_messages() == 0) {
            self.slots[slot].phase = Phase::Closed;
            return;
        }
        let attempt = self.slots[slot].attempt;
        if attempt >= self.config.backoff_attempts {
            self.slots[slot].phase = Phase::Exhausted;
            self.resting += 1;
            self.counters.exhausted += 1;
            self.outputs
                .push_back(Output::Event(Event::AttemptsExhausted { slot: slot as u16 }));
            return;
        }
        let delay = backoff_delay(&self.config, &mut self.rng, attempt, retry_after);
        self.slots[slot].attempt += 1;
        self.counters.reconnects += 1;
        self.outputs.push_back(Output::Event(Event::ReconnectScheduled {
            slot: slot as u16,
            attempt,
            delay,
        }));
        if delay.is_zero() {
            self.dial(slot, now);
        } else {
            self.slots[slot].phase = Phase::Backoff { until: now + delay };
        }
    }

    pub(super) fn on_connected(&mut self, now: Instant, id: ConnId) {
        let slot = usize::from(id.slot);
        if matches!(self.slots[slot].phase, Phase::Dialing { generation, .. } if generation == id.generation)
        {
            let mut conn = Conn::new(&self.config, &mut self.rng, id.generation, now);
            if self.closing {
                // Open for a close drain: no rotation.
                conn.rotate_at = None;
            }
            let s = &mut self.slots[slot];
            s.phase = Phase::Open {
                conn,
                replacement: None,
            };
            s.attempt = 0;
            s.rejected = None;
            self.open_count += 1;
            self.rejected_status = None;
            self.outputs
                .push_back(Output::Event(Event::Connected { conn: id }));
            if !self.config.confirm_delivery && !self.confirmation_off_reported {
                self.confirmation_off_reported = true;
                self.outputs.push_back(Output::Event(Event::ConfirmationOff));
            }
            self.flush_outbox(now);
            self.update_availability(now);
        } else if !self.replacement_connected(now, id) {
            // A dial the pool gave up on (timed out, or closing) finished anyway: close
            // it. A repeated report about a live connection changes nothing.
            self.counters.stale_inputs += 1;
            if self.slots[slot].conn_mut(id.generation).is_none() {
                self.outputs.push_back(Output::Disconnect {
                    conn: id,
                    graceful: false,
                });
            }
        }
    }

    pub(super) fn on_connect_failed(&mut self, now: Instant, id: ConnId, error: DialError) {
        let slot = usize::from(id.slot);
        match self.slots[slot].phase {
            Phase::Dialing { generation, .. } if generation == id.generation => {
                self.dial_failed(slot, now, id, error);
            }
            Phase::Open {
                replacement: Some((generation, _)),
                ..
            } if generation == id.generation => self.replacement_failed(slot, now, id, error),
            _ => self.counters.stale_inputs += 1,
        }
    }

    /// Counts and reports a failed dial; returns the key rejection's status, if it was one,
    /// and the server's `Retry-After`.
    pub(super) fn note_dial_failure(
        &mut self,
        conn: ConnId,
        error: DialError,
    ) -> (Option<u16>, Option<Duration>) {
        self.counters.dial_failures += 1;
        let rejected = match error {
            DialError::Rejected { status } => Some(status),
            _ => None,
        };
        if rejected.is_some() {
            self.counters.rejections += 1;
        }
        let retry_after = error.retry_after();
        self.outputs
            .push_back(Output::Event(Event::ConnectFailed { conn, error }));
        (rejected, retry_after)
    }

    fn dial_failed(&mut self, slot: usize, now: Instant, conn: ConnId, error: DialError) {
        let (rejected, retry_after) = self.note_dial_failure(conn, error);
        self.slots[slot].rejected = rejected;
        self.schedule_reconnect(slot, now, retry_after);
        if let Some(status) = rejected {
            if self.open_count == 0 && self.slots.iter().all(|s| s.rejected.is_some()) {
                if self.rejected_status.is_none() {
                    self.outputs
                        .push_back(Output::Event(Event::KeyRejected { status }));
                }
                self.rejected_status = Some(status);
            }
        } else {
            self.rejected_status = None;
        }
    }

    /// Stops using a connection that died: its requests fail at once (or are re-sent once
    /// when idempotent), its written messages end unconfirmed or go back to the outbox (see
    /// `delivery.rs`), and its slot reconnects.
    pub(super) fn lose(&mut self, now: Instant, id: ConnId, reason: DisconnectReason) {
        let slot = usize::from(id.slot);
        let s = &mut self.slots[slot];
        let (conn, replacement, is_current) = match std::mem::replace(&mut s.phase, Phase::Closed) {
            Phase::Open { conn, replacement } if conn.generation == id.generation => {
                self.open_count -= 1;
                (conn, replacement, true)
            }
            phase => {
                s.phase = phase;
                match s.retiring.iter().position(|c| c.generation == id.generation) {
                    Some(i) => (s.retiring.swap_remove(i), None, false),
                    None => {
                        self.counters.stale_inputs += 1;
                        return;
                    }
                }
            }
        };
        self.counters.disconnects += 1;
        self.outputs.push_back(Output::Disconnect {
            conn: id,
            graceful: false,
        });
        self.outputs.push_back(Output::Event(Event::Disconnected {
            conn: id,
            reason: reason.clone(),
        }));
        // Before the reconnect decision, which depends (while closing) on messages left.
        self.lose_flights(now, id, conn.flights, conn.writes_flushed);
        if is_current {
            match replacement {
                // A rotation was already dialing: that dial is the reconnect.
                Some((generation, deadline)) => {
                    self.slots[slot].phase = Phase::Dialing { generation, deadline }
                }
                None => self.schedule_reconnect(slot, now, None),
            }
        }
        if conn.pending > 0 {
            self.lose_requests(now, id, reason);
        }
        self.update_availability(now);
    }

    /// Runs a slot's timers: its dial, its handshake deadline, its connections' deadlines and
    /// pings, and its rotation.
    pub(super) fn slot_timers(&mut self, slot: usize, now: Instant) {
        match self.slots[slot].phase {
            Phase::Idle { dial_at: Some(t) } | Phase::Backoff { until: t } if t <= now => {
                self.dial(slot, now)
            }
            Phase::Dialing { generation, deadline } if deadline <= now => {
                let conn = conn_id(slot, generation);
                self.outputs.push_back(Output::Disconnect {
                    conn,
                    graceful: false,
                });
                self.dial_failed(slot, now, conn, DialError::Timeout);
            }
            Phase::Open {
                ref conn,
                replacement,
            } => {
                let generation = conn.generation;
                if let Some((replacement, deadline)) = replacement {
                    if deadline <= now {
                        let conn = conn_id(slot, replacement);
                        self.outputs.push_back(Output::Disconnect {
                            conn,
                            graceful: false,
                        });
                        self.replacement_failed(slot, now, conn, DialError::Timeout);
                    }
                }
                if self.conn_timers(slot, generation, now) && !self.closing {
                    self.rotation_due(slot, now);
                }
            }
            _ => {}
        }
        let retiring: Vec<u32> = self.slots[slot].retiring.iter().map(|c| c.generation).collect();
        for generation in retiring {
            self.conn_timers(slot, generation, now);
        }
    }
}
