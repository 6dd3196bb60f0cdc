//! Unit tests of the pool's behaviours, each driven in virtual time.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::{Config, ConfigBuilder};
use crate::frame::Outgoing;
use crate::io::*;
use crate::Pool;

const SEC: Duration = Duration::from_secs(1);

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

#[test]
fn correlation_reply_to_then_id() {
    let mut h = H::new(|b| b.pool_size(1));
    h.up();
    let (a, conn, frame) = h.req("x");
    let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(v["id"], a.to_string());
    // replyTo wins over a different id.
    let outs = h.reply(
        conn,
        &format!(r#"{{"type":"success","replyTo":"{a}","id":"other"}}"#),
    );
    assert!(matches!(&completed(&outs)[..], [(id, Outcome::Reply(_))] if *id == a));
    // id alone when replyTo is absent or empty.
    let (b, conn, _) = h.req("x");
    let outs = h.reply(conn, &format!(r#"{{"type":"success","replyTo":"","id":"{b}"}}"#));
    assert!(matches!(&completed(&outs)[..], [(id, Outcome::Reply(_))] if *id == b));
    // A duplicate is an orphan: counted, surfaced, connection stays up.
    let outs = h.reply(conn, &format!(r#"{{"type":"success","replyTo":"{b}"}}"#));
    assert!(completed(&outs).is_empty());
    assert_eq!(count(&outs, |o| matches!(o, Output::Unsolicited { .. })), 1);
    let st = h.pool.stats();
    assert_eq!((st.replies, st.orphan_replies, st.open_connections), (2, 1, 1));
}

#[test]
fn out_of_order_replies_and_denials() {
    let mut h = H::new(|b| b.pool_size(1));
    h.up();
    let (a, conn, _) = h.req("x");
    let (b, _, _) = h.req("x");
    let outs = h.reply(
        conn,
        &format!(r#"{{"type":"Error","replyTo":"{b}","message":"no"}}"#),
    );
    assert!(matches!(&completed(&outs)[..], [(id, Outcome::Denied(_))] if *id == b));
    let outs = h.reply(
        conn,
        &format!(r#"{{"type":"success","error":"limit","replyTo":"{a}"}}"#),
    );
    assert!(
        matches!(&completed(&outs)[..], [(id, Outcome::Denied(f))] if *id == a && f.denial_text() == "limit")
    );
    assert_eq!(h.pool.stats().denials, 2);
}

#[test]
fn garbage_and_binary_are_skipped_connection_stays() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    for bad in ["not json", "[1]", r#"{"payload":1}"#] {
        let outs = h.reply(c, bad);
        assert_eq!(
            count(&outs, |o| matches!(o, Output::Event(Event::FrameSkipped { .. }))),
            1
        );
    }
    h.input(Input::Binary { conn: c, len: 3 });
    let st = h.pool.stats();
    assert_eq!((st.skipped_frames, st.open_connections), (4, 1));
}

#[test]
fn timeout_at_deadline_and_per_call_override() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    let (a, _, _) = h.req("x");
    let b = h
        .pool
        .request(
            h.now,
            Outgoing::new("x", json!(null)),
            RequestOptions::timeout(Duration::from_millis(500)),
        )
        .unwrap();
    h.drain();
    h.at(Duration::from_millis(499));
    assert!(completed(&h.drain()).is_empty());
    h.at(Duration::from_millis(500));
    assert_eq!(
        completed(&h.drain()),
        vec![(b, Outcome::Failed(RequestFailure::Timeout))]
    );
    h.at(Duration::from_millis(1999));
    assert!(completed(&h.drain()).is_empty());
    h.at(2 * SEC);
    assert_eq!(
        completed(&h.drain()),
        vec![(a, Outcome::Failed(RequestFailure::Timeout))]
    );
    // A late reply is an orphan.
    let outs = h.reply(c, &format!(r#"{{"type":"success","replyTo":"{a}"}}"#));
    assert!(completed(&outs).is_empty());
    assert!(h.pool.stats().requests_conserved());
}

#[test]
fn connection_loss_fails_pending_at_once_and_reconnects_once() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    let (a, _, _) = h.req("x");
    h.at(Duration::from_millis(100));
    let outs = h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    assert!(
        matches!(&completed(&outs)[..], [(id, Outcome::Failed(RequestFailure::ConnectionLost(_)))] if *id == a)
    );
    assert_eq!(
        count(
            &outs,
            |o| matches!(o, Output::Event(Event::ReconnectScheduled { attempt: 0, delay, .. }) if *delay == 5 * SEC)
        ),
        1
    );
    // A second report of the same close changes nothing.
    let outs = h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    assert!(outs.is_empty());
    assert_eq!(h.pool.stats().stale_inputs, 1);
    h.at(Duration::from_millis(5099));
    assert_eq!(count(&h.drain(), |o| matches!(o, Output::Dial { .. })), 0);
    h.at(Duration::from_millis(5100));
    let outs = h.drain();
    assert_eq!(
        count(
            &outs,
            |o| matches!(o, Output::Dial { conn } if conn.slot == 0 && conn.generation == 1)
        ),
        1
    );
    assert_eq!(h.pool.stats().reconnects, 1);
}

#[test]
fn selection_fewest_pending_with_round_robin_ties() {
    let mut h = H::new(|b| b.pool_size(3));
    h.up();
    let mut slots = Vec::new();
    for _ in 0..6 {
        let (_, c, _) = h.req("x");
        slots.push(c.slot);
    }
    assert_eq!(slots, vec![0, 1, 2, 0, 1, 2]);
    // Complete two on slot 1: it becomes the least busy.
    let ids: Vec<(RequestId, ConnId)> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Transmit { conn, frame } => {
                let v: serde_json::Value = serde_json::from_str(frame).ok()?;
                Some((RequestId(v["id"].as_str()?.parse().ok()?), *conn))
            }
            _ => None,
        })
        .collect();
    for (id, c) in ids.iter().filter(|(_, c)| c.slot == 1) {
        h.reply(*c, &format!(r#"{{"type":"success","replyTo":"{id}"}}"#));
    }
    let (_, c, _) = h.req("x");
    assert_eq!(c.slot, 1);
    assert_eq!(h.pool.stats().pending_per_slot, vec![2, 1, 2]);
}

#[test]
fn affinity_breaks_ties_only() {
    let mut h = H::new(|b| b.pool_size(3));
    h.up();
    let lean = |slot| RequestOptions {
        affinity: Some(slot),
        ..RequestOptions::default()
    };
    // All idle: the preferred slot wins the tie, again and again while it stays tied.
    assert_eq!(h.req_with("x", lean(2)).1.slot, 2);
    // Slot 2 now has one pending, the others none: fewest pending wins over the preference.
    assert_eq!(h.req_with("x", lean(2)).1.slot, 0);
    assert_eq!(h.req_with("x", lean(2)).1.slot, 1);
    // One each: tied again, slot 2 wins; a slot beyond the pool is taken modulo its size.
    assert_eq!(h.req_with("x", lean(2)).1.slot, 2);
    assert_eq!(h.req_with("x", lean(3)).1.slot, 0);
    assert_eq!(h.pool.stats().pending_per_slot, vec![2, 1, 2]);
    // Preferred picks leave the round-robin alone: it goes on from its own last pick.
    let mut h = H::new(|b| b.pool_size(3));
    h.up();
    assert_eq!(h.req("x").1.slot, 0);
    assert_eq!(h.req_with("x", lean(1)).1.slot, 1);
    assert_eq!(h.req_with("x", lean(1)).1.slot, 2);
    assert_eq!(h.req("x").1.slot, 1);
    // A preferred slot that is down is skipped.
    let mut h = H::new(|b| b.pool_size(2));
    let conns = h.up();
    h.input(Input::Closed {
        conn: conns[1],
        reason: CloseReason::Eof,
    });
    assert_eq!(h.req_with("x", lean(1)).1.slot, 0);
}

#[test]
fn in_flight_cap_gives_backpressure() {
    let mut h = H::new(|b| b.pool_size(2).max_in_flight(2));
    h.up();
    for _ in 0..4 {
        h.req("x");
    }
    let err = h
        .pool
        .request(h.now, Outgoing::new("x", json!(null)), RequestOptions::default());
    assert_eq!(err, Err(RequestError::Backpressure { max_in_flight: 2 }));
    assert_eq!(h.pool.stats().refused_backpressure, 1);
}

#[test]
fn not_connected_fails_fast() {
    let mut h = H::new(|b| b.pool_size(2));
    let err = h
        .pool
        .request(h.now, Outgoing::new("x", json!(null)), RequestOptions::default());
    assert_eq!(err, Err(RequestError::NotConnected));
}

#[test]
fn handshake_deadline_then_backoff_schedule_then_exhausted_then_rearm() {
    let mut h = H::new(|b| b.pool_size(1));
    h.pool.connect(h.now);
    let outs = h.drain();
    let c0 = match outs[0] {
        Output::Dial { conn } => conn,
        _ => panic!("dial first"),
    };
    h.at(10 * SEC);
    let outs = h.drain();
    assert!(outs.contains(&Output::Disconnect {
        conn: c0,
        graceful: false
    }));
    assert!(outs.contains(&Output::Event(Event::ConnectFailed {
        conn: c0,
        error: DialError::Timeout
    })));
    // Attempts 0..5 with delays 5, 10, 20, 40, 60, each dial failing at once.
    let mut t = 10 * SEC;
    let mut delays = vec![];
    for d in [5, 10, 20, 40, 60] {
        let sched = h.out.iter().rev().find_map(|o| match o {
            Output::Event(Event::ReconnectScheduled { delay, .. }) => Some(*delay),
            _ => None,
        });
        delays.push(sched.unwrap().as_secs());
        t += d * SEC;
        h.at(t - Duration::from_millis(1));
        assert_eq!(
            count(&h.drain(), |o| matches!(o, Output::Dial { .. })),
            0,
            "no dial before the delay"
        );
        h.at(t);
        let outs = h.drain();
        let conn = outs
            .iter()
            .find_map(|o| match o {
                Output::Dial { conn } => Some(*conn),
                _ => None,
            })
            .expect("dial at the delay");
        h.input(Input::ConnectFailed {
            conn,
            error: DialError::Rejected { status: 401 },
        });
    }
    assert_eq!(delays, vec![5, 10, 20, 40, 60]);
    assert!(h
        .out
        .iter()
        .any(|o| matches!(o, Output::Event(Event::AttemptsExhausted { slot: 0 }))));
    assert_eq!(h.pool.slot_state(0), Some(SlotState::Exhausted));
    assert_eq!(h.pool.stats().rejections, 5);
    assert_eq!(h.pool.poll_timeout(), None);
    // A send re-arms the slot at once.
    h.pool
        .send(h.now, Outgoing::new("report_call_chain", json!({})))
        .unwrap();
    assert_eq!(count(&h.drain(), |o| matches!(o, Output::Dial { .. })), 1);
}

#[test]
fn no_ping_queues_behind_an_unflushed_ping() {
    // Pings every second, writes may take half an hour: a stuck socket must not collect a ping a
    // second in the adapter's queue.
    let mut h = H::new(|b| {
        b.pool_size(1)
            .ping_period(SEC)
            .pong_wait(Duration::from_secs(3600))
            .write_wait(Duration::from_secs(1800))
    });
    let c = h.up()[0];
    h.at(SEC);
    assert_eq!(h.drain(), vec![Output::Ping { conn: c }]);
    // Never flushed: no second ping, and no timer every second either.
    h.at(2 * SEC);
    assert!(h.drain().is_empty());
    assert_eq!(
        h.pool.poll_timeout(),
        Some(h.t0 + SEC + Duration::from_secs(1800))
    );
    assert_eq!(h.pool.stats().pings, 1);
    // Once it is flushed, pinging resumes at the deferred time.
    h.input(Input::Flushed { conn: c, writes: 1 });
    h.at(SEC + Duration::from_secs(1800));
    assert_eq!(h.drain(), vec![Output::Ping { conn: c }]);
    assert_eq!(h.pool.stats().pings, 2);
}

#[test]
fn liveness_pings_and_read_deadline() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    h.at(30 * SEC);
    assert_eq!(h.drain(), vec![Output::Ping { conn: c }]);
    h.input(Input::Flushed { conn: c, writes: 1 });
    h.input(Input::Pong { conn: c });
    h.at(60 * SEC);
    assert_eq!(h.drain(), vec![Output::Ping { conn: c }]);
    h.input(Input::Flushed { conn: c, writes: 2 });
    // Last sign of life at 30 s: dead at 90 s, not before.
    h.at(Duration::from_millis(89_999));
    assert!(h.drain().is_empty());
    h.at(90 * SEC);
    let outs = h.drain();
    assert!(outs.contains(&Output::Disconnect {
        conn: c,
        graceful: false
    }));
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(Event::Disconnected {
            reason: DisconnectReason::ReadTimeout,
            ..
        })
    )));
    assert_eq!(
        count(&outs, |o| matches!(
            o,
            Output::Event(Event::ReconnectScheduled { .. })
        )),
        1
    );
}

#[test]
fn write_deadline_cleared_by_flush_never_fails_later_writes() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    h.req("x");
    h.input(Input::Flushed { conn: c, writes: 1 });
    // Long after, with pings flushed along the way, writes still go out on the same conn.
    for k in 1..=4u64 {
        h.at(30 * SEC * k as u32);
        h.drain();
        h.input(Input::Flushed {
            conn: c,
            writes: 1 + k,
        });
        h.input(Input::Pong { conn: c });
    }
    h.pool.send(h.now, Outgoing::new("m", json!(null))).unwrap();
    assert!(matches!(h.drain()[..], [Output::Transmit { conn, .. }] if conn == c));
    // Now a write that never flushes: dead after write_wait.
    let t = 120 * SEC;
    h.at(t + Duration::from_millis(9_999));
    assert!(h.drain().is_empty());
    h.at(t + 10 * SEC);
    let outs = h.drain();
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(Event::Disconnected {
            reason: DisconnectReason::WriteTimeout,
            ..
        })
    )));
}

