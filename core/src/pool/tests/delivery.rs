//! Delivery: barriers and confirmations, the unconfirmed window, at most / at least once when
//! a connection dies, unwritten writes, confirmation off, flush.

use super::*;
use crate::{Delivery, MessageFate, MessageId, SendOptions, UnconfirmedReason};

fn msg(n: u64) -> Outgoing {
    Outgoing::new("m", json!(n))
}

fn alo() -> SendOptions {
    SendOptions::default()
        .with_delivery(Delivery::AtLeastOnce)
        .with_notify(true)
}

fn transmits(outs: &[Output]) -> Vec<(ConnId, String)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Transmit { conn, frame } => Some((*conn, frame.clone())),
            _ => None,
        })
        .collect()
}

fn pings(outs: &[Output]) -> Vec<(ConnId, u64)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Ping { conn, payload } => Some((*conn, ping_seq(payload))),
            _ => None,
        })
        .collect()
}

fn settled(outs: &[Output]) -> Vec<(MessageId, MessageFate)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Settled { id, fate } => Some((*id, *fate)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_barrier_follows_confirm_every_messages_and_its_pong_confirms_them() {
    let mut h = H::new(|b| b.pool_size(1).confirm_every(3));
    let c = h.up()[0];
    for n in 0..2 {
        h.pool.send(h.now, msg(n)).unwrap();
    }
    assert!(pings(&h.drain()).is_empty(), "two messages: no barrier yet");
    h.pool.send(h.now, msg(2)).unwrap();
    let outs = h.drain();
    assert_eq!(pings(&outs), vec![(c, 1)], "the third makes it due at once");
    // A message written after the ping is not confirmed by its pong.
    h.pool.send(h.now, msg(3)).unwrap();
    h.drain();
    // A stale or foreign pong confirms nothing.
    h.input(Input::Pong {
        conn: c,
        payload: &0u64.to_be_bytes(),
    });
    h.input(Input::Pong {
        conn: c,
        payload: b"x",
    });
    assert_eq!(h.pool.stats().sends.confirmed, 0);
    h.now += Duration::from_millis(7);
    h.pong(c);
    let s = h.pool.stats();
    assert_eq!((s.sends.confirmed, s.sends.written, s.pongs), (3, 1, 1), "{s:?}");
    assert_eq!(s.confirm_latency.count, 3);
    assert_eq!(s.confirm_latency.max_micros, 7_000);
    assert!(s.sends.conserved());
}

#[test]
fn a_gentle_stream_gets_one_barrier_per_confirm_after() {
    let mut h = H::new(|b| b.pool_size(1).confirm_after(SEC));
    let c = h.up()[0];
    h.pool.send(h.now, msg(0)).unwrap();
    h.drain();
    assert_eq!(
        h.pool.poll_timeout(),
        Some(h.t0 + SEC),
        "the barrier is the next deadline"
    );
    h.at(SEC - Duration::from_millis(1));
    assert!(pings(&h.drain()).is_empty());
    h.at(SEC);
    assert_eq!(pings(&h.drain()), vec![(c, 1)]);
    // While the ping is unanswered no other goes out, however many messages follow.
    for n in 1..600 {
        h.pool.send(h.now, msg(n)).unwrap();
    }
    assert!(pings(&h.drain()).is_empty());
    // Its pong confirms the first; the next barrier is due at once (256 were written since).
    let outs = h.pong(c);
    assert_eq!(pings(&outs), vec![(c, 2)]);
    assert_eq!(h.pool.stats().sends.confirmed, 1);
}

#[test]
fn the_window_holds_back_sends_until_a_pong_frees_it() {
    let mut h = H::new(|b| b.pool_size(1).max_unconfirmed(4).max_unconfirmed_bytes(1024));
    let c = h.up()[0];
    for n in 0..6 {
        h.pool.send(h.now, msg(n)).unwrap();
    }
    let outs = h.drain();
    assert_eq!(transmits(&outs).len(), 4, "four in the window");
    assert_eq!(pings(&outs), vec![(c, 1)], "a full window is a barrier at once");
    assert_eq!(h.pool.outbox_len(), 2);
    let outs = h.pong(c);
    let frames: Vec<String> = transmits(&outs).into_iter().map(|(_, f)| f).collect();
    assert_eq!(
        frames,
        vec![r#"{"type":"m","payload":4}"#, r#"{"type":"m","payload":5}"#]
    );
    // One message larger than the byte window still goes when the window is empty.
    let big = Outgoing::new("m", json!("x".repeat(4000)));
    h.at(SEC);
    assert_eq!(pings(&h.drain()), vec![(c, 2)], "the barrier for the last two");
    h.pong(c);
    h.pool.send(h.now, &big).unwrap();
    assert_eq!(transmits(&h.drain()).len(), 1);
    h.pool.send(h.now, msg(9)).unwrap();
    assert_eq!(h.pool.outbox_len(), 1, "and nothing joins it");
}

#[test]
fn at_most_once_ends_unconfirmed_at_least_once_comes_back_in_send_order() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    // Four messages, alternating at least once / at most once.
    let mut ids = Vec::new();
    for n in 0..4 {
        let options = if n % 2 == 0 {
            alo()
        } else {
            SendOptions::default().with_notify(true)
        };
        ids.push(h.pool.send_with(h.now, msg(n), options).unwrap());
    }
    h.drain();
    // Flushed (they may have arrived), then the connection dies before a confirmation.
    h.input(Input::Flushed { conn: c, writes: 4 });
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    let s = h.pool.stats().sends;
    assert_eq!((s.unconfirmed, s.queued, s.written), (2, 2, 0), "{s:?}");
    let fates = settled(&h.out);
    for id in [ids[1], ids[3]] {
        assert!(fates.contains(&(id, MessageFate::Unconfirmed(UnconfirmedReason::ConnectionDied))));
    }
    // A newer message queues behind them; the next connection gets them in send order.
    h.pool.send(h.now, msg(9)).unwrap();
    h.at(5 * SEC);
    let dials = h.dials();
    let outs = h.input(Input::Connected { conn: dials[0] });
    let frames: Vec<String> = transmits(&outs).into_iter().map(|(_, f)| f).collect();
    assert_eq!(
        frames,
        vec![
            r#"{"type":"m","payload":0}"#,
            r#"{"type":"m","payload":2}"#,
            r#"{"type":"m","payload":9}"#
        ]
    );
    let s = h.pool.stats().sends;
    assert_eq!(s.rewritten, 2, "{s:?}");
    assert!(s.conserved());
}

#[test]
fn at_least_once_gives_up_after_max_rewrites() {
    let mut h = H::new(|b| b.pool_size(1).max_rewrites(1).backoff_base(Duration::ZERO));
    let mut conn = h.up()[0];
    let id = h.pool.send_with(h.now, msg(0), alo()).unwrap();
    h.drain();
    for round in 0..2 {
        h.input(Input::Flushed { conn, writes: 1 });
        let outs = h.input(Input::WriteFailed {
            conn,
            error: "reset".into(),
        });
        if round == 0 {
            // Back in the outbox; written again on the next connection (dialed at once).
            let dial = outs
                .iter()
                .find_map(|o| match o {
                    Output::Dial { conn } => Some(*conn),
                    _ => None,
                })
                .expect("a dial at once");
            conn = dial;
            let outs = h.input(Input::Connected { conn });
            assert_eq!(transmits(&outs).len(), 1);
        }
    }
    let s = h.pool.stats().sends;
    assert_eq!(
        (s.unconfirmed, s.rewrites_exhausted, s.rewritten, s.queued),
        (1, 1, 1, 0),
        "{s:?}"
    );
    assert!(settled(&h.out).contains(&(id, MessageFate::Unconfirmed(UnconfirmedReason::RewritesExhausted))));
    assert!(events(&h.out).contains(&Event::MessageDropped {
        kind: "m".into(),
        reason: DropReason::RewritesExhausted,
        count: 1
    }));
}

#[test]
fn an_unanswered_ping_kills_the_connection_even_while_frames_arrive() {
    let mut h = H::new(|b| b.pool_size(1).ping_period(10 * SEC).pong_wait(20 * SEC));
    let c = h.up()[0];
    h.at(10 * SEC);
    assert_eq!(pings(&h.drain()), vec![(c, 1)]);
    h.input(Input::Flushed { conn: c, writes: 1 });
    // The server keeps pinging (signs of life), but never answers ours.
    for s in [12, 16, 20, 24, 28] {
        h.at(s * SEC);
        h.input(Input::Ping { conn: c });
    }
    h.at(30 * SEC);
    let outs = h.drain();
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(Event::Disconnected {
            reason: DisconnectReason::PongTimeout,
            ..
        })
    )));
    assert!(
        events(&outs).contains(&Event::PongsMissing { conn: c }),
        "it never answered any ping"
    );
}

