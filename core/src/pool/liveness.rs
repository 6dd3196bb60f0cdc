//! Liveness: writes and their flushes, the write deadline, the read deadline, keep-alive
//! pings (every ping is also a barrier, see `delivery.rs`).

use std::time::{Duration, Instant};

use super::slot::{conn_id, Conn};
use super::Pool;
use crate::config::Config;
use crate::{ConnId, DisconnectReason};

impl Conn {
    /// Issues one write on this connection (a frame or a ping) at `now`: returns its number
    /// and records its write deadline.
    pub(super) fn issue(&mut self, now: Instant, write_wait: Duration) -> u64 {
        self.writes_issued += 1;
        let n = self.writes_issued;
        let deadline = now + write_wait;
        if self.write_deadlines.back().is_none_or(|&(_, d)| d != deadline) {
            self.write_deadlines.push_back((n, deadline));
        }
        n
    }

    /// Hands this connection's deadlines (write, read, next ping, barrier) to `consider`.
    // Inlined: `Pool::poll_timeout` walks every slot after every command (the driver asks
    // whether its sleep must be cut short), so this runs pool-size times per request.
    #[inline]
    pub(super) fn timers(&self, config: &Config, consider: &mut impl FnMut(Instant)) {
        if let Some(t) = self.write_deadline() {
            consider(t);
        }
        consider(self.read_deadline);
        consider(self.next_ping);
        self.barrier_timers(config, consider);
    }
}

impl Pool {
    /// Pushes the read deadline of a live connection; false when the input names none.
    pub(super) fn touch(&mut self, now: Instant, id: ConnId) -> bool {
        let pong_wait = self.config.pong_wait;
        match self.slots[usize::from(id.slot)].conn_mut(id.generation) {
            Some(conn) => {
                conn.read_deadline = now + pong_wait;
                true
            }
            None => {
                self.counters.stale_inputs += 1;
                false
            }
        }
    }

    pub(super) fn on_flushed(&mut self, now: Instant, id: ConnId, writes: u64) {
        let slot = usize::from(id.slot);
        let Some(conn) = self.slots[slot].conn_mut(id.generation) else {
            self.counters.stale_inputs += 1;
            return;
        };
        let writes = writes.min(conn.writes_issued);
        if writes <= conn.writes_flushed {
            return;
        }
        conn.writes_flushed = writes;
        // The deadline belongs to the oldest write still unflushed: drop the runs before it.
        if writes == conn.writes_issued {
            conn.write_deadlines.clear();
        } else {
            let oldest = writes + 1;
            while conn
                .write_deadlines
                .get(1)
                .is_some_and(|&(first, _)| first <= oldest)
            {
                conn.write_deadlines.pop_front();
            }
        }
        if self.config.confirm_delivery {
            conn.release_flushed();
        } else {
            Pool::flights_flushed(&mut self.outputs, &mut self.kinds, &mut self.spool, conn);
        }
        self.retire_drained(slot);
        self.flush_outbox(now);
    }

    /// Runs a live connection's deadlines; false when it died of one.
    pub(super) fn conn_timers(&mut self, slot: usize, generation: u32, now: Instant) -> bool {
        let ping_period = self.config.ping_period;
        let id = conn_id(slot, generation);
        let Some(conn) = self.slots[slot].conn_mut(generation) else {
            return false;
        };
        if conn.write_deadline().is_some_and(|t| t <= now) {
            self.lose(now, id, DisconnectReason::WriteTimeout);
            return false;
        }
        // A ping overdue in the same tick is the more specific diagnosis (the peer answers
        // nothing, or with the wrong data): the barrier timer below reports it.
        if conn.read_deadline <= now && !conn.pong_overdue(&self.config, now) {
            self.lose(now, id, DisconnectReason::ReadTimeout);
            return false;
        }
        if conn.next_ping <= now {
            conn.next_ping += ping_period;
            if conn.next_ping <= now {
                conn.next_ping = now + ping_period;
            }
            match conn.barrier.unanswered {
                // With confirmation on, the unanswered ping's deadline decides this
                // connection's fate; another ping would only queue behind it. Look again
                // then (or when the pong comes).
                Some((_, _, deadline)) if self.config.confirm_delivery => {
                    conn.next_ping = conn.next_ping.max(deadline);
                }
                // Not even flushed: another would only queue behind it (the adapter's queue
                // would grow by one per period on a stuck socket). The write deadline
                // decides; look again then.
                Some((_, write, _)) if write > conn.writes_flushed => {
                    if let Some(deadline) = conn.write_deadline() {
                        conn.next_ping = conn.next_ping.max(deadline);
                    }
                }
                _ => {
                    self.counters.pings += 1;
                    let ping = conn.ping(slot, now, &self.config);
                    self.outputs.push_back(ping);
                }
            }
        }
        self.barrier_timer(slot, generation, now)
    }
}
