//! The pool state machine: every decision of the client, no I/O.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::backoff::{jittered_delay, nominal_delay};
use crate::config::Config;
use crate::frame::{self, EncodedRequest, FrameError, Incoming, Outgoing};
use crate::io::*;
use crate::stats::{SendStats, Stats};

mod deadlines;
use deadlines::Deadlines;

/// Distinct message types tracked separately in send counters; the rest share one bucket
/// (named [`OTHER_KIND`]), so at most this many plus one sets of counters exist.
const MAX_TRACKED_KINDS: usize = 64;
const OTHER_KIND: &str = "*other*";
/// Weight of one completion in the moving timeout ratio.
const TIMEOUT_EWMA_ALPHA: f64 = 0.05;
/// How long a pool that was `Available` before must look healthy again before `Degraded`
/// turns back into `Available` (the hysteresis that keeps the state from flapping).
pub const AVAILABILITY_HOLD: Duration = Duration::from_secs(5);
/// Requests whose timeout would overflow `Instant` are capped at this.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// One open (or retiring) WebSocket.
#[derive(Debug)]
struct Conn {
    generation: u32,
    pending: u32,
    writes_issued: u64,
    writes_flushed: u64,
    write_deadline: Option<Instant>,
    read_deadline: Instant,
    next_ping: Instant,
    rotate_at: Option<Instant>,
    /// Fire-and-forget messages written but not flushed: (write number, kind index).
    unflushed_sends: VecDeque<(u64, u16)>,
    /// Write number of the last ping (0: none yet).
    last_ping: u64,
    /// When the unflushed writes were issued, run-length encoded: (first write number
    /// issued at that instant, the instant). The write deadline belongs to the oldest
    /// unflushed write, so a partial flush must not restart it.
    issued_at: VecDeque<(u64, Instant)>,
    /// Failed replacement dials since this connection opened (its rotation's attempts).
    rotation_attempt: u32,
}

impl Conn {
    fn unflushed(&self) -> u64 {
        self.writes_issued - self.writes_flushed
    }
}

#[derive(Debug)]
enum Phase {
    Idle {
        dial_at: Option<Instant>,
    },
    Dialing {
        generation: u32,
        deadline: Instant,
    },
    Open {
        conn: Conn,
        replacement: Option<(u32, Instant)>,
    },
    Backoff {
        until: Instant,
    },
    Exhausted,
    Closed,
}

#[derive(Debug)]
struct Slot {
    next_generation: u32,
    attempt: u32,
    phase: Phase,
    /// When demand last re-armed this slot after it rested (at most once per backoff cap).
    rearmed_at: Option<Instant>,
    /// The status of this slot's most recent dial failure when it was a key rejection;
    /// cleared by any other failure and by a successful dial.
    rejected: Option<u16>,
    /// Connections that take no new work and close once drained (rotation, close).
    retiring: Vec<Conn>,
}

impl Slot {
    fn open_conn(&self) -> Option<&Conn> {
        match &self.phase {
            Phase::Open { conn, .. } => Some(conn),
            _ => None,
        }
    }

    fn conn(&self, generation: u32) -> Option<&Conn> {
        match &self.phase {
            Phase::Open { conn, .. } if conn.generation == generation => Some(conn),
            _ => self.retiring.iter().find(|c| c.generation == generation),
        }
    }

    fn conn_mut(&mut self, generation: u32) -> Option<&mut Conn> {
        if let Phase::Open { conn, .. } = &mut self.phase {
            if conn.generation == generation {
                return Some(conn);
            }
        }
        self.retiring.iter_mut().find(|c| c.generation == generation)
    }
}

#[derive(Debug)]
struct Pending {
    slot: u16,
    generation: u32,
    deadline: Instant,
    /// The encoded frame, kept only for idempotent requests that may be re-sent once.
    resend: Option<String>,
}

#[derive(Debug)]
struct Queued {
    frame: String,
    kind: u16,
    expires: Instant,
}

/// What the application can be told about the message types it sends.
#[derive(Debug, Default)]
struct Kinds {
    names: Vec<String>,
    stats: Vec<SendStats>,
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
}

