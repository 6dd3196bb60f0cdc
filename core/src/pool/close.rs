//! Closing: the pool's close (refuse new work; drain pending requests and queued and written
//! messages for `close_drain`; hand back what is left; close every connection), and the
//! graceful close of retiring connections (rotation and close).

use std::time::Instant;

use super::slot::{conn_id, Phase};
use super::Pool;
use crate::{
    DisconnectReason, DropReason, Event, MessageFate, MessageId, Output, RequestFailure, UnconfirmedReason,
};

impl Pool {
    /// The body of [`Pool::close`], called once: new work is refused from now on. With
    /// nothing to deliver (or no drain), the pool closes at once; otherwise it drains first
    /// (see `check_drain`).
    pub(super) fn begin_close(&mut self, now: Instant) {
        self.closing = true;
        let messages = self.live_messages() > 0;
        if self.config.close_drain.is_zero() || (!messages && self.pending.is_empty()) {
            self.finish_close(now);
            return;
        }
        self.drain_deadline = Some(now + self.config.close_drain);
        // No rotation from now on. Slots that may still deliver messages keep dialing on
        // their schedule until the drain ends; the rest stop.
        let mut dialing = false;
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            match &mut s.phase {
                Phase::Open { conn, replacement } => {
                    conn.rotate_at = None;
                    if let Some((generation, _)) = replacement.take() {
                        self.outputs.push_back(Output::Disconnect {
                            conn: conn_id(i, generation),
                            graceful: false,
                        });
                    }
                }
                Phase::Dialing { .. } if messages => dialing = true,
                Phase::Backoff { .. } | Phase::Idle { dial_at: Some(_) } if messages => {}
                Phase::Dialing { generation, .. } => {
                    let generation = *generation;
                    s.phase = Phase::Closed;
                    self.outputs.push_back(Output::Disconnect {
                        conn: conn_id(i, generation),
                        graceful: false,
                    });
                }
                Phase::Exhausted => {
                    s.phase = Phase::Closed;
                    self.resting -= 1;
                }
                _ => s.phase = Phase::Closed,
            }
        }
        // Nothing open or dialing, and messages to deliver: one dial at once (a slot waiting
        // for its backoff, or at rest), unless the key was refused.
        if messages && self.open_count == 0 && !dialing && self.rejected_status.is_none() {
            self.dial(0, now);
        }
        self.barriers_now(now);
        self.check_drain(now);
        self.update_availability(now);
    }

    /// During a close drain: finishes the close once nothing is left to wait for (every
    /// request completed and every message ended), once nothing can deliver any more (no
    /// connection open, dialing or due to dial), or when the key was rejected.
    pub(super) fn check_drain(&mut self, now: Instant) {
        if self.drain_deadline.is_none() {
            return;
        }
        let idle = self.pending.is_empty() && self.live_messages() == 0;
        let stuck = self.slots.iter().all(|s| {
            !matches!(
                s.phase,
                Phase::Open { .. }
                    | Phase::Dialing { .. }
                    | Phase::Backoff { .. }
                    | Phase::Idle { dial_at: Some(_) }
            )
        });
        if idle || stuck || self.rejected_status.is_some() {
            self.finish_close(now);
        }
    }

    /// Ends the close: what is still queued, and written at-least-once messages, end as
    /// closed and are handed back; written at-most-once messages end unconfirmed; pending
    /// requests complete as closed; every connection closes gracefully once flushed.
    fn finish_close(&mut self, now: Instant) {
        self.drain_deadline = None;
        let limbo = std::mem::take(&mut self.limbo);
        let mut by_kind = vec![0u64; self.kinds.names.len()];
        let mut unconfirmed = vec![0u64; self.kinds.names.len()];
        let flights = limbo.into_iter().flat_map(|l| l.flights).collect::<Vec<_>>();
        let mut written: Vec<_> = flights;
        for s in &mut self.slots {
            if let Phase::Open { conn, .. } = &mut s.phase {
                conn.window_bytes = 0;
                written.extend(conn.flights.drain(..));
            }
            for conn in &mut s.retiring {
                conn.window_bytes = 0;
                written.extend(conn.flights.drain(..));
            }
        }
        written.sort_unstable_by_key(|f| f.message.id);
        // Handed back in send order: the written ones are older than what still waits.
        for flight in written {
            let bytes = flight.bytes as usize;
            let m = flight.message;
            if m.at_least_once {
                self.hand_back(m, true, &mut by_kind);
            } else {
                let s = &mut self.kinds.stats[usize::from(m.kind)];
                s.written -= 1;
                s.unconfirmed += 1;
                unconfirmed[usize::from(m.kind)] += 1;
                self.spool_release(m.id, bytes, MessageFate::Unconfirmed(UnconfirmedReason::Closed));
                if m.notify {
                    self.outputs.push_back(Output::Settled {
                        id: MessageId(m.id),
                        fate: MessageFate::Unconfirmed(UnconfirmedReason::Closed),
                    });
                }
            }
        }
        while let Some(m) = self.pop_outbox() {
            self.hand_back(m, false, &mut by_kind);
        }
        self.report_drops(&unconfirmed, DropReason::Unconfirmed);
        self.report_drops(&by_kind, DropReason::Closed);
        self.resting = 0;
        for i in 0..self.slots.len() {
            let phase = std::mem::replace(&mut self.slots[i].phase, Phase::Closed);
            match phase {
                Phase::Dialing { generation, .. } => {
                    self.outputs.push_back(Output::Disconnect {
                        conn: conn_id(i, generation),
                        graceful: false,
                    });
                }
                Phase::Open { conn, replacement } => {
                    self.open_count -= 1;
                    if let Some((generation, _)) = replacement {
                        self.outputs.push_back(Output::Disconnect {
                            conn: conn_id(i, generation),
                            graceful: false,
                        });
                    }
                    self.slots[i].retiring.push(conn);
                }
                _ => {}
            }
        }
        self.fail_all_pending(now, RequestFailure::Closed);
        for i in 0..self.slots.len() {
            self.retire_drained(i);
        }
        self.update_availability(now);
    }

    /// Whether the pool is closed and done (see [`Pool::is_closed`]).
    pub(super) fn closed_and_done(&self) -> bool {
        self.closing
            && self.drain_deadline.is_none()
            && self.pending.is_empty()
            && self.lingering.is_empty()
            && self.limbo.is_empty()
            && self
                .slots
                .iter()
                .all(|s| matches!(s.phase, Phase::Closed) && s.retiring.is_empty())
    }

    /// The close drain's deadline passed.
    pub(super) fn end_drain(&mut self, now: Instant) {
        if self.drain_deadline.is_some_and(|d| d <= now) {
            self.finish_close(now);
        }
    }

    /// A close handshake that did not finish within the write wait: drop the socket.
    pub(super) fn abort_lingering(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.lingering.len() {
            if self.lingering[i].1 <= now {
                let (conn, _) = self.lingering.swap_remove(i);
                self.outputs.push_back(Output::Disconnect {
                    conn,
                    graceful: false,
                });
            } else {
                i += 1;
            }
        }
    }

    /// Closes retiring connections that have no pending request, no unflushed write and no
    /// message awaiting confirmation (a rotation confirms everything written on the old
    /// connection before closing it).
    pub(super) fn retire_drained(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if s.retiring.is_empty() {
            return;
        }
        let mut i = 0;
        while i < s.retiring.len() {
            let c = &s.retiring[i];
            if c.pending == 0 && c.unflushed() == 0 && c.flights.is_empty() {
                let conn = s.retiring.swap_remove(i);
                let id = conn_id(slot, conn.generation);
                self.outputs.push_back(Output::Disconnect {
                    conn: id,
                    graceful: true,
                });
                self.lingering.push((id, self.now + self.config.write_wait));
                self.outputs.push_back(Output::Event(Event::Disconnected {
                    conn: id,
                    reason: if self.closing {
                        DisconnectReason::PoolClosing
                    } else {
                        DisconnectReason::Rotated
                    },
                }));
            } else {
                i += 1;
            }
        }
    }
}
