//! Liveness: writes and their flushes, the write deadline, the read deadline, pings.

use std::time::{Duration, Instant};

use super::slot::{conn_id, Conn};
use super::Pool;
use crate::{ConnId, DisconnectReason, Output};

impl Conn {
    /// Issues one write on this connection of `slot`: a frame, or a ping when `frame` is
    /// `None`. Returns the write's number and the output that carries it.
    pub(super) fn write(
        &mut self,
        slot: usize,
        now: Instant,
        write_wait: Duration,
        frame: Option<String>,
    ) -> (u64, Output) {
        self.writes_issued += 1;
        let n = self.writes_issued;
        let deadline = now + write_wait;
        if self.write_deadlines.back().is_none_or(|&(_, d)| d != deadline) {
            self.write_deadlines.push_back((n, deadline));
        }
        let id = conn_id(slot, self.generation);
        let output = match frame {
            Some(frame) => Output::Transmit { conn: id, frame },
            None => Output::Ping { conn: id },
        };
        (n, output)
    }

    /// Hands this connection's deadlines (write, read, next ping) to `consider`.
    pub(super) fn timers(&self, consider: &mut impl FnMut(Instant)) {
        if let Some(t) = self.write_deadline() {
            consider(t);
        }
        consider(self.read_deadline);
        consider(self.next_ping);
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
        self.kinds.flushed(&mut conn.unflushed_sends, writes);
        self.retire_drained(slot);
        self.flush_outbox(now);
    }

    /// Runs a live connection's deadlines; false when it died of one.
    pub(super) fn conn_timers(&mut self, slot: usize, generation: u32, now: Instant) -> bool {
        let ping_period = self.config.ping_period;
        let write_wait = self.config.write_wait;
        let id = conn_id(slot, generation);
        let Some(conn) = self.slots[slot].conn_mut(generation) else {
            return false;
        };
        if conn.write_deadline().is_some_and(|t| t <= now) {
            self.lose(now, id, DisconnectReason::WriteTimeout);
            return false;
        }
        if conn.read_deadline <= now {
            self.lose(now, id, DisconnectReason::ReadTimeout);
            return false;
        }
        if conn.next_ping <= now {
            conn.next_ping += ping_period;
            if conn.next_ping <= now {
                conn.next_ping = now + ping_period;
            }
            if conn.last_ping > conn.writes_flushed {
                // The last ping is not even flushed: another would only queue behind it (the
                // adapter's queue would grow by one per period on a stuck socket). The write
                // deadline decides this connection's fate; look again then.
                if let Some(deadline) = conn.write_deadline() {
                    conn.next_ping = conn.next_ping.max(deadline);
                }
            } else {
                self.counters.pings += 1;
                let (n, ping) = conn.write(slot, now, write_wait, None);
                self.outputs.push_back(ping);
                conn.last_ping = n;
            }
        }
        true
    }
}
