//! The invariant checker: a shadow model of the pool built only from the calls made on it and
//! the outputs it produced, compared with the pool after every step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::backoff::nominal_delay;
use crate::config::Config;
use crate::frame::{self, Outgoing};
// The pool's own bounds, so the shadow model cannot drift from them.
use crate::pool::{Pool, AVAILABILITY_HOLD, MAX_TIMEOUT, MAX_TRACKED_KINDS, OTHER_KIND};
use crate::spool::{Restored, SpoolOpenError, SpoolOpened};
use crate::stats::{SendStats, Stats};
use crate::{
    Availability, ConnId, DialError, DisconnectReason, DropReason, Event, Input, MessageFate, MessageId,
    Outcome, Output, RequestError, RequestFailure, RequestId, RequestOptions, SendOptions, SendRefusal,
    SlotState,
};

/// One call made on the pool, with its immediate result: what [`Checker::observe_call`] needs
/// to know about a step.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Call<'a> {
    /// [`Pool::connect`].
    Connect,
    /// [`Pool::request`] with its message, options and result.
    Request {
        /// The message passed.
        message: &'a Outgoing,
        /// The options passed.
        options: RequestOptions,
        /// What `request` returned.
        result: &'a Result<RequestId, RequestError>,
    },
    /// [`Pool::send_with`] with (a copy of) its message, its options and its result.
    Send {
        /// The message passed.
        message: &'a Outgoing,
        /// The options passed.
        options: SendOptions,
        /// What `send_with` returned.
        result: &'a Result<MessageId, SendRefusal>,
    },
    /// [`Pool::cancel`] with its result.
    Cancel {
        /// The id passed.
        id: RequestId,
        /// What `cancel` returned.
        result: bool,
    },
    /// [`Pool::close`].
    Close,
    /// [`Pool::handle_input`] with the input.
    Input(&'a Input<'a>),
    /// [`Pool::handle_timeout`].
    Timeout,
    /// [`Pool::open_spool`] with its byte limit, the records handed back and its result.
    OpenSpool {
        /// The byte limit passed.
        max_bytes: u64,
        /// The records passed.
        restored: &'a [Restored],
        /// What `open_spool` returned.
        result: &'a Result<SpoolOpened, SpoolOpenError>,
    },
}

/// A broken invariant: its number (as listed in the [module docs](super)) and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's number, 1 to 13 (0: the checker's own call-sequence rules).
    pub invariant: u8,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {} violated: {}", self.invariant, self.message)
    }
}

impl std::error::Error for Violation {}

macro_rules! ensure {
    ($cond:expr, $inv:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Violation { invariant: $inv, message: format!($($fmt)+) });
        }
    };
}

mod calls;
mod checks;
mod events;
mod outputs;
mod spool;

/// The shadow of one live connection (open or retiring).
#[derive(Debug, Clone)]
struct ConnS {
    last_heard: Instant,
    next_ping: Instant,
    issued: u64,
    flushed: u64,
    write_deadline: Option<Instant>,
    pending: u32,
    /// Fire-and-forget messages written and not confirmed (with confirmation off: not
    /// flushed): (write number, kind index, bytes).
    flights: VecDeque<(u64, u16, usize)>,
    /// Write number of the last ping (0: none yet).
    last_ping: u64,
    /// Sequence number of the last ping (the second half of its payload).
    ping_seq: u64,
    /// The connection's token, the first half of every ping payload (from its first ping).
    ping_token: Option<[u8; 8]>,
    /// The ping not answered yet: (sequence, write number, answer deadline).
    unanswered: Option<(u64, u64, Instant)>,
    /// Messages (and their bytes) written since the last ping, and when a barrier falls due
    /// for them.
    since: u32,
    since_bytes: usize,
    barrier_due_at: Option<Instant>,
    /// When a replacement dial must start: (earliest, latest). Open connections only.
    rotate: Option<(Instant, Instant)>,
    /// Replacement dials that failed since it opened.
    rotation_attempt: u32,
    /// When each unflushed write was issued, oldest first: the write deadline is the oldest's
    /// plus the write wait.
    issue_times: VecDeque<Instant>,
}

impl ConnS {
    fn read_deadline(&self, pong_wait: Duration) -> Instant {
        self.last_heard + pong_wait
    }
    fn unflushed(&self) -> u64 {
        self.issued - self.flushed
    }
}

