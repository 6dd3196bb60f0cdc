//! Requests: sending one, correlating replies, completing each exactly once (reply, denial,
//! timeout, connection lost, cancelled, closed), and re-sending idempotent ones.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::select::{select, Want};
use super::slot::conn_id;
use super::Pool;
use crate::frame::{EncodedRequest, FrameError, Incoming};
use crate::{
    ConnId, DisconnectReason, Event, Outcome, Output, RequestError, RequestFailure, RequestId, RequestOptions,
};

/// Requests whose timeout would overflow `Instant` are capped at this.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A request waiting for its outcome.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) slot: u16,
    pub(super) generation: u32,
    pub(super) deadline: Instant,
    /// The encoded frame, kept only for idempotent requests that may be re-sent once.
    pub(super) resend: Option<String>,
}

/// A fresh request id from the pool's seeded generator.
fn next_id(rng: &mut fastrand::Rng) -> RequestId {
    let bytes = rng.u128(..).to_le_bytes();
    RequestId(uuid::Builder::from_random_bytes(bytes).into_uuid())
}

impl Pool {
    /// The body of [`Pool::request`].
    pub(super) fn start_request(
        &mut self,
        now: Instant,
        request: EncodedRequest,
        options: RequestOptions,
    ) -> Result<RequestId, RequestError> {
        if self.closing {
            self.counters.refused_closed += 1;
            return Err(RequestError::Closed);
        }
        self.rearm_resting(now);
        let Some((slot, conn)) = select(
            &mut self.slots,
            &mut self.cursor,
            &self.config,
            Want::Request,
            options.affinity,
        ) else {
            if self.open_count == 0 {
                self.counters.refused_not_connected += 1;
                return Err(match self.rejected_status {
                    Some(status) => RequestError::Rejected { status },
                    None => RequestError::NotConnected,
                });
            }
            self.counters.refused_backpressure += 1;
            return Err(RequestError::Backpressure {
                max_in_flight: self.config.max_in_flight,
            });
        };
        let id = next_id(&mut self.rng);
        let mut buf = Uuid::encode_buffer();
        // A client-made allocationId makes a request safe to repeat only where the server
        // deduplicates on it; nothing in the protocol says it does.
        let idempotent = options.idempotent
            || (request.has_idempotency_key() && self.config.server_deduplicates_allocation_ids);
        let frame = request.into_frame(id.0.hyphenated().encode_lower(&mut buf));
        let resend = (idempotent && self.config.resend_idempotent).then(|| frame.clone());
        let timeout = options
            .timeout
            .unwrap_or(self.config.request_timeout)
            .min(MAX_TIMEOUT);
        let deadline = now + timeout;
        conn.pending += 1;
        self.pending.insert(
            id,
            Pending {
                slot: slot as u16,
                generation: conn.generation,
                deadline,
                resend,
            },
        );
        self.deadlines.insert(deadline, id);
        self.counters.requests += 1;
        conn.issue(now, self.config.write_wait);
        self.outputs.push_back(Output::Transmit {
            conn: conn_id(slot, conn.generation),
            frame,
        });
        Ok(id)
    }

    /// A text frame from a live connection: a reply, or a frame skipped as unreadable.
    pub(super) fn frame_in(&mut self, now: Instant, conn: ConnId, frame: Result<Incoming, FrameError>) {
        if !self.touch(now, conn) {
            return;
        }
        match frame {
            Ok(frame) => self.on_frame(now, conn, frame),
            Err(error) => self.skip_frame(conn, error),
        }
    }

    pub(super) fn skip_frame(&mut self, conn: ConnId, error: FrameError) {
        self.counters.skipped_frames += 1;
        self.outputs
            .push_back(Output::Event(Event::FrameSkipped { conn, error }));
    }

    /// Correlation: a frame that answers a pending request completes it; any other is
    /// unsolicited.
    fn on_frame(&mut self, now: Instant, conn: ConnId, frame: Incoming) {
        let answered = frame
            .correlation_id()
            .and_then(|s| Uuid::try_parse(s).ok())
            .map(RequestId)
            .and_then(|id| Some((id, self.pending.remove(&id)?)));
        match answered {
            Some((id, pending)) => {
                let outcome = if frame.is_denial() {
                    Outcome::Denied(frame)
                } else {
                    Outcome::Reply(frame)
                };
                self.finish(now, id, pending, outcome);
            }
            None => {
                self.counters.orphan_replies += 1;
                self.outputs.push_back(Output::Unsolicited { conn, frame });
            }
        }
    }

    /// Fails every request whose deadline is at or before `now`.
    pub(super) fn expire_requests(&mut self, now: Instant) {
        while let Some((deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.complete(now, id, Outcome::Failed(RequestFailure::Timeout));
        }
    }

    /// Completes a pending request exactly once.
    pub(super) fn complete(&mut self, now: Instant, id: RequestId, outcome: Outcome) {
        if let Some(p) = self.pending.remove(&id) {
            self.finish(now, id, p, outcome);
        }
    }

    /// Completes a request already taken out of the pending map.
    fn finish(&mut self, now: Instant, id: RequestId, p: Pending, outcome: Outcome) {
        let pending = &self.pending;
        self.deadlines
            .remove(p.deadline, id, |id| pending.contains_key(id));
        let slot = usize::from(p.slot);
        if let Some(conn) = self.slots[slot].conn_mut(p.generation) {
            conn.pending -= 1;
        }
        self.counters.count_outcome(&outcome);
        self.note_outcome(now, &outcome);
        self.outputs.push_back(Output::Completed { id, outcome });
        self.retire_drained(slot);
    }

    pub(super) fn fail_all_pending(&mut self, now: Instant, failure: RequestFailure) {
        let mut ids: Vec<RequestId> = self.pending.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.complete(now, id, Outcome::Failed(failure.clone()));
        }
    }

    /// The requests of a connection that died: each is re-sent once when idempotent, or
    /// fails at once as connection lost.
    pub(super) fn lose_requests(&mut self, now: Instant, id: ConnId, reason: DisconnectReason) {
        let slot = usize::from(id.slot);
        let mut ids: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| usize::from(p.slot) == slot && p.generation == id.generation)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for rid in ids {
            if !self.try_resend(now, rid) {
                self.complete(
                    now,
                    rid,
                    Outcome::Failed(RequestFailure::ConnectionLost(reason.clone())),
                );
            }
        }
    }

    /// Re-sends an idempotent request once on another open connection, within its deadline.
    fn try_resend(&mut self, now: Instant, id: RequestId) -> bool {
        let Some(p) = self.pending.get_mut(&id) else {
            return false;
        };
        if p.deadline <= now {
            return false;
        }
        let Some(frame) = p.resend.take() else {
            return false;
        };
        let Some((slot, conn)) = select(
            &mut self.slots,
            &mut self.cursor,
            &self.config,
            Want::Request,
            None,
        ) else {
            // Nowhere to go: it stays re-sendable.
            p.resend = Some(frame);
            return false;
        };
        conn.pending += 1;
        p.slot = slot as u16;
        p.generation = conn.generation;
        self.counters.resent += 1;
        conn.issue(now, self.config.write_wait);
        self.outputs.push_back(Output::Transmit {
            conn: conn_id(slot, conn.generation),
            frame,
        });
        true
    }
}
