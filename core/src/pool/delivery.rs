//! Delivery of fire-and-forget messages once written: the per-connection window of messages
//! awaiting confirmation, barrier pings and the pongs that confirm them, and what happens to
//! written messages when their connection dies (unconfirmed, or back to the outbox), with
//! the writes an adapter reports as never started ([`Input::Unwritten`](crate::Input)).
//!
//! Every ping carries the connection's random token and its next sequence number, so every
//! ping is a barrier: its pong proves that the peer's WebSocket endpoint read every frame
//! written before it (it reads in order and answers a ping with the ping's data). The token
//! (from the pool's seeded randomness, so a simulation replays by seed) makes the payload
//! unguessable: an unsolicited pong, or one carrying a counter, confirms nothing. A connection keeps at most one
//! ping unanswered, because a peer may answer only the latest of several (RFC 6455 §5.5.3).

use std::collections::VecDeque;
use std::time::Instant;

use super::kinds::Kinds;
use super::message::{Flight, Message};
use super::slot::{conn_id, Conn, Phase};
use super::spool::{release, SpoolBook};
use super::Pool;
use crate::config::Config;
use crate::{ConnId, DisconnectReason, DropReason, Event, MessageFate, MessageId, Output, UnconfirmedReason};

/// A dead connection's written messages while some of its writes were unflushed, waiting for
/// the adapter to say which it never started ([`Input::Unwritten`](crate::Input)), until the
/// deadline. The flushed ones wait too, so that none goes back ahead of an older one that
/// never started (send order).
#[derive(Debug)]
pub(super) struct Limbo {
    pub(super) conn: ConnId,
    pub(super) deadline: Instant,
    /// The connection's writes flushed when it died: these started, whatever the report.
    pub(super) flushed: u64,
    pub(super) flights: Vec<Flight>,
}

impl Conn {
    /// Whether this connection's window has no room for a message of `len` bytes: full in
    /// count, or in bytes (one message larger than the byte window still goes when the
    /// window is empty).
    pub(super) fn window_full(&self, config: &Config, len: usize) -> bool {
        self.flights.len() >= config.max_unconfirmed as usize
            || (!self.flights.is_empty() && self.window_bytes + len > config.max_unconfirmed_bytes)
    }

    /// Lets go of the frames of flushed at-most-once messages: such a message is never
    /// written again (it ends confirmed or unconfirmed), so only its length matters now.
    /// Keeps memory to what may still be written again.
    pub(super) fn release_flushed(&mut self) {
        while let Some(f) = self.flights.get_mut(self.released) {
            if f.write > self.writes_flushed {
                break;
            }
            if !f.message.at_least_once {
                f.message.frame = String::new();
            }
            self.released += 1;
        }
    }

    /// Whether, with confirmation on, the unanswered ping is past its pong deadline (the
    /// connection dies of `PongTimeout`).
    pub(super) fn pong_overdue(&self, config: &Config, now: Instant) -> bool {
        config.confirm_delivery
            && self
                .barrier
                .unanswered
                .is_some_and(|(_, _, deadline)| deadline <= now)
    }

    /// Whether a barrier ping is due now for the messages written since the last one.
    fn barrier_due(&self, config: &Config, now: Instant) -> bool {
        let b = &self.barrier;
        b.unanswered.is_none()
            && b.since > 0
            && (b.since >= config.confirm_every
                || b.since_bytes.saturating_mul(2) >= config.max_unconfirmed_bytes
                || b.due_at.is_some_and(|t| t <= now)
                || self.flights.len() >= config.max_unconfirmed as usize)
    }

    /// Writes a ping: a barrier for everything written before it, and the keep-alive.
    pub(super) fn ping(&mut self, slot: usize, now: Instant, config: &Config) -> Output {
        // Any ping written while the keep-alive is due is the keep-alive too.
        if self.next_ping <= now {
            self.next_ping += config.ping_period;
            if self.next_ping <= now {
                self.next_ping = now + config.ping_period;
            }
        }
        self.barrier.seq += 1;
        let seq = self.barrier.seq;
        let write = self.issue(now, config.write_wait);
        self.barrier.unanswered = Some((seq, write, now + config.pong_wait));
        self.barrier.since = 0;
        self.barrier.since_bytes = 0;
        self.barrier.due_at = None;
        Output::Ping {
            conn: conn_id(slot, self.generation),
            payload: self.barrier.payload(seq),
        }
    }

