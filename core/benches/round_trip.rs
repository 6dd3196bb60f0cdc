//! The core's cost per request, next to a baseline of only the unavoidable work.
//!
//! `core/request_round_trip/N` drives one request through the pool: `request` → drain the
//! `Transmit` → `handle_input` with the reply text → drain the `Completed`, reading
//! `poll_timeout` after each drain (the drain rule), with `N` other requests pending.
//! `baseline/request_round_trip/N` does what any client must: draw a uuid, serialize the
//! message with it, insert a map entry, parse the same reply text into a struct (its payload
//! kept raw, as the core keeps it), parse its
//! `replyTo` back into a uuid, remove the entry. `send` and `baseline/send` compare the
//! fire-and-forget path with serializing alone.
//!
//! Run: `cargo bench -p usageflow-socket-core --bench round_trip -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use usageflow_socket_core::{Config, ConnId, Input, Outgoing, Output, Pool, RequestOptions};
use uuid::Uuid;

const POOL_SIZE: u16 = 10;
const HOUR: Duration = Duration::from_secs(3600);
/// Writes between two `Flushed` reports (the adapter's job; amortized, a few ns per call).
const FLUSH_EVERY: u32 = 256;

fn message() -> Outgoing {
    Outgoing::new(
        "request_for_allocation",
        json!({"alias": "ledger-1", "amount": 1.0, "metadata": {"route": "/v1/items", "method": "GET"}}),
    )
}

/// The reply the server sends, with a 36-byte hole for the request id.
const REPLY_HEAD: &str =
    r#"{"type":"success","payload":{"allocationId":"a1b2c3","alias":"ledger-1","amount":1.0},"replyTo":""#;
const REPLY_TAIL: &str = r#""}"#;

struct Reply {
    text: String,
}

impl Reply {
    fn new() -> Reply {
        Reply {
            text: format!("{REPLY_HEAD}{}{REPLY_TAIL}", Uuid::nil().hyphenated()),
        }
    }

    /// Writes `id` into the hole: the simulated server's work, the same in core and baseline.
    fn with_id(&mut self, id: &Uuid) -> &str {
        let mut buf = Uuid::encode_buffer();
        let s = id.hyphenated().encode_lower(&mut buf);
        self.text
            .replace_range(REPLY_HEAD.len()..REPLY_HEAD.len() + 36, s);
        &self.text
    }
}

/// A connected pool with `pending` requests waiting (spread evenly over the connections).
struct Core {
    pool: Pool,
    now: Instant,
    conns: Vec<ConnId>,
    writes: u32,
    /// Barrier pings written and not yet answered.
    pings: Vec<(ConnId, [u8; 16])>,
}

impl Core {
    fn new(pending: usize) -> Core {
        let per_conn = (pending / usize::from(POOL_SIZE)) as u32 + 16;
        let cfg = Config::builder("ws://127.0.0.1:9000/ws", "bench-key")
            .pool_size(POOL_SIZE)
            .max_in_flight(per_conn)
            .request_timeout(HOUR)
            .ping_period(HOUR - Duration::from_secs(1))
            .pong_wait(HOUR)
            .write_wait(HOUR)
            .build()
            .expect("valid config");
        let now = Instant::now();
        let mut pool = Pool::new(cfg, 1, now);
        let conns = usageflow_socket_core::sim::connect_all(&mut pool, now);
        let mut core = Core {
            pool,
            now,
            conns,
            writes: 0,
            pings: Vec::new(),
        };
        for _ in 0..pending {
            core.pool
                .request(now, message(), RequestOptions::default())
                .expect("room for every pending request");
            while core.pool.poll_output().is_some() {}
            core.maybe_flush();
        }
        assert_eq!(core.pool.pending_len(), pending);
        core
    }

    /// Reports every write flushed now and then, as an adapter would.
    fn maybe_flush(&mut self) {
        self.writes += 1;
        if self.writes % FLUSH_EVERY == 0 {
            for &conn in &self.conns {
                self.pool.handle_input(
                    self.now,
                    Input::Flushed {
                        conn,
                        writes: u64::MAX,
                    },
                );
                while self.pool.poll_output().is_some() {}
            }
            // The server answers the barriers: their pongs confirm the messages.
            for (conn, payload) in std::mem::take(&mut self.pings) {
                self.pool.handle_input(
                    self.now,
                    Input::Pong {
                        conn,
                        payload: &payload,
                    },
                );
                while let Some(o) = self.pool.poll_output() {
                    if let Output::Ping { conn, payload } = o {
                        self.pings.push((conn, payload));
                    }
                }
            }
        }
    }

