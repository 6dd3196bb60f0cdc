//! The pool state machine: every decision of the client, no I/O.
//!
//! This file holds the [`Pool`] struct and its public methods, in the four families; each
//! method is a thin entry that hands the work to the file of its behaviour:
//!
//! | file | behaviour |
//! | --- | --- |
//! | `slot.rs` | slots and their connections: dialing, dial failure, reconnection with backoff, re-arming resting slots, key rejection, losing a connection |
//! | `select.rs` | which open connection takes the next write |
//! | `pending.rs` | requests: sending, correlation of replies, completion (exactly once), timeouts, re-sending |
//! | `deadlines.rs` | the pending requests' deadlines, in the order they fall due |
//! | `outbox.rs` | fire-and-forget messages: the outbox, per-type counters, drops |
//! | `liveness.rs` | writes and flushes, write and read deadlines, pings |
//! | `rotation.rs` | replacing a connection that reached its maximum age |
//! | `close.rs` | closing the pool, and closing retiring connections gracefully |
//! | `availability.rs` | the pool's availability, with hysteresis |
//! | `counters.rs` | the counters and the [`Stats`] snapshot |

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::config::Config;
use crate::frame::{self, EncodedRequest, EncodedSend, FrameError, Incoming};
use crate::stats::Stats;
use crate::{
    Availability, ConnId, DisconnectReason, Input, Outcome, Output, RequestError, RequestFailure, RequestId,
    RequestIdBuildHasher, RequestOptions, SendRefusal, SlotState,
};

mod availability;
mod close;
mod counters;
mod deadlines;
mod liveness;
mod outbox;
mod pending;
mod rotation;
mod select;
mod slot;

pub use availability::AVAILABILITY_HOLD;
// The simulation's checker mirrors these bounds: it takes them from here, so they cannot drift.
#[cfg(any(test, feature = "sim"))]
pub(crate) use outbox::{MAX_TRACKED_KINDS, OTHER_KIND};
#[cfg(any(test, feature = "sim"))]
pub(crate) use pending::MAX_TIMEOUT;

use counters::Counters;
use deadlines::Deadlines;
use outbox::{Kinds, Queued};
use pending::Pending;
use slot::Slot;

/// The pool: a pure, deterministic state machine that makes every decision of the client.
///
/// Its methods come in four families (quinn-proto's shape):
/// - **getters**: [`Pool::stats`], [`Pool::is_connected`], [`Pool::availability`],
///   [`Pool::slot_state`], [`Pool::pending_len`], [`Pool::is_closed`];
/// - **I/O results**: [`Pool::handle_input`], [`Pool::handle_timeout`];
/// - **application commands** with immediate results: [`Pool::connect`], [`Pool::request`],
///   [`Pool::send`], [`Pool::cancel`], [`Pool::close`];
/// - **outputs**: [`Pool::poll_output`], [`Pool::poll_timeout`].
///
/// The drain rule: after every call of the I/O or command families, call `poll_output()`
/// until it returns `None` and carry out each output, then read `poll_timeout()` and call
/// `handle_timeout` when that instant comes. Time is always an argument; a `now` earlier
/// than one already seen is treated as that one.
#[derive(Debug)]
pub struct Pool {
    config: Config,
    rng: fastrand::Rng,
    now: Instant,
    slots: Vec<Slot>,
    pending: HashMap<RequestId, Pending, RequestIdBuildHasher>,
    deadlines: Deadlines,
    outbox: VecDeque<Queued>,
    kinds: Kinds,
    outputs: VecDeque<Output>,
    /// Slot chosen last, so ties rotate.
    cursor: usize,
    open_count: u32,
    counters: Counters,
    closing: bool,
    drain_deadline: Option<Instant>,
    /// Connections told to close gracefully, with the instant they are aborted if the close
    /// handshake has not finished (the adapter reports `Closed` when it has).
    lingering: Vec<(ConnId, Instant)>,
    availability: Availability,
    /// Whether the pool was ever `Available`: until then (start-up) nothing can flap, so
    /// improvements need no hold.
    ever_available: bool,
    upgrade_at: Option<Instant>,
    timeout_ratio: f64,
    /// Slots resting after using up their attempts (so demand checks for them cheaply).
    resting: u32,
    /// `Some(status)` while nothing is open and every slot's most recent dial was a key
    /// rejection (status of the latest one).
    rejected_status: Option<u16>,
}

