//! Unit tests of the pool's behaviours, each driven in virtual time.

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
    let third = Outgoing::new("m", json!(2));
    let err = h.pool.send(h.now, &third).unwrap_err();
    assert_eq!(err, SendRefusal::OutboxFull);
    // The caller kept the message and gets it back with the reason.
    let back = crate::SendError::from_refusal(err, third).into_message();
    assert_eq!(back.payload, json!(2));
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
        Err(SendRefusal::Closed)
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
    // Every other input about the dead generation counts too (a mutant left these uncounted).
    h.input(Input::Flushed { conn: c, writes: 1 });
    h.input(Input::Pong { conn: c });
    h.input(Input::Ping { conn: c });
    h.input(Input::Binary { conn: c, len: 3 });
    assert_eq!(h.pool.stats().stale_inputs, before + 6);
    let before = before + 4;
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

// ----- issue 14: what a hostile server and a careful reader found -----

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
                h.input(Input::Pong { conn: c });
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

/// Item 1: a resting slot comes back on demand while another slot is open, at most once per
/// backoff cap, with a fresh attempt budget; the pool is not degraded for good.
#[test]
fn resting_slot_is_rearmed_by_demand_while_another_is_open() {
    let mut h = H::new(|b| {
        b.pool_size(2)
            .backoff_attempts(1)
            .ping_period(1000 * SEC)
            .pong_wait(2000 * SEC)
    });
    h.pool.connect(h.now);
    let dials = h.dials();
    h.input(Input::Connected { conn: dials[0] });
    h.input(Input::ConnectFailed {
        conn: dials[1],
        error: DialError::Network("refused".into()),
    });
    fail_until_resting(&mut h, 1, DialError::Network("refused".into()));
    assert_eq!(h.pool.availability(), Availability::Degraded);
    // A request on the open slot re-arms the resting one at once (jitter 0: no spread).
    let rearmed_at = h.now;
    h.out.clear();
    h.req("x");
    let evs = events(&h.out);
    assert!(
        evs.contains(&Event::SlotRearmed {
            slot: 1,
            delay: Duration::ZERO
        }),
        "{evs:?}"
    );
    assert_eq!(h.pool.slot_state(1), Some(SlotState::Dialing));
    assert_eq!(h.pool.stats().rearms, 1);
    // Its budget starts afresh: one retry after failing, then it rests again.
    let again = h.out.iter().find_map(|o| match o {
        Output::Dial { conn } if conn.slot == 1 => Some(*conn),
        _ => None,
    });
    h.input(Input::ConnectFailed {
        conn: again.expect("re-armed dial"),
        error: DialError::Rejected { status: 401 },
    });
    assert_eq!(h.pool.slot_state(1), Some(SlotState::Backoff), "a fresh budget");
    fail_until_resting(&mut h, 1, DialError::Rejected { status: 401 });
    // Within the cap since the last re-arm: demand does not re-arm it, however often.
    let cap = h.pool.config().backoff_cap();
    assert!(h.now < rearmed_at + cap);
    h.req("x");
    for _ in 0..50 {
        h.pool.send(h.now, Outgoing::new("m", json!(null))).unwrap();
    }
    h.drain();
    assert_eq!(h.pool.slot_state(1), Some(SlotState::Exhausted));
    assert_eq!(h.pool.stats().rearms, 1);
    let open = h.pool.open_conn(0).unwrap();
    h.input(Input::Flushed {
        conn: open,
        writes: u64::MAX,
    });
    // Once the cap has passed, the next demand re-arms it; a dial that succeeds brings the
    // pool back to Available (after the hold).
    h.now = rearmed_at + cap;
    h.pool.handle_timeout(h.now);
    h.drain();
    h.pool.send(h.now, Outgoing::new("m", json!(null))).unwrap();
    let dials = h.dials();
    assert_eq!(dials.len(), 1, "re-armed by a send");
    assert_eq!(h.pool.stats().rearms, 2);
    h.input(Input::Connected { conn: dials[0] });
    assert_eq!(h.pool.open_conn(1), Some(dials[0]));
    let t = h.now + AVAILABILITY_HOLD;
    h.now = t;
    h.pool.handle_timeout(t);
    h.drain();
    assert_eq!(h.pool.availability(), Availability::Available);
}