    /// Hands the instants of this connection's barrier to `consider`: the pending barrier
    /// (only while no ping is unanswered: the pong brings the next one) and the pong deadline.
    #[inline] // On the request path: see `Conn::timers`.
    pub(super) fn barrier_timers(&self, config: &Config, consider: &mut impl FnMut(Instant)) {
        match self.barrier.unanswered {
            Some((_, _, deadline)) if config.confirm_delivery => consider(deadline),
            Some(_) => {}
            None => {
                if let Some(t) = self.barrier.due_at {
                    consider(t);
                }
            }
        }
    }
}

/// Writes `message` on `conn` (of `slot`): the transmit output, its flight, its counters, and
/// a barrier ping when one is due.
pub(super) fn write_message(
    outputs: &mut VecDeque<Output>,
    kinds: &mut Kinds,
    pings: &mut u64,
    config: &Config,
    (slot, conn): (usize, &mut Conn),
    now: Instant,
    mut message: Message,
) {
    let len = message.frame.len();
    let bytes = u32::try_from(len).unwrap_or(u32::MAX);
    let write = conn.issue(now, config.write_wait);
    outputs.push_back(Output::Transmit {
        conn: conn_id(slot, conn.generation),
        frame: message.frame.clone(),
    });
    let stats = &mut kinds.stats[usize::from(message.kind)];
    stats.written += 1;
    if message.writes > 0 {
        stats.rewritten += 1;
    }
    message.writes += 1;
    conn.window_bytes += len;
    conn.flights.push_back(Flight {
        message,
        write,
        written_at: now,
        bytes,
    });
    if config.confirm_delivery {
        let b = &mut conn.barrier;
        b.since += 1;
        b.since_bytes += len;
        b.due_at.get_or_insert(now + config.confirm_after);
        if conn.barrier_due(config, now) {
            *pings += 1;
            outputs.push_back(conn.ping(slot, now, config));
        }
    }
}

/// The fate a dead connection's flight meets, and the counters and events that go with it.
enum Fate {
    /// Back to the outbox (it never started, or at least once with rewrites left).
    Requeue,
    /// Ends unconfirmed.
    Unconfirmed(UnconfirmedReason),
}

impl Pool {
    /// Writes a barrier ping on every live connection that wrote messages since its last
    /// one (at once, or as soon as its unanswered ping is answered): for flush and close.
    pub(super) fn barriers_now(&mut self, now: Instant) {
        if !self.config.confirm_delivery {
            return;
        }
        for slot in 0..self.slots.len() {
            let s = &mut self.slots[slot];
            let open = match &mut s.phase {
                Phase::Open { conn, .. } => Some(conn),
                _ => None,
            };
            for conn in open.into_iter().chain(s.retiring.iter_mut()) {
                if conn.barrier.since > 0 {
                    conn.barrier.due_at = Some(now);
                    if conn.barrier_due(&self.config, now) {
                        self.counters.pings += 1;
                        self.outputs.push_back(conn.ping(slot, now, &self.config));
                    }
                }
            }
        }
    }

    /// Runs a live connection's barrier: a due barrier is written; with confirmation on, a
    /// ping unanswered past the pong wait kills the connection (false then).
    pub(super) fn barrier_timer(&mut self, slot: usize, generation: u32, now: Instant) -> bool {
        let config = &self.config;
        let Some(conn) = self.slots[slot].conn_mut(generation) else {
            return false;
        };
        if conn.barrier.unanswered.is_some() {
            if conn.pong_overdue(config, now) {
                let never = !conn.barrier.ever_answered;
                let id = conn_id(slot, generation);
                if never && !self.pongs_missing_reported {
                    self.pongs_missing_reported = true;
                    self.outputs
                        .push_back(Output::Event(Event::PongsMissing { conn: id }));
                }
                self.lose(now, id, DisconnectReason::PongTimeout);
                return false;
            }
        } else if conn.barrier_due(config, now) {
            self.counters.pings += 1;
            self.outputs.push_back(conn.ping(slot, now, config));
        }
        true
    }