impl Pool {
    /// A pool for `config`. `seed` fixes every random choice (request ids, jitter), so a run
    /// is a pure function of its inputs; adapters pass a random seed. Nothing is dialed until
    /// [`Pool::connect`].
    pub fn new(config: Config, seed: u64, now: Instant) -> Pool {
        let slots = (0..config.pool_size).map(|_| Slot::new()).collect();
        Pool {
            config,
            rng: fastrand::Rng::with_seed(seed),
            now,
            slots,
            pending: HashMap::default(),
            deadlines: Deadlines::default(),
            outbox: VecDeque::new(),
            kinds: Kinds::default(),
            outputs: VecDeque::new(),
            cursor: usize::MAX,
            open_count: 0,
            counters: Counters::default(),
            closing: false,
            drain_deadline: None,
            lingering: Vec::new(),
            availability: Availability::Unavailable,
            ever_available: false,
            upgrade_at: None,
            timeout_ratio: 0.0,
            resting: 0,
            rejected_status: None,
        }
    }

    // ----- getters -----

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether at least one connection is open.
    pub fn is_connected(&self) -> bool {
        self.open_count > 0
    }

    /// The pool's availability (with hysteresis: once the pool has been `Available`, a
    /// `Degraded` pool turns `Available` again only after looking healthy for 5 s; getting
    /// worse, leaving `Unavailable`, and the first start-up are immediate).
    pub fn availability(&self) -> Availability {
        self.availability
    }

    /// The state of one slot, or `None` past the pool size.
    pub fn slot_state(&self, slot: u16) -> Option<SlotState> {
        Some(self.slots.get(usize::from(slot))?.phase.state())
    }

    /// The open connection of a slot, if any.
    pub fn open_conn(&self, slot: u16) -> Option<ConnId> {
        let conn = self.slots.get(usize::from(slot))?.open_conn()?;
        Some(ConnId {
            slot,
            generation: conn.generation,
        })
    }

    /// Requests waiting for their reply on `conn` (0 for a connection the pool does not
    /// hold). An adapter may use it to schedule its writes: while other replies are still to
    /// come on a connection, more requests are likely to follow, and their frames can share
    /// one write.
    pub fn in_flight(&self, conn: ConnId) -> usize {
        self.slots
            .get(usize::from(conn.slot))
            .and_then(|s| s.conn(conn.generation))
            .map_or(0, |c| c.pending as usize)
    }

