//! Crash and restart simulation of the spool: a pool with its spool open sends messages to a
//! simulated server over flaky connections, and at random moments the process **crashes**
//! (everything in memory is lost, the spool is kept) or **closes** (a deploy: the drain runs,
//! what is left stays in the spool). Each new process opens the spool with what the earlier
//! ones left. Everything runs in virtual time from one seed.
//!
//! The main simulation ([`super::Sim`]) crashes and restarts spool processes too, under all
//! its faults and with the full [`super::Checker`]; this smaller world adds what that one
//! does not model: the server reading, after a crash, the writes the kernel had flushed, and
//! flushes, pongs and reads in any order at a much higher rate of crashes and closes.
//!
//! The spool's invariant, checked after every step and across any number of crashes:
//!
//! - every message a process accepted (`send` returned `Ok`) has ended — released as
//!   confirmed, expired, written (confirmation off) or unconfirmed with a reason (dropped) —
//!   or is still in the spool; nothing is released that was not kept, a record kept again
//!   keeps its frame and never loses writes;
//! - a message released as confirmed reached the server;
//! - in every process, each type's counters are conserved (`sends` = the sum of the states,
//!   `replayed` counted in `sends`);
//! - at the end (faults off, one last process draining): the spool is empty, and every
//!   accepted message reached the server at least once unless it ended expired, unconfirmed
//!   or written with confirmation off.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::spool::SpoolRecord;
use crate::{CloseReason, Config, ConnId, Delivery, Input, MessageFate, Outgoing, Output, Pool, SendOptions};

/// What one crash simulation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolReport {
    /// Steps taken.
    pub steps: u64,
    /// Processes that crashed.
    pub crashes: u32,
    /// Processes that closed (a deploy) and left the rest in the spool.
    pub closes: u32,
    /// Messages accepted, across every process.
    pub accepted: u64,
    /// Records replayed by later processes.
    pub replayed: u64,
    /// Messages the server read more than once (at least once after a crash or a dead
    /// connection).
    pub duplicates: u64,
}

/// A write on a simulated socket.
#[derive(Debug)]
enum Wire {
    Frame(String),
    Ping([u8; 16]),
}

#[derive(Debug, Default)]
struct SimConn {
    /// Writes issued, in order, with their number; the server reads only flushed ones.
    writes: VecDeque<(u64, Wire)>,
    issued: u64,
    flushed: u64,
    pongs: VecDeque<[u8; 16]>,
}

struct World {
    rng: fastrand::Rng,
    config: Config,
    now: Instant,
    pool: Pool,
    process: u64,
    conns: HashMap<ConnId, SimConn>,
    dialing: Vec<ConnId>,
    /// Dead connections whose unflushed writes the adapter still has to report.
    unwritten: Vec<(ConnId, u64)>,
    /// The spool: what was kept and not released, by id, with the first send instant.
    spool: BTreeMap<u64, (SpoolRecord, Instant)>,
    /// The message each id carries (its payload number).
    payload_of: HashMap<u64, u64>,
    accepted: HashSet<u64>,
    released: HashMap<u64, MessageFate>,
    received: HashMap<u64, u32>,
    next_payload: u64,
    report: SpoolReport,
}

fn fail(seed: u64, step: u64, message: String) -> String {
    format!("spool invariant broken at step {step}: {message} (replay with UFSOCK_SIM_SEED={seed})")
}

fn payload(frame: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap_or_default();
    v["payload"].as_u64().unwrap_or(u64::MAX)
}

impl World {
    fn new(seed: u64, base: Instant) -> World {
        let mut rng = fastrand::Rng::with_seed(seed);
        let config = Config::builder("ws://127.0.0.1:1/ws", "key")
            .pool_size(rng.u16(1..=3))
            .ping_period(Duration::from_secs(1))
            .pong_wait(Duration::from_secs(3))
            .write_wait(Duration::from_secs(2))
            .handshake_timeout(Duration::from_secs(1))
            .backoff_base(Duration::from_millis(200))
            .backoff_cap(Duration::from_secs(1))
            .confirm_every(rng.u32(1..=8))
            .confirm_after(Duration::from_millis(100))
            .max_rewrites(rng.u32(0..=3))
            .outbox_ttl(Duration::from_secs(rng.u64(5..=120)))
            .outbox_capacity(rng.u32(4..=64))
            .close_drain(Duration::from_millis(rng.u64(0..=2_000)))
            .confirm_delivery(rng.u8(..) > 20)
            .build()
            .expect("a valid simulated config");
        let pool = Pool::new(config.clone(), rng.u64(..), base);
        let mut w = World {
            rng,
            config,
            now: base,
            pool,
            process: 0,
            conns: HashMap::new(),
            dialing: Vec::new(),
            unwritten: Vec::new(),
            spool: BTreeMap::new(),
            payload_of: HashMap::new(),
            accepted: HashSet::new(),
            released: HashMap::new(),
            received: HashMap::new(),
            next_payload: 0,
            report: SpoolReport::default(),
        };
        w.start();
        w
    }