/// Item 1: with jitter, re-armed slots dial at spread instants within the jitter's share of
/// the base delay, not all at once.
#[test]
fn rearm_dials_are_jittered() {
    let mut h = H::new(|b| {
        b.pool_size(8)
            .backoff_attempts(1)
            .backoff_jitter(0.5)
            .backoff_base(4 * SEC)
            .backoff_cap(8 * SEC)
    });
    h.pool.connect(h.now);
    for c in h.dials() {
        h.input(Input::ConnectFailed {
            conn: c,
            error: DialError::Timeout,
        });
    }
    for slot in 0..8 {
        fail_until_resting(&mut h, slot, DialError::Timeout);
    }
    h.out.clear();
    assert_eq!(
        h.pool
            .request(h.now, Outgoing::new("x", json!(null)), RequestOptions::default()),
        Err(RequestError::NotConnected)
    );
    h.drain();
    let delays: Vec<Duration> = events(&h.out)
        .into_iter()
        .filter_map(|e| match e {
            Event::SlotRearmed { delay, .. } => Some(delay),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 8);
    assert!(delays.iter().all(|d| *d <= 2 * SEC), "{delays:?}");
    let mut distinct = delays.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 4, "spread, not one instant: {delays:?}");
    assert_eq!(
        count(&h.out, |o| matches!(o, Output::Dial { .. })),
        0,
        "none at once"
    );
}

/// Item 4: a pool down because every slot's latest dial was refused says so: requests fail
/// with `Rejected`, one `KeyRejected` event, stats carry the status; sends still queue.
#[test]
fn a_rejected_key_is_reported_where_the_caller_looks() {
    let mut h = H::new(|b| b.pool_size(2));
    h.pool.connect(h.now);
    let dials = h.dials();
    h.input(Input::ConnectFailed {
        conn: dials[0],
        error: DialError::Rejected { status: 401 },
    });
    // One slot rejected, the other still dialing: not down because of the key.
    assert_eq!(
        h.pool
            .request(h.now, Outgoing::new("x", json!(null)), RequestOptions::default()),
        Err(RequestError::NotConnected)
    );
    assert_eq!(h.pool.stats().rejected_status, None);
    let outs = h.input(Input::ConnectFailed {
        conn: dials[1],
        error: DialError::Rejected { status: 403 },
    });
    assert_eq!(
        count(&outs, |o| matches!(
            o,
            Output::Event(Event::KeyRejected { status: 403 })
        )),
        1
    );
    let err = h
        .pool
        .request(h.now, Outgoing::new("x", json!(null)), RequestOptions::default());
    assert_eq!(err, Err(RequestError::Rejected { status: 403 }));
    assert_eq!(
        err.unwrap_err().to_string(),
        "the server rejected the API key (HTTP 403)"
    );
    assert_eq!(h.pool.rejection(), Some(403));
    assert_eq!(h.pool.stats().rejected_status, Some(403));
    h.pool.send(h.now, Outgoing::new("m", json!(null))).unwrap();
    assert_eq!(h.pool.outbox_len(), 1, "sends still queue");
    // Later refusals while down: no second event.
    h.at(5 * SEC);
    let retries = h.dials();
    assert_eq!(retries.len(), 2);
    let outs = h.input(Input::ConnectFailed {
        conn: retries[0],
        error: DialError::Rejected { status: 401 },
    });
    assert_eq!(
        count(&outs, |o| matches!(o, Output::Event(Event::KeyRejected { .. }))),
        0
    );
    assert_eq!(h.pool.rejection(), Some(401), "the latest refusal's status");
    // A failure of another kind on one slot: no longer down because of the key.
    h.input(Input::ConnectFailed {
        conn: retries[1],
        error: DialError::Network("refused".into()),
    });
    assert_eq!(h.pool.rejection(), None);
    assert_eq!(
        h.pool
            .request(h.now, Outgoing::new("x", json!(null)), RequestOptions::default()),
        Err(RequestError::NotConnected)
    );
    // A connection clears it for good, and the queued send goes out.
    let st = h.pool.stats();
    assert_eq!((st.rejections, st.dial_failures), (3, 4));
}

