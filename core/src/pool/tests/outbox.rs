//! Fire-and-forget sends: the outbox, its TTL, lost sends, per-type counters.

use super::*;

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
    assert_eq!((st.sends, st.written, st.dropped, st.queued), (3, 2, 1, 0));
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
fn a_dead_connections_messages_end_unconfirmed_or_go_back_unstarted() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    for i in 0..4 {
        h.pool.send(h.now, Outgoing::new("m", json!(i))).unwrap();
    }
    h.drain();
    // Two flushed (they may have arrived), two not: the adapter started the third only.
    h.input(Input::Flushed { conn: c, writes: 2 });
    let outs = h.input(Input::WriteFailed {
        conn: c,
        error: "broken pipe".into(),
    });
    assert!(events(&outs).contains(&Event::MessageDropped {
        kind: "m".into(),
        reason: DropReason::Unconfirmed,
        count: 2
    }));
    let st = h.pool.stats().sends;
    assert_eq!((st.unconfirmed, st.written, st.queued), (2, 2, 0), "two in limbo");
    assert!(st.conserved());
    let outs = h.input(Input::Unwritten { conn: c, first: 4 });
    assert!(events(&outs).contains(&Event::MessageDropped {
        kind: "m".into(),
        reason: DropReason::Unconfirmed,
        count: 1
    }));
    let st = h.pool.stats().sends;
    assert_eq!(
        (st.unconfirmed, st.written, st.queued, st.rewritten),
        (3, 0, 1, 0),
        "the fourth never started: back in the outbox, not a rewrite"
    );
    assert!(st.conserved());
    // It goes out again, first, on the next connection.
    h.at(5 * SEC);
    let c2 = h.dials()[0];
    let outs = h.input(Input::Connected { conn: c2 });
    let frames: Vec<&str> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Transmit { frame, .. } => Some(frame.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(frames, vec![r#"{"type":"m","payload":3}"#]);
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

/// Issue 21 item 13: the outbox is bounded in bytes too, counted and refused like its count
/// cap, with its own reason.
#[test]
fn the_outbox_is_bounded_in_bytes_and_refuses_with_its_own_reason() {
    // Nothing open: every send waits in the outbox. Each frame is about 530 bytes.
    let mut h = H::new(|b| b.pool_size(1).max_outbox_bytes(1_200));
    let big = |n: u64| Outgoing::new("m", json!({"n": n, "pad": "x".repeat(500)}));
    let len = crate::frame::EncodedSend::new(&big(0)).frame_len();
    assert!((500..600).contains(&len), "{len}");
    for n in 0..2 {
        h.pool.send(h.now, big(n)).unwrap();
    }
    assert!(!h.pool.has_room_for(len), "a third would pass 1,200 bytes");
    assert!(h.pool.has_room_for(100), "a small one still fits");
    assert_eq!(h.pool.send(h.now, big(2)), Err(SendRefusal::OutboxBytesFull));
    let outs = h.drain();
    assert!(events(&outs).contains(&Event::MessageDropped {
        kind: "m".into(),
        reason: DropReason::OutboxBytesFull,
        count: 1
    }));
    let st = h.pool.stats().sends;
    assert_eq!((st.sends, st.queued, st.dropped), (3, 2, 1), "{st:?}");
    assert!(st.conserved());
    // A small one fits beside them; once they leave, big ones fit again.
    h.pool.send(h.now, Outgoing::new("m", json!(1))).unwrap();
    h.up();
    assert_eq!(h.pool.outbox_len(), 0);
    for n in 3..5 {
        h.pool.send(h.now, big(n)).unwrap();
    }
}

/// Issue 21 item 13: a message whose frame is larger than the frame limit is refused up
/// front with a typed refusal, counted as dropped, and never written.
#[test]
fn a_message_larger_than_the_frame_limit_is_refused_up_front() {
    let mut h = H::new(|b| b.pool_size(1).max_frame_size(1_024));
    h.up();
    let message = Outgoing::new("m", json!({"pad": "x".repeat(2_000)}));
    let len = crate::frame::EncodedSend::new(&message).frame_len();
    assert!(
        h.pool.has_room_for(len),
        "waiting would not help: refused at once"
    );
    assert_eq!(
        h.pool.send(h.now, &message),
        Err(SendRefusal::TooLarge { len, max: 1_024 })
    );
    let outs = h.drain();
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Transmit { .. })),
        "{outs:?}"
    );
    assert!(events(&outs).contains(&Event::MessageDropped {
        kind: "m".into(),
        reason: DropReason::TooLarge,
        count: 1
    }));
    let st = h.pool.stats().sends;
    assert_eq!((st.sends, st.dropped, st.written), (1, 1, 0), "{st:?}");
    assert!(st.conserved());
    // One at the limit goes.
    let fits = Outgoing::new("m", json!({"pad": "x".repeat(900)}));
    assert!(crate::frame::EncodedSend::new(&fits).frame_len() <= 1_024);
    h.pool.send(h.now, fits).unwrap();
}
