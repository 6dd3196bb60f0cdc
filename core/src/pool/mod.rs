//! The pool state machine: every decision of the client, no I/O.
//!
//! This file holds the [`Pool`] struct and its public methods, in the four families; each
//! method is a thin entry that hands the work to the file of its behaviour. The files are
//! layered: each imports only files above it in this table (and [`Pool`] from here), so no
//! two of them import each other, directly or around a circle.
//!
//! | file | behaviour |
//! | --- | --- |
//! | `message.rs` | the messages the pool holds (waiting, or in flight on a connection) and a connection's ping state: plain data |
//! | `kinds.rs` | the message types the application sends, each with its counters' index |
//! | `slot.rs` | slots and their connections: dialing, dial failure, reconnection with backoff, re-arming resting slots, key rejection, losing a connection |
//! | `select.rs` | which open connection takes the next write |
//! | `deadlines.rs` | the pending requests' deadlines, in the order they fall due |
//! | `pending.rs` | requests: sending, correlation of replies, completion (exactly once), timeouts, re-sending |
//! | `delivery.rs` | written messages: the unconfirmed window, barrier pings and confirming pongs, at most / at least once when a connection dies |
//! | `outbox.rs` | fire-and-forget messages before they are written: the outbox, per-type counters, drops, expiry, handing back |
//! | `liveness.rs` | writes and flushes, write and read deadlines, keep-alive pings |
//! | `rotation.rs` | replacing a connection that reached its maximum age |
//! | `close.rs` | closing the pool (with its drain), and closing retiring connections gracefully |
//! | `availability.rs` | the pool's availability, with hysteresis |
//! | `counters.rs` | the counters and the [`Stats`] snapshot |

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::config::Config;
use crate::frame::{self, EncodedRequest, EncodedSend, FrameError, Incoming};
use crate::stats::{LatencySummary, Stats};
use crate::{
    Availability, ConnId, DisconnectReason, Input, MessageId, Outcome, Output, RequestError, RequestFailure,
    RequestId, RequestIdBuildHasher, RequestOptions, Restored, SendOptions, SendRefusal, SlotState,
    SpoolOpenError, SpoolOpened, Undelivered,
};

mod availability;
mod close;
mod counters;
mod deadlines;
mod delivery;
mod kinds;
mod liveness;
mod message;
mod outbox;
mod pending;
mod rotation;
mod select;
mod slot;
mod spool;

pub use availability::AVAILABILITY_HOLD;
// The simulation's checker mirrors these bounds: it takes them from here, so they cannot drift.
#[cfg(any(test, feature = "sim"))]
pub(crate) use kinds::{MAX_TRACKED_KINDS, OTHER_KIND};
#[cfg(any(test, feature = "sim"))]
pub(crate) use pending::MAX_TIMEOUT;