/// What a slot is doing, as far as the outputs tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Never dialed; with a staggered first dial, the latest instant it may come.
    Idle {
        spread_until: Option<Instant>,
    },
    Dialing {
        generation: u32,
        deadline: Instant,
    },
    Open,
    /// The connection or dial was lost; a reconnect decision is owed in this drain.
    Lost,
    Backoff {
        due: Instant,
    },
    Exhausted,
    Closed,
}

#[derive(Debug, Clone)]
struct SlotS {
    next_generation: u32,
    attempt: u32,
    phase: Phase,
    open: Option<(u32, ConnS)>,
    replacement: Option<(u32, Instant)>,
    retiring: BTreeMap<u32, ConnS>,
    /// When demand last re-armed it from rest.
    rearmed_at: Option<Instant>,
    /// The key rejection's status when its last own dial failed that way.
    rejected: Option<u16>,
    /// The `Retry-After` of its last failed dial, which the reconnect delay must honour.
    retry_after: Option<Duration>,
}

impl SlotS {
    fn live(&self, generation: u32) -> Option<&ConnS> {
        match &self.open {
            Some((g, c)) if *g == generation => Some(c),
            _ => self.retiring.get(&generation),
        }
    }
    fn live_mut(&mut self, generation: u32) -> Option<&mut ConnS> {
        match &mut self.open {
            Some((g, c)) if *g == generation => Some(c),
            _ => self.retiring.get_mut(&generation),
        }
    }
    fn dialing(&self, generation: u32) -> bool {
        matches!(self.phase, Phase::Dialing { generation: g, .. } if g == generation)
            || self.replacement.is_some_and(|(g, _)| g == generation)
    }
}

#[derive(Debug, Clone)]
struct ReqS {
    conn: ConnId,
    deadline: Instant,
    resendable: bool,
    transmits: u8,
}

/// The step being checked, with what the call alone lets us expect.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    None,
    Connect,
    Request {
        id: Option<RequestId>,
        not_connected: bool,
        /// The request's preferred slot, which its transmit's selection must honour.
        affinity: Option<u32>,
    },
    Send {
        open_was_zero: bool,
    },
    Cancel {
        id: RequestId,
    },
    Close {
        fail_now: bool,
    },
    Timeout,
    Connected(ConnId),
    ConnectFailed(ConnId),
    /// A text frame on a live connection: its correlation id (when it matches a pending
    /// request), whether it is a denial, whether it decodes.
    Text {
        conn: ConnId,
        answers: Option<RequestId>,
        denial: bool,
        valid: bool,
    },
    Binary(ConnId),
    /// An input that must change nothing visible (stale, or a server ping).
    Quiet,
    /// A pong on a live connection, with how many messages it must confirm.
    Pong {
        conn: ConnId,
        confirms: Option<u64>,
    },
    /// The adapter's word on a dead connection's unflushed writes.
    Unwritten,
    /// A close or write failure of a live connection: it must be lost in this drain.
    Ends(ConnId),
    /// A flush on a live connection (may retire it or flush the outbox).
    Flushed,
    /// The spool opened: restored records queued, or released as expired.
    OpenSpool,
}

/// What an output must be followed by.
#[derive(Debug, Clone, PartialEq)]
enum Await {
    /// A `Disconnected` event for a connection the pool stopped using.
    Disconnected {
        conn: ConnId,
        graceful: bool,
        was_open: bool,
    },
    /// A `ConnectFailed{Timeout}` event for an abandoned dial.
    DialTimeout(ConnId),
}