    /// A pong arrived on a live connection: when it answers the unanswered ping, every
    /// message written before that ping is confirmed.
    pub(super) fn on_pong(&mut self, now: Instant, id: ConnId, payload: &[u8]) {
        let slot = usize::from(id.slot);
        let Some(conn) = self.slots[slot].conn_mut(id.generation) else {
            return;
        };
        let Some((expected, write, _)) = conn.barrier.unanswered else {
            return;
        };
        // Pings are answered in order and only one is outstanding: only its exact payload
        // answers it (an older sequence is a late duplicate, anything else a guess).
        if payload != conn.barrier.payload(expected) {
            return;
        }
        conn.barrier.unanswered = None;
        conn.barrier.ever_answered = true;
        // A keep-alive held back for this pong is due a period from now at the latest.
        conn.next_ping = conn.next_ping.min(now + self.config.ping_period);
        self.counters.pongs += 1;
        // With confirmation off, flushed messages already ended as written.
        if !self.config.confirm_delivery {
            return;
        }
        while conn.flights.front().is_some_and(|f| f.write < write) {
            let Some(flight) = conn.flights.pop_front() else {
                break;
            };
            conn.released = conn.released.saturating_sub(1);
            conn.window_bytes -= flight.bytes as usize;
            let stats = &mut self.kinds.stats[usize::from(flight.message.kind)];
            stats.written -= 1;
            stats.confirmed += 1;
            self.confirm_latency
                .record(now.saturating_duration_since(flight.written_at), 1);
            release(
                &mut self.spool,
                &mut self.outputs,
                flight.message.id,
                flight.bytes as usize,
                MessageFate::Confirmed,
            );
            if flight.message.notify {
                self.outputs.push_back(Output::Settled {
                    id: MessageId(flight.message.id),
                    fate: MessageFate::Confirmed,
                });
            }
        }
        if conn.barrier_due(&self.config, now) {
            self.counters.pings += 1;
            self.outputs.push_back(conn.ping(slot, now, &self.config));
        }
        self.retire_drained(slot);
        self.flush_outbox(now);
    }

    /// With confirmation off, messages end as written once flushed (they stay counted in
    /// `written`).
    pub(super) fn flights_flushed(
        outputs: &mut VecDeque<Output>,
        kinds: &mut Kinds,
        spool: &mut Option<SpoolBook>,
        conn: &mut Conn,
    ) {
        while conn
            .flights
            .front()
            .is_some_and(|f| f.write <= conn.writes_flushed)
        {
            let Some(flight) = conn.flights.pop_front() else {
                break;
            };
            conn.window_bytes -= flight.bytes as usize;
            kinds.stats[usize::from(flight.message.kind)].written_final += 1;
            release(
                spool,
                outputs,
                flight.message.id,
                flight.bytes as usize,
                MessageFate::Written,
            );
            if flight.message.notify {
                outputs.push_back(Output::Settled {
                    id: MessageId(flight.message.id),
                    fate: MessageFate::Written,
                });
            }
        }
    }

    /// The written messages of connection `id` that just died (`flushed`: its writes
    /// flushed): flushed ones end unconfirmed (at most once) or go back to the outbox (at
    /// least once). When some are unflushed, those and the flushed at-least-once ones wait in
    /// limbo for the adapter's [`Input::Unwritten`](crate::Input), so that they go back in
    /// send order.
    pub(super) fn lose_flights(&mut self, now: Instant, id: ConnId, flights: VecDeque<Flight>, flushed: u64) {
        if flights.is_empty() {
            return;
        }
        let (settled, waiting): (Vec<Flight>, Vec<Flight>) = if flights.iter().all(|f| f.write <= flushed) {
            (flights.into(), Vec::new())
        } else {
            flights
                .into_iter()
                .partition(|f| f.write <= flushed && !f.message.at_least_once)
        };
        let back = self.settle_dead(settled);
        self.requeue(now, back);
        if !waiting.is_empty() {
            self.limbo.push(Limbo {
                conn: id,
                deadline: now + self.config.write_wait,
                flushed,
                flights: waiting,
            });
        }
    }

    /// The adapter's word on a dead connection's unflushed writes: writes from `first` on
    /// never started.
    pub(super) fn on_unwritten(&mut self, now: Instant, id: ConnId, first: u64) {
        // Nothing unflushed died with that connection (or the report is late): nothing to do.
        // Not a stale input: adapters report after every drop, unflushed writes or not.
        let Some(i) = self.limbo.iter().position(|l| l.conn == id) else {
            return;
        };
        let limbo = self.limbo.swap_remove(i);
        let first = first.max(limbo.flushed + 1);
        let (never, started): (Vec<Flight>, Vec<Flight>) =
            limbo.flights.into_iter().partition(|f| f.write >= first);
        let mut back = Vec::with_capacity(never.len());
        for mut flight in never {
            // Not written after all: it does not count towards its rewrites (`rewritten`
            // counts writes issued, so it keeps this one).
            let stats = &mut self.kinds.stats[usize::from(flight.message.kind)];
            stats.written -= 1;
            flight.message.writes -= 1;
            back.push(flight.message);
        }
        // One requeue for both, so that they merge in send order.
        back.extend(self.settle_dead(started));
        self.requeue(now, back);
    }

