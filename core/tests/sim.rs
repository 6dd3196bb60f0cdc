//! The deterministic simulation: a sweep of seeds, determinism, and targeted scenarios.
//!
//! - `cargo test -p usageflow-socket-core --test sim` runs 2,000 seeds;
//! - `UFSOCK_SIM_SEEDS=N` runs N seeds (from `UFSOCK_SIM_FIRST`, default 0);
//! - `UFSOCK_SIM_SEED=s` runs seed `s` alone (what a failure prints).

use std::time::{Duration, Instant};

use usageflow_socket_core::sim::{self, Fault, Knobs, Sim};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
    )
}

#[test]
fn sweep() {
    let base = Instant::now();
    let seeds: Vec<u64> = match env_u64("UFSOCK_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("UFSOCK_SIM_FIRST").unwrap_or(0);
            let n = env_u64("UFSOCK_SIM_SEEDS").unwrap_or(2_000);
            (first..first + n).collect()
        }
    };
    let started = std::time::Instant::now();
    let (mut steps, mut requests, mut failures) = (0u64, 0u64, Vec::new());
    let (mut spool_seeds, mut crashes, mut replayed) = (0u64, 0u64, 0u64);
    for &seed in &seeds {
        match sim::run(seed, base) {
            Ok(report) => {
                steps += report.steps;
                requests += report.stats.requests;
                spool_seeds += u64::from(report.crashes > 0);
                crashes += u64::from(report.crashes);
                replayed += report.replayed;
            }
            Err(failure) => {
                eprintln!("{failure}\n");
                failures.push(seed);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "simulated {} seeds: {steps} steps, {requests} requests (of the last processes), \
         {spool_seeds} seeds with the spool: {crashes} crashes and restarts, {replayed} records \
         replayed, {} failed, in {:?}",
        seeds.len(),
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "failing seeds: {failures:?} (replay with UFSOCK_SIM_SEED=<seed>)"
    );
    if seeds.len() >= 100 {
        assert!(
            spool_seeds > 0 && crashes > spool_seeds && replayed > 0,
            "the sweep must crash and restart processes and replay their spools"
        );
    }
}

#[test]
fn same_seed_same_trace() {
    for seed in [1, 42, 4242, 987_654_321] {
        let a = sim::run(seed, Instant::now()).unwrap_or_else(|f| panic!("{f}"));
        // A different base instant: only differences of time matter.
        let b = sim::run(seed, Instant::now() + Duration::from_secs(1)).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} is not deterministic");
        assert_eq!((a.steps, a.stats), (b.steps, b.stats));
    }
    let a = sim::run(1, Instant::now()).unwrap();
    let b = sim::run(2, Instant::now()).unwrap();
    assert_ne!(a.trace_hash, b.trace_hash);
}

#[test]
fn knobs_vary_per_seed() {
    let k: Vec<Knobs> = (0..200).map(Knobs::draw).collect();
    assert!(k.iter().any(|k| k.pool_size == 1) && k.iter().any(|k| k.pool_size == 8));
    assert!(k.iter().any(|k| k.backoff_jitter == 0.0) && k.iter().any(|k| k.backoff_jitter > 0.0));
    assert!(k.iter().any(|k| k.max_connection_age.is_some()));
    assert!(k.iter().any(|k| k.outbox_capacity <= 5));
    assert!(k.iter().any(|k| !k.close_drain.is_zero()));
    assert!(k.iter().any(|k| k.dial_reject == 0.0) && k.iter().any(|k| k.dial_reject > 0.0));
    assert_eq!(Knobs::draw(9), Knobs::draw(9));
}