/// The invariant checker: a shadow model of a [`Pool`], built only from the calls made on
/// it and the outputs it produced, checked against the pool after every step.
///
/// Drive it step by step, in the pool's own drain discipline:
///
/// 1. make one call on the pool (a command, an input, or a timeout);
/// 2. [`Checker::observe_call`] with that call and its immediate result;
/// 3. for every output drained with [`Pool::poll_output`], [`Checker::observe_output`];
/// 4. [`Checker::check`] once the pool is drained.
///
/// [`Checker::drain`] does steps 3 and 4. Every method returns the first [`Violation`]
/// found; after one, the checker's state is unspecified. Time may jump forward arbitrarily
/// between steps (a fuzzer's "advance"): the checker demands that nothing happens before
/// its time, that nothing is overdue after a `handle_timeout`, and that `poll_timeout`
/// never promises a wake-up later than something due. A driver that calls
/// `handle_timeout` exactly at every `poll_timeout`, as [`super::Sim`] does, thereby
/// gets "exactly on time".
#[derive(Debug, Clone)]
pub struct Checker {
    config: Config,
    now: Instant,
    slots: Vec<SlotS>,
    /// Slot chosen last by selection, mirrored.
    cursor: Option<usize>,
    pending: BTreeMap<RequestId, ReqS>,
    deadlines: BTreeSet<(Instant, RequestId)>,
    issued: BTreeSet<RequestId>,
    kind_names: Vec<String>,
    kind_index: BTreeMap<String, u16>,
    sends: Vec<SendStats>,
    transmitted_sends: u64,
    closing: bool,
    drain_deadline: Option<Instant>,
    /// The close drain is under way (the pool holds connections open for it).
    draining: bool,
    /// The drain may start one dial in the close step.
    drain_dial: bool,
    /// Messages the pool held (queued, written, in limbo) and its outbox length, as of the
    /// last check: what a close or a send decides on.
    live_messages: usize,
    outbox_len: usize,
    /// The pool's counters as of the last check, for the deltas of a step.
    last_stats: Stats,
    /// Messages sent with `notify`, until their `Settled` output.
    notified: BTreeSet<u64>,
    /// Every id `send_with` returned.
    message_ids: BTreeSet<u64>,
    /// Something in this step showed that the close drain ended.
    drain_finished_in_step: bool,
    /// `MessageDropped` counts of this step by reason (other than a full outbox).
    step_drops: BTreeMap<DropReason, u64>,
    confirmation_off_seen: bool,
    pongs_missing_seen: bool,
    /// Connections told to close gracefully, with the instant the pool must abort them.
    lingering: BTreeMap<ConnId, Instant>,
    /// Availability as the events told it, whether it was ever `Available`, and when it
    /// last left `Available`.
    availability: Availability,
    ever_available: bool,
    left_available_at: Option<Instant>,
    stats: Stats,
    // ----- per step -----
    step: Step,
    outputs_in_step: u32,
    awaiting: Option<Await>,
    /// Connections lost in this step, with the reason once its `Disconnected` event told it.
    lost: BTreeMap<ConnId, Option<DisconnectReason>>,
    owed: BTreeMap<u16, u32>,
    expected_drops: BTreeMap<(String, DropReason), u64>,
    aborts: BTreeSet<ConnId>,
    request_transmitted: bool,
    text_answered: bool,
    skipped: bool,
    late_abort: bool,
    /// The shadow of the connection whose `Disconnected` event is awaited.
    dead_conn: Option<ConnS>,
    /// Whether the pool is down because of key rejections, as of the last check, with the
    /// status of the latest refusal.
    rejected_down: bool,
    rejected_status: Option<u16>,
    /// The key rejection of a slot's own dial in this step.
    step_rejection: Option<u16>,
    /// A `KeyRejected` event came in this step.
    key_rejected_seen: bool,
    /// The spool's ledger, carried across processes (see [`Checker::restarted`]).
    ledger: spool::Ledger,
}

impl Checker {
    /// A checker for a pool built with `config` at `now` (before any call).
    pub fn new(config: &Config, now: Instant) -> Checker {
        let slots = (0..config.pool_size())
            .map(|_| SlotS {
                next_generation: 0,
                attempt: 0,
                phase: Phase::Idle { spread_until: None },
                open: None,
                replacement: None,
                retiring: BTreeMap::new(),
                rearmed_at: None,
                rejected: None,
                retry_after: None,
            })
            .collect();
        let stats = Stats {
            pending_per_slot: vec![0; usize::from(config.pool_size())],
            ..Stats::default()
        };
        Checker {
            config: config.clone(),
            now,
            slots,
            cursor: None,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            issued: BTreeSet::new(),
            kind_names: Vec::new(),
            kind_index: BTreeMap::new(),
            sends: Vec::new(),
            transmitted_sends: 0,
            closing: false,
            drain_deadline: None,
            draining: false,
            drain_dial: false,
            live_messages: 0,
            outbox_len: 0,
            last_stats: Stats::default(),
            notified: BTreeSet::new(),
            message_ids: BTreeSet::new(),
            drain_finished_in_step: false,
            step_drops: BTreeMap::new(),
            confirmation_off_seen: false,
            pongs_missing_seen: false,
            lingering: BTreeMap::new(),
            availability: Availability::Unavailable,
            ever_available: false,
            left_available_at: None,
            stats,
            step: Step::None,
            outputs_in_step: 0,
            awaiting: None,
            lost: BTreeMap::new(),
            owed: BTreeMap::new(),
            expected_drops: BTreeMap::new(),
            aborts: BTreeSet::new(),
            request_transmitted: false,
            text_answered: false,
            skipped: false,
            late_abort: false,
            dead_conn: None,
            rejected_down: false,
            rejected_status: None,
            step_rejection: None,
            key_rejected_seen: false,
            ledger: spool::Ledger::default(),
        }
    }

