//! Fire-and-forget messages before they are written: the outbox (bounded, with a TTL, in send
//! order), the per-type counters (`Kinds`), drops, expiry, and handing messages back at close.
//! What happens once they are written is in `delivery.rs`.

use std::time::Instant;

use super::delivery::write_message;
use super::message::Message;
use super::select::{select, Want};
use super::spool::keep_accepted;
use super::Pool;
use crate::frame::EncodedSend;
use crate::{
    Delivery, DropReason, Event, MessageFate, MessageId, Output, SendOptions, SendRefusal, Undelivered,
};

impl Pool {
    /// The body of [`Pool::send`] and [`Pool::send_with`].
    pub(super) fn accept_send(
        &mut self,
        now: Instant,
        send: EncodedSend<'_>,
        options: SendOptions,
    ) -> Result<MessageId, SendRefusal> {
        let (kind, frame, keyed) = send.into_parts();
        let index = self.kinds.intern(&kind);
        self.kinds.stats[usize::from(index)].sends += 1;
        if self.closing {
            self.kinds.stats[usize::from(index)].closed += 1;
            return Err(SendRefusal::Closed);
        }
        // Demand, even when refused below (as a send refused by a full outbox is).
        self.rearm_resting(now);
        // No peer reads a frame past the limit: refuse it before it takes any room.
        if frame.len() > self.config.max_frame_size {
            let refusal = SendRefusal::TooLarge {
                len: frame.len(),
                max: self.config.max_frame_size,
            };
            return Err(self.refuse(index, refusal, DropReason::TooLarge));
        }
        if self.spool_refuses(frame.len()) {
            self.refuse_spool_full(index);
            return Err(SendRefusal::SpoolFull);
        }
        let delivery =
            options
                .delivery
                .unwrap_or(if keyed && self.config.server_deduplicates_allocation_ids {
                    Delivery::AtLeastOnce
                } else {
                    self.config.delivery
                });
        self.last_message += 1;
        let message = Message {
            id: self.last_message,
            kind: index,
            frame,
            expires: now + self.config.outbox_ttl,
            at_least_once: delivery == Delivery::AtLeastOnce,
            notify: options.notify,
            writes: 0,
        };
        let id = MessageId(message.id);
        // Messages never overtake the outbox: while it has any, new ones queue behind them.
        if self.outbox.is_empty() {
            let want = Want::Send(message.frame.len());
            if let Some(to) = select(&mut self.slots, &mut self.cursor, &self.config, want, None) {
                if self.spool.is_some() {
                    // `to` borrows the slots: keep through the free function.
                    let kind = &self.kinds.names[usize::from(message.kind)];
                    keep_accepted(&mut self.spool, &mut self.outputs, &message, kind, now);
                }
                write_message(
                    &mut self.outputs,
                    &mut self.kinds,
                    &mut self.counters.pings,
                    &self.config,
                    to,
                    now,
                    message,
                );
                return Ok(id);
            }
        }
        if self.outbox.len() >= self.config.outbox_capacity as usize {
            return Err(self.refuse(index, SendRefusal::OutboxFull, DropReason::OutboxFull));
        }
        if self.outbox_bytes + message.frame.len() > self.config.max_outbox_bytes {
            return Err(self.refuse(index, SendRefusal::OutboxBytesFull, DropReason::OutboxBytesFull));
        }
        self.kinds.stats[usize::from(index)].queued += 1;
        self.outbox_bytes += message.frame.len();
        self.spool_keep(&message, now);
        self.outbox.push_back(message);
        Ok(id)
    }

    /// Counts a refused send of type `index` as dropped, with its event.
    fn refuse(&mut self, index: u16, refusal: SendRefusal, reason: DropReason) -> SendRefusal {
        self.kinds.stats[usize::from(index)].dropped += 1;
        // The counters' name for it (`*other*` past the tracked types), as in every other
        // drop event.
        self.outputs.push_back(Output::Event(Event::MessageDropped {
            kind: self.kinds.names[usize::from(index)].clone(),
            reason,
            count: 1,
        }));
        refusal
    }

    /// Takes the outbox's front message, keeping its byte count.
    pub(super) fn pop_outbox(&mut self) -> Option<Message> {
        let m = self.outbox.pop_front()?;
        self.outbox_bytes -= m.frame.len();
        Some(m)
    }

    /// Writes queued messages, in order, while a connection can take them.
    pub(super) fn flush_outbox(&mut self, now: Instant) {
        while let Some(front) = self.outbox.front() {
            let want = Want::Send(front.frame.len());
            let Some(to) = select(&mut self.slots, &mut self.cursor, &self.config, want, None) else {
                // No connection can take it: it stays at the head.
                break;
            };
            let Some(message) = self.outbox.pop_front() else {
                return;
            };
            self.outbox_bytes -= message.frame.len();
            self.kinds.stats[usize::from(message.kind)].queued -= 1;
            write_message(
                &mut self.outputs,
                &mut self.kinds,
                &mut self.counters.pings,
                &self.config,
                to,
                now,
                message,
            );
        }
        // A close drain wants everything confirmed as soon as possible.
        if self.drain_deadline.is_some() {
            self.barriers_now(now);
        }
    }

    /// Ends the messages whose TTL passed (the outbox is sorted by id, so by TTL).
    pub(super) fn expire_outbox(&mut self, now: Instant) {
        let mut by_kind: Vec<u64> = Vec::new();
        while self.outbox.front().is_some_and(|q| q.expires <= now) {
            let Some(m) = self.pop_outbox() else { break };
            let s = &mut self.kinds.stats[usize::from(m.kind)];
            s.queued -= 1;
            s.expired += 1;
            if by_kind.is_empty() {
                by_kind = vec![0; self.kinds.names.len()];
            }
            by_kind[usize::from(m.kind)] += 1;
            self.spool_release(m.id, m.frame.len(), MessageFate::Expired);
            if m.notify {
                self.outputs.push_back(Output::Settled {
                    id: MessageId(m.id),
                    fate: MessageFate::Expired,
                });
            }
        }
        self.report_drops(&by_kind, DropReason::Expired);
    }

    /// Ends `message` as closed and keeps it to hand back ([`Pool::take_undelivered`]).
    /// `counted_as`: the state it leaves (queued or written).
    pub(super) fn hand_back(&mut self, message: Message, written: bool, by_kind: &mut [u64]) {
        let s = &mut self.kinds.stats[usize::from(message.kind)];
        if written {
            s.written -= 1;
        } else {
            s.queued -= 1;
        }
        if self.spool.is_some() {
            // It stays in the spool for the next process: neither released nor handed back.
            s.spooled += 1;
            if message.notify {
                self.outputs.push_back(Output::Settled {
                    id: MessageId(message.id),
                    fate: MessageFate::Spooled,
                });
            }
            return;
        }
        s.closed += 1;
        by_kind[usize::from(message.kind)] += 1;
        if message.notify {
            self.outputs.push_back(Output::Settled {
                id: MessageId(message.id),
                fate: MessageFate::Closed,
            });
        }
        self.undelivered.push(Undelivered {
            id: MessageId(message.id),
            kind: self.kinds.names[usize::from(message.kind)].clone(),
            frame: message.frame,
            written_before: message.writes > 0,
        });
    }

    pub(super) fn report_drops(&mut self, by_kind: &[u64], reason: DropReason) {
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
