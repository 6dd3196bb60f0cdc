//! Deterministic simulation of the whole pool against a simulated UsageFlow server.
//!
//! Everything runs in one thread, in virtual time (`base + Duration`, only ever moving
//! forward), with one seeded generator: a run is a pure function of its seed, so a failing
//! seed replays exactly. The pieces:
//!
//! - [`Knobs`]: the configuration, faults and workload of a run, drawn from the seed (swarm
//!   testing: every seed gets its own subset of faults at its own rates).
//! - [`Sim`]: the harness. It plays the adapter (dials, writes, flushes, or withholds
//!   [`Input::Flushed`] when writes stall) and the server (answers
//!   requests after a latency per [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)'s correlation rule, counts fire-and-forget
//!   messages, refuses or rejects dials, hangs handshakes, drops and duplicates replies,
//!   sends garbage, binary and stray frames, ignores pings, closes mid-stream), and runs a
//!   workload of requests (with and without per-call timeouts, idempotent or not), sends,
//!   cancels, connects and a final close. Each step is the earliest of the pool's
//!   `poll_timeout`, the next network event and the next workload operation.
//! - [`Checker`]: the invariant checker, run after every step. It builds a shadow model from
//!   the calls and outputs alone and compares it with the pool. It is independent of
//!   [`Sim`], so a fuzzer feeding arbitrary inputs, commands and time jumps into a
//!   [`Pool`] can run the same checks.
//!
//! With the [`Knobs::spool`] knob (about a third of the seeds) the pool runs with its spool
//! open, and the chaos phase **crashes** the process [`Knobs::crashes`] times: everything but
//! the spool is forgotten (the simulated client's spool is the map of records the `Keep` and
//! `Release` outputs left), the old connections are dead, and a new [`Pool`] with the same
//! config opens the spool with those records (their ages on the virtual clock) and connects.
//! [`Knobs::deploys`] of the crashes are restarts after a close instead: the close drains
//! under the faults, what it could not deliver stays in the spool, and the next process
//! starts once the pool is closed. The heal phase starts with one more crash, so that its
//! last process replays and drains what the chaos left, and must leave the spool empty.
//!
//! A run has three phases: **chaos** (faults on, workload running), **heal** (faults off:
//! every slot must reconnect within the longest deadline plus the backoff cap, all work must
//! complete, and a probe request and send must succeed), then **close** (the pool must reach
//! [`Pool::is_closed`] with every connection disconnected). Steps and virtual time are
//! bounded; running out of either is a failure. A [`Failure`] prints the seed as
//! `replay with UFSOCK_SIM_SEED=<seed>`, the knobs, and the last steps of the trace.
//!
//! # Invariants
//!
//! Numbered as in [`Violation::invariant`]:
//!
//! 1. every `RequestId` returned by `request` completes exactly once; nothing unknown
//!    completes; replies and denials answer the request their frame names; a valid frame
//!    is a reply or unsolicited, an invalid one is skipped;
//! 2. a timeout completes at its deadline, never before; after `handle_timeout(t)` no
//!    pending deadline is `<= t`; `poll_timeout` is never later than a pending deadline;
//! 3. a connection that closes, fails a write or misses its write deadline fails its
//!    requests with `ConnectionLost` (or re-sends idempotent ones) in the same drain;
//! 4. reconnect delays lie in `[(1-j)·min(base·2ⁿ, cap), min(base·2ⁿ, cap)]`, attempt numbers
//!    count up from 0, the dial comes exactly when the delay ends, at most `attempts`
//!    reconnects precede `AttemptsExhausted`, a request/send/connect re-arms exhausted
//!    slots, handshake deadlines and rotations come on time;
//! 5. pings go to live connections only, each with the connection's next sequence number,
//!    never while another is unanswered (with confirmation on); a ping is the keep-alive when
//!    one is due, else a barrier for messages written since the last ping; a read deadline
//!    fires iff nothing (frame or pong) came for `pong_wait`, a pong deadline iff a ping
//!    stayed unanswered for `pong_wait`;
//! 6. requests and sends go to the open slot with the fewest pending requests (ties go to a
//!    request's preferred slot, or else rotate from the slot chosen last), never above
//!    `max_in_flight` or `max_unflushed_writes`;
//! 7. delivery: per message type, `sends = queued + written + confirmed + unconfirmed +
//!    dropped + expired + closed` at every step; `sends`, `dropped` and `confirmed` exactly as
//!    the shadow model counts them (a pong confirms exactly the messages written on its
//!    connection before its ping); final states never go back and move with the step's
//!    `MessageDropped` events; a message goes only to an open connection with room in its
//!    window; no barrier is overdue; the server never counts more messages than went out.
//!    The simulation adds a per-message oracle: an at-most-once message reaches the server at
//!    most once; a confirmed one reached it; an at-least-once message ends unconfirmed only
//!    after `1 + max_rewrites` started writes; an expired or closed at-most-once message never
//!    arrived; every message ends, and at most once the server's count lies within
//!    `[confirmed, confirmed + unconfirmed]`.
//!    With the spool open, across crashes and restarts (the checker carries the spool's
//!    ledger from one process to the next): every accepted message is kept in its send's
//!    drain, before it is written; a record kept again keeps its frame and never loses
//!    writes; a release names a live record, once, with a final fate, and the counters move
//!    to that fate in the same step; the records equal the pool's live messages plus what its
//!    close left (`spooled`), and their bytes its `spool_bytes`; a send is refused as
//!    `SpoolFull` exactly when its record would pass the limit; a new process is handed
//!    exactly the records left and replays each (or releases it as expired). The simulation
//!    adds: a message released as confirmed reached the server (in that process); at the end
//!    the spool is empty, and every message reached the server at least once unless it ended
//!    expired, unconfirmed or written with confirmation off;
//! 8. the request conservation law holds and every counter of [`Pool::stats`] equals the
//!    shadow model's;
//! 9. after `handle_timeout(now)`, `poll_timeout()` is not before `now`;
//! 10. `Transmit` names an open connection, `Ping` a live one, `Disconnect` a live connection
//!     or a dial in progress (or a dial the pool gave up on that reported `Connected`
//!     late); inputs about anything else change nothing;
//! 11. one loss of a connection or dial leads to exactly one reconnect decision of its slot;
//! 12. a request goes out twice only when idempotent, after its connection was lost, within
//!     its deadline; never three times;
//! 13. after `close`: during the drain, only slots that may still deliver messages dial (one
//!     at once when nothing is open or dialing); the drain ends exactly at its deadline, when
//!     nothing is left, when nothing can deliver, or on a rejected key; then every dial is
//!     abandoned, every connection disconnected once drained, requests fail as closed, and
//!     `is_closed` agrees.
//! 14. availability: `Unavailable` exactly when no connection is open, `Available` only with
//!     every slot open and the pool not closing, the getter agrees with the
//!     `AvailabilityChanged` events, and once the pool has been `Available`, `Degraded` turns
//!     `Available` again only after [`AVAILABILITY_HOLD`](crate::AVAILABILITY_HOLD).
//!
//! # Example
//!
//! ```
//! use std::time::Instant;
//! use usageflow_socket_core::sim;
//!
//! // One seed: its own knobs, chaos, heal, close, every invariant checked at every step.
//! let base = Instant::now();
//! let report = sim::run(7, base).unwrap_or_else(|failure| panic!("{failure}"));
//! assert!(report.steps > 0);
//! // The same seed replays the same trace.
//! assert_eq!(sim::run(7, base).unwrap().trace_hash, report.trace_hash);
//! ```
//!
//! Driving a pool by hand (as a fuzzer would) with the same checks:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use usageflow_socket_core::sim::{Call, Checker};
//! use usageflow_socket_core::{Config, Input, Output, Pool};
//!
//! let config = Config::builder("ws://127.0.0.1:9000/ws", "key").pool_size(1).build()?;
//! let mut now = Instant::now();
//! let mut pool = Pool::new(config.clone(), 1, now);
//! let mut checker = Checker::new(&config, now);
//!
//! pool.connect(now);
//! checker.observe_call(now, Call::Connect)?;
//! let mut dials = Vec::new();
//! checker.drain(&mut pool, |o| {
//!     if let Output::Dial { conn } = o {
//!         dials.push(*conn)
//!     }
//! })?;
//!
//! let input = Input::Connected { conn: dials[0] };
//! pool.handle_input(now, input.clone());
//! checker.observe_call(now, Call::Input(&input))?;
//! checker.drain(&mut pool, |_| {})?;
//!
//! now += Duration::from_secs(3600); // time jumps: the silent connection is declared dead
//! pool.handle_timeout(now);
//! checker.observe_call(now, Call::Timeout)?;
//! checker.drain(&mut pool, |_| {})?;
//! assert_eq!(pool.stats().disconnects, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod checker;
mod knobs;
pub mod spool;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use serde_json::json;