use counters::Counters;
use deadlines::Deadlines;
use delivery::Limbo;
use kinds::Kinds;
use message::Message;
use pending::Pending;
use slot::Slot;
use spool::SpoolBook;

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
    /// Messages waiting for a connection, sorted by id (messages back from a dead
    /// connection are merged in by id).
    outbox: VecDeque<Message>,
    /// The outbox's bytes (its frames' lengths summed), against `max_outbox_bytes`.
    outbox_bytes: usize,
    /// The id of the last message accepted.
    last_message: u64,
    /// Dead connections' unflushed messages, until the adapter says which never started.
    limbo: Vec<Limbo>,
    /// Messages a close could not deliver, until [`Pool::take_undelivered`].
    undelivered: Vec<Undelivered>,
    confirm_latency: LatencySummary,
    /// `Event::PongsMissing` was reported (once per pool).
    pongs_missing_reported: bool,
    /// `Event::ConfirmationOff` was reported (once per pool).
    confirmation_off_reported: bool,
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
    /// The spool's bookkeeping, once [`Pool::open_spool`] opened it.
    spool: Option<SpoolBook>,
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
            outbox_bytes: 0,
            last_message: 0,
            limbo: Vec::new(),
            undelivered: Vec::new(),
            confirm_latency: LatencySummary::default(),
            pongs_missing_reported: false,
            confirmation_off_reported: false,
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
            spool: None,
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

    /// Whether a new message has room: in the outbox, or (with the outbox empty) in an open
    /// connection's window; a send now would not be refused as [`SendRefusal::OutboxFull`]
    /// or [`SendRefusal::OutboxBytesFull`] (short of a message larger than that window's free
    /// bytes, or than the outbox's free bytes). [`Pool::has_room_for`] knows the length.
    pub fn has_room(&self) -> bool {
        self.has_room_for(1)
    }

    /// Whether a new message whose frame is `frame_len` bytes has room, as [`Pool::has_room`]
    /// (one too large for any frame, [`SendRefusal::TooLarge`], has room: waiting would not
    /// help, its send is refused at once).
    pub fn has_room_for(&self, frame_len: usize) -> bool {
        let writable = |c: &slot::Conn| {
            !c.window_full(&self.config, 0) && c.unflushed() < u64::from(self.config.max_unflushed_writes)
        };
        frame_len > self.config.max_frame_size
            || (self.outbox.len() < self.config.outbox_capacity as usize
                && self.outbox_bytes + frame_len <= self.config.max_outbox_bytes)
            || (self.outbox.is_empty() && self.slots.iter().any(|s| s.open_conn().is_some_and(writable)))
    }

    /// Whether every fire-and-forget message up to `through` (an id from [`Pool::send_with`]
    /// or [`Pool::flush`]) has ended: confirmed, or otherwise.
    pub fn is_settled(&self, through: MessageId) -> bool {
        self.oldest_live().is_none_or(|oldest| oldest > through.0)
    }

    /// Fire-and-forget messages not yet ended: queued, written and awaiting confirmation,
    /// or waiting for the adapter's word on a dead connection.
    pub fn live_messages(&self) -> usize {
        let written: usize = self
            .slots
            .iter()
            .map(|s| {
                s.open_conn().map_or(0, |c| c.flights.len())
                    + s.retiring.iter().map(|c| c.flights.len()).sum::<usize>()
            })
            .sum();
        self.outbox.len() + written + self.limbo.iter().map(|l| l.flights.len()).sum::<usize>()
    }

    /// Bytes of message frames the pool holds on its connections (tests: a flushed
    /// at-most-once message's frame is let go).
    #[cfg(test)]
    fn held_frame_bytes(&self) -> usize {
        self.slots
            .iter()
            .flat_map(|s| s.open_conn().into_iter().chain(&s.retiring))
            .flat_map(|c| c.flights.iter())
            .map(|f| f.message.frame.len())
            .sum()
    }

    /// Whether [`Pool::close`] is draining: waiting up to `close_drain` for pending requests
    /// and undelivered messages before it closes the connections.
    pub fn is_draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// The id of the last message accepted so far (`MessageId(0)` before any).
    pub fn last_message(&self) -> MessageId {
        MessageId(self.last_message)
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
    ///
    /// Once written, a message is *written* until a pong confirms it (see
    /// [`crate::delivery`]), and its guarantee decides what happens when its connection dies
    /// first; this form uses the configured guarantee.
    pub fn send<'a>(&mut self, now: Instant, message: impl Into<EncodedSend<'a>>) -> Result<(), SendRefusal> {
        let now = self.advance(now);
        self.accept_send(now, message.into(), SendOptions::default())
            .map(drop)
    }

    /// [`Pool::send`] with per-message options (the delivery guarantee; whether to report its
    /// end as [`Output::Settled`]). Returns the message's id.
    pub fn send_with<'a>(
        &mut self,
        now: Instant,
        message: impl Into<EncodedSend<'a>>,
        options: SendOptions,
    ) -> Result<MessageId, SendRefusal> {
        let now = self.advance(now);
        self.accept_send(now, message.into(), options)
    }

    /// Asks every connection for a barrier now (instead of after `confirm_after`) and returns
    /// the id of the last message sent so far: [`Pool::is_settled`] with it turns true once
    /// everything sent until now has ended (confirmed, or otherwise). For deploy hooks and
    /// hosts about to be frozen; it closes nothing.
    pub fn flush(&mut self, now: Instant) -> MessageId {
        let now = self.advance(now);
        self.barriers_now(now);
        MessageId(self.last_message)
    }

    /// The messages a close could not deliver (queued ones, and written at-least-once ones),
    /// in send order; each is counted as `closed`. Empty until the close drain ended.
    pub fn take_undelivered(&mut self) -> Vec<Undelivered> {
        std::mem::take(&mut self.undelivered)
    }

    /// Opens the spool (see [`crate::spool`]): from now on every accepted message comes out as
    /// [`Output::Keep`] and every message that ends as [`Output::Release`], what a close
    /// cannot deliver stays in the spool ([`MessageFate::Spooled`](crate::MessageFate::Spooled))
    /// instead of being handed back, and a send that would take the live records past
    /// `max_bytes` is refused ([`SendRefusal::SpoolFull`]).
    ///
    /// `restored` are the records an earlier process left: they go first, in id order (their
    /// original send order), at least once, counted `replayed`; those past the outbox TTL
    /// (their age runs from their first send) end `expired` and are released. New messages
    /// get ids above every restored one. Must come before the first send.
    pub fn open_spool(
        &mut self,
        now: Instant,
        max_bytes: u64,
        restored: Vec<Restored>,
    ) -> Result<SpoolOpened, SpoolOpenError> {
        let now = self.advance(now);
        self.begin_spool(now, max_bytes, restored)
    }

    /// The bytes the spool's live records count for against its limit (0 when it is not
    /// open): see [`SpoolRecord::size`](crate::SpoolRecord::size).
    pub fn spool_bytes(&self) -> u64 {
        self.live_spool_bytes()
    }

    /// Cancels a pending request: it completes at once as [`RequestFailure::Cancelled`].
    /// Returns false when the id is not pending (already completed, or unknown).
    pub fn cancel(&mut self, now: Instant, id: RequestId) -> bool {
        let now = self.advance(now);
        if !self.pending.contains_key(&id) {
            return false;
        }
        self.complete(now, id, Outcome::Failed(RequestFailure::Cancelled));
        self.check_drain(now);
        true
    }

    /// Closes the pool. Idempotent. New work is refused from now on. For up to `close_drain`,
    /// pending requests may still get their replies, and queued and written fire-and-forget
    /// messages may still be written and confirmed (when nothing is open, one slot dials at
    /// once; a rejected key ends the drain). Then what is left ends: pending requests as
    /// closed, queued and written at-least-once messages as closed (handed back by
    /// [`Pool::take_undelivered`]), written at-most-once messages as unconfirmed; and every
    /// connection is closed with a normal close frame once its writes are flushed.
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
        if let Input::Unwritten { conn, first } = input {
            self.on_unwritten(now, conn, first);
            self.check_drain(now);
            return;
        }
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
            Input::Pong { conn, payload } => {
                if self.touch(now, conn) {
                    self.on_pong(now, conn, payload);
                }
            }
            Input::Ping { conn } => {
                self.touch(now, conn);
            }
            Input::Unwritten { .. } => {}
            Input::Flushed { conn, writes } => self.on_flushed(now, conn, writes),
            Input::WriteFailed { conn, error } => self.lose(now, conn, DisconnectReason::WriteFailed(error)),
            Input::Closed { conn, reason } => self.lose(now, conn, DisconnectReason::Closed(reason)),
        }
        self.check_drain(now);
    }

    /// A text frame the adapter already decoded with [`frame::decode`] (with this pool's
    /// `max_frame_size`), so the decoding can happen outside any lock the adapter holds
    /// around the pool. Exactly the same as `handle_input(now, Input::Text { conn, text })`.
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: Result<Incoming, FrameError>) {
        let now = self.advance(now);
        if self.admit(conn, false) {
            self.frame_in(now, conn, frame);
            self.check_drain(now);
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
        self.expire_limbo(now);
        self.expire_outbox(now);
        self.end_drain(now);
        self.check_drain(now);
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
            slot.timers(&self.config, &mut consider);
        }
        for l in &self.limbo {
            consider(l.deadline);
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