    /// A new process: a fresh pool that opens the spool the earlier ones left.
    fn start(&mut self) {
        self.process += 1;
        self.pool = Pool::new(self.config.clone(), self.rng.u64(..), self.now);
        self.conns.clear();
        self.dialing.clear();
        self.unwritten.clear();
        let restored = super::restored(&self.spool, self.now);
        let opened = self
            .pool
            .open_spool(self.now, 64 * 1024, restored)
            .expect("a fresh pool opens its spool");
        self.report.replayed += opened.replayed;
        self.pool.connect(self.now);
    }

    /// Carries out the pool's outputs, applying keeps and releases to the spool.
    fn drain(&mut self) -> Result<(), String> {
        while let Some(output) = self.pool.poll_output() {
            match output {
                Output::Dial { conn } => self.dialing.push(conn),
                Output::Transmit { conn, frame } => self.write(conn, Wire::Frame(frame)),
                Output::Ping { conn, payload } => self.write(conn, Wire::Ping(payload)),
                Output::Disconnect { conn, .. } => {
                    self.dialing.retain(|&c| c != conn);
                    if let Some(c) = self.conns.remove(&conn) {
                        self.unwritten.push((conn, c.flushed + 1));
                    }
                }
                Output::Keep { record, first_sent } => {
                    let id = record.id.0;
                    let p = payload(&record.frame);
                    if let Some((old, _)) = self.spool.get(&id) {
                        if old.writes > record.writes || old.frame != record.frame {
                            return Err(format!(
                                "{} kept again with fewer writes or another frame",
                                record.id
                            ));
                        }
                    } else if self.released.contains_key(&p) {
                        return Err(format!("{} kept again after its release", record.id));
                    }
                    self.payload_of.insert(id, p);
                    let first = self.spool.get(&id).map_or(first_sent, |(_, f)| *f);
                    self.spool.insert(id, (record, first));
                }
                Output::Release { id, fate } => {
                    if self.spool.remove(&id.0).is_none() {
                        return Err(format!("{id} released but not in the spool"));
                    }
                    let p = self.payload_of[&id.0];
                    if fate == MessageFate::Confirmed && !self.received.contains_key(&p) {
                        return Err(format!(
                            "{id} released as confirmed, but the server never read it"
                        ));
                    }
                    self.released.insert(p, fate);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn write(&mut self, conn: ConnId, wire: Wire) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.issued += 1;
            let n = c.issued;
            c.writes.push_back((n, wire));
        }
    }

    /// The server reads the next flushed write of `conn`.
    fn server_read(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.writes.front().is_some_and(|(n, _)| *n <= c.flushed) {
            if let Some((_, wire)) = c.writes.pop_front() {
                match wire {
                    Wire::Frame(f) => *self.received.entry(payload(&f)).or_default() += 1,
                    Wire::Ping(p) => c.pongs.push_back(p),
                }
            }
        }
    }

    fn pick_conn(&mut self) -> Option<ConnId> {
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort_by_key(|c| (c.slot, c.generation));
        (!ids.is_empty()).then(|| ids[self.rng.usize(..ids.len())])
    }

    fn input(&mut self, input: Input<'_>) {
        self.pool.handle_input(self.now, input);
    }

    /// One random step; `faults` allows new sends, kills, failed dials, crashes and closes
    /// (without them the step only moves what is there towards its end).
    fn step(&mut self, faults: bool) {
        let roll = self.rng.u32(0..100);
        match roll {
            0..=24 if faults && !self.pool.is_closing() => {
                let p = self.next_payload;
                self.next_payload += 1;
                let delivery = if self.rng.bool() {
                    Delivery::AtLeastOnce
                } else {
                    Delivery::AtMostOnce
                };
                let options = SendOptions::default().with_delivery(delivery);
                if self
                    .pool
                    .send_with(self.now, Outgoing::new("m", json!(p)), options)
                    .is_ok()
                {
                    self.accepted.insert(p);
                    self.report.accepted += 1;
                }
            }
            25..=39 => {
                if let Some(c) = self.pick_conn() {
                    for _ in 0..self.rng.usize(1..8) {
                        self.server_read(c);
                    }
                }
            }
            40..=49 => {
                if let Some(c) = self.pick_conn() {
                    let conn = self.conns.get_mut(&c).expect("picked");
                    conn.flushed = conn.issued;
                    let writes = conn.issued;
                    self.input(Input::Flushed { conn: c, writes });
                }
            }
            50..=59 => {
                if let Some(c) = self.pick_conn() {
                    if let Some(p) = self.conns.get_mut(&c).and_then(|x| x.pongs.pop_front()) {
                        self.input(Input::Pong { conn: c, payload: &p });
                    }
                }
            }
            60..=67 => {
                if !self.dialing.is_empty() {
                    let conn = self.dialing.remove(0);
                    if faults && self.rng.u8(0..10) == 0 {
                        self.input(Input::ConnectFailed {
                            conn,
                            error: crate::DialError::Network("refused".into()),
                        });
                    } else {
                        self.conns.insert(conn, SimConn::default());
                        self.input(Input::Connected { conn });
                    }
                }
            }
            68..=69 if faults => {
                if let Some(c) = self.pick_conn() {
                    let conn = self.conns.remove(&c).expect("picked");
                    self.input(Input::Closed {
                        conn: c,
                        reason: CloseReason::Eof,
                    });
                    self.unwritten.push((c, conn.flushed + 1));
                }
            }
            70 if faults => self.crash(),
            71 if faults && self.rng.u8(0..4) == 0 && !self.pool.is_closing() => self.pool.close(self.now),
            _ => {
                self.now += Duration::from_millis(self.rng.u64(0..400));
                self.pool.handle_timeout(self.now);
            }
        }
        for (conn, first) in std::mem::take(&mut self.unwritten) {
            self.pool.handle_input(self.now, Input::Unwritten { conn, first });
        }
    }

    /// The process dies: the server may still read what the kernel had flushed, the rest of
    /// memory is gone; a new process starts on the spool.
    fn crash(&mut self) {
        self.report.crashes += 1;
        let conns = std::mem::take(&mut self.conns);
        let mut ids: Vec<_> = conns.into_iter().collect();
        ids.sort_by_key(|(c, _)| (c.slot, c.generation));
        for (_, c) in ids {
            if self.rng.bool() {
                for (n, wire) in c.writes {
                    if let (true, Wire::Frame(f)) = (n <= c.flushed, wire) {
                        *self.received.entry(payload(&f)).or_default() += 1;
                    }
                }
            }
        }
        self.start();
    }

    /// The invariant after a step.
    fn check(&self) -> Result<(), String> {
        let in_spool: HashSet<u64> = self.spool.keys().map(|id| self.payload_of[id]).collect();
        for p in &self.accepted {
            if !self.released.contains_key(p) && !in_spool.contains(p) {
                return Err(format!("accepted message {p} neither ended nor in the spool"));
            }
        }
        for (kind, s) in &self.pool.stats().sends_by_type {
            if !s.conserved() || s.replayed > s.sends {
                return Err(format!("counters of {kind} not conserved: {s:?}"));
            }
        }
        Ok(())
    }
}

/// Runs one seed's crash simulation: up to 1,500 steps with faults (crashes, closes, dead
/// connections, failed dials), then a last process without faults that drains everything.
pub fn run_crashes(seed: u64, base: Instant) -> Result<SpoolReport, String> {
    let mut w = World::new(seed, base);
    let steps = w.rng.u64(200..=1_500);
    for step in 0..steps {
        w.step(true);
        w.drain().map_err(|e| fail(seed, step, e))?;
        w.check().map_err(|e| fail(seed, step, e))?;
        if w.pool.is_closed() {
            // A deploy: the closed process ends, the next opens the spool.
            w.report.closes += 1;
            w.start();
            w.drain().map_err(|e| fail(seed, step, e))?;
        }
        w.report.steps += 1;
    }
    // The last process: a crash first (so every run replays), then no faults until the pool
    // holds nothing, then a close.
    w.crash();
    w.drain().map_err(|e| fail(seed, steps, e))?;
    let mut step = steps;
    while (w.pool.live_messages() > 0 || !w.dialing.is_empty()) && step < steps + 20_000 {
        if w.conns.is_empty() && w.dialing.is_empty() {
            // Demand re-arms slots that used up their attempts, as a client's sends would.
            w.pool.connect(w.now);
        }
        w.step(false);
        w.drain().map_err(|e| fail(seed, step, e))?;
        w.check().map_err(|e| fail(seed, step, e))?;
        step += 1;
    }
    if w.pool.live_messages() > 0 {
        return Err(fail(
            seed,
            step,
            format!("{} messages never ended without faults", w.pool.live_messages()),
        ));
    }
    w.report.steps = step;
    if !w.spool.is_empty() {
        return Err(fail(
            seed,
            step,
            format!("{} records left in the spool after the last drain", w.spool.len()),
        ));
    }
    for p in &w.accepted {
        let fate = w.released.get(p);
        let delivered = w.received.contains_key(p);
        // Written: confirmation is off, so nothing more is known (the caller chose that).
        let dropped = matches!(
            fate,
            Some(MessageFate::Expired | MessageFate::Unconfirmed(_) | MessageFate::Written)
        );
        if !delivered && !dropped {
            return Err(fail(
                seed,
                step,
                format!("accepted message {p} ended {fate:?} but never reached the server"),
            ));
        }
    }
    w.report.duplicates = w.received.values().filter(|&&n| n > 1).count() as u64;
    Ok(w.report)
}