/// Item 5: 429 and 5xx are the service being unavailable, not a rejected key: they back off
/// on the schedule, no sooner than the server's Retry-After (bounded by the cap).
#[test]
fn unavailable_status_backs_off_honouring_retry_after() {
    let mut h = H::new(|b| b.pool_size(1));
    h.pool.connect(h.now);
    let d = h.dials()[0];
    let outs = h.input(Input::ConnectFailed {
        conn: d,
        error: DialError::HttpStatus {
            status: 503,
            retry_after: Some(30 * SEC),
        },
    });
    assert!(events(&outs).contains(&Event::ReconnectScheduled {
        slot: 0,
        attempt: 0,
        delay: 30 * SEC
    }));
    let st = h.pool.stats();
    assert_eq!(
        (st.rejections, st.dial_failures, st.rejected_status),
        (0, 1, None)
    );
    h.at(30 * SEC - Duration::from_millis(1));
    assert!(h.dials().is_empty(), "not before Retry-After");
    h.at(30 * SEC);
    let d = h.dials()[0];
    // A Retry-After beyond the cap waits the cap; none waits the schedule (attempt 1: 10 s).
    let outs = h.input(Input::ConnectFailed {
        conn: d,
        error: DialError::HttpStatus {
            status: 429,
            retry_after: Some(3600 * SEC),
        },
    });
    assert!(events(&outs).contains(&Event::ReconnectScheduled {
        slot: 0,
        attempt: 1,
        delay: 60 * SEC
    }));
    h.at(90 * SEC);
    let d = h.dials()[0];
    let outs = h.input(Input::ConnectFailed {
        conn: d,
        error: DialError::HttpStatus {
            status: 500,
            retry_after: None,
        },
    });
    assert!(events(&outs).contains(&Event::ReconnectScheduled {
        slot: 0,
        attempt: 2,
        delay: 20 * SEC
    }));
    assert_eq!(h.pool.rejection(), None);
    assert_eq!(
        h.pool
            .request(h.now, Outgoing::new("x", json!(null)), RequestOptions::default()),
        Err(RequestError::NotConnected)
    );
}

/// Item 6: a rotation's replacement dials follow the backoff schedule and budget; past it
/// the old connection stays in service, and no more dials come.
#[test]
fn rotation_retries_on_the_schedule_then_gives_up() {
    let mut h = H::new(|b| {
        b.pool_size(1)
            .max_connection_age(Some(10 * SEC))
            .backoff_attempts(2)
            .ping_period(1000 * SEC)
            .pong_wait(2000 * SEC)
    });
    let c = h.up()[0];
    let mut dial_times = Vec::new();
    let mut t = Duration::ZERO;
    while t < 900 * SEC {
        t += SEC;
        h.at(t);
        for o in h.drain() {
            if let Output::Dial { conn } = o {
                dial_times.push(t);
                h.input(Input::ConnectFailed {
                    conn,
                    error: DialError::Rejected { status: 401 },
                });
            }
        }
    }
    // The first replacement at the (jittered, 10%) age, then 5 s and 10 s later, then no more.
    assert_eq!(dial_times.len(), 3, "{dial_times:?}");
    assert_eq!(dial_times[1] - dial_times[0], 5 * SEC);
    assert_eq!(dial_times[2] - dial_times[1], 10 * SEC);
    assert!(h
        .out
        .iter()
        .any(|o| matches!(o, Output::Event(Event::RotationAbandoned { slot: 0 }))));
    assert_eq!(
        h.pool.open_conn(0),
        Some(c),
        "the old connection stays in service"
    );
    assert_eq!(h.pool.stats().rejections, 3);
}

