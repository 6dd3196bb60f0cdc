//! Fire-and-forget messages: the outbox (bounded, with a TTL, in order), the per-type
//! counters (`Kinds`), and drops.

use std::collections::VecDeque;
use std::time::Instant;

use super::select::select;
use super::slot::Conn;
use super::Pool;
use crate::stats::SendStats;
use crate::{DropReason, Event, Output, SendRefusal};

/// Distinct message types tracked separately in send counters; the rest share one bucket
/// (named [`OTHER_KIND`]), so at most this many plus one sets of counters exist.
pub(crate) const MAX_TRACKED_KINDS: usize = 64;
/// The name of the shared bucket of message types past [`MAX_TRACKED_KINDS`].
pub(crate) const OTHER_KIND: &str = "*other*";

/// A message waiting in the outbox.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) frame: String,
    pub(super) kind: u16,
    pub(super) expires: Instant,
}

/// What the application can be told about the message types it sends.
#[derive(Debug, Default)]
pub(super) struct Kinds {
    pub(super) names: Vec<String>,
    pub(super) stats: Vec<SendStats>,
}

impl Kinds {
    /// The index of `kind`'s counters. A linear scan: there are at most 64 names and a
    /// middleware sends a handful of types, so this beats hashing the name on every send.
    fn intern(&mut self, kind: &str) -> u16 {
        if let Some(i) = self.position(kind) {
            return i;
        }
        let name = if self.names.len() >= MAX_TRACKED_KINDS {
            OTHER_KIND
        } else {
            kind
        };
        if let Some(i) = self.position(name) {
            return i;
        }
        self.names.push(name.to_owned());
        self.stats.push(SendStats::default());
        (self.names.len() - 1) as u16
    }

    fn position(&self, kind: &str) -> Option<u16> {
        self.names.iter().position(|n| n == kind).map(|i| i as u16)
    }

    /// Counts the messages of `unflushed` (a connection's written sends) that the first
    /// `writes` writes covered as sent.
    pub(super) fn flushed(&mut self, unflushed: &mut VecDeque<(u64, u16)>, writes: u64) {
        while let Some(&(n, kind)) = unflushed.front() {
            if n > writes {
                break;
            }
            unflushed.pop_front();
            let s = &mut self.stats[usize::from(kind)];
            s.unflushed -= 1;
            s.sent += 1;
        }
    }
}

/// Writes a fire-and-forget message on `conn` (of `slot`) and counts it as unflushed.
fn write_send(
    outputs: &mut VecDeque<Output>,
    kinds: &mut Kinds,
    (slot, conn): (usize, &mut Conn),
    now: Instant,
    write_wait: std::time::Duration,
    frame: String,
    kind: u16,
) {
    let (n, transmit) = conn.write(slot, now, write_wait, Some(frame));
    outputs.push_back(transmit);
    conn.unflushed_sends.push_back((n, kind));
    kinds.stats[usize::from(kind)].unflushed += 1;
}

impl Pool {
    /// The body of [`Pool::send`].
    pub(super) fn accept_send(&mut self, now: Instant, kind: &str, frame: String) -> Result<(), SendRefusal> {
        let index = self.kinds.intern(kind);
        self.kinds.stats[usize::from(index)].sends += 1;
        if self.closing {
            self.kinds.stats[usize::from(index)].closed += 1;
            return Err(SendRefusal::Closed);
        }
        self.rearm_resting(now);
        // Messages never overtake the outbox: while it has any, new ones queue behind them.
        if self.outbox.is_empty() {
            if let Some(to) = select(&mut self.slots, &mut self.cursor, &self.config, false, None) {
                let write_wait = self.config.write_wait;
                write_send(
                    &mut self.outputs,
                    &mut self.kinds,
                    to,
                    now,
                    write_wait,
                    frame,
                    index,
                );
                return Ok(());
            }
        }
        if self.outbox.len() >= self.config.outbox_capacity as usize {
            self.kinds.stats[usize::from(index)].dropped += 1;
            // The counters' name for it (`*other*` past the tracked types), as in every
            // other drop event.
            self.outputs.push_back(Output::Event(Event::MessageDropped {
                kind: self.kinds.names[usize::from(index)].clone(),
                reason: DropReason::OutboxFull,
                count: 1,
            }));
            return Err(SendRefusal::OutboxFull);
        }
        self.kinds.stats[usize::from(index)].queued += 1;
        self.outbox.push_back(Queued {
            frame,
            kind: index,
            expires: now + self.config.outbox_ttl,
        });
        Ok(())
    }

    /// Writes queued messages, in order, while a connection can take them.
    pub(super) fn flush_outbox(&mut self, now: Instant) {
        let write_wait = self.config.write_wait;
        while let Some(q) = self.outbox.pop_front() {
            let Some(to) = select(&mut self.slots, &mut self.cursor, &self.config, false, None) else {
                // No connection can take it: it stays at the head.
                self.outbox.push_front(q);
                return;
            };
            self.kinds.stats[usize::from(q.kind)].queued -= 1;
            write_send(
                &mut self.outputs,
                &mut self.kinds,
                to,
                now,
                write_wait,
                q.frame,
                q.kind,
            );
        }
    }

    /// Drops the messages whose TTL passed.
    pub(super) fn expire_outbox(&mut self, now: Instant) {
        let mut expired = VecDeque::new();
        while self.outbox.front().is_some_and(|q| q.expires <= now) {
            expired.extend(self.outbox.pop_front());
        }
        self.drop_queued(expired, DropReason::Expired);
    }

    pub(super) fn drop_queued(&mut self, queued: VecDeque<Queued>, reason: DropReason) {
        // One event per kind and batch, not per message: an outage can expire thousands.
        let mut by_kind: Vec<u64> = vec![0; self.kinds.names.len()];
        for q in queued {
            let s = &mut self.kinds.stats[usize::from(q.kind)];
            s.queued -= 1;
            match reason {
                DropReason::Expired => s.expired += 1,
                _ => s.closed += 1,
            }
            by_kind[usize::from(q.kind)] += 1;
        }
        self.report_drops(&by_kind, reason);
    }

    /// The written but unflushed messages of a connection that died: lost.
    pub(super) fn lose_sends(&mut self, unflushed: VecDeque<(u64, u16)>) {
        let mut lost: Vec<u64> = vec![0; self.kinds.names.len()];
        for (_, kind) in unflushed {
            let s = &mut self.kinds.stats[usize::from(kind)];
            s.unflushed -= 1;
            s.lost += 1;
            lost[usize::from(kind)] += 1;
        }
        self.report_drops(&lost, DropReason::Lost);
    }

    fn report_drops(&mut self, by_kind: &[u64], reason: DropReason) {
        for (k, &count) in by_kind.iter().enumerate() {
            if count > 0 {
                self.outputs.push_back(Output::Event(Event::MessageDropped {
                    kind: self.kinds.names[k].clone(),
                    reason,
                    count,
                }));
            }
        }
    }
}
