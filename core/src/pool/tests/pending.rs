//! Requests: correlation of replies, denials, skipped frames, timeouts, cancel, re-sending, refusals, ids.

use super::*;

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
fn same_seed_same_ids() {
    let run = || {
        let mut h = H::new(|b| b.pool_size(1));
        h.up();
        (0..3).map(|_| h.req("x").0).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
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
