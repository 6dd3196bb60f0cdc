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
use crate::stats::{SendStats, Stats};
use crate::{
    Availability, ConnId, DialError, DisconnectReason, DropReason, Event, Input, Outcome, Output,
    RequestError, RequestFailure, RequestId, RequestOptions, SendError, SlotState,
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
    /// [`Pool::send`] with (a copy of) its message and its result.
    Send {
        /// The message passed.
        message: &'a Outgoing,
        /// What `send` returned.
        result: &'a Result<(), SendError>,
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

/// The shadow of one live connection (open or retiring).
#[derive(Debug, Clone)]
struct ConnS {
    last_heard: Instant,
    next_ping: Instant,
    issued: u64,
    flushed: u64,
    write_deadline: Option<Instant>,
    pending: u32,
    /// Fire-and-forget writes not yet flushed: (write number, kind index).
    unflushed_sends: VecDeque<(u64, u16)>,
    /// Write number of the last ping (0: none yet).
    last_ping: u64,
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

#[derive(Debug, Clone)]
struct QueuedS {
    frame: String,
    kind: u16,
    expires: Instant,
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
        direct: Option<(String, u16)>,
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
    /// An input that must change nothing visible (stale, or a pong/flush).
    Quiet,
    /// A close or write failure of a live connection: it must be lost in this drain.
    Ends(ConnId),
    /// A flush on a live connection (may retire it or flush the outbox).
    Flushed,
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
    outbox: VecDeque<QueuedS>,
    kind_names: Vec<String>,
    kind_index: BTreeMap<String, u16>,
    sends: Vec<SendStats>,
    transmitted_sends: u64,
    closing: bool,
    drain_deadline: Option<Instant>,
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
    lost: BTreeMap<ConnId, DisconnectReason>,
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
            outbox: VecDeque::new(),
            kind_names: Vec::new(),
            kind_index: BTreeMap::new(),
            sends: Vec::new(),
            transmitted_sends: 0,
            closing: false,
            drain_deadline: None,
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
            Call::Send { message, result } => self.on_send_call(now, message, result)?,
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
            Call::Timeout => {
                // The outbox expires from its front; the events come grouped by type.
                while self.outbox.front().is_some_and(|q| q.expires <= now) {
                    let q = self.outbox.pop_front().expect("front exists");
                    let s = &mut self.sends[usize::from(q.kind)];
                    s.queued -= 1;
                    s.expired += 1;
                    let name = self.kind_names[usize::from(q.kind)].clone();
                    *self
                        .expected_drops
                        .entry((name, DropReason::Expired))
                        .or_default() += 1;
                }
                Step::Timeout
            }
            Call::Input(input) => self.on_input_call(now, input),
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
            Output::Transmit { conn, frame } => self.on_transmit(now, *conn, frame),
            Output::Ping { conn } => self.on_ping(now, *conn),
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
            Step::Send { direct, .. } => {
                ensure!(
                    direct.is_none(),
                    7,
                    "send accepted for direct write but not transmitted"
                );
                self.check_rearmed(&step)?;
            }
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
        self.check_rejection(pool)?;
        self.check_availability(pool)?;
        self.check_not_late(pool)?;
        self.check_state(pool)?;
        self.check_stats(pool)
    }

    // ----- calls -----

    fn on_request_call(
        &mut self,
        _now: Instant,
        message: &Outgoing,
        options: RequestOptions,
        result: &Result<RequestId, RequestError>,
    ) -> Result<Step, Violation> {
        if self.closing {
            ensure!(
                *result == Err(RequestError::Closed),
                13,
                "request after close returned {result:?}"
            );
            self.stats.refused_closed += 1;
            return Ok(Step::Request {
                id: None,
                not_connected: false,
                affinity: options.affinity,
            });
        }
        let open = self.open_count();
        match (self.peek_select(true, options.affinity), result) {
            (Some(_), Ok(id)) => {
                ensure!(self.issued.insert(*id), 1, "request id {id} returned twice");
                let timeout = options
                    .timeout
                    .unwrap_or(self.config.request_timeout())
                    .min(MAX_TIMEOUT);
                // Its own reading of the rule: the allocationId counts only where the server
                // deduplicates on it.
                let idempotent = options.idempotent
                    || (message.idempotency_key().is_some()
                        && self.config.server_deduplicates_allocation_ids());
                // Registered now; its connection is set by the transmit that must follow.
                self.pending.insert(
                    *id,
                    ReqS {
                        conn: ConnId {
                            slot: u16::MAX,
                            generation: u32::MAX,
                        },
                        deadline: self.now + timeout,
                        resendable: idempotent && self.config.resend_idempotent(),
                        transmits: 0,
                    },
                );
                self.deadlines.insert((self.now + timeout, *id));
                self.stats.requests += 1;
                Ok(Step::Request {
                    id: Some(*id),
                    not_connected: false,
                    affinity: options.affinity,
                })
            }
            (None, Err(RequestError::NotConnected)) if open == 0 && !self.key_rejected_everywhere() => {
                self.stats.refused_not_connected += 1;
                Ok(Step::Request {
                    id: None,
                    not_connected: true,
                    affinity: options.affinity,
                })
            }
            (None, Err(RequestError::Rejected { status }))
                if open == 0 && self.key_rejected_everywhere() && self.rejected_status == Some(*status) =>
            {
                self.stats.refused_not_connected += 1;
                Ok(Step::Request {
                    id: None,
                    not_connected: true,
                    affinity: options.affinity,
                })
            }
            (None, Err(RequestError::Backpressure { max_in_flight }))
                if open > 0 && *max_in_flight == self.config.max_in_flight() =>
            {
                self.stats.refused_backpressure += 1;
                Ok(Step::Request {
                    id: None,
                    not_connected: false,
                    affinity: options.affinity,
                })
            }
            (pick, result) => Err(Violation {
                invariant: 6,
                message: format!(
                    "request returned {result:?} with {open} open connection(s), selection {pick:?}"
                ),
            }),
        }
    }

    fn on_send_call(
        &mut self,
        now: Instant,
        message: &Outgoing,
        result: &Result<(), SendError>,
    ) -> Result<Step, Violation> {
        let kind = self.intern(&message.kind);
        self.sends[usize::from(kind)].sends += 1;
        if self.closing {
            ensure!(
                matches!(result, Err(SendError::Closed(m)) if m == message),
                13,
                "send after close returned {result:?}"
            );
            self.sends[usize::from(kind)].closed += 1;
            return Ok(Step::Send {
                direct: None,
                open_was_zero: false,
            });
        }
        let encoded = frame::encode(message, None);
        if self.outbox.is_empty() && self.peek_select(false, None).is_some() {
            ensure!(
                result.is_ok(),
                7,
                "send refused ({result:?}) with a connection able to take it"
            );
            return Ok(Step::Send {
                direct: Some((encoded, kind)),
                open_was_zero: false,
            });
        }
        let open_was_zero = self.open_count() == 0;
        if self.outbox.len() >= self.config.outbox_capacity() as usize {
            ensure!(
                matches!(result, Err(SendError::OutboxFull(m)) if m == message),
                7,
                "send with a full outbox returned {result:?}"
            );
            self.sends[usize::from(kind)].dropped += 1;
            // Named as its counters are (`*other*` past the tracked types).
            let name = self.kind_names[usize::from(kind)].clone();
            self.expected_drops.insert((name, DropReason::OutboxFull), 1);
        } else {
            ensure!(
                result.is_ok(),
                7,
                "send refused ({result:?}) with room in the outbox"
            );
            self.sends[usize::from(kind)].queued += 1;
            self.outbox.push_back(QueuedS {
                frame: encoded,
                kind,
                expires: now + self.config.outbox_ttl(),
            });
        }
        Ok(Step::Send {
            direct: None,
            open_was_zero,
        })
    }

    fn on_close_call(&mut self, now: Instant) -> Step {
        if self.closing {
            return Step::Quiet;
        }
        self.closing = true;
        for q in std::mem::take(&mut self.outbox) {
            let s = &mut self.sends[usize::from(q.kind)];
            s.queued -= 1;
            s.closed += 1;
            let name = self.kind_names[usize::from(q.kind)].clone();
            *self.expected_drops.entry((name, DropReason::Closed)).or_default() += 1;
        }
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Phase::Dialing { generation, .. } = s.phase {
                self.aborts.insert(ConnId {
                    slot: i as u16,
                    generation,
                });
            }
            if let Some((generation, _)) = s.replacement.take() {
                self.aborts.insert(ConnId {
                    slot: i as u16,
                    generation,
                });
            }
            if let Some((generation, mut conn)) = s.open.take() {
                conn.rotate = None;
                s.retiring.insert(generation, conn);
            }
            s.phase = Phase::Closed;
        }
        let fail_now = self.config.close_drain().is_zero() || self.pending.is_empty();
        if !fail_now {
            self.drain_deadline = Some(now + self.config.close_drain());
        }
        Step::Close { fail_now }
    }

    fn on_input_call(&mut self, now: Instant, input: &Input<'_>) -> Step {
        let conn = input.conn();
        let write_wait = self.config.write_wait();
        let max_frame = self.config.max_frame_size();
        if self.lingering.contains_key(&conn) {
            // Closing gracefully: only its end matters, and it ends the linger.
            if matches!(input, Input::WriteFailed { .. } | Input::Closed { .. }) {
                self.lingering.remove(&conn);
            }
            return Step::Quiet;
        }
        let Some(slot) = self.slots.get_mut(usize::from(conn.slot)) else {
            return Step::Quiet;
        };
        if conn.generation >= slot.next_generation {
            // Never dialed: ignored and counted.
            return Step::Quiet;
        }
        match input {
            Input::Connected { .. } => return Step::Connected(conn),
            Input::ConnectFailed { .. } if slot.dialing(conn.generation) => return Step::ConnectFailed(conn),
            _ => {}
        }
        let Some(c) = slot.live_mut(conn.generation) else {
            return Step::Quiet;
        };
        match input {
            Input::Text { text, .. } => {
                c.last_heard = now;
                let decoded = frame::decode(text, max_frame);
                let (answers, denial) = match &decoded {
                    Ok(f) => (
                        f.correlation_id()
                            .and_then(|s| Uuid::try_parse(s).ok())
                            .map(RequestId)
                            .filter(|id| self.pending.contains_key(id)),
                        f.is_denial(),
                    ),
                    Err(_) => (None, false),
                };
                Step::Text {
                    conn,
                    answers,
                    denial,
                    valid: decoded.is_ok(),
                }
            }
            Input::Binary { .. } => {
                c.last_heard = now;
                Step::Binary(conn)
            }
            Input::Pong { .. } | Input::Ping { .. } => {
                c.last_heard = now;
                Step::Quiet
            }
            Input::Flushed { writes, .. } => {
                let writes = (*writes).min(c.issued);
                if writes > c.flushed {
                    for _ in c.flushed..writes {
                        c.issue_times.pop_front();
                    }
                    c.flushed = writes;
                    c.write_deadline = c.issue_times.front().map(|&t| t + write_wait);
                    while c.unflushed_sends.front().is_some_and(|&(n, _)| n <= writes) {
                        let (_, kind) = c.unflushed_sends.pop_front().expect("front exists");
                        let s = &mut self.sends[usize::from(kind)];
                        s.unflushed -= 1;
                        s.sent += 1;
                    }
                }
                // A flush may drain a retiring connection or the outbox: not quiet.
                Step::Flushed
            }
            Input::WriteFailed { .. } | Input::Closed { .. } => Step::Ends(conn),
            _ => Step::Quiet,
        }
    }

    // ----- outputs -----

    fn on_dial(&mut self, now: Instant, conn: ConnId) -> Result<(), Violation> {
        ensure!(!self.closing, 13, "Dial {conn} after close");
        let hs = self.config.handshake_timeout();
        let step = self.step.clone();
        let Some(s) = self.slots.get_mut(usize::from(conn.slot)) else {
            return Err(Violation {
                invariant: 10,
                message: format!("Dial of unknown slot {conn}"),
            });
        };
        ensure!(
            conn.generation == s.next_generation,
            10,
            "Dial {conn}: expected generation {}",
            s.next_generation
        );
        s.next_generation += 1;
        self.stats.dials += 1;
        if let Some((_, open)) = &s.open {
            // A replacement for a connection that reached its maximum age.
            ensure!(s.replacement.is_none(), 10, "second replacement dial {conn}");
            let (lo, _) = open.rotate.ok_or_else(|| Violation {
                invariant: 10,
                message: format!("replacement dial {conn} without a maximum age"),
            })?;
            ensure!(
                step == Step::Timeout && lo <= now,
                4,
                "replacement dial {conn} before its time ({:?} early) in {step:?}",
                lo.saturating_duration_since(now)
            );
            s.replacement = Some((conn.generation, now + hs));
            if let Some((_, open)) = &mut s.open {
                open.rotate = None;
            }
            return Ok(());
        }
        match s.phase {
            Phase::Idle { spread_until } => ensure!(
                step == Step::Connect || step == Step::Timeout && spread_until.is_some(),
                4,
                "first dial {conn} outside connect/spread ({step:?}, {spread_until:?})"
            ),
            Phase::Backoff { due } => ensure!(
                now >= due,
                4,
                "Dial {conn} {:?} before its backoff ended",
                due - now
            ),
            Phase::Exhausted => {
                return Err(Violation {
                    invariant: 4,
                    message: format!("resting slot dialed ({conn}) without SlotRearmed in {step:?}"),
                })
            }
            other => {
                return Err(Violation {
                    invariant: 10,
                    message: format!("Dial {conn} while the slot is {other:?}"),
                })
            }
        }
        s.phase = Phase::Dialing {
            generation: conn.generation,
            deadline: now + hs,
        };
        Ok(())
    }

    fn on_transmit(&mut self, now: Instant, conn: ConnId, frame: &str) -> Result<(), Violation> {
        let open = self
            .slots
            .get(usize::from(conn.slot))
            .and_then(|s| s.open.as_ref());
        ensure!(
            open.is_some_and(|(g, _)| *g == conn.generation),
            10,
            "Transmit on {conn}, which is not an open connection"
        );
        let id = frame::decode(frame, usize::MAX)
            .ok()
            .and_then(|f| f.id)
            .and_then(|s| Uuid::try_parse(&s).ok())
            .map(RequestId);
        let affinity = match self.step {
            Step::Request {
                id: Some(i),
                affinity,
                ..
            } if !self.request_transmitted && id == Some(i) => affinity,
            _ => None,
        };
        let expected = self.select(id.is_some(), affinity);
        ensure!(
            expected == Some(usize::from(conn.slot)),
            6,
            "Transmit on {conn}, but selection picks slot {expected:?} (pending per slot {:?})",
            self.pending_per_slot()
        );
        let write_no = self.write(now, conn);
        match id {
            Some(id) => {
                let step_id = match self.step {
                    Step::Request { id: Some(i), .. } if !self.request_transmitted => Some(i),
                    _ => None,
                };
                let lost = &self.lost;
                let Some(r) = self.pending.get_mut(&id) else {
                    return Err(Violation {
                        invariant: 12,
                        message: format!("Transmit of request {id}, which is not pending"),
                    });
                };
                if step_id == Some(id) {
                    self.request_transmitted = true;
                } else {
                    ensure!(
                        r.transmits == 1 && r.resendable && lost.contains_key(&r.conn) && r.deadline > now,
                        12,
                        "request {id} transmitted again (transmits {}, resendable {}, its connection {} lost: {})",
                        r.transmits,
                        r.resendable,
                        r.conn,
                        lost.contains_key(&r.conn)
                    );
                    self.stats.resent += 1;
                }
                r.transmits += 1;
                r.conn = conn;
                let c = self.slots[usize::from(conn.slot)]
                    .live_mut(conn.generation)
                    .expect("checked open");
                c.pending += 1;
                ensure!(
                    c.pending <= self.config.max_in_flight(),
                    6,
                    "{conn} has {} requests in flight, above the cap",
                    c.pending
                );
            }
            None => {
                let kind = match &mut self.step {
                    Step::Send { direct, .. } if direct.is_some() => {
                        let (f, kind) = direct.take().expect("checked");
                        ensure!(f == frame, 7, "direct send transmitted {frame}, expected {f}");
                        kind
                    }
                    _ => {
                        let q = self.outbox.pop_front().ok_or_else(|| Violation {
                            invariant: 7,
                            message: format!("fire-and-forget Transmit {frame} with an empty outbox"),
                        })?;
                        ensure!(
                            q.frame == frame,
                            7,
                            "outbox not FIFO: transmitted {frame}, expected {}",
                            q.frame
                        );
                        self.sends[usize::from(q.kind)].queued -= 1;
                        q.kind
                    }
                };
                self.sends[usize::from(kind)].unflushed += 1;
                self.transmitted_sends += 1;
                self.slots[usize::from(conn.slot)]
                    .live_mut(conn.generation)
                    .expect("checked open")
                    .unflushed_sends
                    .push_back((write_no, kind));
            }
        }
        Ok(())
    }

    fn on_ping(&mut self, now: Instant, conn: ConnId) -> Result<(), Violation> {
        let period = self.config.ping_period();
        let step = self.step.clone();
        let c = self
            .slots
            .get_mut(usize::from(conn.slot))
            .and_then(|s| s.live_mut(conn.generation))
            .ok_or_else(|| Violation {
                invariant: 5,
                message: format!("Ping on {conn}, which is not live"),
            })?;
        ensure!(
            step == Step::Timeout && now >= c.next_ping,
            5,
            "Ping on {conn} {:?} early, in {step:?}",
            c.next_ping.saturating_duration_since(now)
        );
        c.next_ping += period;
        if c.next_ping <= now {
            c.next_ping = now + period;
        }
        self.stats.pings += 1;
        let n = self.write(now, conn);
        if let Some(c) = self.slots[usize::from(conn.slot)].live_mut(conn.generation) {
            c.last_ping = n;
        }
        Ok(())
    }

    fn write(&mut self, now: Instant, conn: ConnId) -> u64 {
        let write_wait = self.config.write_wait();
        let c = self.slots[usize::from(conn.slot)]
            .live_mut(conn.generation)
            .expect("writes go to live connections");
        c.issued += 1;
        c.issue_times.push_back(now);
        if c.write_deadline.is_none() {
            c.write_deadline = Some(now + write_wait);
        }
        c.issued
    }

    fn on_disconnect(&mut self, now: Instant, conn: ConnId, graceful: bool) -> Result<(), Violation> {
        let step = self.step.clone();
        let closing = self.closing;
        if let Some(deadline) = self.lingering.get(&conn).copied() {
            ensure!(
                !graceful && step == Step::Timeout && now >= deadline,
                13,
                "{conn} closing gracefully was disconnected again (graceful {graceful}) {:?} before its linger ended",
                deadline.saturating_duration_since(now)
            );
            self.lingering.remove(&conn);
            return Ok(());
        }
        let Some(s) = self.slots.get_mut(usize::from(conn.slot)) else {
            return Err(Violation {
                invariant: 10,
                message: format!("Disconnect of unknown slot {conn}"),
            });
        };
        // A dial in progress: abandoned by close, or by its handshake deadline.
        if self.aborts.contains(&conn) {
            ensure!(!graceful, 13, "graceful Disconnect of dial {conn} at close");
            self.aborts.remove(&conn);
            return Ok(());
        }
        if s.dialing(conn.generation) {
            ensure!(!graceful, 10, "graceful Disconnect of dial {conn}");
            let deadline = match s.phase {
                Phase::Dialing { generation, deadline } if generation == conn.generation => deadline,
                _ => s.replacement.expect("dialing").1,
            };
            ensure!(
                step == Step::Timeout && now >= deadline,
                4,
                "dial {conn} abandoned {:?} before its handshake deadline",
                deadline.saturating_duration_since(now)
            );
            self.awaiting = Some(Await::DialTimeout(conn));
            return Ok(());
        }
        let was_open = s.open.as_ref().is_some_and(|(g, _)| *g == conn.generation);
        let c = if was_open {
            s.open.take().map(|(_, c)| c)
        } else {
            s.retiring.remove(&conn.generation)
        };
        let Some(c) = c else {
            // A dial the pool gave up on reported Connected anyway: abort it.
            ensure!(
                step == Step::Connected(conn) && !graceful && !self.late_abort,
                10,
                "Disconnect of {conn}, which is neither live nor dialing (step {step:?})"
            );
            self.late_abort = true;
            return Ok(());
        };
        if graceful {
            ensure!(
                !was_open && c.pending == 0 && c.unflushed() == 0,
                10,
                "graceful Disconnect of {conn} (open {was_open}, pending {}, unflushed {})",
                c.pending,
                c.unflushed()
            );
            self.lingering.insert(conn, now + self.config.write_wait());
        } else {
            if was_open && closing {
                return Err(Violation {
                    invariant: 13,
                    message: format!("open connection {conn} after close"),
                });
            }
            if was_open {
                s.phase = Phase::Lost;
            }
            // Unflushed sends are lost with the connection.
            for (_, kind) in &c.unflushed_sends {
                let st = &mut self.sends[usize::from(*kind)];
                st.unflushed -= 1;
                st.lost += 1;
                let name = self.kind_names[usize::from(*kind)].clone();
                *self.expected_drops.entry((name, DropReason::Lost)).or_default() += 1;
            }
            // Keep the connection's shadow for the reason checks of the Disconnected event.
            self.lost.insert(conn, DisconnectReason::Unexpected);
            self.dead_conn = Some(c);
        }
        self.awaiting = Some(Await::Disconnected {
            conn,
            graceful,
            was_open,
        });
        Ok(())
    }

    fn on_disconnected(
        &mut self,
        conn: ConnId,
        graceful: bool,
        was_open: bool,
        reason: &DisconnectReason,
    ) -> Result<(), Violation> {
        let now = self.now;
        if graceful {
            let expected = if self.closing {
                DisconnectReason::PoolClosing
            } else {
                DisconnectReason::Rotated
            };
            ensure!(
                *reason == expected,
                10,
                "retired {conn} with reason {reason:?}, expected {expected:?}"
            );
            return Ok(());
        }
        let c = self.dead_conn.take().expect("set with the Disconnect");
        let step = &self.step;
        let ok = match reason {
            DisconnectReason::Closed(_) | DisconnectReason::WriteFailed(_) => *step == Step::Ends(conn),
            DisconnectReason::ReadTimeout => {
                *step == Step::Timeout && c.read_deadline(self.config.pong_wait()) <= now
            }
            DisconnectReason::WriteTimeout => {
                *step == Step::Timeout && c.write_deadline.is_some_and(|t| t <= now)
            }
            _ => false,
        };
        ensure!(
            ok,
            if matches!(reason, DisconnectReason::ReadTimeout) {
                5
            } else {
                3
            },
            "{conn} lost with reason {reason:?} in step {step:?} (last heard {:?} ago, write deadline {:?})",
            now - c.last_heard,
            c.write_deadline.map(|t| t.saturating_duration_since(now))
        );
        self.lost.insert(conn, reason.clone());
        self.stats.disconnects += 1;
        if was_open {
            let s = &mut self.slots[usize::from(conn.slot)];
            match s.replacement.take() {
                // The rotation's dial already in progress is the reconnect.
                Some((generation, deadline)) => s.phase = Phase::Dialing { generation, deadline },
                None => *self.owed.entry(conn.slot).or_default() += 1,
            }
        }
        Ok(())
    }

    fn on_connect_failed(&mut self, conn: ConnId, error: &DialError) -> Result<(), Violation> {
        let now = self.now;
        let attempts = self.config.backoff_attempts();
        let retry_after = match error {
            DialError::HttpStatus { retry_after, .. } => *retry_after,
            _ => None,
        };
        let rejected = match error {
            DialError::Rejected { status } => Some(*status),
            _ => None,
        };
        self.stats.dial_failures += 1;
        if rejected.is_some() {
            self.stats.rejections += 1;
        }
        let window = |attempt: u32| self.delay_window(attempt, retry_after);
        let s = &self.slots[usize::from(conn.slot)];
        if matches!(s.phase, Phase::Dialing { generation, .. } if generation == conn.generation) {
            let s = &mut self.slots[usize::from(conn.slot)];
            s.phase = Phase::Lost;
            s.rejected = rejected;
            s.retry_after = retry_after;
            self.step_rejection = rejected;
            *self.owed.entry(conn.slot).or_default() += 1;
            return Ok(());
        }
        ensure!(
            s.replacement.is_some_and(|(g, _)| g == conn.generation),
            10,
            "ConnectFailed for {conn}, which is not dialing"
        );
        // A rotation's replacement: the backoff schedule and budget of any dial.
        let rotate = s.open.as_ref().and_then(|(_, open)| {
            (open.rotation_attempt < attempts).then(|| {
                let (lo, hi) = window(open.rotation_attempt);
                (now + lo, now + hi)
            })
        });
        let s = &mut self.slots[usize::from(conn.slot)];
        s.replacement = None;
        if let Some((_, open)) = &mut s.open {
            open.rotate = rotate;
            if rotate.is_some() {
                open.rotation_attempt += 1;
            }
        }
        Ok(())
    }

    /// The range a retry's delay must fall in: the jittered schedule for `attempt`, and no
    /// sooner than the server's `Retry-After`, itself bounded by the cap.
    fn delay_window(&self, attempt: u32, retry_after: Option<Duration>) -> (Duration, Duration) {
        let (base, cap, jitter) = (
            self.config.backoff_base(),
            self.config.backoff_cap(),
            self.config.backoff_jitter(),
        );
        let nominal = nominal_delay(attempt, base, cap);
        let lo = nominal.mul_f64(1.0 - jitter);
        let floor = retry_after.map_or(Duration::ZERO, |r| r.min(cap));
        (lo.max(floor), nominal.max(floor))
    }

    fn on_completed(&mut self, now: Instant, id: RequestId, outcome: &Outcome) -> Result<(), Violation> {
        let Some(r) = self.pending.remove(&id) else {
            return Err(Violation {
                invariant: 1,
                message: if self.issued.contains(&id) {
                    format!("request {id} completed twice (again with {outcome:?})")
                } else {
                    format!("unknown request {id} completed with {outcome:?}")
                },
            });
        };
        self.deadlines.remove(&(r.deadline, id));
        if let Some(c) = self.slots[usize::from(r.conn.slot)].live_mut(r.conn.generation) {
            c.pending -= 1;
        }
        let step = &self.step;
        match outcome {
            Outcome::Reply(_) | Outcome::Denied(_) => {
                let denied = matches!(outcome, Outcome::Denied(_));
                let ok = matches!(step, Step::Text { answers: Some(a), denial, .. } if *a == id && *denial == denied);
                ensure!(
                    ok && !self.text_answered,
                    1,
                    "request {id} completed with {outcome:?} in step {step:?}"
                );
                self.text_answered = true;
                if denied {
                    self.stats.denials += 1;
                } else {
                    self.stats.replies += 1;
                }
            }
            Outcome::Failed(RequestFailure::Timeout) => {
                ensure!(
                    *step == Step::Timeout && now >= r.deadline,
                    2,
                    "request {id} timed out {:?} before its deadline, in {step:?}",
                    r.deadline.saturating_duration_since(now)
                );
                self.stats.timeouts += 1;
            }
            Outcome::Failed(RequestFailure::ConnectionLost(reason)) => {
                ensure!(
                    self.lost.get(&r.conn) == Some(reason),
                    3,
                    "request {id} failed as lost ({reason:?}) but its connection {} was not lost so",
                    r.conn
                );
                self.stats.connection_lost += 1;
            }
            Outcome::Failed(RequestFailure::Cancelled) => {
                ensure!(
                    *step == Step::Cancel { id },
                    1,
                    "request {id} cancelled in {step:?}"
                );
                self.stats.cancelled += 1;
            }
            Outcome::Failed(RequestFailure::Closed) => {
                let ok = self.closing
                    && (*step == Step::Close { fail_now: true }
                        || *step == Step::Timeout && self.drain_deadline.is_some_and(|t| t <= now));
                ensure!(ok, 13, "request {id} failed as closed in {step:?}");
                self.stats.closed += 1;
            }
        }
        Ok(())
    }

    /// (14) availability: a change is a change; from `Degraded` back to `Available`, once the
    /// pool has been `Available`, only after the hold.
    fn on_availability(&mut self, now: Instant, to: Availability) -> Result<(), Violation> {
        ensure!(
            to != self.availability,
            14,
            "AvailabilityChanged to {to:?}, which it already was"
        );
        // Leaving Unavailable is immediate (a pool of one goes straight back to Available).
        if to == Availability::Available && self.ever_available && self.availability == Availability::Degraded
        {
            let left = self.left_available_at.expect("left Available before");
            ensure!(
                now >= left + AVAILABILITY_HOLD,
                14,
                "Available again {:?} after leaving it, before the {AVAILABILITY_HOLD:?} hold",
                now - left
            );
        }
        if self.availability == Availability::Available {
            self.left_available_at = Some(now);
        }
        self.ever_available |= to == Availability::Available;
        self.availability = to;
        Ok(())
    }

    fn on_event(&mut self, now: Instant, event: &Event) -> Result<(), Violation> {
        match event {
            Event::Connected { conn } => {
                ensure!(
                    self.step == Step::Connected(*conn),
                    10,
                    "Connected event for {conn} in step {:?}",
                    self.step
                );
                let conn_s = self.new_conn(now);
                let s = &mut self.slots[usize::from(conn.slot)];
                if matches!(s.phase, Phase::Dialing { generation, .. } if generation == conn.generation) {
                    s.open = Some((conn.generation, conn_s));
                    s.attempt = 0;
                    s.rejected = None;
                    s.phase = Phase::Open;
                } else if s.replacement.is_some_and(|(g, _)| g == conn.generation) {
                    s.replacement = None;
                    let (g, mut old) = s.open.take().expect("a replacement replaces an open connection");
                    old.rotate = None;
                    s.retiring.insert(g, old);
                    s.open = Some((conn.generation, conn_s));
                    self.stats.rotations += 1;
                } else {
                    return Err(Violation {
                        invariant: 10,
                        message: format!("Connected event for {conn}, which was not dialing"),
                    });
                }
                Ok(())
            }
            Event::ConnectFailed { conn, error } => {
                ensure!(
                    self.step == Step::ConnectFailed(*conn),
                    10,
                    "ConnectFailed event for {conn} in step {:?}",
                    self.step
                );
                self.on_connect_failed(*conn, error)
            }
            Event::Disconnected { conn, .. } => Err(Violation {
                invariant: 10,
                message: format!("Disconnected event for {conn} without a Disconnect"),
            }),
            Event::ReconnectScheduled { slot, attempt, delay } => {
                self.take_owed(*slot, "ReconnectScheduled")?;
                let attempts = self.config.backoff_attempts();
                let retry_after = self.slots[usize::from(*slot)].retry_after.take();
                let (lo, hi) = self.delay_window(*attempt, retry_after);
                let s = &mut self.slots[usize::from(*slot)];
                ensure!(
                    *attempt == s.attempt && *attempt < attempts,
                    4,
                    "slot {slot}: reconnect attempt {attempt}, expected {} (budget {attempts})",
                    s.attempt
                );
                ensure!(
                    lo <= *delay && *delay <= hi,
                    4,
                    "slot {slot}: attempt {attempt} delay {delay:?} outside [{lo:?}, {hi:?}] (Retry-After {retry_after:?})"
                );
                s.attempt += 1;
                s.phase = Phase::Backoff { due: now + *delay };
                self.stats.reconnects += 1;
                Ok(())
            }
            Event::AttemptsExhausted { slot } => {
                self.take_owed(*slot, "AttemptsExhausted")?;
                let attempts = self.config.backoff_attempts();
                let s = &mut self.slots[usize::from(*slot)];
                ensure!(
                    s.attempt >= attempts,
                    4,
                    "slot {slot} exhausted after {} of {attempts} attempts",
                    s.attempt
                );
                s.phase = Phase::Exhausted;
                s.retry_after = None;
                self.stats.exhausted += 1;
                Ok(())
            }
            Event::SlotRearmed { slot, delay } => {
                let demand = matches!(
                    self.step,
                    Step::Connect | Step::Request { .. } | Step::Send { .. }
                );
                ensure!(
                    demand && !self.closing,
                    4,
                    "slot {slot} re-armed by {:?}",
                    self.step
                );
                let cap = self.config.backoff_cap();
                let window = self.config.backoff_base().mul_f64(self.config.backoff_jitter());
                let s = self.slots.get_mut(usize::from(*slot)).ok_or_else(|| Violation {
                    invariant: 10,
                    message: format!("SlotRearmed for unknown slot {slot}"),
                })?;
                ensure!(
                    s.phase == Phase::Exhausted,
                    4,
                    "slot {slot} re-armed while {:?}",
                    s.phase
                );
                ensure!(
                    s.rearmed_at.is_none_or(|t| now >= t + cap),
                    4,
                    "slot {slot} re-armed {:?} after its last re-arm, within the cap {cap:?}",
                    s.rearmed_at.map(|t| now - t)
                );
                ensure!(
                    *delay <= window,
                    4,
                    "slot {slot} re-armed with delay {delay:?} beyond {window:?}"
                );
                s.attempt = 0;
                s.rearmed_at = Some(now);
                s.phase = Phase::Backoff { due: now + *delay };
                self.stats.rearms += 1;
                Ok(())
            }
            Event::KeyRejected { status } => {
                ensure!(
                    matches!(self.step, Step::ConnectFailed(c) if self.slots[usize::from(c.slot)].rejected == Some(*status)),
                    4,
                    "KeyRejected {status} in {:?}",
                    self.step
                );
                ensure!(!self.key_rejected_seen, 4, "KeyRejected twice in one step");
                self.key_rejected_seen = true;
                Ok(())
            }
            Event::RotationAbandoned { slot } => {
                let attempts = self.config.backoff_attempts();
                // A replacement dial fails by input, or by its handshake deadline.
                let abandoned = matches!(self.step, Step::ConnectFailed(c) if c.slot == *slot)
                    | (self.step == Step::Timeout)
                    && self.slots[usize::from(*slot)]
                        .open
                        .as_ref()
                        .is_some_and(|(_, c)| c.rotate.is_none() && c.rotation_attempt >= attempts);
                ensure!(
                    abandoned,
                    4,
                    "RotationAbandoned for slot {slot} in {:?} before its budget was spent",
                    self.step
                );
                Ok(())
            }
            Event::FrameSkipped { conn, .. } => {
                let ok = match &self.step {
                    Step::Text {
                        conn: c,
                        valid: false,
                        ..
                    } => c == conn,
                    Step::Binary(c) => c == conn,
                    _ => false,
                };
                ensure!(
                    ok && !self.skipped,
                    1,
                    "FrameSkipped on {conn} in {:?}",
                    self.step
                );
                self.skipped = true;
                self.stats.skipped_frames += 1;
                Ok(())
            }
            Event::MessageDropped { kind, reason, count } => {
                let expected = self.expected_drops.remove(&(kind.clone(), *reason));
                ensure!(
                    expected == Some(*count),
                    7,
                    "MessageDropped {kind} {reason:?} x{count}, expected {expected:?}"
                );
                Ok(())
            }
            // Hysteresis makes these timing-dependent; they are not anomalies.
            Event::AvailabilityChanged { availability } => self.on_availability(now, *availability),
        }
    }

    fn take_owed(&mut self, slot: u16, what: &str) -> Result<(), Violation> {
        let n = self.owed.entry(slot).or_default();
        ensure!(
            *n > 0,
            11,
            "{what} for slot {slot}, which lost nothing in this drain"
        );
        *n -= 1;
        Ok(())
    }

    fn new_conn(&self, now: Instant) -> ConnS {
        let rotate = self.config.max_connection_age().map(|age| {
            let j = self.config.backoff_jitter().max(0.1);
            (now + age.mul_f64(1.0 - j), now + age)
        });
        ConnS {
            last_heard: now,
            next_ping: now + self.config.ping_period(),
            issued: 0,
            flushed: 0,
            write_deadline: None,
            pending: 0,
            unflushed_sends: VecDeque::new(),
            last_ping: 0,
            rotate,
            rotation_attempt: 0,
            issue_times: VecDeque::new(),
        }
    }

    // ----- end-of-step checks -----

    /// After demand (a request, send or connect), no slot rests that demand may re-arm: one
    /// not re-armed within the backoff cap, whatever else is open.
    fn check_rearmed(&self, step: &Step) -> Result<(), Violation> {
        if self.closing {
            return Ok(());
        }
        let cap = self.config.backoff_cap();
        for (i, s) in self.slots.iter().enumerate() {
            ensure!(
                s.phase != Phase::Exhausted || s.rearmed_at.is_some_and(|t| self.now < t + cap),
                4,
                "slot {i} still resting after {step:?} (last re-armed {:?} ago)",
                s.rearmed_at.map(|t| self.now - t)
            );
            ensure!(
                *step != Step::Connect || s.phase != (Phase::Idle { spread_until: None }),
                4,
                "slot {i} not dialed by connect"
            );
        }
        Ok(())
    }

    /// Every deadline the shadow model knows, with what it is.
    fn deadlines_known(&self, mut f: impl FnMut(Instant, &dyn Fn() -> String, u8)) {
        let pong_wait = self.config.pong_wait();
        if let Some(&(t, id)) = self.deadlines.first() {
            f(t, &|| format!("deadline of request {id}"), 2);
        }
        if let Some(q) = self.outbox.front() {
            f(q.expires, &|| "outbox expiry".to_owned(), 7);
        }
        if let Some(t) = self.drain_deadline {
            f(t, &|| "close drain deadline".to_owned(), 13);
        }
        for (conn, &t) in &self.lingering {
            f(t, &|| format!("{conn}: end of the close linger"), 13);
        }
        for (i, s) in self.slots.iter().enumerate() {
            match s.phase {
                Phase::Idle {
                    spread_until: Some(t),
                } => f(t, &|| format!("slot {i}: first dial"), 4),
                Phase::Dialing { deadline, .. } => {
                    f(deadline, &|| format!("slot {i}: handshake deadline"), 4)
                }
                Phase::Backoff { due } => f(due, &|| format!("slot {i}: reconnect"), 4),
                _ => {}
            }
            if let Some((_, t)) = s.replacement {
                f(t, &|| format!("slot {i}: replacement handshake deadline"), 4);
            }
            let conns = s
                .open
                .iter()
                .map(|(g, c)| (*g, c))
                .chain(s.retiring.iter().map(|(g, c)| (*g, c)));
            for (g, c) in conns {
                f(
                    c.read_deadline(pong_wait),
                    &|| format!("{i}#{g}: read deadline"),
                    5,
                );
                f(c.next_ping, &|| format!("{i}#{g}: ping"), 5);
                if let Some(t) = c.write_deadline {
                    f(t, &|| format!("{i}#{g}: write deadline"), 3);
                }
                if let (Some((_, hi)), None) = (c.rotate, s.replacement) {
                    f(hi, &|| format!("{i}#{g}: rotation"), 4);
                }
            }
        }
    }

    /// (5) A ping that fell due while the last ping is not even flushed is not sent (it
    /// would only queue behind it): it waits for the write deadline, which decides the
    /// connection's fate. Applies that rule to the shadow after a `handle_timeout` that sent
    /// no ping for such a connection.
    fn defer_stuck_pings(&mut self) {
        let now = self.now;
        let period = self.config.ping_period();
        for s in &mut self.slots {
            for c in s.open.iter_mut().map(|(_, c)| c).chain(s.retiring.values_mut()) {
                if c.next_ping <= now && c.last_ping > c.flushed {
                    c.next_ping += period;
                    if c.next_ping <= now {
                        c.next_ping = now + period;
                    }
                    if let Some(deadline) = c.write_deadline {
                        c.next_ping = c.next_ping.max(deadline);
                    }
                }
            }
        }
    }

    fn check_nothing_overdue(&mut self, pool: &Pool) -> Result<(), Violation> {
        let now = self.now;
        let next = pool.poll_timeout();
        ensure!(
            next.is_none_or(|t| t >= now),
            9,
            "poll_timeout {:?} in the past after handle_timeout",
            now - next.expect("some")
        );
        if self.drain_deadline.is_some_and(|t| t <= now) {
            ensure!(
                self.pending.is_empty(),
                13,
                "close drain passed with requests pending"
            );
            self.drain_deadline = None;
        }
        let mut overdue = None;
        self.deadlines_known(|t, what, inv| {
            if t <= now && overdue.is_none() {
                overdue = Some((inv, what(), now - t));
            }
        });
        if let Some((inv, what, by)) = overdue {
            return Err(Violation {
                invariant: inv,
                message: format!("{what} overdue by {by:?} after handle_timeout"),
            });
        }
        Ok(())
    }

    /// (14) the getter matches the events; `Unavailable` exactly when nothing is open;
    /// `Available` only with every slot open and the pool not closing.
    fn check_availability(&self, pool: &Pool) -> Result<(), Violation> {
        let a = pool.availability();
        ensure!(
            a == self.availability,
            14,
            "availability() is {a:?}, the events said {:?}",
            self.availability
        );
        let open = self.slots.iter().filter(|s| s.open.is_some()).count();
        ensure!(
            (a == Availability::Unavailable) == (open == 0),
            14,
            "availability {a:?} with {open} open connection(s)"
        );
        if a == Availability::Available {
            ensure!(
                open == self.slots.len() && !self.closing,
                14,
                "Available with {open} of {} open (closing {})",
                self.slots.len(),
                self.closing
            );
        }
        Ok(())
    }

    fn check_not_late(&self, pool: &Pool) -> Result<(), Violation> {
        let mut first: Option<(Instant, String, u8)> = None;
        self.deadlines_known(|t, what, inv| {
            if first.as_ref().is_none_or(|(f, _, _)| t < *f) {
                first = Some((t, what(), inv));
            }
        });
        if let Some((t, what, inv)) = first {
            let next = pool.poll_timeout();
            ensure!(
                next.is_some_and(|n| n <= t),
                inv,
                "poll_timeout {:?} is later than the {what} (in {:?})",
                next.map(|n| n.saturating_duration_since(self.now)),
                t.saturating_duration_since(self.now)
            );
        }
        Ok(())
    }

    fn check_state(&self, pool: &Pool) -> Result<(), Violation> {
        ensure!(
            pool.pending_len() == self.pending.len(),
            1,
            "pool has {} pending requests, the shadow {}",
            pool.pending_len(),
            self.pending.len()
        );
        ensure!(
            pool.outbox_len() == self.outbox.len()
                && self.outbox.len() <= self.config.outbox_capacity() as usize,
            7,
            "outbox: pool {}, shadow {}, capacity {}",
            pool.outbox_len(),
            self.outbox.len(),
            self.config.outbox_capacity()
        );
        for (i, s) in self.slots.iter().enumerate() {
            let slot = i as u16;
            let open = s.open.as_ref().map(|(g, _)| ConnId { slot, generation: *g });
            ensure!(
                pool.open_conn(slot) == open,
                10,
                "slot {i}: pool's open connection {:?}, shadow {open:?}",
                pool.open_conn(slot)
            );
            let expected = match s.phase {
                Phase::Idle { .. } => SlotState::Idle,
                Phase::Dialing { .. } => SlotState::Dialing,
                Phase::Open => SlotState::Open,
                Phase::Backoff { .. } => SlotState::Backoff,
                Phase::Exhausted => SlotState::Exhausted,
                Phase::Closed => SlotState::Closed,
                Phase::Lost => unreachable!("owed reconnects are checked first"),
            };
            ensure!(
                pool.slot_state(slot) == Some(expected),
                10,
                "slot {i}: pool says {:?}, shadow {:?}",
                pool.slot_state(slot),
                s.phase
            );
            for (g, c) in &s.retiring {
                ensure!(
                    c.pending > 0 || c.unflushed() > 0,
                    13,
                    "retiring connection {i}#{g} is drained but was not disconnected"
                );
            }
        }
        let closed = self.closing
            && self.pending.is_empty()
            && self.lingering.is_empty()
            && self
                .slots
                .iter()
                .all(|s| s.phase == Phase::Closed && s.retiring.is_empty());
        ensure!(
            pool.is_closed() == closed,
            13,
            "pool.is_closed() is {}, the shadow says {closed}",
            pool.is_closed()
        );
        Ok(())
    }

    fn check_stats(&mut self, pool: &Pool) -> Result<(), Violation> {
        let actual = pool.stats();
        ensure!(
            actual.requests_conserved(),
            8,
            "requests not conserved: {actual:?}"
        );
        for (kind, s) in &actual.sends_by_type {
            ensure!(s.conserved(), 7, "sends of {kind} not conserved: {s:?}");
        }
        let e = &mut self.stats;
        e.open_connections = self.slots.iter().filter(|s| s.open.is_some()).count() as u32;
        e.pending_per_slot = self
            .slots
            .iter()
            .map(|s| {
                s.open
                    .iter()
                    .map(|(_, c)| c.pending)
                    .chain(s.retiring.values().map(|c| c.pending))
                    .sum()
            })
            .collect();
        e.pending = self.pending.len() as u64;
        e.outbox_depth = self.outbox.len() as u64;
        e.stale_inputs = actual.stale_inputs;
        e.sends = SendStats::default();
        e.sends_by_type.clear();
        for (name, s) in self.kind_names.iter().zip(&self.sends) {
            e.sends.add(s);
            e.sends_by_type.insert(name.clone(), s.clone());
        }
        if actual != *e {
            let a = format!("{actual:#?}");
            let b = format!("{e:#?}");
            let diff: Vec<String> = a
                .lines()
                .zip(b.lines())
                .filter(|(x, y)| x != y)
                .map(|(x, y)| format!("pool {} / shadow {}", x.trim(), y.trim()))
                .take(8)
                .collect();
            return Err(Violation {
                invariant: 8,
                message: format!("stats differ from the shadow model: {}", diff.join("; ")),
            });
        }
        Ok(())
    }

    /// The pool is down because of the key: nothing open, and every slot's most recent own
    /// dial was refused with 401/403. Reported once per entry, visible in the getter and stats.
    fn check_rejection(&mut self, pool: &Pool) -> Result<(), Violation> {
        let down = self.key_rejected_everywhere();
        ensure!(
            !down || self.rejected_down || self.key_rejected_seen,
            4,
            "the pool went down on key rejections without a KeyRejected event"
        );
        ensure!(
            down || !self.key_rejected_seen,
            4,
            "KeyRejected while some slot is open or was not rejected"
        );
        self.rejected_status = match (down, self.step_rejection) {
            (false, _) => None,
            (true, Some(status)) => Some(status),
            (true, None) => self.rejected_status,
        };
        ensure!(
            pool.rejection() == self.rejected_status,
            4,
            "rejection() is {:?}, the shadow says {:?}",
            pool.rejection(),
            self.rejected_status
        );
        self.rejected_down = down;
        self.stats.rejected_status = self.rejected_status;
        Ok(())
    }

    fn key_rejected_everywhere(&self) -> bool {
        self.open_count() == 0 && self.slots.iter().all(|s| s.rejected.is_some())
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

    /// The pool's selection rule: among open connections with room, the fewest pending
    /// requests, ties going to the preferred slot, or else rotating from the slot chosen last.
    fn peek_select(&self, is_request: bool, affinity: Option<u32>) -> Option<usize> {
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
            if is_request && c.pending >= self.config.max_in_flight() {
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

    fn select(&mut self, is_request: bool, affinity: Option<u32>) -> Option<usize> {
        let pick = self.peek_select(is_request, affinity);
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
