//! Rotation: replacing a connection that reached its maximum age. The replacement is dialed
//! while the old connection serves; once it opens, the old one retires (see `close.rs`).

use std::time::Instant;

use super::slot::{backoff_delay, conn_id, Conn, Phase};
use super::Pool;
use crate::{ConnId, DialError, Event, Output};

impl Pool {
    /// Starts the replacement of the open connection of `slot` when its age is up and none
    /// is under way.
    pub(super) fn rotation_due(&mut self, slot: usize, now: Instant) {
        if let Phase::Open {
            conn,
            replacement: None,
        } = &mut self.slots[slot].phase
        {
            if conn.rotate_at.is_some_and(|t| t <= now) {
                conn.rotate_at = None;
                self.start_replacement(slot, now);
            }
        }
    }

    fn start_replacement(&mut self, slot: usize, now: Instant) {
        let deadline = now + self.config.handshake_timeout;
        let s = &mut self.slots[slot];
        let generation = s.next_generation;
        s.next_generation += 1;
        if let Phase::Open { replacement, .. } = &mut s.phase {
            *replacement = Some((generation, deadline));
        }
        self.counters.dials += 1;
        self.outputs.push_back(Output::Dial {
            conn: conn_id(slot, generation),
        });
    }

    /// The replacement dial `id` opened: the new connection takes work from now on; the old
    /// one finishes what it has and then closes. False when `id` is no replacement under way.
    pub(super) fn replacement_connected(&mut self, now: Instant, id: ConnId) -> bool {
        let slot = usize::from(id.slot);
        let Phase::Open { conn, replacement } = &mut self.slots[slot].phase else {
            return false;
        };
        if replacement.is_none_or(|(generation, _)| generation != id.generation) {
            return false;
        }
        let old = std::mem::replace(conn, Conn::new(&self.config, &mut self.rng, id.generation, now));
        *replacement = None;
        self.slots[slot].retiring.push(old);
        self.counters.rotations += 1;
        // The old connection closes only once a final barrier confirmed what it carried.
        self.barriers_now(now);
        self.outputs
            .push_back(Output::Event(Event::Connected { conn: id }));
        self.retire_drained(slot);
        self.flush_outbox(now);
        true
    }

    /// A rotation's replacement dial failed: retry on the backoff schedule within the attempt
    /// budget; past it, keep the old connection in service until it dies.
    pub(super) fn replacement_failed(&mut self, slot: usize, now: Instant, conn: ConnId, error: DialError) {
        let (_, retry_after) = self.note_dial_failure(conn, error);
        let Phase::Open { conn, replacement } = &mut self.slots[slot].phase else {
            return;
        };
        let attempt = conn.rotation_attempt;
        let retry = (attempt < self.config.backoff_attempts)
            .then(|| backoff_delay(&self.config, &mut self.rng, attempt, retry_after));
        *replacement = None;
        match retry {
            Some(delay) => {
                conn.rotation_attempt += 1;
                conn.rotate_at = Some(now + delay);
            }
            None => {
                conn.rotate_at = None;
                self.outputs
                    .push_back(Output::Event(Event::RotationAbandoned { slot: slot as u16 }));
            }
        }
    }
}