#[test]
fn outbox_in_order_on_connect_full_refuses_ttl_expires() {
    let mut h = H::new(|b| b.pool_size(1).outbox_capacity(2).outbox_ttl(10 * SEC));
    for i in 0..2 {
        h.pool.send(h.now, Outgoing::new("m", json!(i))).unwrap();
    }
    let err = h.pool.send(h.now, Outgoing::new("m", json!(2))).unwrap_err();
    assert_eq!(err.into_message().payload, json!(2));
    h.drain();
    let c = h.up()[0];
    let frames: Vec<serde_json::Value> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Transmit { frame, .. } => serde_json::from_str(frame).ok(),
            _ => None,
        })
        .collect();
    assert_eq!(
        frames,
        vec![json!({"type":"m","payload":0}), json!({"type":"m","payload":1})]
    );
    h.input(Input::Flushed { conn: c, writes: 2 });
    let st = h.pool.stats().sends_by_type["m"].clone();
    assert_eq!((st.sends, st.sent, st.dropped, st.queued), (3, 2, 1, 0));
    assert!(st.conserved());
    // TTL: a message queued while down expires.
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    h.pool.send(h.now, Outgoing::new("m", json!(3))).unwrap();
    h.at(Duration::from_millis(9_999));
    h.drain();
    assert_eq!(h.pool.stats().sends.expired, 0);
    h.at(10 * SEC);
    let outs = h.drain();
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(Event::MessageDropped {
            reason: DropReason::Expired,
            count: 1,
            ..
        })
    )));
    let st = h.pool.stats().sends;
    assert_eq!((st.sends, st.expired), (4, 1));
    assert!(st.conserved());
}