    // ----- what the shadow knows, for drivers -----

    /// Requests the shadow model considers pending, in id order.
    pub fn pending_ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.pending.keys().copied()
    }

    /// How many requests are pending.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Fire-and-forget frames transmitted so far (a server can never count more).
    pub fn transmitted_sends(&self) -> u64 {
        self.transmitted_sends
    }

    /// Whether `conn` is live (open, or retiring with work left) in the shadow model.
    pub fn is_live(&self, conn: ConnId) -> bool {
        self.slots
            .get(usize::from(conn.slot))
            .is_some_and(|s| s.live(conn.generation).is_some())
    }

    /// Writes (frames and pings) handed to live connections and not yet flushed.
    pub fn unflushed_writes(&self) -> u64 {
        self.slots
            .iter()
            .flat_map(|s| s.open.iter().map(|(_, c)| c).chain(s.retiring.values()))
            .map(ConnS::unflushed)
            .sum()
    }

    /// Whether every open connection has been heard from (frame, pong, or its opening) at
    /// or after `t`.
    pub fn all_heard_since(&self, t: Instant) -> bool {
        self.slots
            .iter()
            .all(|s| s.open.as_ref().is_some_and(|(_, c)| c.last_heard >= t))
    }

    /// Pings written and not answered, on live connections.
    pub fn unanswered_pings(&self) -> usize {
        self.slots
            .iter()
            .flat_map(|s| s.open.iter().map(|(_, c)| c).chain(s.retiring.values()))
            .filter(|c| c.unanswered.is_some())
            .count()
    }

    /// Whether every slot has an open connection.
    pub fn all_open(&self) -> bool {
        self.slots.iter().all(|s| s.open.is_some())
    }

    /// Whether the shadow model knows no live connection and no dial in progress.
    pub fn quiescent(&self) -> bool {
        self.slots.iter().all(|s| {
            s.open.is_none()
                && s.retiring.is_empty()
                && s.replacement.is_none()
                && !matches!(s.phase, Phase::Dialing { .. })
        })
    }

    /// The checker's counters, as the pool's [`Pool::stats`] must report them.
    pub fn expected_stats(&self) -> &Stats {
        &self.stats
    }

    // ----- the step protocol -----

    /// Records the call of a step (made at `now`) and its immediate result; checks the
    /// result against the shadow model.
    pub fn observe_call(&mut self, now: Instant, call: Call<'_>) -> Result<(), Violation> {
        ensure!(
            self.step == Step::None,
            0,
            "observe_call before the previous step was checked"
        );
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        self.outputs_in_step = 0;
        self.request_transmitted = false;
        self.text_answered = false;
        self.skipped = false;
        self.late_abort = false;
        self.key_rejected_seen = false;
        self.step_rejection = None;
        self.drain_finished_in_step = false;
        self.step = match call {
            Call::Connect => {
                if !self.closing {
                    for s in &mut self.slots {
                        if s.phase == (Phase::Idle { spread_until: None })
                            && !self.config.initial_dial_spread().is_zero()
                        {
                            s.phase = Phase::Idle {
                                spread_until: Some(now + self.config.initial_dial_spread()),
                            };
                        }
                    }
                }
                Step::Connect
            }
            Call::Request {
                message,
                options,
                result,
            } => self.on_request_call(now, message, options, result)?,
            Call::Send {
                message,
                options,
                result,
            } => self.on_send_call(now, message, options, result)?,
            Call::Cancel { id, result } => {
                ensure!(
                    result == self.pending.contains_key(&id),
                    1,
                    "cancel({id}) returned {result}, but the request is {}pending",
                    if result { "not " } else { "" }
                );
                Step::Cancel { id }
            }
            Call::Close => self.on_close_call(now),
            Call::Timeout => Step::Timeout,
            Call::Input(input) => self.on_input_call(now, input),
            Call::OpenSpool {
                max_bytes,
                restored,
                result,
            } => self.on_open_spool_call(max_bytes, restored, result)?,
        };
        Ok(())
    }

    /// Checks one output of the current step's drain and applies it to the shadow model.
    pub fn observe_output(&mut self, output: &Output) -> Result<(), Violation> {
        ensure!(self.step != Step::None, 0, "observe_output before observe_call");
        self.outputs_in_step += 1;
        let now = self.now;
        if let Some(a) = self.awaiting.take() {
            match (&a, output) {
                (
                    Await::Disconnected {
                        conn,
                        graceful,
                        was_open,
                    },
                    Output::Event(Event::Disconnected { conn: c, reason }),
                ) if c == conn => return self.on_disconnected(*conn, *graceful, *was_open, reason),
                (Await::DialTimeout(conn), Output::Event(Event::ConnectFailed { conn: c, error }))
                    if c == conn =>
                {
                    ensure!(
                        *error == DialError::Timeout,
                        4,
                        "abandoned dial {conn} failed with {error:?}, not Timeout"
                    );
                    return self.on_connect_failed(*conn, error);
                }
                _ => {
                    return Err(Violation {
                        invariant: 10,
                        message: format!("expected {a:?} next, got {output:?}"),
                    })
                }
            }
        }
        if let Step::Quiet = self.step {
            return Err(Violation {
                invariant: 10,
                message: format!("an input about a dead or unknown connection produced {output:?}"),
            });
        }
        match output {
            Output::Dial { conn } => self.on_dial(now, *conn),
            Output::Transmit { conn, frame } => {
                self.check_kept_before_write(frame)?;
                self.on_transmit(now, *conn, frame)
            }
            Output::Ping { conn, payload } => self.on_ping(now, *conn, *payload),
            Output::Settled { id, fate } => self.on_settled(*id, *fate),
            Output::Disconnect { conn, graceful } => self.on_disconnect(now, *conn, *graceful),
            Output::Completed { id, outcome } => self.on_completed(now, *id, outcome),
            Output::Unsolicited { conn, frame } => {
                let ok = matches!(&self.step, Step::Text { conn: c, answers: None, valid: true, .. } if c == conn)
                    && !self.text_answered;
                ensure!(
                    ok,
                    1,
                    "unsolicited frame {frame:?} on {conn} in step {:?}",
                    self.step
                );
                self.text_answered = true;
                self.stats.orphan_replies += 1;
                Ok(())
            }
            Output::Event(e) => self.on_event(now, e),
            Output::Keep { .. } | Output::Release { .. } => self.on_spool_output(output),
        }
    }

    /// Drains the pool's outputs through [`Checker::observe_output`], handing each to
    /// `sink` after it is checked, then runs [`Checker::check`].
    pub fn drain(&mut self, pool: &mut Pool, mut sink: impl FnMut(&Output)) -> Result<(), Violation> {
        while let Some(o) = pool.poll_output() {
            self.observe_output(&o)?;
            sink(&o);
        }
        self.check(pool)
    }

    /// Ends the step: checks what the drain owed, then compares the shadow model with the
    /// pool (state, counters, `poll_timeout`).
    pub fn check(&mut self, pool: &Pool) -> Result<(), Violation> {
        let step = std::mem::replace(&mut self.step, Step::None);
        ensure!(step != Step::None, 0, "check before observe_call");
        ensure!(
            self.awaiting.is_none(),
            10,
            "drain ended while awaiting {:?}",
            self.awaiting
        );
        // While a close drains, a slot that lost its connection or dial dials again only
        // while messages are left to deliver; otherwise it closes without an event.
        if self.draining {
            for (slot, n) in self.owed.iter_mut() {
                if *n > 0 && pool.slot_state(*slot) == Some(SlotState::Closed) {
                    *n = 0;
                    self.slots[usize::from(*slot)].phase = Phase::Closed;
                }
            }
        }
        // (11) one loss, one reconnect decision.
        if let Some((slot, n)) = self.owed.iter().find(|(_, n)| **n > 0) {
            return Err(Violation {
                invariant: 11,
                message: format!(
                    "slot {slot} lost its connection or dial but {n} reconnect(s) were not scheduled"
                ),
            });
        }
        self.owed.clear();
        ensure!(
            self.expected_drops.is_empty(),
            7,
            "missing MessageDropped events: {:?}",
            self.expected_drops
        );
        ensure!(
            self.aborts.is_empty(),
            13,
            "close did not abandon dials {:?}",
            self.aborts
        );
        // (3) nothing pending on a dead connection.
        for (id, r) in &self.pending {
            ensure!(
                self.is_live(r.conn),
                3,
                "request {id} still pending on dead connection {}",
                r.conn
            );
        }
        self.lost.clear();
        match &step {
            Step::Request { id: Some(id), .. } => {
                ensure!(
                    self.request_transmitted,
                    6,
                    "request {id} accepted but never transmitted"
                );
                self.check_rearmed(&step)?;
            }
            Step::Request { .. } | Step::Connect => self.check_rearmed(&step)?,
            Step::Send { .. } => self.check_rearmed(&step)?,
            Step::Cancel { id } => {
                ensure!(
                    !self.pending.contains_key(id),
                    1,
                    "cancelled request {id} still pending"
                );
            }
            Step::Close { fail_now: true } => {
                ensure!(
                    self.pending.is_empty(),
                    13,
                    "close left requests pending without a drain"
                )
            }
            Step::Text { conn, valid, .. } => ensure!(
                self.text_answered == *valid && self.skipped != *valid,
                1,
                "frame on {conn}: valid {valid}, answered {}, skipped {}",
                self.text_answered,
                self.skipped
            ),
            Step::ConnectFailed(conn) => ensure!(
                !self.slots[usize::from(conn.slot)].dialing(conn.generation),
                4,
                "dial {conn} failed but the pool still waits for it"
            ),
            Step::Binary(conn) => ensure!(self.skipped, 1, "binary frame on {conn} not skipped"),
            Step::Ends(conn) => ensure!(!self.is_live(*conn), 3, "{conn} ended but the pool still uses it"),
            Step::Connected(conn) => ensure!(
                self.is_live(*conn) || self.late_abort,
                10,
                "Connected {conn} neither opened nor was aborted"
            ),
            _ => {}
        }
        if step == Step::Timeout {
            self.defer_stuck_pings();
            self.check_nothing_overdue(pool)?;
        }
        self.check_drain(pool)?;
        self.check_barriers()?;
        self.check_rejection(pool)?;
        self.check_availability(pool)?;
        self.check_not_late(pool)?;
        self.check_state(pool)?;
        self.check_stats(pool)
    }

    // ----- helpers -----

    fn open_count(&self) -> usize {
        self.slots.iter().filter(|s| s.open.is_some()).count()
    }

    fn pending_per_slot(&self) -> Vec<u32> {
        self.slots
            .iter()
            .map(|s| s.open.as_ref().map_or(0, |(_, c)| c.pending))
            .collect()
    }

    /// The pool's selection rule for a request: among open connections with room, the
    /// fewest pending requests, ties going to the preferred slot, or else rotating from the
    /// slot chosen last.
    fn peek_select(&self, affinity: Option<u32>) -> Option<usize> {
        let n = self.slots.len();
        let start = match affinity {
            Some(slot) => slot as usize % n,
            None => self.cursor.map_or(0, |c| (c + 1) % n),
        };
        let mut best: Option<(usize, u32)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let Some((_, c)) = &self.slots[i].open else {
                continue;
            };
            if c.unflushed() >= u64::from(self.config.max_unflushed_writes()) {
                continue;
            }
            if c.pending >= self.config.max_in_flight() {
                continue;
            }
            if best.is_none_or(|(_, p)| c.pending < p) {
                best = Some((i, c.pending));
                if c.pending == 0 {
                    break;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// The slot a request goes to (sends go where their window has room: see `on_transmit`).
    fn select(&mut self, affinity: Option<u32>) -> Option<usize> {
        let pick = self.peek_select(affinity);
        if pick.is_some() && affinity.is_none() {
            self.cursor = pick;
        }
        pick
    }

    fn intern(&mut self, kind: &str) -> u16 {
        if let Some(&i) = self.kind_index.get(kind) {
            return i;
        }
        let name = if self.kind_names.len() >= MAX_TRACKED_KINDS {
            OTHER_KIND
        } else {
            kind
        };
        if let Some(&i) = self.kind_index.get(name) {
            return i;
        }
        let i = self.kind_names.len() as u16;
        self.kind_names.push(name.to_owned());
        self.sends.push(SendStats::default());
        self.kind_index.insert(name.to_owned(), i);
        i
    }
}