/// Item 8: a server's ping is a sign of life like any frame.
#[test]
fn server_ping_pushes_the_read_deadline() {
    let mut h = H::new(|b| b.pool_size(1).ping_period(30 * SEC).pong_wait(60 * SEC));
    let c = h.up()[0];
    h.at(30 * SEC);
    h.drain();
    h.input(Input::Flushed { conn: c, writes: 1 });
    h.at(50 * SEC);
    h.input(Input::Ping { conn: c });
    // No pong at all, but the server pinged at 50 s: alive until 110 s.
    for s in [60, 61, 90, 109] {
        h.at(s * SEC);
        let outs = h.drain();
        assert!(
            !outs.iter().any(|o| matches!(o, Output::Disconnect { .. })),
            "alive at {s} s"
        );
        for o in &outs {
            if let Output::Ping { .. } = o {
                let w = h.pool.stats().pings;
                h.input(Input::Flushed { conn: c, writes: w });
            }
        }
    }
    h.at(110 * SEC);
    assert!(events(&h.drain()).contains(&Event::Disconnected {
        conn: c,
        reason: DisconnectReason::ReadTimeout
    }));
}

/// Item 8: the write deadline belongs to the oldest unflushed write: a partial flush does
/// not restart it.
#[test]
fn write_deadline_follows_the_oldest_unflushed_write() {
    let mut h = H::new(|b| b.pool_size(1).write_wait(10 * SEC).request_timeout(100 * SEC));
    let c = h.up()[0];
    h.req("a");
    h.req("b");
    h.at(2 * SEC);
    h.req("c");
    // Two of three flushed at 8 s: the oldest unflushed was written at 2 s.
    h.at(8 * SEC);
    h.input(Input::Flushed { conn: c, writes: 2 });
    h.at(12 * SEC - Duration::from_millis(1));
    assert!(events(&h.drain()).is_empty());
    h.at(12 * SEC);
    assert!(events(&h.drain()).contains(&Event::Disconnected {
        conn: c,
        reason: DisconnectReason::WriteTimeout
    }));
    // Two written at the same instant, one flushed later: the other's deadline stands.
    let mut h = H::new(|b| b.pool_size(1).write_wait(10 * SEC).request_timeout(100 * SEC));
    let c = h.up()[0];
    h.req("a");
    h.req("b");
    h.at(9 * SEC);
    h.input(Input::Flushed { conn: c, writes: 1 });
    h.at(10 * SEC);
    assert!(events(&h.drain()).contains(&Event::Disconnected {
        conn: c,
        reason: DisconnectReason::WriteTimeout
    }));
}

/// Item 8: 64 message types get counters of their own, the rest share `*other*`, and every
/// drop event names the counters' bucket.
#[test]
fn sixty_four_named_types_then_other_everywhere() {
    let mut h = H::new(|b| b.pool_size(1).outbox_capacity(64));
    for i in 0..64 {
        h.pool
            .send(h.now, Outgoing::new(format!("t{i}"), json!(null)))
            .unwrap();
    }
    h.drain();
    let outs = {
        let r = h.pool.send(h.now, Outgoing::new("t64", json!(null)));
        assert_eq!(r, Err(SendRefusal::OutboxFull));
        h.drain()
    };
    assert!(events(&outs).contains(&Event::MessageDropped {
        kind: "*other*".into(),
        reason: DropReason::OutboxFull,
        count: 1
    }));
    let st = h.pool.stats();
    assert_eq!(st.sends_by_type.len(), 65);
    assert_eq!(st.sends_by_type["t63"].queued, 1, "the 64th type is named");
    assert_eq!(st.sends_by_type["*other*"].dropped, 1);
    // Expiry names the same buckets.
    h.at(61 * SEC);
    let expired: u64 = events(&h.drain())
        .iter()
        .filter_map(|e| match e {
            Event::MessageDropped {
                reason: DropReason::Expired,
                count,
                ..
            } => Some(*count),
            _ => None,
        })
        .sum();
    assert_eq!(expired, 64);
}