    /// Requests waiting for their outcome.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Fire-and-forget messages waiting for a connection.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// `Some(HTTP status)` while no connection is open because the server refused the API
    /// key on every slot's most recent dial (see [`Event::KeyRejected`](crate::Event::KeyRejected)).
    pub fn rejection(&self) -> Option<u16> {
        self.rejected_status
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether the pool is closed and done: every request completed, every connection told
    /// to disconnect. An adapter can stop its driver once this is true and outputs are drained.
    pub fn is_closed(&self) -> bool {
        self.closed_and_done()
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> Stats {
        self.snapshot()
    }

    // ----- application commands -----

    /// Dials every slot that has never been dialed (spread over `initial_dial_spread`), and
    /// re-arms slots that used up their attempts (at most once per backoff cap each, see
    /// [`Event::SlotRearmed`](crate::Event::SlotRearmed)). Slots already open, dialing or
    /// backing off are left alone.
    pub fn connect(&mut self, now: Instant) {
        let now = self.advance(now);
        if self.closing {
            return;
        }
        self.dial_first(now);
        self.rearm_resting(now);
    }

    /// Sends a request on the open connection with the fewest pending requests (ties go to
    /// [`RequestOptions::affinity`] when set, else rotate). Returns its id at once; its
    /// outcome comes later, exactly once, as [`Output::Completed`]. Refuses at once when no
    /// connection is open ([`RequestError::Rejected`] when that is because the server refused
    /// the API key), when every open connection is at its in-flight cap, or after close. Like
    /// every send and connect, it re-arms resting slots (at most once per backoff cap each).
    ///
    /// `request` is an [`Outgoing`](crate::Outgoing) message, or an [`EncodedRequest`] made beforehand (for
    /// example outside the lock an adapter holds around the pool): either way the pool only
    /// writes the id into the frame.
    pub fn request(
        &mut self,
        now: Instant,
        request: impl Into<EncodedRequest>,
        options: RequestOptions,
    ) -> Result<RequestId, RequestError> {
        let now = self.advance(now);
        self.start_request(now, request.into(), options)
    }

    /// Sends a fire-and-forget message: an [`Outgoing`](crate::Outgoing) (by value or by reference) or an
    /// [`EncodedSend`] made beforehand. With no connection able to take it, it waits in the
    /// outbox (bounded, with a TTL) and goes out in order when one opens. Refused when the
    /// outbox is full or the pool is closed; both are counted as dropped. A caller that keeps
    /// the message can hand it back with [`SendError::from_refusal`](crate::SendError::from_refusal).
    pub fn send<'a>(&mut self, now: Instant, message: impl Into<EncodedSend<'a>>) -> Result<(), SendRefusal> {
        let now = self.advance(now);
        let (kind, frame) = message.into().into_parts();
        self.accept_send(now, &kind, frame)
    }

    /// Cancels a pending request: it completes at once as [`RequestFailure::Cancelled`].
    /// Returns false when the id is not pending (already completed, or unknown).
    pub fn cancel(&mut self, now: Instant, id: RequestId) -> bool {
        let now = self.advance(now);
        if !self.pending.contains_key(&id) {
            return false;
        }
        self.complete(now, id, Outcome::Failed(RequestFailure::Cancelled));
        true
    }

    /// Closes the pool. Idempotent. New work is refused from now on; queued fire-and-forget
    /// messages are dropped as closed; pending requests may still get their replies for
    /// `close_drain`, then complete as closed; every connection is closed with a normal close
    /// frame once its writes are flushed. No slot dials again.
    pub fn close(&mut self, now: Instant) {
        let now = self.advance(now);
        if self.closing {
            return;
        }
        self.begin_close(now);
    }

    // ----- I/O results -----

    /// Feeds one I/O result. Never fails: bad frames are skipped and counted, inputs about
    /// old generations are ignored and counted.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        let now = self.advance(now);
        let ends = matches!(input, Input::Closed { .. } | Input::WriteFailed { .. });
        if !self.admit(input.conn(), ends) {
            return;
        }
        match input {
            Input::Connected { conn } => self.on_connected(now, conn),
            Input::ConnectFailed { conn, error } => self.on_connect_failed(now, conn, error),
            Input::Text { conn, text } => {
                let frame = frame::decode(text, self.config.max_frame_size);
                self.frame_in(now, conn, frame);
            }
            Input::Binary { conn, len } => {
                if self.touch(now, conn) {
                    self.skip_frame(conn, FrameError::Binary { len });
                }
            }
            Input::Pong { conn } | Input::Ping { conn } => {
                self.touch(now, conn);
            }
            Input::Flushed { conn, writes } => self.on_flushed(now, conn, writes),
            Input::WriteFailed { conn, error } => self.lose(now, conn, DisconnectReason::WriteFailed(error)),
            Input::Closed { conn, reason } => self.lose(now, conn, DisconnectReason::Closed(reason)),
        }
    }

    /// A text frame the adapter already decoded with [`frame::decode`] (with this pool's
    /// `max_frame_size`), so the decoding can happen outside any lock the adapter holds
    /// around the pool. Exactly the same as `handle_input(now, Input::Text { conn, text })`.
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: Result<Incoming, FrameError>) {
        let now = self.advance(now);
        if self.admit(conn, false) {
            self.frame_in(now, conn, frame);
        }
    }

    /// Fires every deadline at or before `now`. Spurious calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        for i in 0..self.slots.len() {
            self.slot_timers(i, now);
        }
        self.abort_lingering(now);
        self.expire_requests(now);
        self.expire_outbox(now);
        self.end_drain(now);
        self.update_availability(now);
    }

    // ----- outputs -----

    /// The next output, or `None` when drained.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Pool::handle_timeout`] must next be called, or `None` when nothing is scheduled.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        for slot in &self.slots {
            slot.timers(&mut consider);
        }
        if let Some((t, _)) = self.deadlines.first() {
            consider(t);
        }
        if let Some(q) = self.outbox.front() {
            consider(q.expires);
        }
        if let Some(t) = self.drain_deadline {
            consider(t);
        }
        for &(_, t) in &self.lingering {
            consider(t);
        }
        if let Some(t) = self.upgrade_at {
            consider(t);
        }
        next
    }

    // ----- time -----

    /// The pool's clock: `now`, or the latest instant already seen when `now` is earlier.
    fn advance(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }
}

#[cfg(test)]
mod tests;