#[test]
fn unflushed_sends_are_lost_with_their_connection() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    for _ in 0..3 {
        h.pool.send(h.now, Outgoing::new("m", json!(null))).unwrap();
    }
    h.drain();
    h.input(Input::Flushed { conn: c, writes: 1 });
    h.input(Input::WriteFailed {
        conn: c,
        error: "broken pipe".into(),
    });
    let st = h.pool.stats().sends;
    assert_eq!((st.sends, st.sent, st.lost, st.unflushed), (3, 1, 2, 0));
    assert!(st.conserved());
}

#[test]
fn close_is_idempotent_fails_pending_and_closes_normally() {
    let mut h = H::new(|b| b.pool_size(2));
    let conns = h.up();
    let (a, c, _) = h.req("x");
    h.input(Input::Flushed { conn: c, writes: 1 });
    h.pool.close(h.now);
    let outs = h.drain();
    assert_eq!(
        completed(&outs),
        vec![(a, Outcome::Failed(RequestFailure::Closed))]
    );
    for &conn in &conns {
        assert!(outs.contains(&Output::Disconnect { conn, graceful: true }));
    }
    h.pool.close(h.now);
    assert!(h.drain().is_empty());
    // Closed once every close handshake finished; one peer answers, the other lingers.
    assert!(!h.pool.is_closed());
    h.input(Input::Closed {
        conn: conns[0],
        reason: CloseReason::Frame {
            code: 1000,
            reason: String::new(),
        },
    });
    assert!(!h.pool.is_closed());
    h.at(Duration::from_millis(9_999));
    assert!(h.drain().is_empty());
    h.at(10 * SEC);
    assert_eq!(
        h.drain(),
        vec![Output::Disconnect {
            conn: conns[1],
            graceful: false
        }]
    );
    assert!(h.pool.is_closed());
    assert_eq!(
        h.pool
            .request(h.now, Outgoing::new("x", json!(null)), RequestOptions::default()),
        Err(RequestError::Closed)
    );
    assert!(matches!(
        h.pool.send(h.now, Outgoing::new("x", json!(null))),
        Err(SendError::Closed(_))
    ));
    h.at(3600 * SEC);
    assert!(!h.drain().iter().any(|o| matches!(o, Output::Dial { .. })));
    assert!(h.pool.stats().requests_conserved());
}

