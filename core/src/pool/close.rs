//! Closing: the pool's close (refuse new work, drain, close every connection), and the
//! graceful close of retiring connections (rotation and close).

use std::time::Instant;

use super::slot::{conn_id, Phase};
use super::Pool;
use crate::{DisconnectReason, DropReason, Event, Output, RequestFailure};

impl Pool {
    /// The body of [`Pool::close`], called once.
    pub(super) fn begin_close(&mut self, now: Instant) {
        self.closing = true;
        self.resting = 0;
        let dropped = std::mem::take(&mut self.outbox);
        self.drop_queued(dropped, DropReason::Closed);
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
        if self.config.close_drain.is_zero() || self.pending.is_empty() {
            self.fail_all_pending(now, RequestFailure::Closed);
        } else {
            self.drain_deadline = Some(now + self.config.close_drain);
        }
        for i in 0..self.slots.len() {
            self.retire_drained(i);
        }
        self.update_availability(now);
    }

    /// Whether the pool is closed and done (see [`Pool::is_closed`]).
    pub(super) fn closed_and_done(&self) -> bool {
        self.closing
            && self.pending.is_empty()
            && self.lingering.is_empty()
            && self
                .slots
                .iter()
                .all(|s| matches!(s.phase, Phase::Closed) && s.retiring.is_empty())
    }

    /// The close drain ended: what is still pending completes as closed.
    pub(super) fn end_drain(&mut self, now: Instant) {
        if self.drain_deadline.is_some_and(|d| d <= now) {
            self.drain_deadline = None;
            self.fail_all_pending(now, RequestFailure::Closed);
            for i in 0..self.slots.len() {
                self.retire_drained(i);
            }
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

    /// Closes retiring connections that have no pending request and no unflushed write.
    pub(super) fn retire_drained(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if s.retiring.is_empty() {
            return;
        }
        let mut i = 0;
        while i < s.retiring.len() {
            let c = &s.retiring[i];
            if c.pending == 0 && c.unflushed() == 0 {
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