#[derive(Debug, Default)]
struct Counters {
    requests: u64,
    replies: u64,
    denials: u64,
    timeouts: u64,
    connection_lost: u64,
    cancelled: u64,
    closed: u64,
    resent: u64,
    refused_not_connected: u64,
    refused_backpressure: u64,
    refused_closed: u64,
    orphan_replies: u64,
    skipped_frames: u64,
    stale_inputs: u64,
    dials: u64,
    dial_failures: u64,
    rejections: u64,
    disconnects: u64,
    reconnects: u64,
    exhausted: u64,
    rearms: u64,
    rotations: u64,
    pings: u64,
}

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
        let slots = (0..config.pool_size)
            .map(|_| Slot {
                next_generation: 0,
                attempt: 0,
                phase: Phase::Idle { dial_at: None },
                rearmed_at: None,
                rejected: None,
                retiring: Vec::new(),
            })
            .collect();
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
        Some(match self.slots.get(usize::from(slot))?.phase {
            Phase::Idle { .. } => SlotState::Idle,
            Phase::Dialing { .. } => SlotState::Dialing,
            Phase::Open { .. } => SlotState::Open,
            Phase::Backoff { .. } => SlotState::Backoff,
            Phase::Exhausted => SlotState::Exhausted,
            Phase::Closed => SlotState::Closed,
        })
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
    /// key on every slot's most recent dial (see [`Event::KeyRejected`]).
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
        self.closing
            && self.pending.is_empty()
            && self.lingering.is_empty()
            && self
                .slots
                .iter()
                .all(|s| matches!(s.phase, Phase::Closed) && s.retiring.is_empty())
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let mut sends = SendStats::default();
        let mut sends_by_type = std::collections::BTreeMap::new();
        for (name, s) in self.kinds.names.iter().zip(&self.kinds.stats) {
            sends.add(s);
            sends_by_type.insert(name.clone(), s.clone());
        }
        Stats {
            open_connections: self.open_count,
            pending_per_slot: self
                .slots
                .iter()
                .map(|s| {
                    s.open_conn().map_or(0, |c| c.pending) + s.retiring.iter().map(|c| c.pending).sum::<u32>()
                })
                .collect(),
            pending: self.pending.len() as u64,
            requests: c.requests,
            replies: c.replies,
            denials: c.denials,
            timeouts: c.timeouts,
            connection_lost: c.connection_lost,
            cancelled: c.cancelled,
            closed: c.closed,
            resent: c.resent,
            refused_not_connected: c.refused_not_connected,
            refused_backpressure: c.refused_backpressure,
            refused_closed: c.refused_closed,
            orphan_replies: c.orphan_replies,
            skipped_frames: c.skipped_frames,
            stale_inputs: c.stale_inputs,
            dials: c.dials,
            dial_failures: c.dial_failures,
            rejections: c.rejections,
            rejected_status: self.rejected_status,
            disconnects: c.disconnects,
            reconnects: c.reconnects,
            exhausted: c.exhausted,
            rearms: c.rearms,
            rotations: c.rotations,
            pings: c.pings,
            outbox_depth: self.outbox.len() as u64,
            sends,
            sends_by_type,
        }
    }

    // ----- application commands -----

    /// Dials every slot that has never been dialed (spread over `initial_dial_spread`), and
    /// re-arms slots that used up their attempts (at most once per backoff cap each, see
    /// [`Event::SlotRearmed`]). Slots already open, dialing or backing off are left alone.
    pub fn connect(&mut self, now: Instant) {
        let now = self.advance(now);
        if self.closing {
            return;
        }
        let spread = self.config.initial_dial_spread;
        for i in 0..self.slots.len() {
            if let Phase::Idle { dial_at: None } = self.slots[i].phase {
                if spread.is_zero() || i == 0 {
                    self.dial(i, now);
                } else {
                    let at = now + spread.mul_f64(self.rng.f64());
                    self.slots[i].phase = Phase::Idle { dial_at: Some(at) };
                }
            }
        }
        self.rearm_resting(now);
    }

    /// Sends a request on the open connection with the fewest pending requests (ties go to
    /// [`RequestOptions::affinity`] when set, else rotate). Returns its id at once; its
    /// outcome comes later, exactly once, as [`Output::Completed`]. Refuses at once when no
    /// connection is open ([`RequestError::Rejected`] when that is because the server refused
    /// the API key), when every open connection is at its in-flight cap, or after close. Like
    /// every send and connect, it re-arms resting slots (at most once per backoff cap each).
    pub fn request(
        &mut self,
        now: Instant,
        message: Outgoing,
        options: RequestOptions,
    ) -> Result<RequestId, RequestError> {
        self.request_encoded(now, EncodedRequest::new(&message), options)
    }

    /// [`Pool::request`] for a message already encoded (outside the caller's lock, say):
    /// the same checks, selection and outcome; the pool only writes the id into the frame.
    pub fn request_encoded(
        &mut self,
        now: Instant,
        request: EncodedRequest,
        options: RequestOptions,
    ) -> Result<RequestId, RequestError> {
        let now = self.advance(now);
        if self.closing {
            self.counters.refused_closed += 1;
            return Err(RequestError::Closed);
        }
        self.rearm_resting(now);
        let Some(slot) = self.select(true, options.affinity) else {
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
        let id = self.next_id();
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
        let Phase::Open { conn, .. } = &mut self.slots[slot].phase else {
            unreachable!("select returns open slots")
        };
        conn.pending += 1;
        let generation = conn.generation;
        self.pending.insert(
            id,
            Pending {
                slot: slot as u16,
                generation,
                deadline,
                resend,
            },
        );
        self.deadlines.insert(deadline, id);
        self.counters.requests += 1;
        self.write(slot, generation, now, Some(frame));
        Ok(id)
    }

    /// Sends a fire-and-forget message. With no connection able to take it, it waits in the
    /// outbox (bounded, with a TTL) and goes out in order when one opens. Refused, and
    /// handed back, when the outbox is full or the pool is closed; both are counted.
    pub fn send(&mut self, now: Instant, message: Outgoing) -> Result<(), SendError> {
        let frame = frame::encode(&message, None);
        self.send_encoded(now, &message.kind, frame)
            .map_err(|refusal| SendError::from_refusal(refusal, message))
    }

    /// [`Pool::send`] for a message already encoded ([`frame::encode`] with no id, outside
    /// the caller's lock, say) whose type is `kind`: the same outbox, counters and events.
    pub fn send_encoded(&mut self, now: Instant, kind: &str, frame: String) -> Result<(), SendRefusal> {
        let now = self.advance(now);
        let index = self.kinds.intern(kind);
        self.kinds.stats[usize::from(index)].sends += 1;
        if self.closing {
            self.kinds.stats[usize::from(index)].closed += 1;
            return Err(SendRefusal::Closed);
        }
        self.rearm_resting(now);
        // Messages never overtake the outbox: while it has any, new ones queue behind them.
        if self.outbox.is_empty() {
            if let Some(slot) = self.select(false, None) {
                self.write_send(slot, now, frame, index);
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

    fn frame_in(&mut self, now: Instant, conn: ConnId, frame: Result<Incoming, FrameError>) {
        if !self.touch(now, conn) {
            return;
        }
        match frame {
            Ok(frame) => self.on_frame(now, conn, frame),
            Err(error) => self.skip_frame(conn, error),
        }
    }

    /// Whether an input about `id` concerns a connection the pool still uses; counts stale
    /// ones. `ends`: the input reports the connection's end, which finishes a graceful close.
    fn admit(&mut self, id: ConnId, ends: bool) -> bool {
        let slot = usize::from(id.slot);
        if slot >= self.slots.len() || id.generation >= self.slots[slot].next_generation {
            self.counters.stale_inputs += 1;
            return false;
        }
        if let Some(i) = self.lingering.iter().position(|(c, _)| *c == id) {
            // A connection closing gracefully: its end finishes the close; nothing else
            // about it matters any more (it had no pending request and no unflushed write).
            if ends {
                self.lingering.swap_remove(i);
            }
            return false;
        }
        true
    }

    /// Fires every deadline at or before `now`. Spurious calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        for i in 0..self.slots.len() {
            self.slot_timers(i, now);
        }
        // A close handshake that did not finish within the write wait: drop the socket.
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
        while let Some((deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.complete(now, id, Outcome::Failed(RequestFailure::Timeout));
        }
        let mut expired = VecDeque::new();
        while self.outbox.front().is_some_and(|q| q.expires <= now) {
            expired.extend(self.outbox.pop_front());
        }
        self.drop_queued(expired, DropReason::Expired);
        if self.drain_deadline.is_some_and(|d| d <= now) {
            self.drain_deadline = None;
            self.fail_all_pending(now, RequestFailure::Closed);
            for i in 0..self.slots.len() {
                self.retire_drained(i);
            }
        }
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
            match &slot.phase {
                Phase::Idle { dial_at: Some(t) } => consider(*t),
                Phase::Dialing { deadline, .. } => consider(*deadline),
                Phase::Backoff { until } => consider(*until),
                Phase::Open { conn, replacement } => {
                    conn_timers(conn, &mut consider);
                    if let Some(t) = conn.rotate_at.filter(|_| replacement.is_none()) {
                        consider(t);
                    }
                    if let Some((_, t)) = replacement {
                        consider(*t);
                    }
                }
                _ => {}
            }
            for conn in &slot.retiring {
                conn_timers(conn, &mut consider);
            }
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

    // ----- internals -----

    fn advance(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    fn next_id(&mut self) -> RequestId {
        let bytes = self.rng.u128(..).to_le_bytes();
        RequestId(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// The open slot that takes the next write: fewest pending requests, ties going to the
    /// preferred slot (`affinity`) or else rotating from the slot chosen last; `None` when no
    /// open slot has room.
    fn select(&mut self, is_request: bool, affinity: Option<u32>) -> Option<usize> {
        let n = self.slots.len();
        // Scanning from the preferred slot makes it the winner of any tie it is part of: a
        // later slot replaces the best only with strictly fewer pending.
        let start = match affinity {
            Some(slot) => slot as usize % n,
            None => self.cursor.wrapping_add(1) % n,
        };
        let mut best: Option<(usize, u32)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(conn) = self.slots[i].open_conn() else {
                continue;
            };
            if conn.unflushed() >= u64::from(self.config.max_unflushed_writes) {
                continue;
            }
            if is_request && conn.pending >= self.config.max_in_flight {
                continue;
            }
            if best.is_none_or(|(_, p)| conn.pending < p) {
                best = Some((i, conn.pending));
                if conn.pending == 0 {
                    break;
                }
            }
        }
        let (i, _) = best?;
        // The rotation is for requests without a preference; a preferred pick leaves it.
        if affinity.is_none() {
            self.cursor = i;
        }
        Some(i)
    }

    fn dial(&mut self, slot: usize, now: Instant) {
        let s = &mut self.slots[slot];
        let generation = s.next_generation;
        s.next_generation += 1;
        s.phase = Phase::Dialing {
            generation,
            deadline: now + self.config.handshake_timeout,
        };
        self.counters.dials += 1;
        self.outputs.push_back(Output::Dial {
            conn: conn_id(slot, generation),
        });
    }

    /// Demand (a request, send or connect) re-arms every resting slot that demand has not
    /// re-armed within the backoff cap, whatever else is open: a pool in use is never down
    /// for good, and a rejected key is not retried faster than the schedule.
    fn rearm_resting(&mut self, now: Instant) {
        debug_assert_eq!(
            self.resting as usize,
            self.slots
                .iter()
                .filter(|s| matches!(s.phase, Phase::Exhausted))
                .count(),
            "the resting count follows the slots"
        );
        if self.resting == 0 {
            return;
        }
        let cap = self.config.backoff_cap;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if matches!(s.phase, Phase::Exhausted) && s.rearmed_at.is_none_or(|t| now >= t + cap) {
                self.rearm(i, now);
            }
        }
    }

    fn rearm(&mut self, slot: usize, now: Instant) {
        self.resting -= 1;
        self.counters.rearms += 1;
        let s = &mut self.slots[slot];
        s.attempt = 0;
        s.rearmed_at = Some(now);
        // Spread over the jitter's share of the base delay (none with jitter 0, the exact
        // schedule), so slots resting together do not dial together.
        let window = self.config.backoff_base.mul_f64(self.config.backoff_jitter);
        let delay = if window.is_zero() {
            Duration::ZERO
        } else {
            window.mul_f64(self.rng.f64())
        };
        self.outputs.push_back(Output::Event(Event::SlotRearmed {
            slot: slot as u16,
            delay,
        }));
        if delay.is_zero() {
            self.dial(slot, now);
        } else {
            self.slots[slot].phase = Phase::Backoff { until: now + delay };
        }
    }

    /// The delay before retry `attempt`: the jittered schedule, and no sooner than the
    /// server's `Retry-After` (bounded by the cap).
    fn backoff_delay(&mut self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let nominal = nominal_delay(attempt, self.config.backoff_base, self.config.backoff_cap);
        let delay = jittered_delay(nominal, self.config.backoff_jitter, self.rng.f64());
        match retry_after {
            Some(asked) => delay.max(asked.min(self.config.backoff_cap)),
            None => delay,
        }
    }

    fn schedule_reconnect(&mut self, slot: usize, now: Instant, retry_after: Option<Duration>) {
        if self.closing {
            self.slots[slot].phase = Phase::Closed;
            return;
        }
        let attempt = self.slots[slot].attempt;
        if attempt >= self.config.backoff_attempts {
            self.slots[slot].phase = Phase::Exhausted;
            self.resting += 1;
            self.counters.exhausted += 1;
            self.outputs
                .push_back(Output::Event(Event::AttemptsExhausted { slot: slot as u16 }));
            return;
        }
        let delay = self.backoff_delay(attempt, retry_after);
        self.slots[slot].attempt += 1;
        self.counters.reconnects += 1;
        self.outputs.push_back(Output::Event(Event::ReconnectScheduled {
            slot: slot as u16,
            attempt,
            delay,
        }));
        if delay.is_zero() {
            self.dial(slot, now);
        } else {
            self.slots[slot].phase = Phase::Backoff { until: now + delay };
        }
    }

    fn new_conn(&mut self, generation: u32, now: Instant) -> Conn {
        let rotate_at = self.config.max_connection_age.map(|age| {
            // Jitter the age too, so connections opened together are not replaced together.
            now + jittered_delay(age, self.config.backoff_jitter.max(0.1), self.rng.f64())
        });
        Conn {
            generation,
            pending: 0,
            writes_issued: 0,
            writes_flushed: 0,
            write_deadline: None,
            read_deadline: now + self.config.pong_wait,
            next_ping: now + self.config.ping_period,
            rotate_at,
            unflushed_sends: VecDeque::new(),
            last_ping: 0,
            issued_at: VecDeque::new(),
            rotation_attempt: 0,
        }
    }

    fn on_connected(&mut self, now: Instant, id: ConnId) {
        let slot = usize::from(id.slot);
        match self.slots[slot].phase {
            Phase::Dialing { generation, .. } if generation == id.generation => {
                let conn = self.new_conn(generation, now);
                let s = &mut self.slots[slot];
                s.phase = Phase::Open {
                    conn,
                    replacement: None,
                };
                s.attempt = 0;
                s.rejected = None;
                self.open_count += 1;
                self.rejected_status = None;
                self.outputs
                    .push_back(Output::Event(Event::Connected { conn: id }));
                self.flush_outbox(now);
                self.update_availability(now);
            }
            Phase::Open {
                replacement: Some((generation, _)),
                ..
            } if generation == id.generation => {
                // A planned rotation: the new connection takes work from now on; the old one
                // finishes what it has and then closes.
                let conn = self.new_conn(generation, now);
                let Phase::Open { conn: old, .. } = std::mem::replace(
                    &mut self.slots[slot].phase,
                    Phase::Open {
                        conn,
                        replacement: None,
                    },
                ) else {
                    unreachable!()
                };
                self.slots[slot].retiring.push(old);
                self.counters.rotations += 1;
                self.outputs
                    .push_back(Output::Event(Event::Connected { conn: id }));
                self.retire_drained(slot);
                self.flush_outbox(now);
            }
            _ => {
                // A dial the pool gave up on (timed out, or closing) finished anyway: close
                // it. A repeated report about a live connection changes nothing.
                self.counters.stale_inputs += 1;
                if self.slots[slot].conn_mut(id.generation).is_none() {
                    self.outputs.push_back(Output::Disconnect {
                        conn: id,
                        graceful: false,
                    });
                }
            }
        }
    }

    fn on_connect_failed(&mut self, now: Instant, id: ConnId, error: DialError) {
        let slot = usize::from(id.slot);
        match self.slots[slot].phase {
            Phase::Dialing { generation, .. } if generation == id.generation => {
                self.dial_failed(slot, now, id, error);
            }
            Phase::Open {
                replacement: Some((generation, _)),
                ..
            } if generation == id.generation => self.replacement_failed(slot, now, id, error),
            _ => self.counters.stale_inputs += 1,
        }
    }

    /// Counts and reports a failed dial; returns the key rejection's status, if it was one,
    /// and the server's `Retry-After`.
    fn note_dial_failure(&mut self, conn: ConnId, error: DialError) -> (Option<u16>, Option<Duration>) {
        self.counters.dial_failures += 1;
        let rejected = match error {
            DialError::Rejected { status } => Some(status),
            _ => None,
        };
        if rejected.is_some() {
            self.counters.rejections += 1;
        }
        let retry_after = error.retry_after();
        self.outputs
            .push_back(Output::Event(Event::ConnectFailed { conn, error }));
        (rejected, retry_after)
    }

    fn dial_failed(&mut self, slot: usize, now: Instant, conn: ConnId, error: DialError) {
        let (rejected, retry_after) = self.note_dial_failure(conn, error);
        self.slots[slot].rejected = rejected;
        self.schedule_reconnect(slot, now, retry_after);
        if let Some(status) = rejected {
            if self.open_count == 0 && self.slots.iter().all(|s| s.rejected.is_some()) {
                if self.rejected_status.is_none() {
                    self.outputs
                        .push_back(Output::Event(Event::KeyRejected { status }));
                }
                self.rejected_status = Some(status);
            }
        } else {
            self.rejected_status = None;
        }
    }

    /// A rotation's replacement dial failed: retry on the backoff schedule within the attempt
    /// budget; past it, keep the old connection in service until it dies.
    fn replacement_failed(&mut self, slot: usize, now: Instant, conn: ConnId, error: DialError) {
        let (_, retry_after) = self.note_dial_failure(conn, error);
        let Phase::Open { conn, .. } = &self.slots[slot].phase else {
            return;
        };
        let attempt = conn.rotation_attempt;
        let retry =
            (attempt < self.config.backoff_attempts).then(|| self.backoff_delay(attempt, retry_after));
        let Phase::Open { conn, replacement } = &mut self.slots[slot].phase else {
            return;
        };
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

    /// Pushes the read deadline of a live connection; false when the input names none.
    fn touch(&mut self, now: Instant, id: ConnId) -> bool {
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

    fn skip_frame(&mut self, conn: ConnId, error: FrameError) {
        self.counters.skipped_frames += 1;
        self.outputs
            .push_back(Output::Event(Event::FrameSkipped { conn, error }));
    }

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

    fn on_flushed(&mut self, now: Instant, id: ConnId, writes: u64) {
        let write_wait = self.config.write_wait;
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
        // The deadline belongs to the oldest write still unflushed, issued when its run began.
        let oldest = writes + 1;
        while conn.issued_at.get(1).is_some_and(|&(first, _)| first <= oldest) {
            conn.issued_at.pop_front();
        }
        if writes == conn.writes_issued {
            conn.issued_at.clear();
            conn.write_deadline = None;
        } else {
            conn.write_deadline = conn.issued_at.front().map(|&(_, at)| at + write_wait);
        }
        while conn.unflushed_sends.front().is_some_and(|&(n, _)| n <= writes) {
            let (_, kind) = conn.unflushed_sends.pop_front().expect("front exists");
            let s = &mut self.kinds.stats[usize::from(kind)];
            s.unflushed -= 1;
            s.sent += 1;
        }
        self.retire_drained(slot);
        self.flush_outbox(now);
    }

    /// Issues one write on a connection: a frame, or a ping when `frame` is `None`.
    fn write(&mut self, slot: usize, generation: u32, now: Instant, frame: Option<String>) -> u64 {
        let write_wait = self.config.write_wait;
        let conn = self.slots[slot]
            .conn_mut(generation)
            .expect("writes go to live connections");
        conn.writes_issued += 1;
        if conn.write_deadline.is_none() {
            conn.write_deadline = Some(now + write_wait);
        }
        let n = conn.writes_issued;
        if conn.issued_at.back().is_none_or(|&(_, at)| at != now) {
            conn.issued_at.push_back((n, now));
        }
        let id = conn_id(slot, generation);
        self.outputs.push_back(match frame {
            Some(frame) => Output::Transmit { conn: id, frame },
            None => Output::Ping { conn: id },
        });
        n
    }

    fn write_send(&mut self, slot: usize, now: Instant, frame: String, kind: u16) {
        let generation = self.slots[slot].open_conn().expect("open").generation;
        let n = self.write(slot, generation, now, Some(frame));
        if let Phase::Open { conn, .. } = &mut self.slots[slot].phase {
            conn.unflushed_sends.push_back((n, kind));
        }
        self.kinds.stats[usize::from(kind)].unflushed += 1;
    }

    fn flush_outbox(&mut self, now: Instant) {
        while !self.outbox.is_empty() {
            let Some(slot) = self.select(false, None) else {
                return;
            };
            let q = self.outbox.pop_front().expect("not empty");
            self.kinds.stats[usize::from(q.kind)].queued -= 1;
            self.write_send(slot, now, q.frame, q.kind);
        }
    }

    fn drop_queued(&mut self, queued: VecDeque<Queued>, reason: DropReason) {
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

    /// Completes a pending request exactly once.
    fn complete(&mut self, now: Instant, id: RequestId, outcome: Outcome) {
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
        let c = &mut self.counters;
        match &outcome {
            Outcome::Reply(_) => c.replies += 1,
            Outcome::Denied(_) => c.denials += 1,
            Outcome::Failed(RequestFailure::Timeout) => c.timeouts += 1,
            Outcome::Failed(RequestFailure::ConnectionLost(_)) => c.connection_lost += 1,
            Outcome::Failed(RequestFailure::Cancelled) => c.cancelled += 1,
            Outcome::Failed(RequestFailure::Closed) => c.closed += 1,
        }
        match &outcome {
            Outcome::Reply(_) | Outcome::Denied(_) => {
                self.timeout_ratio *= 1.0 - TIMEOUT_EWMA_ALPHA;
                // Replies are what brings a pool degraded by timeouts back; look now rather
                // than at the next timer (up to a ping period away).
                if self.availability != Availability::Available {
                    self.update_availability(now);
                }
            }
            Outcome::Failed(RequestFailure::Timeout) => {
                self.timeout_ratio = self.timeout_ratio * (1.0 - TIMEOUT_EWMA_ALPHA) + TIMEOUT_EWMA_ALPHA;
                self.update_availability(now);
            }
            _ => {}
        }
        self.outputs.push_back(Output::Completed { id, outcome });
        self.retire_drained(slot);
    }

    fn fail_all_pending(&mut self, now: Instant, failure: RequestFailure) {
        let mut ids: Vec<RequestId> = self.pending.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.complete(now, id, Outcome::Failed(failure.clone()));
        }
    }

    /// Stops using a connection that died: its requests fail at once (or are re-sent once
    /// when idempotent), its unflushed messages count as lost, and its slot reconnects.
    fn lose(&mut self, now: Instant, id: ConnId, reason: DisconnectReason) {
        let slot = usize::from(id.slot);
        let s = &mut self.slots[slot];
        let is_current = matches!(&s.phase, Phase::Open { conn, .. } if conn.generation == id.generation);
        let (conn, replacement) = if is_current {
            let Phase::Open { conn, replacement } = std::mem::replace(&mut s.phase, Phase::Closed) else {
                unreachable!()
            };
            self.open_count -= 1;
            (conn, replacement)
        } else {
            match s.retiring.iter().position(|c| c.generation == id.generation) {
                Some(i) => (s.retiring.swap_remove(i), None),
                None => {
                    self.counters.stale_inputs += 1;
                    return;
                }
            }
        };
        self.counters.disconnects += 1;
        self.outputs.push_back(Output::Disconnect {
            conn: id,
            graceful: false,
        });
        self.outputs.push_back(Output::Event(Event::Disconnected {
            conn: id,
            reason: reason.clone(),
        }));
        if is_current {
            match replacement {
                // A rotation was already dialing: that dial is the reconnect.
                Some((generation, deadline)) => {
                    self.slots[slot].phase = Phase::Dialing { generation, deadline }
                }
                None => self.schedule_reconnect(slot, now, None),
            }
        }
        let mut lost: Vec<u64> = vec![0; self.kinds.names.len()];
        for (_, kind) in conn.unflushed_sends {
            let s = &mut self.kinds.stats[usize::from(kind)];
            s.unflushed -= 1;
            s.lost += 1;
            lost[usize::from(kind)] += 1;
        }
        self.report_drops(&lost, DropReason::Lost);
        if conn.pending > 0 {
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
        self.update_availability(now);
    }

    /// Re-sends an idempotent request once on another open connection, within its deadline.
    fn try_resend(&mut self, now: Instant, id: RequestId) -> bool {
        let Some(p) = self.pending.get(&id) else {
            return false;
        };
        if p.resend.is_none() || p.deadline <= now {
            return false;
        }
        let Some(slot) = self.select(true, None) else {
            return false;
        };
        let p = self.pending.get_mut(&id).expect("checked above");
        let frame = p.resend.take().expect("checked above");
        let Phase::Open { conn, .. } = &mut self.slots[slot].phase else {
            unreachable!("select returns open slots")
        };
        conn.pending += 1;
        p.slot = slot as u16;
        p.generation = conn.generation;
        let generation = conn.generation;
        self.counters.resent += 1;
        self.write(slot, generation, now, Some(frame));
        true
    }

    /// Closes retiring connections that have no pending request and no unflushed write.
    fn retire_drained(&mut self, slot: usize) {
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

    fn slot_timers(&mut self, slot: usize, now: Instant) {
        match self.slots[slot].phase {
            Phase::Idle { dial_at: Some(t) } | Phase::Backoff { until: t } if t <= now => {
                self.dial(slot, now)
            }
            Phase::Dialing { generation, deadline } if deadline <= now => {
                let conn = conn_id(slot, generation);
                self.outputs.push_back(Output::Disconnect {
                    conn,
                    graceful: false,
                });
                self.dial_failed(slot, now, conn, DialError::Timeout);
            }
            Phase::Open { .. } => {
                if let Phase::Open {
                    replacement: Some((generation, deadline)),
                    ..
                } = self.slots[slot].phase
                {
                    if deadline <= now {
                        let conn = conn_id(slot, generation);
                        self.outputs.push_back(Output::Disconnect {
                            conn,
                            graceful: false,
                        });
                        self.replacement_failed(slot, now, conn, DialError::Timeout);
                    }
                }
                let generation = self.slots[slot].open_conn().expect("open").generation;
                if self.conn_timers(slot, generation, now) && !self.closing {
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
            }
            _ => {}
        }
        let retiring: Vec<u32> = self.slots[slot].retiring.iter().map(|c| c.generation).collect();
        for generation in retiring {
            self.conn_timers(slot, generation, now);
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

    /// Runs a live connection's deadlines; false when it died of one.
    fn conn_timers(&mut self, slot: usize, generation: u32, now: Instant) -> bool {
        let ping_period = self.config.ping_period;
        let id = conn_id(slot, generation);
        let Some(conn) = self.slots[slot].conn_mut(generation) else {
            return false;
        };
        if conn.write_deadline.is_some_and(|t| t <= now) {
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
                if let Some(deadline) = conn.write_deadline {
                    conn.next_ping = conn.next_ping.max(deadline);
                }
            } else {
                self.counters.pings += 1;
                let n = self.write(slot, generation, now, None);
                if let Some(conn) = self.slots[slot].conn_mut(generation) {
                    conn.last_ping = n;
                }
            }
        }
        true
    }

    fn update_availability(&mut self, now: Instant) {
        let threshold = self.config.degraded_timeout_ratio;
        let timeouts_high = if self.availability == Availability::Degraded {
            // Hysteresis in value too: a degraded pool needs the ratio well below the mark.
            self.timeout_ratio > threshold / 2.0
        } else {
            self.timeout_ratio > threshold
        };
        let raw = if self.open_count == 0 {
            Availability::Unavailable
        } else if self.closing || self.open_count < u32::from(self.config.pool_size) || timeouts_high {
            Availability::Degraded
        } else {
            Availability::Available
        };
        let change = if raw >= self.availability
            || self.availability == Availability::Unavailable
            || !self.ever_available
        {
            // Worse, back from nothing, or still starting up: at once (a host should use a
            // connection as soon as there is one, and a clean start is not a flap).
            self.upgrade_at = None;
            raw != self.availability
        } else {
            match self.upgrade_at {
                None => {
                    self.upgrade_at = Some(now + AVAILABILITY_HOLD);
                    false
                }
                Some(t) => t <= now,
            }
        };
        if change {
            self.upgrade_at = None;
            self.availability = raw;
            self.ever_available |= raw == Availability::Available;
            self.outputs
                .push_back(Output::Event(Event::AvailabilityChanged { availability: raw }));
        }
    }
}

fn conn_id(slot: usize, generation: u32) -> ConnId {
    ConnId {
        slot: slot as u16,
        generation,
    }
}

fn conn_timers(conn: &Conn, consider: &mut impl FnMut(Instant)) {
    if let Some(t) = conn.write_deadline {
        consider(t);
    }
    consider(conn.read_deadline);
    consider(conn.next_ping);
}

#[cfg(test)]
mod tests;