/// Item 8: replies re-evaluate availability, so recovery from timeouts does not wait for a
/// timer; degradation by timeouts has hysteresis in value (in at the ratio, out at half).
#[test]
fn timeouts_degrade_and_replies_recover_with_hysteresis() {
    let mut h = H::new(|b| {
        b.pool_size(1)
            .request_timeout(SEC)
            .degraded_timeout_ratio(0.2)
            .ping_period(1000 * SEC)
            .pong_wait(2000 * SEC)
    });
    let c = h.up()[0];
    assert_eq!(h.pool.availability(), Availability::Available);
    // Each timeout moves the ratio r to 0.95 r + 0.05: 0.185 after four, 0.226 after five.
    let mut t = Duration::ZERO;
    let mut writes = 0;
    for n in 1..=5 {
        h.req("x");
        writes += 1;
        h.input(Input::Flushed { conn: c, writes });
        t += SEC;
        h.at(t);
        h.drain();
        assert_eq!(h.pool.stats().timeouts, n);
        let expected = if n < 5 {
            Availability::Available
        } else {
            Availability::Degraded
        };
        assert_eq!(h.pool.availability(), expected, "after {n} timeouts");
    }
    // Each reply moves it to 0.95 r: below 0.2 at once, but only below 0.1 after 16.
    for n in 1..=16 {
        let (id, conn, _) = h.req("x");
        writes += 1;
        h.input(Input::Flushed { conn, writes });
        let outs = h.reply(conn, &format!(r#"{{"type":"success","replyTo":"{id}"}}"#));
        assert_eq!(completed(&outs).len(), 1);
        // No timer but the far ping (pending deadlines are gone): the hold can only have
        // started from the reply itself.
        let hold_started = h.pool.poll_timeout() == Some(h.now + AVAILABILITY_HOLD);
        assert_eq!(
            hold_started,
            n == 16,
            "the hold starts at the 16th reply, not before (reply {n}: {:?})",
            h.pool.poll_timeout().map(|t| t - h.now)
        );
        assert_eq!(h.pool.availability(), Availability::Degraded);
    }
    let t = h.now + AVAILABILITY_HOLD;
    h.now = t;
    h.pool.handle_timeout(t);
    assert!(events(&h.drain()).contains(&Event::AvailabilityChanged {
        availability: Availability::Available
    }));
}

/// Item 8: a frame of exactly `max_frame_size` bytes is read; one byte more is skipped.
#[test]
fn max_frame_size_boundary() {
    let mut h = H::new(|b| b.pool_size(1).max_frame_size(256));
    let c = h.up()[0];
    let (id, _, _) = h.req("x");
    let head = format!(r#"{{"type":"success","replyTo":"{id}","message":""#);
    let exact = format!("{head}{}\"}}", "m".repeat(256 - head.len() - 2));
    assert_eq!(exact.len(), 256);
    let over = format!("{head}{}\"}}", "m".repeat(257 - head.len() - 2));
    let outs = h.reply(c, &over);
    assert!(events(&outs).contains(&Event::FrameSkipped {
        conn: c,
        error: crate::frame::FrameError::TooLarge { len: 257, max: 256 }
    }));
    assert!(completed(&outs).is_empty());
    let outs = h.reply(c, &exact);
    assert!(matches!(&completed(&outs)[..], [(done, Outcome::Reply(_))] if *done == id));
}

/// A degraded ratio of 0 means any recent timeout degrades the pool, and none does not (the
/// comparison is strict: a surviving mutant made a timeout-free pool degraded).
#[test]
fn zero_timeout_ratio_degrades_on_the_first_timeout_only() {
    let mut h = H::new(|b| {
        b.pool_size(1)
            .request_timeout(SEC)
            .degraded_timeout_ratio(0.0)
            .ping_period(1000 * SEC)
            .pong_wait(2000 * SEC)
    });
    let c = h.up()[0];
    assert_eq!(h.pool.availability(), Availability::Available);
    let (id, _, _) = h.req("x");
    h.input(Input::Flushed { conn: c, writes: 1 });
    h.reply(c, &format!(r#"{{"type":"success","replyTo":"{id}"}}"#));
    assert_eq!(h.pool.availability(), Availability::Available, "no timeout yet");
    h.req("x");
    h.input(Input::Flushed { conn: c, writes: 2 });
    h.at(2 * SEC);
    h.drain();
    assert_eq!(h.pool.availability(), Availability::Degraded);
}
