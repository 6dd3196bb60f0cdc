//! The spool's bookkeeping in the pool: opening it with an earlier process's records
//! (replayed first, in their original order, at least once), the keep of every accepted
//! message, the release of every message that ends, and the byte limit. With the spool
//! closed every hook here is one branch on `Option::None`.

use std::collections::VecDeque;
use std::time::Instant;

use super::message::Message;
use super::Pool;
use crate::spool::{record_size, Restored, SpoolOpenError, SpoolOpened, SpoolRecord};
use crate::{Delivery, DropReason, Event, MessageFate, MessageId, Output};

/// The open spool's state in the pool: its limit and the bytes its live records count for.
#[derive(Debug)]
pub(super) struct SpoolBook {
    pub(super) max_bytes: u64,
    pub(super) bytes: u64,
}

/// The parts of a message a keep needs.
pub(super) struct KeepParts<'a> {
    pub(super) id: u64,
    pub(super) kind: &'a str,
    pub(super) frame: &'a str,
    pub(super) at_least_once: bool,
    pub(super) writes: u32,
    pub(super) first_sent: Instant,
}

/// The release of message `id` (a frame of `frame_len` bytes), which ended as `fate`, when
/// the spool is open.
#[inline]
pub(super) fn release(
    spool: &mut Option<SpoolBook>,
    outputs: &mut VecDeque<Output>,
    id: u64,
    frame_len: usize,
    fate: MessageFate,
) {
    if let Some(book) = spool {
        book.bytes = book.bytes.saturating_sub(record_size(frame_len));
        outputs.push_back(Output::Release {
            id: MessageId(id),
            fate,
        });
    }
}

/// The keep output of a message.
pub(super) fn keep(outputs: &mut VecDeque<Output>, parts: KeepParts<'_>) {
    outputs.push_back(Output::Keep {
        record: SpoolRecord {
            id: MessageId(parts.id),
            kind: parts.kind.to_owned(),
            frame: parts.frame.to_owned(),
            delivery: if parts.at_least_once {
                Delivery::AtLeastOnce
            } else {
                Delivery::AtMostOnce
            },
            writes: parts.writes,
        },
        first_sent: parts.first_sent,
    });
}

/// The keep output of a message `send` just accepted (first sent now), when the spool is
/// open; for callers that hold a borrow of the slots.
pub(super) fn keep_accepted(
    spool: &mut Option<SpoolBook>,
    outputs: &mut VecDeque<Output>,
    message: &Message,
    kind: &str,
    now: Instant,
) {
    if let Some(book) = spool {
        book.bytes += record_size(message.frame.len());
        keep(
            outputs,
            KeepParts {
                id: message.id,
                kind,
                frame: &message.frame,
                at_least_once: message.at_least_once,
                writes: message.writes,
                first_sent: now,
            },
        );
    }
}

impl Pool {
    /// The body of [`Pool::open_spool`].
    pub(super) fn begin_spool(
        &mut self,
        now: Instant,
        max_bytes: u64,
        mut restored: Vec<Restored>,
    ) -> Result<SpoolOpened, SpoolOpenError> {
        if self.spool.is_some() {
            return Err(SpoolOpenError::AlreadyOpen);
        }
        if self.closing {
            return Err(SpoolOpenError::Closing);
        }
        if self.last_message > 0 {
            return Err(SpoolOpenError::AfterSends);
        }
        let mut book = SpoolBook { max_bytes, bytes: 0 };
        let mut opened = SpoolOpened::default();
        restored.sort_unstable_by_key(|r| r.record.id);
        restored.dedup_by_key(|r| r.record.id);
        let mut expired = Vec::new();
        for r in restored {
            let record = r.record;
            let index = self.kinds.intern(&record.kind);
            let stats = &mut self.kinds.stats[usize::from(index)];
            stats.sends += 1;
            stats.replayed += 1;
            opened.replayed += 1;
            self.last_message = self.last_message.max(record.id.0);
            let size = record_size(record.frame.len());
            let ttl = self.config.outbox_ttl;
            if r.age >= ttl {
                // Its TTL ran out while no process held it.
                let stats = &mut self.kinds.stats[usize::from(index)];
                stats.expired += 1;
                opened.expired += 1;
                expired.push(index);
                self.outputs.push_back(Output::Release {
                    id: record.id,
                    fate: MessageFate::Expired,
                });
                continue;
            }
            book.bytes += size;
            self.kinds.stats[usize::from(index)].queued += 1;
            self.outbox_bytes += record.frame.len();
            // Replayed at least once: whether it reached the server before is unknown.
            self.outbox.push_back(Message {
                id: record.id.0,
                kind: index,
                frame: record.frame,
                expires: now + (ttl - r.age),
                at_least_once: true,
                notify: false,
                writes: record.writes,
            });
        }
        let mut by_kind = vec![0u64; self.kinds.names.len()];
        for index in expired {
            by_kind[usize::from(index)] += 1;
        }
        self.report_drops(&by_kind, DropReason::Expired);
        // The outbox is sorted by id and by TTL: a restored record with a shorter remaining
        // TTL than an older one must not hold the expiry of the head back. Expire the head
        // while it is due; later ones are found by `poll_timeout` in turn.
        self.spool = Some(book);
        self.expire_outbox(now);
        self.flush_outbox(now);
        Ok(opened)
    }

    /// With the spool open: whether a message of `frame_len` bytes of type `index` fits.
    #[inline]
    pub(super) fn spool_refuses(&self, frame_len: usize) -> bool {
        self.spool
            .as_ref()
            .is_some_and(|book| book.bytes + record_size(frame_len) > book.max_bytes)
    }

    /// Counts a send refused because the spool is full.
    pub(super) fn refuse_spool_full(&mut self, index: u16) {
        let s = &mut self.kinds.stats[usize::from(index)];
        s.dropped += 1;
        s.spool_full += 1;
        self.outputs.push_back(Output::Event(Event::MessageDropped {
            kind: self.kinds.names[usize::from(index)].clone(),
            reason: DropReason::SpoolFull,
            count: 1,
        }));
    }

    /// With the spool open: keeps an accepted message (`first_sent` is now).
    pub(super) fn spool_keep(&mut self, message: &Message, now: Instant) {
        let kind = &self.kinds.names[usize::from(message.kind)];
        keep_accepted(&mut self.spool, &mut self.outputs, message, kind, now);
    }

    /// With the spool open: keeps messages going back to the outbox again, with their
    /// write counts (so the rewrites a message used survive a crash).
    pub(super) fn spool_rekeep(&mut self, back: &[Message]) {
        if self.spool.is_none() {
            return;
        }
        let ttl = self.config.outbox_ttl;
        for m in back.iter().filter(|m| m.writes > 0) {
            keep(
                &mut self.outputs,
                KeepParts {
                    id: m.id,
                    kind: &self.kinds.names[usize::from(m.kind)],
                    frame: &m.frame,
                    at_least_once: m.at_least_once,
                    writes: m.writes,
                    first_sent: m.expires.checked_sub(ttl).unwrap_or(m.expires),
                },
            );
        }
    }

    /// The release of a message that ended, when the spool is open.
    #[inline]
    pub(super) fn spool_release(&mut self, id: u64, frame_len: usize, fate: MessageFate) {
        release(&mut self.spool, &mut self.outputs, id, frame_len, fate);
    }

    /// The bytes the spool's live records count for (0 with the spool closed).
    pub(super) fn live_spool_bytes(&self) -> u64 {
        self.spool.as_ref().map_or(0, |b| b.bytes)
    }
}
