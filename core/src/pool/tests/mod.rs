//! Unit tests of the pool's behaviours, each driven in virtual time: the shared harness
//! here, the tests in one file per behaviour, named after the pool file they test.

use std::time::{Duration, Instant};

use serde_json::json;

use super::AVAILABILITY_HOLD;
use crate::config::{Config, ConfigBuilder};
use crate::frame::Outgoing;
use crate::Pool;
use crate::{
    Availability, CloseReason, ConnId, DialError, DisconnectReason, DropReason, Event, Input, Outcome,
    Output, RequestError, RequestFailure, RequestId, RequestOptions, SendRefusal, SlotState,
};

mod availability;
mod close;
mod counters;
mod delivery;
mod liveness;
mod outbox;
mod pending;
mod rotation;
mod select;
mod slot;
mod spool;

const SEC: Duration = Duration::from_secs(1);

/// The sequence number of a ping's payload (after the connection's random token).
fn ping_seq(payload: &[u8; 16]) -> u64 {
    u64::from_be_bytes(payload[8..].try_into().expect("8 bytes"))
}

/// `outs`, which must all be pings, as (connection, sequence number).
fn only_pings(outs: Vec<Output>) -> Vec<(ConnId, u64)> {
    outs.into_iter()
        .map(|o| match o {
            Output::Ping { conn, payload } => (conn, ping_seq(&payload)),
            other => panic!("expected only pings, got {other:?}"),
        })
        .collect()
}

struct H {
    pool: Pool,
    t0: Instant,
    now: Instant,
    out: Vec<Output>,
}

impl H {
    fn new(b: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> H {
        let cfg = b(Config::builder("ws://127.0.0.1:1/ws", "key").backoff_jitter(0.0))
            .build()
            .unwrap();
        let t0 = Instant::now();
        H {
            pool: Pool::new(cfg, 7, t0),
            t0,
            now: t0,
            out: Vec::new(),
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut v = Vec::new();
        while let Some(o) = self.pool.poll_output() {
            v.push(o);
        }
        if let Some(t) = self.pool.poll_timeout() {
            assert!(t >= self.now, "poll_timeout in the past");
        }
        self.out.extend(v.iter().cloned());
        v
    }

    fn at(&mut self, d: Duration) {
        self.now = self.t0 + d;
        self.pool.handle_timeout(self.now);
    }

    fn input(&mut self, i: Input<'_>) -> Vec<Output> {
        self.pool.handle_input(self.now, i);
        self.drain()
    }

    /// The peer answers the latest ping written on `c` (an empty pong if none was).
    fn pong(&mut self, c: ConnId) -> Vec<Output> {
        let payload = self
            .out
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::Ping { conn, payload } if *conn == c => Some(payload.to_vec()),
                _ => None,
            })
            .unwrap_or_default();
        self.input(Input::Pong {
            conn: c,
            payload: &payload,
        })
    }

    /// Drains the outputs and returns the connections they dial.
    fn dials(&mut self) -> Vec<ConnId> {
        self.drain()
            .into_iter()
            .filter_map(|o| match o {
                Output::Dial { conn } => Some(conn),
                _ => None,
            })
            .collect()
    }

    /// Connects every slot and returns their ids.
    fn up(&mut self) -> Vec<ConnId> {
        self.pool.connect(self.now);
        let dials = self.dials();
        for &c in &dials {
            self.input(Input::Connected { conn: c });
        }
        dials
    }

    fn req(&mut self, kind: &str) -> (RequestId, ConnId, String) {
        self.req_with(kind, RequestOptions::default())
    }

    fn req_with(&mut self, kind: &str, options: RequestOptions) -> (RequestId, ConnId, String) {
        let id = self
            .pool
            .request(self.now, Outgoing::new(kind, json!({"a": 1})), options)
            .unwrap();
        let outs = self.drain();
        let (conn, frame) = outs
            .iter()
            .find_map(|o| match o {
                Output::Transmit { conn, frame } => Some((*conn, frame.clone())),
                _ => None,
            })
            .expect("a transmit");
        (id, conn, frame)
    }

    fn reply(&mut self, conn: ConnId, json: &str) -> Vec<Output> {
        self.pool.handle_input(self.now, Input::Text { conn, text: json });
        self.drain()
    }
}

fn completed(outs: &[Output]) -> Vec<(RequestId, Outcome)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Completed { id, outcome } => Some((*id, outcome.clone())),
            _ => None,
        })
        .collect()
}

fn count<F: Fn(&Output) -> bool>(outs: &[Output], f: F) -> usize {
    outs.iter().filter(|o| f(o)).count()
}

/// Events of one kind, in order.
fn events(outs: &[Output]) -> Vec<Event> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// Fails every dial of `slot` (answering each with `error`) until the slot rests; returns the
/// instant it rested. Dials come at the backoff schedule (jitter 0).
fn fail_until_resting(h: &mut H, slot: u16, error: DialError) {
    for _ in 0..100 {
        if h.pool.slot_state(slot) == Some(SlotState::Exhausted) {
            return;
        }
        let dial = h.out.iter().rev().find_map(|o| match o {
            Output::Dial { conn } if conn.slot == slot => Some(*conn),
            _ => None,
        });
        if let Some(conn) = dial {
            if h.pool.slot_state(slot) == Some(SlotState::Dialing) {
                h.input(Input::ConnectFailed {
                    conn,
                    error: error.clone(),
                });
                continue;
            }
        }
        let next = h.pool.poll_timeout().expect("a backoff deadline");
        h.now = next;
        h.pool.handle_timeout(next);
        h.drain();
        // Keep the open connections alive meanwhile.
        for s in 0..h.pool.config().pool_size() {
            if let Some(c) = h.pool.open_conn(s) {
                h.pong(c);
                let issued = h.pool.stats().pings;
                h.input(Input::Flushed {
                    conn: c,
                    writes: issued + 100,
                });
            }
        }
    }
    panic!("slot {slot} never rested");
}

#[test]
fn pool_is_send_and_sync() {
    // An embedder may keep the pool behind any lock, or share it for its getters.
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
}