/// The server closes a connection; the slot reconnects; then the new connection's writes
/// stall: requests on it fail once the write deadline passes, and the slot recovers again.
#[test]
fn server_closes_then_stalls_writes() {
    let knobs = Knobs {
        pool_size: 1,
        ops: 200,
        w_cancel: 0,
        ..Knobs::calm()
    };
    let mut sim = Sim::new(11, knobs, Instant::now());
    sim.start().unwrap();
    sim.run_until(Duration::from_secs(2)).unwrap();
    assert!(sim.inject(Fault::CloseConn { slot: 0 }));
    sim.run_until(Duration::from_secs(4)).unwrap();
    assert!(sim.pool().is_connected(), "reconnected within the backoff");
    assert!(sim.inject(Fault::StallWrites { slot: 0 }));
    sim.run_until(Duration::from_secs(8)).unwrap();
    let report = sim.heal_and_close().unwrap_or_else(|f| panic!("{f}"));
    let st = report.stats;
    assert!(st.disconnects >= 2, "{st:?}");
    assert!(
        st.connection_lost >= 1,
        "requests on the stalled connection fail: {st:?}"
    );
    assert!(st.reconnects >= 2);
}

/// Every dial is rejected with 401 during the chaos: the slots back off, exhaust their
/// attempts, and are re-armed once the server accepts the key again.
#[test]
fn rejected_key_backs_off_then_recovers() {
    let knobs = Knobs {
        dial_reject: 1.0,
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_millis(800),
        backoff_attempts: 3,
        chaos: Duration::from_secs(20),
        ..Knobs::calm()
    };
    let report = sim::run_with(3, knobs, Instant::now()).unwrap_or_else(|f| panic!("{f}"));
    let st = report.stats;
    assert!(st.rejections >= 3 && st.exhausted >= 1, "{st:?}");
    assert_eq!(st.replies, 1, "only the probe after healing gets a reply");
}

/// Hung handshakes, silent connections and stalled writes together, with rotation.
#[test]
fn hung_handshakes_silent_connections_and_rotation() {
    let knobs = Knobs {
        dial_hang: 0.3,
        pong_suppress: 0.5,
        write_stall: 0.02,
        max_connection_age: Some(Duration::from_secs(4)),
        close_drain: Duration::from_millis(500),
        chaos: Duration::from_secs(30),
        ops: 300,
        ..Knobs::calm()
    };
    for seed in 0..20 {
        sim::run_with(seed, knobs.clone(), Instant::now()).unwrap_or_else(|f| panic!("{f}"));
    }
}

/// The spool under crashes and deploys: calm knobs with dying connections, stalled writes
/// and a small outbox TTL; every process but the first replays what the earlier ones left,
/// and the checker follows the spool's ledger across all of them.
#[test]
fn crashes_and_deploys_replay_the_spool() {
    let (mut crashes, mut replayed) = (0, 0);
    for seed in 0..40 {
        let knobs = Knobs {
            spool: true,
            spool_bytes: if seed % 4 == 0 { 2_048 } else { 1 << 30 },
            crashes: 4,
            deploys: 2,
            close_mid_stream: 0.02,
            write_stall: 0.01,
            outbox_ttl: Duration::from_secs(3),
            close_drain: Duration::from_millis(500),
            w_send: 8,
            ..Knobs::calm()
        };
        let report = sim::run_with(seed, knobs, Instant::now()).unwrap_or_else(|f| panic!("{f}"));
        // Two crashes, two deploys (one may fall into the other's close, or a crash into
        // it), and one to start the heal.
        assert!((3..=5).contains(&report.crashes), "{} restarts", report.crashes);
        crashes += report.crashes;
        replayed += report.replayed;
    }
    assert!(
        replayed > 0 && crashes >= 160,
        "{crashes} restarts, {replayed} replayed"
    );
}

/// Close in the middle of the chaos, under load: the drain meets dying connections, late and
/// missing pongs, stalled writes and hanging dials; every message still ends exactly once,
/// and the server's count agrees with the accounting.
#[test]
fn close_mid_drain_under_faults() {
    let seeds = env_u64("UFSOCK_SIM_CLOSE_SEEDS").unwrap_or(400);
    let mut closed = 0;
    for seed in 0..seeds {
        let mut knobs = Knobs::draw(seed);
        knobs.close_drain = Duration::from_millis(1 + seed % 3_000);
        let mut sim = Sim::new(seed, knobs.clone(), Instant::now());
        let at = knobs.chaos.mul_f64(0.3 + 0.4 * ((seed % 7) as f64 / 7.0));
        let run = sim.start().and_then(|()| sim.run_until(at));
        let report = run.and_then(|()| sim.close_mid_chaos());
        match report {
            Ok(r) => closed += r.stats.sends.closed,
            Err(f) => panic!("{f}\n(this scenario: start, run_until {at:?}, close_mid_chaos)"),
        }
    }
    eprintln!("close mid-drain: {seeds} seeds, {closed} messages handed back");
}