#[test]
fn close_with_drain_lets_replies_arrive() {
    let mut h = H::new(|b| b.pool_size(1).close_drain(SEC));
    let c = h.up()[0];
    let (a, _, _) = h.req("x");
    let (b, _, _) = h.req("x");
    h.input(Input::Flushed { conn: c, writes: 2 });
    h.pool.close(h.now);
    assert!(completed(&h.drain()).is_empty());
    let outs = h.reply(c, &format!(r#"{{"type":"success","replyTo":"{a}"}}"#));
    assert!(matches!(&completed(&outs)[..], [(id, Outcome::Reply(_))] if *id == a));
    h.at(SEC);
    let outs = h.drain();
    assert_eq!(
        completed(&outs),
        vec![(b, Outcome::Failed(RequestFailure::Closed))]
    );
    assert!(outs.contains(&Output::Disconnect {
        conn: c,
        graceful: true
    }));
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    assert!(h.pool.is_closed());
}

#[test]
fn stale_generation_is_ignored() {
    let mut h = H::new(|b| b.pool_size(1).backoff_base(Duration::ZERO));
    let c = h.up()[0];
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    // Base 0: the reconnect dials at once, generation 1.
    let new = ConnId {
        slot: 0,
        generation: 1,
    };
    assert!(h.out.contains(&Output::Dial { conn: new }));
    h.input(Input::Connected { conn: new });
    let before = h.pool.stats().stale_inputs;
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    h.input(Input::Text { conn: c, text: "{}" });
    assert_eq!(h.pool.stats().stale_inputs, before + 2);
    assert_eq!(h.pool.slot_state(0), Some(SlotState::Open));
    // A generation never dialed is stale too.
    h.input(Input::Connected {
        conn: ConnId {
            slot: 0,
            generation: 9,
        },
    });
    assert_eq!(h.pool.stats().stale_inputs, before + 3);
}

#[test]
fn cancel_completes_once() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    let (a, _, _) = h.req("x");
    assert!(h.pool.cancel(h.now, a));
    assert_eq!(
        completed(&h.drain()),
        vec![(a, Outcome::Failed(RequestFailure::Cancelled))]
    );
    assert!(!h.pool.cancel(h.now, a));
    let outs = h.reply(c, &format!(r#"{{"type":"success","replyTo":"{a}"}}"#));
    assert!(completed(&outs).is_empty());
    assert_eq!(h.pool.stats().pending_per_slot, vec![0]);
}

#[test]
fn idempotent_request_is_resent_once_on_another_connection() {
    // The allocationId makes it idempotent only because the server deduplicates on it.
    let mut h = H::new(|b| b.pool_size(2).server_deduplicates_allocation_ids(true));
    h.up();
    let msg = Outgoing::new(
        "use_allocation",
        json!({"alias":"a","amount":1.0,"allocationId":"k"}),
    );
    let a = h.pool.request(h.now, msg, RequestOptions::default()).unwrap();
    let first = h.drain();
    let c = first
        .iter()
        .find_map(|o| match o {
            Output::Transmit { conn, .. } => Some(*conn),
            _ => None,
        })
        .unwrap();
    let outs = h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    assert!(completed(&outs).is_empty(), "re-sent, not failed");
    let other = outs
        .iter()
        .find_map(|o| match o {
            Output::Transmit { conn, .. } => Some(*conn),
            _ => None,
        })
        .expect("re-sent");
    assert_ne!(other.slot, c.slot);
    // Its second connection dies too: now it fails.
    let outs = h.input(Input::Closed {
        conn: other,
        reason: CloseReason::Eof,
    });
    assert!(
        matches!(&completed(&outs)[..], [(id, Outcome::Failed(RequestFailure::ConnectionLost(_)))] if *id == a)
    );
    assert_eq!(h.pool.stats().resent, 1);
    // A plain request is never re-sent.
    let mut h = H::new(|b| b.pool_size(2));
    h.up();
    let (_, c, _) = h.req("get_application_policies");
    let outs = h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    assert_eq!(count(&outs, |o| matches!(o, Output::Transmit { .. })), 0);
    assert_eq!(completed(&outs).len(), 1);
}

/// Issue 14, item 3: by default nothing says the server deduplicates on `allocationId`, so a
/// keyed `use_allocation` whose connection dies fails instead of metering twice; a request
/// marked idempotent is still re-sent.
#[test]
fn allocation_id_alone_is_not_resent_by_default() {
    let mut h = H::new(|b| b.pool_size(2));
    h.up();
    let keyed = Outgoing::new(
        "use_allocation",
        json!({"alias":"a","amount":1.0,"allocationId":"k"}),
    );
    h.pool.request(h.now, keyed, RequestOptions::default()).unwrap();
    let c = h
        .drain()
        .iter()
        .find_map(|o| match o {
            Output::Transmit { conn, .. } => Some(*conn),
            _ => None,
        })
        .unwrap();
    let outs = h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    assert_eq!(
        count(&outs, |o| matches!(o, Output::Transmit { .. })),
        0,
        "not re-sent"
    );
    assert!(matches!(
        &completed(&outs)[..],
        [(_, Outcome::Failed(RequestFailure::ConnectionLost(_)))]
    ));
    assert_eq!(h.pool.stats().resent, 0);
    // Marked idempotent by the caller: re-sent.
    let mut h = H::new(|b| b.pool_size(2));
    h.up();
    let (_, c, _) = h.req_with(
        "get_application_policies",
        RequestOptions::default().with_idempotent(true),
    );
    let outs = h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    assert_eq!(
        count(&outs, |o| matches!(o, Output::Transmit { .. })),
        1,
        "re-sent"
    );
    assert_eq!(h.pool.stats().resent, 1);
}

#[test]
fn rotation_opens_new_before_retiring_old() {
    let mut h = H::new(|b| {
        b.pool_size(1)
            .max_connection_age(Some(100 * SEC))
            .backoff_jitter(0.0)
    });
    let c = h.up()[0];
    let a = h
        .pool
        .request(
            h.now,
            Outgoing::new("x", json!(null)),
            RequestOptions::timeout(1000 * SEC),
        )
        .unwrap();
    h.drain();
    h.input(Input::Flushed { conn: c, writes: 1 });
    // Keep the connection alive with pongs until the age (with at most 10% jitter) passes.
    let mut new = None;
    for s in (10..=100).step_by(10) {
        h.at(s * SEC);
        for o in h.drain() {
            match o {
                Output::Dial { conn } => new = Some(conn),
                Output::Ping { .. } | Output::Event(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        h.input(Input::Pong { conn: c });
        let w = h.pool.stats().pings;
        h.input(Input::Flushed {
            conn: c,
            writes: 1 + w,
        });
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("a replacement dial");
    h.input(Input::Connected { conn: new });
    assert_eq!(h.pool.open_conn(0), Some(new));
    // The old connection still answers its pending request, then closes gracefully.
    let outs = h.reply(c, &format!(r#"{{"type":"success","replyTo":"{a}"}}"#));
    assert!(matches!(&completed(&outs)[..], [(_, Outcome::Reply(_))]));
    assert!(outs.contains(&Output::Disconnect {
        conn: c,
        graceful: true
    }));
    let (_, c2, _) = h.req("x");
    assert_eq!(c2, new);
    assert_eq!(h.pool.stats().rotations, 1);
}

#[test]
fn availability_transitions() {
    let mut h = H::new(|b| b.pool_size(2));
    assert_eq!(h.pool.availability(), Availability::Unavailable);
    let conns = h.up();
    // A clean start is available at once.
    assert_eq!(h.pool.availability(), Availability::Available);
    h.input(Input::Closed {
        conn: conns[0],
        reason: CloseReason::Eof,
    });
    assert_eq!(h.pool.availability(), Availability::Degraded);
    h.input(Input::Closed {
        conn: conns[1],
        reason: CloseReason::Eof,
    });
    assert_eq!(h.pool.availability(), Availability::Unavailable);
    // Both reconnect after 5 s: out of Unavailable at once, but back to Available only
    // after 5 s of health (no flapping).
    h.at(5 * SEC);
    let dials = h.dials();
    assert_eq!(dials.len(), 2);
    h.input(Input::Connected { conn: dials[0] });
    assert_eq!(h.pool.availability(), Availability::Degraded);
    h.input(Input::Connected { conn: dials[1] });
    assert_eq!(h.pool.availability(), Availability::Degraded);
    h.at(Duration::from_millis(9_999));
    assert_eq!(h.pool.availability(), Availability::Degraded);
    h.at(10 * SEC);
    assert_eq!(h.pool.availability(), Availability::Available);
}

#[test]
fn same_seed_same_ids() {
    let run = || {
        let mut h = H::new(|b| b.pool_size(1));
        h.up();
        (0..3).map(|_| h.req("x").0).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

/// Found by the simulation: a rejected replacement dial (rotation) was counted as a dial
/// failure but not as a rejection.
#[test]
fn rejected_replacement_dial_counts_as_rejection() {
    let mut h = H::new(|b| b.pool_size(1).max_connection_age(Some(10 * SEC)));
    let c = h.up()[0];
    let mut new = None;
    for s in 1..=10 {
        h.at(s * SEC);
        for o in h.drain() {
            if let Output::Dial { conn } = o {
                new = Some(conn);
            }
        }
        h.input(Input::Pong { conn: c });
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("a replacement dial");
    h.input(Input::ConnectFailed {
        conn: new,
        error: DialError::Rejected { status: 401 },
    });
    let st = h.pool.stats();
    assert_eq!((st.dial_failures, st.rejections), (1, 1));
    assert_eq!(h.pool.open_conn(0), Some(c), "the old connection stays in use");
}

/// Found by the simulation's checker under arbitrary inputs: a repeated `Connected` for an
/// open connection told the adapter to drop that socket while the pool kept using it.
#[test]
fn repeated_connected_does_not_disconnect_a_live_connection() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    let outs = h.input(Input::Connected { conn: c });
    assert!(outs.is_empty(), "{outs:?}");
    assert_eq!(h.pool.open_conn(0), Some(c));
    assert_eq!(h.pool.stats().stale_inputs, 1);
    // A dial the pool gave up on that connects late is still closed.
    h.at(60 * SEC);
    h.drain();
    let late = ConnId {
        slot: 0,
        generation: 0,
    };
    assert_eq!(h.pool.open_conn(0), None, "read deadline passed");
    let outs = h.input(Input::Connected { conn: late });
    assert_eq!(
        outs,
        vec![Output::Disconnect {
            conn: late,
            graceful: false
        }]
    );
}

/// `handle_frame` (decoded by the adapter outside its lock) acts exactly like
/// `handle_input(Text)`: replies complete, bad frames are skipped, stale connections counted.
#[test]
fn handle_frame_matches_handle_input_text() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    let (a, _, _) = h.req("x");
    let text = format!(r#"{{"type":"success","replyTo":"{a}"}}"#);
    h.pool
        .handle_frame(h.now, c, crate::frame::decode(&text, 1 << 20));
    assert!(matches!(&completed(&h.drain())[..], [(id, Outcome::Reply(_))] if *id == a));
    h.pool
        .handle_frame(h.now, c, crate::frame::decode("nope", 1 << 20));
    assert_eq!(
        count(&h.drain(), |o| matches!(
            o,
            Output::Event(Event::FrameSkipped { .. })
        )),
        1
    );
    let stale = ConnId {
        slot: 0,
        generation: 7,
    };
    h.pool
        .handle_frame(h.now, stale, crate::frame::decode(&text, 1 << 20));
    let st = h.pool.stats();
    assert_eq!((st.replies, st.skipped_frames, st.stale_inputs), (1, 1, 1));
}

#[test]
fn pool_is_send_and_sync() {
    // An embedder may keep the pool behind any lock, or share it for its getters.
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
}