#[test]
fn a_pong_deadline_in_the_tick_of_the_read_deadline_is_reported_as_pong_timeout() {
    let mut h = H::new(|b| b.pool_size(1).ping_period(10 * SEC).pong_wait(20 * SEC));
    let c = h.up()[0];
    h.at(10 * SEC);
    assert_eq!(pings(&h.drain()).len(), 1);
    h.input(Input::Flushed { conn: c, writes: 1 });
    // The peer answers at once, but with the wrong payload: the read deadline moves to the
    // instant of the pong deadline (10 s + 20 s), and both fall in one tick.
    h.input(Input::Pong {
        conn: c,
        payload: b"wrong payload",
    });
    h.at(30 * SEC);
    let outs = h.drain();
    let reasons: Vec<DisconnectReason> = events(&outs)
        .into_iter()
        .filter_map(|e| match e {
            Event::Disconnected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![DisconnectReason::PongTimeout],
        "the more specific cause"
    );
    assert!(
        events(&outs).contains(&Event::PongsMissing { conn: c }),
        "no ping was ever answered"
    );
}

#[test]
fn a_guessed_pong_confirms_nothing() {
    let mut h = H::new(|b| b.pool_size(2).confirm_every(1));
    h.up();
    h.pool.send(h.now, msg(0)).unwrap();
    let outs = h.drain();
    let Some((conn, payload)) = outs.iter().find_map(|o| match o {
        Output::Ping { conn, payload } => Some((*conn, *payload)),
        _ => None,
    }) else {
        panic!("no barrier: {outs:?}")
    };
    assert_eq!(ping_seq(&payload), 1);
    // Every small counter, as 8 bytes in both byte orders and after a zero token, and the
    // right sequence after any other connection's token: none is this ping's payload.
    let mut other = payload;
    other[0] ^= 1;
    for n in 0..=64u64 {
        let mut zero_token = [0; 16];
        zero_token[8..].copy_from_slice(&n.to_be_bytes());
        for guess in [
            &n.to_be_bytes()[..],
            &n.to_le_bytes()[..],
            &zero_token[..],
            &other[..],
        ] {
            h.input(Input::Pong { conn, payload: guess });
        }
    }
    let s = h.pool.stats();
    assert_eq!((s.sends.confirmed, s.pongs), (0, 0), "{s:?}");
    h.pong(conn);
    assert_eq!(h.pool.stats().sends.confirmed, 1);
}

#[test]
fn each_connection_has_its_own_ping_token_and_a_seed_replays_it() {
    let tokens = || {
        let mut h = H::new(|b| b.pool_size(2).ping_period(10 * SEC));
        h.up();
        h.at(10 * SEC);
        let mut tokens: Vec<(ConnId, [u8; 8])> = h
            .drain()
            .iter()
            .filter_map(|o| match o {
                Output::Ping { conn, payload } => Some((*conn, payload[..8].try_into().unwrap())),
                _ => None,
            })
            .collect();
        tokens.sort();
        tokens
    };
    let first = tokens();
    assert_eq!(first.len(), 2, "{first:?}");
    assert_ne!(first[0].1, first[1].1, "one token per connection");
    assert_eq!(tokens(), first, "the same seed draws the same tokens");
}

#[test]
fn with_confirmation_off_messages_end_written() {
    let mut h = H::new(|b| b.pool_size(1).confirm_delivery(false));
    let c = h.up()[0];
    assert!(events(&h.out).contains(&Event::ConfirmationOff));
    let id = h
        .pool
        .send_with(h.now, msg(0), SendOptions::default().with_notify(true))
        .unwrap();
    h.drain();
    h.at(5 * SEC);
    assert!(pings(&h.drain()).is_empty(), "no barrier");
    let outs = h.input(Input::Flushed { conn: c, writes: 1 });
    assert_eq!(settled(&outs), vec![(id, MessageFate::Written)]);
    let s = h.pool.stats().sends;
    assert_eq!((s.written, s.confirmed), (1, 0));
    assert!(h.pool.is_settled(id));
}

#[test]
fn flush_asks_for_barriers_now_and_settles_through_its_mark() {
    let mut h = H::new(|b| b.pool_size(2));
    let conns = h.up();
    for n in 0..4 {
        h.pool.send(h.now, msg(n)).unwrap();
    }
    h.drain();
    let mark = h.pool.flush(h.now);
    assert_eq!(mark, MessageId(4));
    let outs = h.drain();
    assert_eq!(pings(&outs).len(), 2, "one barrier per connection, at once");
    assert!(!h.pool.is_settled(mark));
    h.pong(conns[0]);
    assert!(!h.pool.is_settled(mark));
    h.pong(conns[1]);
    assert!(h.pool.is_settled(mark));
    assert_eq!(h.pool.live_messages(), 0);
}

/// Two unflushed messages on a connection that dies: the adapter says it never started
/// them, so they go back to the outbox; closing while down dials at once, and the drain
/// delivers them once that dial opens.
#[test]
fn close_while_down_dials_at_once_and_drains() {
    let mut h = H::new(|b| b.pool_size(1).close_drain(2 * SEC));
    let c = h.up()[0];
    h.pool.send(h.now, msg(0)).unwrap();
    h.pool.send_with(h.now, msg(1), alo()).unwrap();
    h.drain();
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    assert_eq!(h.pool.live_messages(), 2, "in limbo");
    h.input(Input::Unwritten { conn: c, first: 1 });
    assert_eq!(h.pool.outbox_len(), 2, "never started: back in the outbox");
    assert_eq!(h.pool.stats().sends.rewritten, 0);
    h.pool.send(h.now, msg(2)).unwrap();
    h.pool.close(h.now);
    assert!(h.pool.is_draining());
    let dial = h.dials()[0];
    let outs = h.input(Input::Connected { conn: dial });
    assert_eq!(transmits(&outs).len(), 3);
    assert_eq!(
        pings(&outs),
        vec![(dial, 1)],
        "a drain asks for its barrier at once"
    );
    h.input(Input::Flushed {
        conn: dial,
        writes: 4,
    });
    let outs = h.pong(dial);
    assert!(!h.pool.is_draining(), "everything confirmed: the drain is over");
    assert!(outs.contains(&Output::Disconnect {
        conn: dial,
        graceful: true
    }));
    assert!(h.pool.take_undelivered().is_empty());
    let s = h.pool.stats().sends;
    assert_eq!((s.confirmed, s.closed), (3, 0), "{s:?}");
}

/// The server stays away past the drain: everything queued is handed back, in send order.
#[test]
fn close_hands_back_what_the_drain_could_not_deliver() {
    let mut h = H::new(|b| b.pool_size(1).close_drain(2 * SEC));
    let c = h.up()[0];
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    for n in 0..3 {
        h.pool.send(h.now, msg(n)).unwrap();
    }
    h.pool.close(h.now);
    assert_eq!(h.dials().len(), 1, "one dial at once");
    // The dial hangs; the drain ends first.
    h.at(2 * SEC);
    h.drain();
    assert!(!h.pool.is_draining());
    let back = h.pool.take_undelivered();
    let frames: Vec<&str> = back.iter().map(|u| u.frame.as_str()).collect();
    assert_eq!(
        frames,
        vec![
            r#"{"type":"m","payload":0}"#,
            r#"{"type":"m","payload":1}"#,
            r#"{"type":"m","payload":2}"#
        ]
    );
    assert!(back.iter().all(|u| !u.written_before));
    let s = h.pool.stats().sends;
    assert_eq!((s.closed, s.queued, s.written), (3, 0, 0), "{s:?}");
    assert!(s.conserved());
}

#[test]
fn rotation_confirms_before_it_closes_the_old_connection() {
    let mut h = H::new(|b| {
        b.pool_size(1)
            .max_connection_age(Some(10 * SEC))
            .backoff_jitter(0.0)
    });
    let old = h.up()[0];
    h.at(10 * SEC);
    let new = h.dials()[0];
    // Written on the old connection while its replacement dials.
    h.pool.send(h.now, msg(0)).unwrap();
    h.drain();
    h.input(Input::Flushed { conn: old, writes: 1 });
    let outs = h.input(Input::Connected { conn: new });
    assert_eq!(
        pings(&outs),
        vec![(old, 1)],
        "a final barrier on the retiring connection"
    );
    assert!(
        !outs.contains(&Output::Disconnect {
            conn: old,
            graceful: true
        }),
        "not closed before it is confirmed"
    );
    h.input(Input::Flushed { conn: old, writes: 2 });
    let outs = h.pong(old);
    assert!(outs.contains(&Output::Disconnect {
        conn: old,
        graceful: true
    }));
    let s = h.pool.stats().sends;
    assert_eq!((s.confirmed, s.unconfirmed), (1, 0));
}

/// Found by fuzzing: a message back from a dead connection keeps the TTL of its first send,
/// so it may come back already expired; it expires at once, not at a deadline in the past.
#[test]
fn a_message_back_past_its_ttl_expires_at_once() {
    let mut h = H::new(|b| {
        b.pool_size(1)
            .outbox_ttl(SEC)
            .pong_wait(3600 * SEC)
            .ping_period(1800 * SEC)
    });
    let c = h.up()[0];
    h.pool.send(h.now, msg(0)).unwrap();
    h.drain();
    h.now += 5 * SEC;
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    let outs = h.input(Input::Unwritten { conn: c, first: 1 });
    assert!(events(&outs).contains(&Event::MessageDropped {
        kind: "m".into(),
        reason: DropReason::Expired,
        count: 1
    }));
    assert_eq!(h.pool.outbox_len(), 0);
    assert!(h.pool.poll_timeout().is_none_or(|t| t >= h.now));
}

/// Found by mutation testing: the byte window's bound is inclusive, and a flushed
/// at-most-once message's frame is let go (only an at-least-once one is kept for a rewrite).
#[test]
fn the_byte_window_is_inclusive_and_flushed_frames_are_let_go() {
    let frame_len = |m: &Outgoing| crate::frame::EncodedSend::new(m).into_parts().1.len();
    // Two messages of exactly half the (smallest) byte window each.
    let half = |c: &str| {
        let base = frame_len(&Outgoing::new("m", json!("")));
        Outgoing::new("m", json!(c.repeat(512 - base)))
    };
    let (a, b) = (half("a"), half("b"));
    assert_eq!(frame_len(&a) + frame_len(&b), 1024);
    let mut h = H::new(|bld| bld.pool_size(1).max_unconfirmed_bytes(1024).confirm_every(1000));
    h.up();
    h.pool.send(h.now, &a).unwrap();
    h.pool.send(h.now, &b).unwrap();
    assert_eq!(
        transmits(&h.drain()).len(),
        2,
        "a window filled exactly takes both"
    );
    h.pool.send(h.now, msg(9)).unwrap();
    assert_eq!(h.pool.outbox_len(), 1, "and nothing more");
    // A pong frees the window's bytes: the queued one goes, and a half-window one beside it.
    h.at(SEC);
    h.drain();
    let c = h.pool.open_conn(0).unwrap();
    // Half the window made a barrier due after `a`; `b` needed a second one.
    h.pong(c);
    h.pong(c);
    assert_eq!(h.pool.outbox_len(), 0);
    assert_eq!(h.pool.stats().sends.confirmed, 2);
    h.pool.send(h.now, &a).unwrap();
    assert_eq!(h.pool.outbox_len(), 0, "the confirmed bytes left the window");
    // The same with confirmation off: flushed messages leave the window.
    let mut h = H::new(|bld| {
        bld.pool_size(1)
            .max_unconfirmed_bytes(1024)
            .confirm_delivery(false)
    });
    let c = h.up()[0];
    h.pool.send(h.now, &a).unwrap();
    h.pool.send(h.now, &b).unwrap();
    h.drain();
    h.input(Input::Flushed { conn: c, writes: 2 });
    h.pool.send(h.now, &a).unwrap();
    h.pool.send(h.now, &b).unwrap();
    assert_eq!(h.pool.outbox_len(), 0, "the flushed bytes left the window");

    // Frames: held until flushed, then let go for at most once, kept for at least once.
    let len = frame_len(&msg(0));
    let mut h = H::new(|bld| bld.pool_size(1));
    let c = h.up()[0];
    h.pool.send(h.now, msg(0)).unwrap();
    h.pool.send_with(h.now, msg(1), alo()).unwrap();
    h.drain();
    assert_eq!(h.pool.held_frame_bytes(), 2 * len);
    h.input(Input::Flushed { conn: c, writes: 1 });
    assert_eq!(
        h.pool.held_frame_bytes(),
        len,
        "the first is flushed: its frame is let go"
    );
    h.input(Input::Flushed { conn: c, writes: 2 });
    assert_eq!(h.pool.held_frame_bytes(), len, "the at-least-once one is kept");
}

/// Found by mutation testing: messages back from dead connections are merged into the outbox
/// by send order, written again at once on another open connection, and no empty drop event
/// goes out.
#[test]
fn requeued_messages_merge_in_send_order_and_go_out_at_once() {
    // Windows of one message: the third and fourth wait in the outbox.
    let mut h = H::new(|b| b.pool_size(2).max_unconfirmed(1).close_drain(Duration::ZERO));
    let conns = h.up();
    for n in 1..=4 {
        h.pool.send_with(h.now, msg(n), alo()).unwrap();
    }
    let outs = h.drain();
    assert_eq!(transmits(&outs).len(), 2);
    assert_eq!(h.pool.outbox_len(), 2);
    for &c in &conns {
        h.input(Input::Flushed { conn: c, writes: 1 });
    }
    // Both die, one after the other: 1 and 2 come back ahead of 3 and 4, in order.
    for &c in &conns {
        h.input(Input::Closed {
            conn: c,
            reason: CloseReason::Eof,
        });
    }
    assert!(
        !events(&h.out)
            .iter()
            .any(|e| matches!(e, Event::MessageDropped { count: 0, .. })),
        "no empty drop event"
    );
    h.pool.close(h.now);
    h.drain();
    let back: Vec<String> = h.pool.take_undelivered().into_iter().map(|u| u.frame).collect();
    assert_eq!(
        back,
        vec![
            r#"{"type":"m","payload":1}"#,
            r#"{"type":"m","payload":2}"#,
            r#"{"type":"m","payload":3}"#,
            r#"{"type":"m","payload":4}"#
        ]
    );

    // With another connection open, a message back from a dead one goes out on it at once.
    let mut h = H::new(|b| b.pool_size(2));
    let conns = h.up();
    h.pool.send_with(h.now, msg(0), alo()).unwrap();
    let dead = transmits(&h.drain())[0].0;
    let other = *conns.iter().find(|c| **c != dead).unwrap();
    h.input(Input::Flushed {
        conn: dead,
        writes: 1,
    });
    let outs = h.input(Input::Closed {
        conn: dead,
        reason: CloseReason::Eof,
    });
    assert_eq!(
        transmits(&outs),
        vec![(other, r#"{"type":"m","payload":0}"#.to_owned())],
        "rewritten at once on the other connection"
    );
}

/// Issue 21 item 11: at-least-once messages that started on a dead connection must not jump
/// ahead of never-started ones with lower ids: back in the outbox, all go out in send order.
/// The started ones are known as such from a flush (`flushed`) or from the adapter's
/// `Unwritten` report.
#[test]
fn started_messages_do_not_jump_ahead_of_never_started_older_ones() {
    for flushed in [false, true] {
        let mut h = H::new(|b| b.pool_size(2).confirm_every(1000).write_wait(60 * SEC));
        let conns = h.up();
        let closed = |h: &mut H, conn| {
            h.input(Input::Closed {
                conn,
                reason: CloseReason::Eof,
            })
        };
        // One connection open: 1, 2, 3 go out on it, unflushed, and it dies (limbo).
        closed(&mut h, conns[1]);
        for n in 1..=3 {
            h.pool.send_with(h.now, msg(n), alo()).unwrap();
        }
        assert_eq!(transmits(&h.drain()).len(), 3);
        closed(&mut h, conns[0]);
        h.at(10 * SEC);
        let dials = h.dials();
        assert_eq!(dials.len(), 2, "{dials:?}");
        // A new connection takes 4 and 5, then 1, 2, 3 once the adapter says they never
        // started: its writes are 4, 5, 1, 2, 3.
        h.input(Input::Connected { conn: dials[0] });
        for n in 4..=5 {
            h.pool.send_with(h.now, msg(n), alo()).unwrap();
        }
        h.drain();
        let outs = h.input(Input::Unwritten {
            conn: conns[0],
            first: 1,
        });
        assert_eq!(transmits(&outs).len(), 3);
        h.input(Input::Connected { conn: dials[1] });
        // It dies having started 4 and 5 (flushed, or said so by the adapter), not 1, 2, 3.
        if flushed {
            h.input(Input::Flushed {
                conn: dials[0],
                writes: 2,
            });
        }
        let mut outs = closed(&mut h, dials[0]);
        outs.extend(h.input(Input::Unwritten {
            conn: dials[0],
            first: 3,
        }));
        let frames: Vec<String> = transmits(&outs).into_iter().map(|(_, f)| f).collect();
        let expected: Vec<String> = (1..=5)
            .map(|n| format!(r#"{{"type":"m","payload":{n}}}"#))
            .collect();
        assert_eq!(
            frames, expected,
            "flushed {flushed}: in send order on the other connection"
        );
        assert!(h.pool.stats().sends.conserved());
    }
}

/// Found by mutation testing: `is_settled` looks at the oldest message still alive on any
/// connection, not the newest.
#[test]
fn settled_means_every_older_message_ended() {
    let mut h = H::new(|b| b.pool_size(2));
    let _ = h.up();
    h.pool.send(h.now, msg(1)).unwrap();
    let first = transmits(&h.drain())[0].0;
    h.pool.flush(h.now);
    h.drain();
    h.pong(first);
    assert!(h.pool.is_settled(MessageId(1)));
    // Two more, one on each connection; neither confirmed.
    h.pool.send(h.now, msg(2)).unwrap();
    h.pool.send(h.now, msg(3)).unwrap();
    let on: Vec<ConnId> = transmits(&h.drain()).iter().map(|(c, _)| *c).collect();
    assert_ne!(on[0], on[1], "spread over both connections");
    assert!(!h.pool.is_settled(MessageId(2)));
    assert!(!h.pool.is_settled(MessageId(3)));
}