pub use checker::{Call, Checker, Violation};
pub use knobs::Knobs;

use crate::frame::{self, Outgoing};
use crate::pool::Pool;
use crate::spool::{Restored, SpoolRecord};
use crate::stats::Stats;
use crate::{
    CloseReason, ConnId, Delivery, DialError, Event, Input, MessageFate, Outcome, Output, RequestId,
    RequestOptions, SendOptions, SlotState, UnconfirmedReason,
};

/// Most steps one run may take.
pub const MAX_STEPS: u64 = 2_000_000;
/// Most steps at one instant of virtual time (a livelock guard).
const MAX_STEPS_AT_ONE_INSTANT: u64 = 100_000;
/// Lines of trace kept for a failure report.
const TRACE_LINES: usize = 80;

/// Runs seed `seed` with [`Knobs::draw`]`(seed)`: chaos, heal, close. `base` is virtual
/// time zero (any `Instant`; only differences matter).
pub fn run(seed: u64, base: Instant) -> Result<Report, Failure> {
    run_with(seed, Knobs::draw(seed), base)
}

/// Runs seed `seed` with the given knobs. On failure, runs it again with tracing on to
/// attach the last steps to the [`Failure`] (the replay is identical).
pub fn run_with(seed: u64, knobs: Knobs, base: Instant) -> Result<Report, Failure> {
    Sim::new(seed, knobs.clone(), base).run().map_err(|mut failure| {
        let mut again = Sim::new(seed, knobs, base);
        again.trace = Some(VecDeque::new());
        if let Err(traced) = again.run() {
            failure.trace = traced.trace;
        }
        failure
    })
}

/// Connects every slot of a fresh pool at `now`, playing an adapter whose dials all succeed
/// at once, and discards the outputs; returns the open connections. A shortcut for
/// benchmarks and examples that need a pool in its steady state.
pub fn connect_all(pool: &mut Pool, now: Instant) -> Vec<ConnId> {
    pool.connect(now);
    let mut conns = Vec::new();
    while let Some(output) = pool.poll_output() {
        if let Output::Dial { conn } = output {
            conns.push(conn);
        }
    }
    for &conn in &conns {
        pool.handle_input(now, Input::Connected { conn });
        while pool.poll_output().is_some() {}
    }
    conns
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Steps taken (calls on the pool).
    pub steps: u64,
    /// Virtual time from start to closed.
    pub elapsed: Duration,
    /// Hash of every call and output with its virtual time: equal for equal runs.
    pub trace_hash: u64,
    /// The pool's final counters.
    pub stats: Stats,
    /// Requests the server received (re-sends included).
    pub server_requests: u64,
    /// Fire-and-forget messages the server received.
    pub server_sends: u64,
    /// Processes that crashed or were restarted after a close (spool runs).
    pub crashes: u32,
    /// Records the later processes opened the spool with.
    pub replayed: u64,
}

/// A failed run: which seed, with which knobs, where, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed: `UFSOCK_SIM_SEED=<seed>` replays it.
    pub seed: u64,
    /// The knobs of the run.
    pub knobs: Box<Knobs>,
    /// Step at which it failed.
    pub step: u64,
    /// Virtual time at which it failed.
    pub at: Duration,
    /// What went wrong.
    pub message: String,
    /// The last steps before the failure (filled by [`run`] and [`run_with`]).
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {}, t={:?}: {}",
            self.seed, self.step, self.at, self.message
        )?;
        writeln!(f, "knobs: {:#?}", self.knobs)?;
        if !self.trace.is_empty() {
            writeln!(f, "last steps:")?;
            for line in &self.trace {
                writeln!(f, "  {line}")?;
            }
        }
        write!(f, "replay with UFSOCK_SIM_SEED={}", self.seed)
    }
}

impl std::error::Error for Failure {}

/// A fault a scenario injects at a chosen moment (see [`Sim::inject`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The server closes the slot's open connection now.
    CloseConn {
        /// The slot.
        slot: u16,
    },
    /// The adapter stops completing writes on the slot's open connection (no more
    /// [`Input::Flushed`]).
    StallWrites {
        /// The slot.
        slot: u16,
    },
    /// The server stops answering pings on the slot's open connection.
    MutePongs {
        /// The slot.
        slot: u16,
    },
}

/// What the network will deliver to the pool.
#[derive(Debug, Clone)]
enum Net {
    Connected(ConnId),
    DialFailed(ConnId, DialError),
    Text(ConnId, String),
    Binary(ConnId, usize),
    Pong(ConnId, Vec<u8>),
    Flushed(ConnId, u64),
    /// The adapter's report on a connection the pool dropped: writes from this number on
    /// never started.
    Unwritten(ConnId, u64),
    WriteFailed(ConnId),
    Closed(ConnId, CloseReason),
}

impl Net {
    fn conn(&self) -> ConnId {
        match self {
            Net::Connected(c)
            | Net::DialFailed(c, _)
            | Net::Text(c, _)
            | Net::Binary(c, _)
            | Net::Pong(c, _)
            | Net::Flushed(c, _)
            | Net::Unwritten(c, _)
            | Net::WriteFailed(c)
            | Net::Closed(c, _) => *c,
        }
    }
}

/// What the simulation knows of one message it sent: the per-message oracle of delivery.
#[derive(Debug, Clone)]
struct MessageS {
    at_least_once: bool,
    /// `Transmit` outputs that carried it (in this process; a new process that replays it
    /// starts from the write count its record kept).
    transmits: u32,
    /// Of those, writes the adapter reported as never started (they count for nothing).
    unstarted: u32,
    /// Times the server received it in this process.
    received: u32,
    /// Times the server received it from earlier processes.
    received_before: u32,
    fate: Option<MessageFate>,
}