/// Duplicated, dropped, denied, late replies and junk frames with idempotent re-sends.
#[test]
fn unreliable_server_replies() {
    let knobs = Knobs {
        reply_drop: 0.2,
        reply_dup: 0.3,
        reply_deny: 0.2,
        garbage: 0.05,
        binary: 0.05,
        stray: 0.05,
        close_mid_stream: 0.02,
        reply_latency: (Duration::from_millis(0), Duration::from_millis(3_000)),
        chaos: Duration::from_secs(30),
        ops: 300,
        ..Knobs::calm()
    };
    for seed in 0..20 {
        let r = sim::run_with(seed, knobs.clone(), Instant::now()).unwrap_or_else(|f| panic!("{f}"));
        assert!(r.stats.orphan_replies > 0 || r.stats.requests < 10);
    }
}

/// The checker as a fuzz target uses it: arbitrary inputs (stale, duplicate, out of
/// order), commands and time jumps fed straight into a pool, checked after every step.
#[test]
fn checker_accepts_arbitrary_event_sequences() {
    use usageflow_socket_core::sim::{Call, Checker};
    use usageflow_socket_core::{
        CloseReason, Config, ConnId, DialError, Input, Outgoing, Output, Pool, RequestId, RequestOptions,
        SendOptions,
    };

    for seed in 0..env_u64("UFSOCK_SIM_FUZZ_SEEDS").unwrap_or(300) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let config = Config::builder("ws://127.0.0.1:1/ws", "k")
            .pool_size(rng.u16(1..=4))
            .backoff_base(Duration::from_millis(rng.u64(0..=2_000)))
            .backoff_cap(Duration::from_secs(5))
            .backoff_attempts(rng.u32(1..=3))
            .backoff_jitter(if rng.bool() { 0.0 } else { 0.5 })
            .max_in_flight(rng.u32(1..=3))
            .max_unflushed_writes(rng.u32(1..=4))
            .outbox_capacity(rng.u32(0..=3))
            .close_drain(Duration::from_millis(rng.u64(0..=1_000)))
            .max_connection_age(rng.bool().then(|| Duration::from_secs(rng.u64(1..=5))))
            .build()
            .unwrap();
        let mut now = Instant::now();
        let mut pool = Pool::new(config.clone(), seed, now);
        let mut checker = Checker::new(&config, now);
        let mut conns: Vec<ConnId> = vec![ConnId {
            slot: 0,
            generation: 0,
        }];
        let mut frames: Vec<String> = Vec::new();
        let fail = |step: usize, v: &dyn std::fmt::Display| -> ! { panic!("seed {seed}, step {step}: {v}") };
        for step in 0..400 {
            let r = match rng.u8(..14) {
                0 => {
                    pool.connect(now);
                    checker.observe_call(now, Call::Connect)
                }
                1 | 2 => {
                    let m = Outgoing::new(
                        "use_allocation",
                        serde_json::json!({"allocationId": step.to_string()}),
                    );
                    let mut options = RequestOptions::default();
                    options.timeout = rng.bool().then(|| Duration::from_millis(rng.u64(1..=3_000)));
                    options.idempotent = rng.bool();
                    options.affinity = rng.bool().then(|| rng.u32(0..8));
                    let result = pool.request(now, m.clone(), options);
                    checker.observe_call(
                        now,
                        Call::Request {
                            message: &m,
                            options,
                            result: &result,
                        },
                    )
                }
                3 => {
                    let m = Outgoing::new(format!("k{}", rng.u8(..3)), serde_json::json!(step));
                    let options = SendOptions::default().with_notify(rng.bool());
                    let result = pool.send_with(now, &m, options);
                    checker.observe_call(
                        now,
                        Call::Send {
                            message: &m,
                            options,
                            result: &result,
                        },
                    )
                }
                4 => {
                    let id = checker
                        .pending_ids()
                        .next()
                        .unwrap_or(RequestId(uuid::Uuid::nil()));
                    let result = pool.cancel(now, id);
                    checker.observe_call(now, Call::Cancel { id, result })
                }
                5 if rng.u8(..10) == 0 => {
                    pool.close(now);
                    checker.observe_call(now, Call::Close)
                }
                6 | 7 => {
                    now += Duration::from_millis(rng.u64(0..=8_000));
                    pool.handle_timeout(now);
                    checker.observe_call(now, Call::Timeout)
                }
                _ => {
                    let mut conn = conns[rng.usize(..conns.len())];
                    if rng.u8(..10) == 0 {
                        conn.generation += rng.u32(0..=2);
                    }
                    let reply;
                    let pong_payload = rng.u64(0..4).to_be_bytes();
                    let input = match rng.u8(..9) {
                        0 => Input::Connected { conn },
                        1 => Input::ConnectFailed {
                            conn,
                            error: if rng.bool() {
                                DialError::Rejected { status: 401 }
                            } else {
                                DialError::Network("refused".into())
                            },
                        },
                        2 | 3 => {
                            let id = frames
                                .get(rng.usize(..frames.len().max(1)))
                                .and_then(|f| serde_json::from_str::<serde_json::Value>(f).ok())
                                .and_then(|v| v["id"].as_str().map(str::to_owned))
                                .unwrap_or_default();
                            reply = match rng.u8(..3) {
                                0 => format!(r#"{{"type":"success","replyTo":"{id}"}}"#),
                                1 => format!(r#"{{"type":"error","id":"{id}"}}"#),
                                _ => "garbage".to_owned(),
                            };
                            Input::Text { conn, text: &reply }
                        }
                        4 => Input::Binary { conn, len: 3 },
                        5 => Input::Pong {
                            conn,
                            payload: &pong_payload,
                        },
                        6 => Input::Flushed {
                            conn,
                            writes: rng.u64(0..=12),
                        },
                        7 => Input::WriteFailed {
                            conn,
                            error: "x".into(),
                        },
                        _ => Input::Closed {
                            conn,
                            reason: CloseReason::Eof,
                        },
                    };
                    pool.handle_input(now, input.clone());
                    checker.observe_call(now, Call::Input(&input))
                }
            };
            let sink = |o: &Output| match o {
                Output::Dial { conn } => conns.push(*conn),
                Output::Transmit { frame, .. } => frames.push(frame.clone()),
                _ => {}
            };
            if let Err(v) = r.and_then(|()| checker.drain(&mut pool, sink)) {
                fail(step, &v);
            }
        }
    }
}

/// The spool's crash simulation: every seed crashes and restarts processes (and closes some)
/// and checks that every accepted message ends or stays in the spool, across every crash.
/// `UFSOCK_SIM_SEEDS` / `UFSOCK_SIM_FIRST` / `UFSOCK_SIM_SEED` select seeds as for `sweep`.
#[test]
fn spool_crash_sweep() {
    let seeds: Vec<u64> = match env_u64("UFSOCK_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("UFSOCK_SIM_FIRST").unwrap_or(0);
            let n = env_u64("UFSOCK_SIM_SEEDS").unwrap_or(500);
            (first..first + n).collect()
        }
    };
    let (mut crashes, mut closes, mut replayed, mut failures) = (0u64, 0u64, 0u64, Vec::new());
    for &seed in &seeds {
        match sim::spool::run_crashes(seed, Instant::now()) {
            Ok(r) => {
                crashes += u64::from(r.crashes);
                closes += u64::from(r.closes);
                replayed += r.replayed;
            }
            Err(e) => {
                eprintln!("{e}");
                failures.push(seed);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "spool sweep: {} seeds, {crashes} crashes, {closes} closes, {replayed} replayed",
        seeds.len()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    assert!(
        crashes > seeds.len() as u64 && replayed > 0 && closes > 0,
        "the sweep must crash, close and replay"
    );
}

#[test]
fn spool_crash_runs_replay_exactly() {
    let a = sim::spool::run_crashes(11, Instant::now()).unwrap();
    let b = sim::spool::run_crashes(11, Instant::now()).unwrap();
    assert_eq!(a, b);
}