    /// Limbo past its deadline: every write may have started.
    pub(super) fn expire_limbo(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.limbo.len() {
            if self.limbo[i].deadline <= now {
                let limbo = self.limbo.swap_remove(i);
                let back = self.settle_dead(limbo.flights);
                self.requeue(now, back);
            } else {
                i += 1;
            }
        }
    }

    /// Flights of a dead connection that may have reached the server: unconfirmed (at most
    /// once, or at least once with its rewrites used up), or returned to go back to the outbox.
    #[must_use]
    fn settle_dead(&mut self, flights: Vec<Flight>) -> Vec<Message> {
        let mut back = Vec::new();
        let mut ended = vec![0u64; self.kinds.names.len() * 2];
        for flight in flights {
            let bytes = flight.bytes as usize;
            let m = flight.message;
            let stats = &mut self.kinds.stats[usize::from(m.kind)];
            stats.written -= 1;
            let fate = if !m.at_least_once {
                Fate::Unconfirmed(UnconfirmedReason::ConnectionDied)
            } else if m.writes > self.config.max_rewrites {
                Fate::Unconfirmed(UnconfirmedReason::RewritesExhausted)
            } else {
                Fate::Requeue
            };
            match fate {
                Fate::Requeue => back.push(m),
                Fate::Unconfirmed(reason) => {
                    stats.unconfirmed += 1;
                    let exhausted = reason == UnconfirmedReason::RewritesExhausted;
                    if exhausted {
                        stats.rewrites_exhausted += 1;
                    }
                    ended[usize::from(m.kind) * 2 + usize::from(exhausted)] += 1;
                    release(
                        &mut self.spool,
                        &mut self.outputs,
                        m.id,
                        bytes,
                        MessageFate::Unconfirmed(reason),
                    );
                    if m.notify {
                        self.outputs.push_back(Output::Settled {
                            id: MessageId(m.id),
                            fate: MessageFate::Unconfirmed(reason),
                        });
                    }
                }
            }
        }
        for (i, &count) in ended.iter().enumerate() {
            if count > 0 {
                let reason = if i % 2 == 1 {
                    DropReason::RewritesExhausted
                } else {
                    DropReason::Unconfirmed
                };
                self.outputs.push_back(Output::Event(Event::MessageDropped {
                    kind: self.kinds.names[i / 2].clone(),
                    reason,
                    count,
                }));
            }
        }
        back
    }

    /// Puts messages back into the outbox, ahead of newer ones, in their send order (the
    /// outbox stays sorted by id, so by TTL too). They are not refused for capacity: they were
    /// accepted already; new sends are refused first.
    fn requeue(&mut self, now: Instant, mut back: Vec<Message>) {
        if back.is_empty() {
            return;
        }
        self.spool_rekeep(&back);
        for m in &back {
            self.kinds.stats[usize::from(m.kind)].queued += 1;
            self.outbox_bytes += m.frame.len();
        }
        back.sort_unstable_by_key(|m| m.id);
        if self
            .outbox
            .front()
            .is_none_or(|q| back.last().is_some_and(|b| b.id < q.id))
        {
            for m in back.into_iter().rev() {
                self.outbox.push_front(m);
            }
        } else {
            let old = std::mem::take(&mut self.outbox);
            let mut a = back.into_iter().peekable();
            let mut b = old.into_iter().peekable();
            loop {
                let take_a = match (a.peek(), b.peek()) {
                    (Some(x), Some(y)) => x.id < y.id,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                let next = if take_a { a.next() } else { b.next() };
                self.outbox.extend(next);
            }
        }
        // Their TTL counts from the first send: some may be past it already.
        self.expire_outbox(now);
        if !self.closing || self.drain_deadline.is_some() {
            self.flush_outbox(now);
        }
    }

    /// The id of the oldest message not yet ended, if any.
    pub(super) fn oldest_live(&self) -> Option<u64> {
        let mut oldest = self.outbox.front().map(|m| m.id);
        let mut consider = |id: u64| {
            if oldest.is_none_or(|o| id < o) {
                oldest = Some(id);
            }
        };
        for s in &self.slots {
            for conn in s.open_conn().into_iter().chain(&s.retiring) {
                conn.flights.iter().for_each(|f| consider(f.message.id));
            }
        }
        for l in &self.limbo {
            l.flights.iter().for_each(|f| consider(f.message.id));
        }
        oldest
    }
}