    fn round_trip(&mut self, msg: Outgoing, reply: &mut Reply) {
        let id = self
            .pool
            .request(self.now, msg, RequestOptions::default())
            .expect("accepted");
        let mut conn = None;
        while let Some(o) = self.pool.poll_output() {
            if let Output::Transmit { conn: c, frame } = o {
                conn = Some(c);
                black_box(frame);
            }
        }
        black_box(self.pool.poll_timeout());
        let conn = conn.expect("a transmit");
        let text = reply.with_id(&id.0);
        self.pool.handle_input(self.now, Input::Text { conn, text });
        let mut done = false;
        while let Some(o) = self.pool.poll_output() {
            if let Output::Completed { outcome, .. } = o {
                done = true;
                black_box(outcome);
            }
        }
        black_box(self.pool.poll_timeout());
        assert!(done);
        self.maybe_flush();
    }

    fn send(&mut self, msg: Outgoing) {
        self.pool.send(self.now, msg).expect("accepted");
        while let Some(o) = self.pool.poll_output() {
            if let Output::Ping { conn, payload } = o {
                self.pings.push((conn, payload));
            }
            black_box(o);
        }
        black_box(self.pool.poll_timeout());
        self.maybe_flush();
    }
}

/// What the baseline serializes: the same wire shape as the core's frames.
#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    payload: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

/// What the baseline parses the reply into: the same fields as the core's `Incoming`, the
/// payload kept raw as the core keeps it (the least a client must do).
#[derive(Deserialize)]
#[allow(dead_code)]
struct WireIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "replyTo")]
    reply_to: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// What a minimal client keeps per pending request.
#[allow(dead_code)]
struct Entry {
    slot: u16,
    deadline: Instant,
}

struct Baseline {
    rng: fastrand::Rng,
    map: HashMap<Uuid, Entry>,
    now: Instant,
}

impl Baseline {
    fn new(pending: usize) -> Baseline {
        let mut b = Baseline {
            rng: fastrand::Rng::with_seed(1),
            map: HashMap::new(),
            now: Instant::now(),
        };
        for _ in 0..pending {
            let id = b.uuid();
            b.map.insert(
                id,
                Entry {
                    slot: 0,
                    deadline: b.now + HOUR,
                },
            );
        }
        b
    }

    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.u128(..).to_le_bytes()).into_uuid()
    }

    fn round_trip(&mut self, msg: Outgoing, reply: &mut Reply) {
        let id = self.uuid();
        let mut buf = Uuid::encode_buffer();
        let frame = serde_json::to_string(&WireOut {
            kind: &msg.kind,
            payload: &msg.payload,
            id: Some(id.hyphenated().encode_lower(&mut buf)),
        })
        .unwrap();
        black_box(frame);
        self.map.insert(
            id,
            Entry {
                slot: 0,
                deadline: self.now + HOUR,
            },
        );
        let text = reply.with_id(&id);
        let parsed: WireIn = serde_json::from_str(text).unwrap();
        let key = Uuid::try_parse(parsed.reply_to.as_deref().unwrap()).unwrap();
        let entry = self.map.remove(&key).expect("pending");
        black_box((entry, parsed));
    }

    fn send(&mut self, msg: Outgoing) {
        let frame = serde_json::to_string(&WireOut {
            kind: &msg.kind,
            payload: &msg.payload,
            id: None,
        })
        .unwrap();
        black_box(frame);
    }
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    for pending in [0usize, 10_000] {
        let mut reply = Reply::new();
        let mut core = Core::new(pending);
        g.bench_function(format!("core/request/{pending}"), |b| {
            b.iter_batched(message, |m| core.round_trip(m, &mut reply), BatchSize::SmallInput)
        });
        let mut base = Baseline::new(pending);
        g.bench_function(format!("baseline/request/{pending}"), |b| {
            b.iter_batched(message, |m| base.round_trip(m, &mut reply), BatchSize::SmallInput)
        });
        assert_eq!(
            core.pool.pending_len(),
            pending,
            "round trips leave nothing behind"
        );
    }
    let mut core = Core::new(0);
    g.bench_function("core/send", |b| {
        b.iter_batched(message, |m| core.send(m), BatchSize::SmallInput)
    });
    let mut base = Baseline::new(0);
    g.bench_function("baseline/send", |b| {
        b.iter_batched(message, |m| base.send(m), BatchSize::SmallInput)
    });
    g.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