/// The adapter's view of one socket.
#[derive(Debug, Default)]
struct Sock {
    /// Writes handed to this socket.
    writes: u64,
    /// Writes that went out (reached the server): every write before the socket broke,
    /// stalled or was dropped.
    started: u64,
    /// Writes never complete any more.
    stalled: bool,
    /// The server closed it or a write failed: nothing reaches the server any more.
    broken: bool,
    /// The server ignores pings.
    mute: bool,
    /// The pool told us to stop using it.
    gone: bool,
    /// Messages written on it that never went out: (write number, message id).
    unsent: Vec<(u64, u64)>,
    /// It was told to close gracefully: the peer's answer (its end) is still reported.
    closing: bool,
    /// We reported its end (closed or write failed): nothing more to report.
    reported: bool,
}

/// The simulation harness: a pool, a simulated adapter and server, a workload, a virtual
/// clock and the [`Checker`]. [`Sim::run`] does a whole run; scenarios can instead call
/// [`Sim::start`], [`Sim::run_until`], [`Sim::inject`] and finish with
/// [`Sim::heal_and_close`].
pub struct Sim {
    seed: u64,
    knobs: Knobs,
    base: Instant,
    now: Instant,
    pool: Pool,
    checker: Checker,
    rng: fastrand::Rng,
    net: BTreeMap<(Instant, u64), Net>,
    seq: u64,
    socks: BTreeMap<ConnId, Sock>,
    faults: bool,
    steps: u64,
    steps_at_now: u64,
    hash: DefaultHasher,
    ops_left: u32,
    next_op: Option<Instant>,
    connect_due: Option<Instant>,
    counter: u64,
    server_requests: u64,
    server_sends: u64,
    /// Every message sent, by its key (its number over every process), each message's key
    /// by its (unique) frame, and the current pool's ids of messages by key.
    messages: BTreeMap<u64, MessageS>,
    by_frame: BTreeMap<String, u64>,
    keys: BTreeMap<u64, u64>,
    /// The client's spool (spool runs): the records kept and not released, by id, with the
    /// instant first sent, as a client carries out `Keep` and `Release` (the latest wins).
    spool: BTreeMap<u64, (SpoolRecord, Instant)>,
    /// Crashes still to come in the chaos phase: when, and whether it is a deploy (a close,
    /// then a restart).
    crash_at: VecDeque<(Instant, bool)>,
    /// A deploy's close is under way: the next process starts once the pool is closed.
    restart_when_closed: bool,
    crashes: u32,
    replayed: u64,
    /// Fire-and-forget frames the earlier processes transmitted.
    sends_before: u64,
    probe: Option<(RequestId, Option<Outcome>)>,
    time_limit: Duration,
    trace: Option<VecDeque<String>>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("now", &(self.now - self.base))
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A simulation of `knobs`, every random choice drawn from `seed`, virtual time zero at
    /// `base`. Nothing happens until [`Sim::start`] (or [`Sim::run`]).
    pub fn new(seed: u64, knobs: Knobs, base: Instant) -> Sim {
        let config = knobs.config();
        let mut rng = fastrand::Rng::with_seed(seed);
        let pool = Pool::new(config.clone(), rng.u64(..), base);
        let k = &knobs;
        let time_limit = k.chaos
            + k.pong_wait.max(k.write_wait).max(k.handshake_timeout)
            + k.backoff_cap
            + Duration::from_secs(120)
            + k.outbox_ttl
            + k.close_drain
            + if k.spool {
                k.close_drain + k.write_wait * 2 + k.handshake_timeout + Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
        Sim {
            seed,
            ops_left: knobs.ops,
            knobs,
            base,
            now: base,
            pool,
            checker: Checker::new(&config, base),
            rng,
            net: BTreeMap::new(),
            seq: 0,
            socks: BTreeMap::new(),
            faults: true,
            steps: 0,
            steps_at_now: 0,
            hash: DefaultHasher::new(),
            next_op: None,
            connect_due: None,
            counter: 0,
            server_requests: 0,
            server_sends: 0,
            messages: BTreeMap::new(),
            by_frame: BTreeMap::new(),
            keys: BTreeMap::new(),
            spool: BTreeMap::new(),
            crash_at: VecDeque::new(),
            restart_when_closed: false,
            crashes: 0,
            replayed: 0,
            sends_before: 0,
            probe: None,
            time_limit,
            trace: None,
        }
    }

    /// The whole run: start, chaos for `knobs.chaos`, then [`Sim::heal_and_close`].
    pub fn run(mut self) -> Result<Report, Failure> {
        self.start()?;
        let chaos = self.knobs.chaos;
        self.run_until(chaos)?;
        self.heal_and_close()
    }

    /// Connects the pool and starts the workload (with the spool knob: opens the spool
    /// first, and plans the chaos phase's crashes).
    pub fn start(&mut self) -> Result<(), Failure> {
        if self.knobs.spool {
            let chaos = self.knobs.chaos;
            let mut at: Vec<(Instant, bool)> = (0..self.knobs.crashes)
                .map(|i| (self.base + chaos.mul_f64(self.rng.f64()), i < self.knobs.deploys))
                .collect();
            at.sort_by_key(|&(t, _)| t);
            self.crash_at = at.into();
            self.open_spool_now()?;
        }
        self.pool.connect(self.now);
        self.observe(0, Call::Connect)?;
        self.schedule_op();
        Ok(())
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// The pool under test.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs every step due up to virtual time `until`, then sets the clock there.
    pub fn run_until(&mut self, until: Duration) -> Result<(), Failure> {
        let limit = self.base + until;
        while let Some(t) = self.next_time() {
            if t > limit {
                break;
            }
            self.step()?;
        }
        if limit > self.now {
            self.now = limit;
            self.steps_at_now = 0;
        }
        Ok(())
    }

    /// Injects a fault now; false when the slot has no open connection.
    pub fn inject(&mut self, fault: Fault) -> bool {
        let slot = match fault {
            Fault::CloseConn { slot } | Fault::StallWrites { slot } | Fault::MutePongs { slot } => slot,
        };
        let Some(conn) = self.pool.open_conn(slot) else {
            return false;
        };
        let sock = self.socks.entry(conn).or_default();
        match fault {
            Fault::CloseConn { .. } => {
                sock.broken = true;
                let reason = CloseReason::Frame {
                    code: 1001,
                    reason: "going away".into(),
                };
                self.schedule(Duration::ZERO, Net::Closed(conn, reason));
            }
            Fault::StallWrites { .. } => sock.stalled = true,
            Fault::MutePongs { .. } => sock.mute = true,
        }
        true
    }

    /// Ends the chaos: faults off, workload stopped, exhausted slots re-armed. Then checks
    /// liveness (every slot reconnects within the longest deadline plus the backoff cap;
    /// all work completes; a probe request gets its reply and a probe send is delivered),
    /// closes the pool and drains it to [`Pool::is_closed`].
    pub fn heal_and_close(mut self) -> Result<Report, Failure> {
        self.faults = false;
        self.ops_left = 0;
        self.next_op = None;
        self.crash_at.clear();
        if self.knobs.spool {
            // A deploy under way finishes its close and restarts; then the last process
            // starts from a crash, so that every spool run replays what the chaos left.
            let k = &self.knobs;
            let bound = k.close_drain + k.write_wait * 2 + k.handshake_timeout + Duration::from_secs(1);
            self.run_while(bound, "a deploy's close ends", |s| s.restart_when_closed)?;
            self.crash()?;
        }
        for sock in self.socks.values_mut() {
            sock.mute = false;
        }
        self.pool.connect(self.now);
        self.observe(0, Call::Connect)?;
        self.ask_again_if_resting();

        // Demand re-arms a resting slot at most once per backoff cap: a slot re-armed just
        // before the heal waits up to the cap for the application's next connect, and then
        // up to the jitter's share of the base delay for its dial.
        let k = &self.knobs;
        let bound = k.pong_wait.max(k.write_wait).max(k.handshake_timeout)
            + k.backoff_cap * 2
            + k.backoff_base
            + Duration::from_secs(1);
        self.run_while(bound, "every slot reconnects after the faults stop", |s| {
            !s.checker.all_open()
        })?;

        // Then every connection proves itself alive after the heal (a connection that went
        // silent during the chaos dies of its read deadline and is replaced), and all work
        // left from the chaos completes.
        let healed = self.now;
        let k = &self.knobs;
        let bound = Duration::from_secs(6)
            .max(k.outbox_ttl)
            .max(k.write_wait)
            .max(k.pong_wait)
            + k.backoff_cap
            + Duration::from_secs(1);
        // A connection that dies of its write deadline after the heal leaves its unflushed
        // messages in limbo for another write wait (the adapter may not report them), and
        // they need a barrier when written again.
        let bound = bound + self.knobs.write_wait * 2 + self.knobs.confirm_after;
        self.run_while(bound, "all work completes after the faults stop", |s| {
            s.checker.pending_len() > 0
                || s.pool.outbox_len() > 0
                || (s.knobs.confirm_delivery
                    && (s.pool.live_messages() > 0 || s.checker.unanswered_pings() > 0))
                || s.checker.unflushed_writes() > 0
                || !s.checker.all_heard_since(healed)
        })?;

        let probe = Outgoing::new("get_application_policies", serde_json::Value::Null);
        let options = RequestOptions::timeout(Duration::from_secs(5));
        let result = self.pool.request(self.now, probe.clone(), options);
        self.observe(
            1,
            Call::Request {
                message: &probe,
                options,
                result: &result,
            },
        )?;
        let id = result.map_err(|e| self.fail(format!("liveness: probe request refused: {e}")))?;
        self.probe = Some((id, None));
        self.run_while(Duration::from_secs(6), "the probe request completes", |s| {
            s.probe.as_ref().is_some_and(|(_, o)| o.is_none())
        })?;
        match &self.probe {
            Some((_, Some(Outcome::Reply(_)))) => {}
            other => {
                let msg = format!("liveness: probe request ended with {other:?} after healing");
                return Err(self.fail(msg));
            }
        }
        // With tiny caps (one unflushed write, no outbox) a send needs the last write done.
        self.run_while(Duration::from_secs(1), "writes flush", |s| {
            s.checker.unflushed_writes() > 0
        })?;
        let probe_send = Outgoing::new("probe", json!({"n": 1}));
        self.send(probe_send, SendOptions::default().with_notify(true))?;
        if self
            .pool
            .stats()
            .sends_by_type
            .get("probe")
            .is_some_and(|p| p.dropped > 0)
        {
            return Err(self.fail("liveness: probe send refused after healing".into()));
        }
        // Confirmed by a barrier within `confirm_after` (plus a round trip), or written.
        let bound = self.knobs.confirm_after + Duration::from_secs(1);
        self.run_while(bound, "the probe send is delivered", |s| {
            s.pool
                .stats()
                .sends_by_type
                .get("probe")
                .is_none_or(|p| p.confirmed == 0 && (p.written == 0 || s.knobs.confirm_delivery))
        })?;

        self.pool.close(self.now);
        self.observe(5, Call::Close)?;
        let bound = self.knobs.close_drain + self.knobs.write_wait + Duration::from_secs(1);
        self.run_while(bound, "the pool closes", |s| !s.pool.is_closed())?;
        if !self.checker.quiescent() {
            return Err(self.fail("a connection was never disconnected after close".into()));
        }
        // Nothing may wake up a closed pool, however long we wait.
        self.now += Duration::from_secs(3600);
        self.pool.handle_timeout(self.now);
        self.observe(6, Call::Timeout)?;
        if !self.spool.is_empty() {
            let msg = format!(
                "spool invariant violated: {} records left in the spool after the last process drained",
                self.spool.len()
            );
            return Err(self.fail(msg));
        }
        if self.checker.spool_records().next().is_some() {
            return Err(
                self.fail("spool invariant violated: the checker's ledger is not empty at the end".into())
            );
        }
        self.check_every_message_ended()?;

        Ok(self.report())
    }

    /// What the run did, as of now.
    fn report(&self) -> Report {
        Report {
            seed: self.seed,
            steps: self.steps,
            elapsed: self.now - self.base,
            trace_hash: self.hash.finish(),
            stats: self.pool.stats(),
            server_requests: self.server_requests,
            server_sends: self.server_sends,
            crashes: self.crashes,
            replayed: self.replayed,
        }
    }

    /// Sends `message` with `options` as the workload does, recording it for the oracle.
    fn send(&mut self, message: Outgoing, options: SendOptions) -> Result<(), Failure> {
        let result = self.pool.send_with(self.now, &message, options);
        if let Ok(id) = result {
            let frame = frame::encode(&message, None);
            let keyed = message.idempotency_key().is_some() && self.knobs.server_deduplicates_allocation_ids;
            let at_least_once = match options.delivery {
                Some(d) => d == Delivery::AtLeastOnce,
                None => keyed,
            };
            let key = self.messages.len() as u64 + 1;
            self.by_frame.insert(frame, key);
            self.keys.insert(id.0, key);
            self.messages.insert(
                key,
                MessageS {
                    at_least_once,
                    transmits: 0,
                    unstarted: 0,
                    received: 0,
                    received_before: 0,
                    fate: None,
                },
            );
        }
        self.observe(
            2,
            Call::Send {
                message: &message,
                options,
                result: &result,
            },
        )
    }

    /// The per-message oracle, after every step: an at-most-once message reaches the server
    /// at most once; a confirmed one reached it; an unconfirmed one was at most once, or
    /// used up its rewrites; one that expired or was handed back at close never reached it
    /// (at most once).
    fn check_messages(&self) -> Result<(), Failure> {
        let max_writes = self.knobs.max_rewrites + 1;
        for (id, m) in &self.messages {
            let bad = if !m.at_least_once && m.received > 1 {
                Some("an at-most-once message reached the server twice")
            } else if m.at_least_once && m.transmits - m.unstarted > max_writes {
                Some("an at-least-once message was written more than 1 + max_rewrites times")
            } else if m.received > m.transmits {
                Some("the server received a message more often than it was written")
            } else {
                match m.fate {
                    Some(MessageFate::Confirmed) if m.received == 0 => {
                        Some("a confirmed message never reached the server")
                    }
                    Some(MessageFate::Unconfirmed(UnconfirmedReason::ConnectionDied)) if m.at_least_once => {
                        Some("an at-least-once message ended unconfirmed before its rewrites ran out")
                    }
                    Some(MessageFate::Unconfirmed(UnconfirmedReason::RewritesExhausted))
                        if !m.at_least_once || m.transmits - m.unstarted != max_writes =>
                    {
                        Some("rewrites exhausted without max_rewrites rewrites")
                    }
                    Some(MessageFate::Expired | MessageFate::Closed)
                        if !m.at_least_once && m.received > 0 =>
                    {
                        Some("an at-most-once message that reached the server ended as expired or closed")
                    }
                    _ => None,
                }
            };
            if let Some(what) = bad {
                return Err(self.fail(format!("invariant 7 violated: message #{id}: {what} ({m:?})")));
            }
        }
        Ok(())
    }

    /// At the end: every message sent has ended, and the server's count lies where the
    /// counters say it must: at most once, `received` within `[confirmed, confirmed + unconfirmed]`.
    /// Spool runs: a message still in the spool (after a close mid-chaos) has not ended, and
    /// every message that ended reached the server at least once, unless it ended expired,
    /// unconfirmed (dropped) or written with confirmation off.
    fn check_every_message_ended(&self) -> Result<(), Failure> {
        let in_spool: std::collections::BTreeSet<u64> = self
            .spool
            .values()
            .filter_map(|(r, _)| self.by_frame.get(&r.frame).copied())
            .collect();
        let (mut received, mut confirmed, mut unconfirmed) = (0, 0, 0);
        for (id, m) in &self.messages {
            if in_spool.contains(id) {
                continue;
            }
            if self.knobs.spool
                && m.received + m.received_before == 0
                && !matches!(
                    m.fate,
                    Some(MessageFate::Expired | MessageFate::Unconfirmed(_) | MessageFate::Written)
                )
            {
                return Err(self.fail(format!(
                    "spool invariant violated: message #{id} ended {:?} but never reached the server ({m:?})",
                    m.fate
                )));
            }
            let Some(fate) = m.fate else {
                return Err(self.fail(format!("invariant 7 violated: message #{id} never ended ({m:?})")));
            };
            if !m.at_least_once {
                received += u64::from(m.received);
                match fate {
                    MessageFate::Confirmed => confirmed += 1,
                    MessageFate::Unconfirmed(_) => unconfirmed += 1,
                    _ => {}
                }
            }
        }
        if self.knobs.confirm_delivery && !(confirmed <= received && received <= confirmed + unconfirmed) {
            return Err(self.fail(format!(
                "invariant 7 violated: at most once, the server received {received}, outside [{confirmed}, {confirmed} + {unconfirmed}]"
            )));
        }
        Ok(())
    }

    /// Closes the pool now, in the middle of the chaos (faults stay on, the workload stops),
    /// and runs until it is closed: the close drain meets dying connections, late and missing
    /// pongs and hanging dials. Then every message must have ended, and the server's count
    /// must lie where the counters say.
    pub fn close_mid_chaos(mut self) -> Result<Report, Failure> {
        self.ops_left = 0;
        self.next_op = None;
        // No more crashes; a deploy's close under way is this close.
        self.crash_at.clear();
        self.restart_when_closed = false;
        self.pool.close(self.now);
        self.observe(5, Call::Close)?;
        let k = &self.knobs;
        let bound = k.close_drain + k.write_wait * 2 + k.handshake_timeout + Duration::from_secs(1);
        self.run_while(bound, "the pool closes mid-chaos", |s| !s.pool.is_closed())?;
        if !self.checker.quiescent() {
            return Err(self.fail("a connection was never disconnected after close".into()));
        }
        self.now += Duration::from_secs(3600);
        self.pool.handle_timeout(self.now);
        self.observe(6, Call::Timeout)?;
        // What close handed back ended as closed, and nothing of it ever reached the server
        // twice (the oracle checks each message's fate).
        let undelivered = self.pool.take_undelivered();
        let closed = self.pool.stats().sends.closed;
        if (undelivered.len() as u64) > closed {
            return Err(self.fail(format!(
                "invariant 13 violated: close handed back {} messages, only {closed} counted closed",
                undelivered.len()
            )));
        }
        self.check_every_message_ended()?;
        Ok(self.report())
    }

    // ----- the step loop -----

    fn run_while(
        &mut self,
        bound: Duration,
        what: &str,
        mut busy: impl FnMut(&Sim) -> bool,
    ) -> Result<(), Failure> {
        let deadline = self.now + bound;
        while busy(self) {
            match self.next_time() {
                Some(t) if t <= deadline => self.step()?,
                _ => {
                    let msg = format!("liveness: {what}: not within {bound:?}");
                    return Err(self.fail(msg));
                }
            }
        }
        Ok(())
    }

    fn next_time(&self) -> Option<Instant> {
        [
            self.pool.poll_timeout(),
            self.net.first_key_value().map(|(k, _)| k.0),
            self.next_op,
            self.connect_due,
            self.crash_at.front().map(|&(t, _)| t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// One step: the earliest due thing (ties broken by the seeded generator).
    fn step(&mut self) -> Result<(), Failure> {
        let t = self.next_time().expect("a step needs something due");
        if t > self.now {
            self.now = t;
            self.steps_at_now = 0;
        }
        self.steps += 1;
        self.steps_at_now += 1;
        if self.steps > MAX_STEPS {
            return Err(self.fail(format!("bound: more than {MAX_STEPS} steps")));
        }
        if self.now - self.base > self.time_limit {
            let msg = format!("bound: virtual time beyond {:?}", self.time_limit);
            return Err(self.fail(msg));
        }
        if self.steps_at_now > MAX_STEPS_AT_ONE_INSTANT {
            return Err(self.fail("bound: livelock, too many steps at one instant".into()));
        }
        let now = self.now;
        let due = [
            self.pool.poll_timeout().is_some_and(|t| t <= now),
            self.net.first_key_value().is_some_and(|(k, _)| k.0 <= now),
            self.next_op.is_some_and(|t| t <= now),
            self.connect_due.is_some_and(|t| t <= now),
            self.crash_at.front().is_some_and(|&(t, _)| t <= now),
        ];
        let choices: Vec<usize> = (0..5).filter(|&i| due[i]).collect();
        match choices[self.rng.usize(..choices.len())] {
            0 => {
                self.pool.handle_timeout(now);
                self.observe(3, Call::Timeout)?;
            }
            1 => self.deliver()?,
            2 => self.op()?,
            4 => {
                let (_, deploy) = self.crash_at.pop_front().expect("due");
                if !deploy {
                    self.crash()?;
                } else if !self.pool.is_closing() {
                    // A deploy: the process closes (the drain runs, under the faults), and
                    // the next one starts once it is closed.
                    self.pool.close(now);
                    self.observe(5, Call::Close)?;
                    self.restart_when_closed = true;
                }
            }
            _ => {
                self.connect_due = None;
                self.pool.connect(now);
                self.observe(0, Call::Connect)?;
                if !self.faults {
                    self.ask_again_if_resting();
                }
            }
        }
        if self.restart_when_closed && self.pool.is_closed() {
            self.crash()?;
        }
        Ok(())
    }

    /// Spool runs: builds the records the client's spool holds (each with its age on the
    /// virtual clock) and opens the spool of the current pool with them. The replayed
    /// messages are sent at least once from now on, with the writes their records kept.
    fn open_spool_now(&mut self) -> Result<(), Failure> {
        let restored = restored(&self.spool, self.now);
        for r in &restored {
            let Some(&key) = self.by_frame.get(&r.record.frame) else {
                return Err(self.fail(format!(
                    "spool invariant violated: {} kept, never sent",
                    r.record.id
                )));
            };
            self.keys.insert(r.record.id.0, key);
            if let Some(m) = self.messages.get_mut(&key) {
                m.at_least_once = true;
                m.transmits = r.record.writes;
                m.unstarted = 0;
                m.received_before += m.received;
                m.received = 0;
                m.fate = None;
            }
        }
        self.replayed += restored.len() as u64;
        let max_bytes = self.knobs.spool_bytes;
        let result = self.pool.open_spool(self.now, max_bytes, restored.clone());
        self.observe(
            8,
            Call::OpenSpool {
                max_bytes,
                restored: &restored,
                result: &result,
            },
        )
    }

    /// The process crashes (or a deploy's closed process ends): everything but the spool is
    /// forgotten. Its connections are dead (nothing more comes from them or reaches the
    /// server); a new pool with the same config opens the spool and connects.
    fn crash(&mut self) -> Result<(), Failure> {
        self.crashes += 1;
        self.restart_when_closed = false;
        self.net.clear();
        self.socks.clear();
        self.keys.clear();
        self.sends_before += self.checker.transmitted_sends();
        self.checker = self.checker.restarted(self.now);
        self.pool = Pool::new(self.knobs.config(), self.rng.u64(..), self.now);
        if let Some(trace) = &mut self.trace {
            trace.push_back(format!("{:?} crash: a new process", self.now - self.base));
        }
        self.open_spool_now()?;
        self.pool.connect(self.now);
        self.observe(0, Call::Connect)
    }

    /// Healed: while a slot still rests (demand re-armed it within the backoff cap), the
    /// application asks for its connections again once the cap has passed.
    fn ask_again_if_resting(&mut self) {
        let resting =
            (0..self.knobs.pool_size).any(|i| self.pool.slot_state(i) == Some(SlotState::Exhausted));
        if resting && self.connect_due.is_none() {
            self.connect_due = Some(self.now + self.knobs.backoff_cap);
        }
    }

    /// Checks one call and its drain, hashes it, and lets the adapter and server react to
    /// every output.
    fn observe(&mut self, tag: u8, call: Call<'_>) -> Result<(), Failure> {
        let at = (self.now - self.base).as_nanos() as u64;
        (tag, at).hash(&mut self.hash);
        if let Some(trace) = &mut self.trace {
            trace.push_back(format!("{:?} {call:?}", self.now - self.base));
        }
        if let Err(v) = self.checker.observe_call(self.now, call) {
            return Err(self.fail(v.to_string()));
        }
        while let Some(output) = self.pool.poll_output() {
            if let Some(trace) = &mut self.trace {
                trace.push_back(format!("    -> {output:?}"));
            }
            if let Err(v) = self.checker.observe_output(&output) {
                return Err(self.fail(v.to_string()));
            }
            hash_output(&mut self.hash, &output);
            self.react(output);
        }
        if let Err(v) = self.checker.check(&self.pool) {
            return Err(self.fail(v.to_string()));
        }
        self.check_messages()?;
        let transmitted = self.sends_before + self.checker.transmitted_sends();
        if self.server_sends > transmitted {
            let msg = format!(
                "invariant 7 violated: the server counted {} messages, only {transmitted} were transmitted",
                self.server_sends,
            );
            return Err(self.fail(msg));
        }
        if let Some(trace) = &mut self.trace {
            while trace.len() > TRACE_LINES {
                trace.pop_front();
            }
        }
        Ok(())
    }

    fn fail(&self, message: String) -> Failure {
        Failure {
            seed: self.seed,
            knobs: Box::new(self.knobs.clone()),
            step: self.steps,
            at: self.now - self.base,
            message,
            trace: self.trace.iter().flatten().cloned().collect(),
        }
    }

    fn schedule(&mut self, after: Duration, event: Net) {
        self.seq += 1;
        self.net.insert((self.now + after, self.seq), event);
    }

    fn chance(&mut self, p: f64) -> bool {
        self.faults && p > 0.0 && self.rng.f64() < p
    }

    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let lo = lo.as_micros() as u64;
        let hi = (hi.as_micros() as u64).max(lo);
        Duration::from_micros(self.rng.u64(lo..=hi))
    }

    // ----- the network and the adapter -----

    fn deliver(&mut self) -> Result<(), Failure> {
        let Some((_, event)) = self.net.pop_first() else {
            return Ok(());
        };
        let conn = event.conn();
        let late = self.knobs.late_event;
        let sock = self.socks.entry(conn).or_default();
        if sock.reported {
            return Ok(());
        }
        if sock.gone
            && !(sock.closing && matches!(event, Net::Closed(..)))
            && !matches!(event, Net::Unwritten(..))
        {
            // A race: the adapter reports something about a socket the pool gave up.
            let race = self.faults && late > 0.0 && self.rng.f64() < late;
            if !race {
                return Ok(());
            }
        }
        let sock = self.socks.get_mut(&conn).expect("inserted");
        let input = match &event {
            Net::Connected(conn) => Input::Connected { conn: *conn },
            Net::DialFailed(conn, error) => Input::ConnectFailed {
                conn: *conn,
                error: error.clone(),
            },
            Net::Text(conn, text) => Input::Text { conn: *conn, text },
            Net::Binary(conn, len) => Input::Binary {
                conn: *conn,
                len: *len,
            },
            Net::Pong(conn, payload) => Input::Pong { conn: *conn, payload },
            Net::Unwritten(conn, first) => {
                for &(write, id) in &sock.unsent {
                    if write >= *first {
                        if let Some(m) = self.messages.get_mut(&id) {
                            m.unstarted += 1;
                        }
                    }
                }
                Input::Unwritten {
                    conn: *conn,
                    first: *first,
                }
            }
            Net::Flushed(conn, writes) => Input::Flushed {
                conn: *conn,
                writes: *writes,
            },
            Net::WriteFailed(conn) => {
                sock.reported = true;
                Input::WriteFailed {
                    conn: *conn,
                    error: "broken pipe".into(),
                }
            }
            Net::Closed(conn, reason) => {
                sock.reported = true;
                Input::Closed {
                    conn: *conn,
                    reason: reason.clone(),
                }
            }
        };
        self.pool.handle_input(self.now, input.clone());
        self.observe(4, Call::Input(&input))
    }

    /// The adapter and the server carry out one output.
    fn react(&mut self, output: Output) {
        match output {
            Output::Dial { conn } => self.dial(conn),
            Output::Transmit { conn, frame } => {
                let id = self.by_frame.get(&frame).copied();
                if let Some(m) = id.and_then(|id| self.messages.get_mut(&id)) {
                    m.transmits += 1;
                }
                let sock = self.socks.entry(conn).or_default();
                let (write, started) = (sock.writes + 1, sock.started);
                self.write(conn, Some(frame), None);
                let sock = self.socks.entry(conn).or_default();
                if let (Some(id), true) = (id, sock.started == started) {
                    sock.unsent.push((write, id));
                }
            }
            Output::Ping { conn, payload } => self.write(conn, None, Some(payload)),
            Output::Settled { id, fate } => {
                if let Some(m) = self.keys.get(&id.0).and_then(|k| self.messages.get_mut(k)) {
                    m.fate = Some(fate);
                }
            }
            Output::Keep { record, first_sent } => {
                self.spool.insert(record.id.0, (record, first_sent));
            }
            Output::Release { id, fate } => {
                self.spool.remove(&id.0);
                if let Some(m) = self.keys.get(&id.0).and_then(|k| self.messages.get_mut(k)) {
                    m.fate = Some(fate);
                }
            }
            Output::Disconnect { conn, graceful } => {
                let sock = self.socks.entry(conn).or_default();
                sock.gone = true;
                if !graceful {
                    // The adapter drops the writes it never started, and may say so.
                    let first = sock.started + 1;
                    let report = self.knobs.report_unwritten;
                    if report > 0.0 && self.rng.f64() < report {
                        self.schedule(Duration::ZERO, Net::Unwritten(conn, first));
                    }
                }
                let sock = self.socks.entry(conn).or_default();
                // A live peer answers a close frame; a frozen or broken one never does, and
                // the pool's linger ends it.
                if graceful && !sock.broken && !sock.stalled && !sock.reported {
                    sock.closing = true;
                    let after = Duration::from_micros(self.rng.u64(0..=5_000));
                    self.schedule(
                        after,
                        Net::Closed(
                            conn,
                            CloseReason::Frame {
                                code: 1000,
                                reason: String::new(),
                            },
                        ),
                    );
                }
            }
            Output::Completed { id, outcome } => {
                if let Some((probe, done)) = &mut self.probe {
                    if *probe == id {
                        *done = Some(outcome);
                    }
                }
            }
            Output::Event(Event::AttemptsExhausted { .. }) if !self.faults => {
                // Healed: the application asks for its connections again.
                self.connect_due = Some(self.now);
            }
            _ => {}
        }
    }

    fn dial(&mut self, conn: ConnId) {
        let k = self.knobs.clone();
        let mute = self.chance(k.pong_suppress / 2.0);
        self.socks.insert(
            conn,
            Sock {
                mute,
                ..Sock::default()
            },
        );
        let latency = if self.faults {
            self.between(k.dial_latency)
        } else {
            self.between((Duration::from_millis(1), Duration::from_millis(10)))
        };
        if self.chance(k.dial_hang) {
            return;
        }
        let event = if self.chance(k.dial_refuse) {
            Net::DialFailed(conn, DialError::Network("connection refused".into()))
        } else if self.chance(k.dial_reject) {
            // Mostly the key refused; sometimes the service unavailable, asking for a pause.
            let error = match self.rng.u8(..4) {
                0 => DialError::HttpStatus {
                    status: 503,
                    retry_after: Some(Duration::from_millis(self.rng.u64(0..=3_000))),
                },
                1 => DialError::HttpStatus {
                    status: 429,
                    retry_after: None,
                },
                2 => DialError::Rejected { status: 403 },
                _ => DialError::Rejected { status: 401 },
            };
            Net::DialFailed(conn, error)
        } else {
            Net::Connected(conn)
        };
        self.schedule(latency, event);
    }

    fn write(&mut self, conn: ConnId, frame: Option<String>, ping: Option<[u8; 16]>) {
        let k = self.knobs.clone();
        let sock = self.socks.entry(conn).or_default();
        sock.writes += 1;
        let writes = sock.writes;
        if sock.gone || sock.broken || sock.stalled {
            return;
        }
        if self.chance(k.write_fail) {
            self.socks.get_mut(&conn).expect("exists").broken = true;
            let after = Duration::from_micros(self.rng.u64(0..=5_000));
            self.schedule(after, Net::WriteFailed(conn));
            return;
        }
        if self.chance(k.write_stall) {
            self.socks.get_mut(&conn).expect("exists").stalled = true;
            return;
        }
        self.socks.get_mut(&conn).expect("exists").started = writes;
        let after = Duration::from_micros(self.rng.u64(0..=2_000));
        self.schedule(after, Net::Flushed(conn, writes));
        match frame {
            None => {
                let ping = ping.unwrap_or_default();
                let payload = ping.to_vec();
                let seq = u64::from_be_bytes(ping[8..].try_into().expect("8 bytes"));
                // A peer or middlebox guessing the payload (RFC 6455 allows unsolicited
                // pongs): answering or not, its pong confirms nothing.
                if self.chance(k.guessed_pong) {
                    let guess = match self.rng.u8(..4) {
                        0 => seq.to_be_bytes().to_vec(),
                        1 => seq.to_le_bytes().to_vec(),
                        2 => [[0; 8], seq.to_be_bytes()].concat(),
                        _ => {
                            let mut wrong = ping;
                            wrong[self.rng.usize(..8)] ^= 1 << self.rng.u8(..8);
                            wrong.to_vec()
                        }
                    };
                    let after = Duration::from_micros(self.rng.u64(0..=20_000));
                    self.schedule(after, Net::Pong(conn, guess));
                }
                let mute = self.socks[&conn].mute;
                if !mute && !self.chance(k.pong_suppress) {
                    // Pongs come late, sometimes very late (past the next barrier's turn).
                    let rtt = if self.chance(0.1) {
                        self.between((Duration::ZERO, k.pong_wait))
                    } else {
                        Duration::from_micros(self.rng.u64(0..=20_000))
                    };
                    // Now and then an older pong comes again, or one nobody asked for.
                    if self.chance(k.stray) {
                        let mut older = ping;
                        older[8..].copy_from_slice(&seq.wrapping_sub(1).to_be_bytes());
                        let junk = match self.rng.u8(..3) {
                            0 => older.to_vec(),
                            1 => Vec::new(),
                            _ => vec![7; 3],
                        };
                        self.schedule(rtt / 2, Net::Pong(conn, junk));
                    }
                    self.schedule(rtt, Net::Pong(conn, payload));
                }
            }
            Some(frame) => self.server_receive(conn, &frame),
        }
        // Server-side trouble, one chance per frame it receives.
        if self.chance(k.garbage) {
            let junk = [
                "not json",
                "[1,2]",
                r#"{"payload":1}"#,
                r#"{"type":5}"#,
                "",
                "{\"type\":",
            ];
            let text = junk[self.rng.usize(..junk.len())].to_owned();
            self.schedule(Duration::from_millis(1), Net::Text(conn, text));
        }
        if self.chance(k.binary) {
            let len = self.rng.usize(0..100);
            self.schedule(Duration::from_millis(1), Net::Binary(conn, len));
        }
        if self.chance(k.stray) {
            let text = match self.rng.u8(..3) {
                0 => r#"{"type":"push","payload":{"notice":"hello"}}"#.to_owned(),
                1 => format!(
                    r#"{{"type":"success","replyTo":"{}"}}"#,
                    uuid::Builder::from_random_bytes(self.rng.u128(..).to_le_bytes()).into_uuid()
                ),
                _ => r#"{"type":"success","replyTo":"not-a-uuid","id":"x"}"#.to_owned(),
            };
            self.schedule(Duration::from_millis(1), Net::Text(conn, text));
        }
        if self.chance(k.close_mid_stream) {
            self.socks.get_mut(&conn).expect("exists").broken = true;
            let reason = match self.rng.u8(..4) {
                0 => CloseReason::Frame {
                    code: 1000,
                    reason: String::new(),
                },
                1 => CloseReason::Frame {
                    code: 1011,
                    reason: "overloaded".into(),
                },
                2 => CloseReason::Eof,
                _ => CloseReason::Error("connection reset".into()),
            };
            let after = Duration::from_micros(self.rng.u64(0..=10_000));
            self.schedule(after, Net::Closed(conn, reason));
        }
    }

    /// The server receives one frame: counts it, or answers it per [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md).
    fn server_receive(&mut self, conn: ConnId, frame: &str) {
        let Ok(msg) = frame::decode(frame, usize::MAX) else {
            return;
        };
        let Some(id) = msg.id else {
            self.server_sends += 1;
            if let Some(m) = self.by_frame.get(frame).and_then(|id| self.messages.get_mut(id)) {
                m.received += 1;
            }
            return;
        };
        self.server_requests += 1;
        let k = self.knobs.clone();
        if self.chance(k.reply_drop) {
            return;
        }
        let copies = if self.chance(k.reply_dup) { 2 } else { 1 };
        for _ in 0..copies {
            let deny = self.chance(k.reply_deny);
            let payload = match msg.kind.as_str() {
                "request_for_allocation" => json!({"allocationId": format!("alloc-{}", self.rng.u32(..))}),
                "use_allocation" => json!({"eventId": "ev-1"}),
                "get_application_policies" => json!({"policies": [], "total": 0}),
                _ => json!({"endpoints": [], "total": 0}),
            };
            // Every shape the correlation rule allows.
            let text = match (deny, self.rng.u8(..4)) {
                (true, 0) => json!({"type": "error", "replyTo": id, "message": "limit reached"}),
                (true, _) => json!({"type": "success", "error": "denied", "id": id}),
                (false, 0) => json!({"type": "success", "payload": payload, "replyTo": id}),
                (false, 1) => json!({"type": "success", "payload": payload, "id": id}),
                (false, 2) => json!({"type": "success", "payload": payload, "replyTo": "", "id": id}),
                (false, _) => json!({"type": "success", "payload": payload, "replyTo": id, "id": "srv-1"}),
            }
            .to_string();
            let latency = if self.faults {
                self.between(k.reply_latency)
            } else {
                self.between((Duration::from_millis(1), Duration::from_millis(20)))
            };
            self.schedule(latency, Net::Text(conn, text));
        }
    }

    // ----- the workload -----

    fn schedule_op(&mut self) {
        if self.ops_left == 0 {
            self.next_op = None;
            return;
        }
        let mean = self.knobs.chaos / self.knobs.ops.max(1);
        let gap = if self.rng.f64() < self.knobs.burst {
            Duration::ZERO
        } else {
            mean.mul_f64(2.0 * self.rng.f64())
        };
        self.next_op = Some(self.now + gap);
    }

    fn op(&mut self) -> Result<(), Failure> {
        self.ops_left = self.ops_left.saturating_sub(1);
        self.schedule_op();
        self.counter += 1;
        let n = self.counter;
        let k = &self.knobs;
        let total = k.w_request + k.w_send + k.w_cancel + k.w_connect;
        let mut pick = self.rng.u32(..total.max(1));
        let now = self.now;
        if pick < k.w_request {
            let per_call = self.rng.f64() < k.per_call_timeout;
            let (message, idempotent) = match self.rng.u8(..4) {
                0 => (messages_policies(), false),
                1 => (
                    Outgoing::new(
                        "request_for_allocation",
                        json!({"alias": "ledger", "amount": 1.0, "allocationId": format!("a-{n}")}),
                    ),
                    false,
                ),
                2 => (
                    Outgoing::new("get_blocked_endpoints", serde_json::Value::Null),
                    true,
                ),
                _ => (
                    Outgoing::new(
                        "request_for_allocation",
                        json!({"alias": "ledger", "amount": 2.0}),
                    ),
                    false,
                ),
            };
            let options = RequestOptions {
                timeout: per_call.then(|| Duration::from_millis(self.rng.u64(10..=5_000))),
                idempotent,
                // Half the requests lean to a slot, some of them beyond the pool's size.
                affinity: self.rng.bool().then(|| self.rng.u32(0..12)),
            };
            let result = self.pool.request(now, message.clone(), options);
            return self.observe(
                1,
                Call::Request {
                    message: &message,
                    options,
                    result: &result,
                },
            );
        }
        pick -= k.w_request;
        if pick < k.w_send {
            let message = match self.rng.u8(..20) {
                0 => Outgoing::new(format!("custom_{}", self.rng.u8(..80)), json!(n)),
                1..=9 => Outgoing::new(
                    "use_allocation",
                    json!({"alias": "ledger", "amount": 1.0, "allocationId": format!("u-{n}")}),
                ),
                _ => Outgoing::new(
                    "report_call_chain",
                    json!({"method": "GET", "url": "/x", "callChain": [], "timestamp": n}),
                ),
            };
            let delivery = match self.rng.f64() {
                p if p < k.at_least_once => Some(Delivery::AtLeastOnce),
                p if p < (1.0 + k.at_least_once) / 2.0 => Some(Delivery::AtMostOnce),
                _ => None,
            };
            let mut options = SendOptions::default().with_notify(true);
            options.delivery = delivery;
            return self.send(message, options);
        }
        pick -= k.w_send;
        if pick < k.w_cancel {
            let pending = self.checker.pending_len();
            let id = if pending > 0 && self.rng.u8(..8) != 0 {
                let i = self.rng.usize(..pending);
                self.checker.pending_ids().nth(i).expect("in range")
            } else {
                RequestId(uuid::Builder::from_random_bytes(self.rng.u128(..).to_le_bytes()).into_uuid())
            };
            let result = self.pool.cancel(now, id);
            return self.observe(7, Call::Cancel { id, result });
        }
        self.pool.connect(now);
        self.observe(0, Call::Connect)
    }
}

/// What a new process hands [`Pool::open_spool`]: the records a simulated client's spool
/// holds (id -> record and first send), each with its age on the virtual clock at `now`.
pub(crate) fn restored(spool: &BTreeMap<u64, (SpoolRecord, Instant)>, now: Instant) -> Vec<Restored> {
    spool
        .values()
        .map(|(record, first)| Restored {
            record: record.clone(),
            age: now.saturating_duration_since(*first),
        })
        .collect()
}

fn messages_policies() -> Outgoing {
    crate::messages::get_application_policies()
}

fn hash_output(h: &mut DefaultHasher, output: &Output) {
    match output {
        Output::Dial { conn } => (1u8, conn).hash(h),
        Output::Transmit { conn, frame } => (2u8, conn, frame).hash(h),
        Output::Ping { conn, payload } => (3u8, conn, payload).hash(h),
        Output::Settled { id, fate } => (8u8, id, fate).hash(h),
        Output::Disconnect { conn, graceful } => (4u8, conn, graceful).hash(h),
        Output::Completed { id, outcome } => {
            (5u8, id).hash(h);
            match outcome {
                Outcome::Reply(f) | Outcome::Denied(f) => (&f.kind, &f.id, &f.reply_to).hash(h),
                Outcome::Failed(e) => e.to_string().hash(h),
            }
        }
        Output::Unsolicited { conn, frame } => (6u8, conn, &frame.kind).hash(h),
        Output::Event(e) => (7u8, format!("{e:?}")).hash(h),
        Output::Keep { record, .. } => (9u8, record.id, &record.frame, record.writes).hash(h),
        Output::Release { id, fate } => (10u8, id, fate).hash(h),
    }
}
