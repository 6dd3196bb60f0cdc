//! The spool's bookkeeping: keep on accept, release on every end, what a close leaves in the
//! spool, replay of restored records (first, in order, at least once, TTL from first send),
//! and the byte limit.

use super::*;
use crate::spool::{Restored, SpoolRecord, RECORD_OVERHEAD};
use crate::{Delivery, MessageFate, MessageId, SendOptions, SpoolOpenError, UnconfirmedReason};

fn msg(n: u64) -> Outgoing {
    Outgoing::new("m", json!(n))
}

fn keeps(outs: &[Output]) -> Vec<(MessageId, String, u32)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Keep { record, .. } => Some((record.id, record.frame.clone(), record.writes)),
            _ => None,
        })
        .collect()
}

fn releases(outs: &[Output]) -> Vec<(MessageId, MessageFate)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Release { id, fate } => Some((*id, *fate)),
            _ => None,
        })
        .collect()
}

fn restored(id: u64, payload: u64, age: Duration) -> Restored {
    Restored {
        record: SpoolRecord {
            id: MessageId(id),
            kind: "m".into(),
            frame: format!(r#"{{"type":"m","payload":{payload}}}"#),
            delivery: Delivery::AtMostOnce,
            writes: 0,
        },
        age,
    }
}

#[test]
fn without_a_spool_nothing_is_kept_or_released() {
    let mut h = H::new(|b| b.pool_size(1).confirm_every(1));
    let c = h.up()[0];
    h.pool.send(h.now, msg(1)).unwrap();
    let outs = h.drain();
    let outs = [outs, h.pong(c)].concat();
    assert!(keeps(&outs).is_empty() && releases(&outs).is_empty(), "{outs:?}");
    assert_eq!(h.pool.stats().sends.confirmed, 1);
    assert_eq!(h.pool.spool_bytes(), 0);
}

#[test]
fn a_kept_message_comes_before_its_transmit_and_a_pong_releases_it() {
    let mut h = H::new(|b| b.pool_size(1).confirm_every(2));
    h.pool.open_spool(h.now, 1 << 20, Vec::new()).unwrap();
    let c = h.up()[0];
    h.pool.send(h.now, msg(1)).unwrap();
    h.pool.send(h.now, msg(2)).unwrap();
    let outs = h.drain();
    let keep_at = outs
        .iter()
        .position(|o| matches!(o, Output::Keep { .. }))
        .unwrap();
    let transmit_at = outs
        .iter()
        .position(|o| matches!(o, Output::Transmit { .. }))
        .unwrap();
    assert!(keep_at < transmit_at, "{outs:?}");
    assert_eq!(
        keeps(&outs),
        vec![
            (MessageId(1), r#"{"type":"m","payload":1}"#.to_owned(), 0),
            (MessageId(2), r#"{"type":"m","payload":2}"#.to_owned(), 0)
        ]
    );
    let frame_len = r#"{"type":"m","payload":1}"#.len() as u64;
    assert_eq!(h.pool.spool_bytes(), 2 * (frame_len + RECORD_OVERHEAD));
    let outs = h.pong(c);
    assert_eq!(
        releases(&outs),
        vec![
            (MessageId(1), MessageFate::Confirmed),
            (MessageId(2), MessageFate::Confirmed)
        ]
    );
    assert_eq!(h.pool.spool_bytes(), 0);
}

#[test]
fn expired_and_unconfirmed_messages_are_released_requeued_ones_kept_again() {
    let mut h = H::new(|b| b.pool_size(1).confirm_every(100).outbox_ttl(10 * SEC));
    h.pool.open_spool(h.now, 1 << 20, Vec::new()).unwrap();
    let c = h.up()[0];
    // One at most once, one at least once; the connection dies after both were flushed.
    h.pool.send(h.now, msg(1)).unwrap();
    h.pool
        .send_with(
            h.now,
            msg(2),
            SendOptions::default().with_delivery(Delivery::AtLeastOnce),
        )
        .unwrap();
    h.drain();
    h.input(Input::Flushed { conn: c, writes: 2 });
    let outs = h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    assert_eq!(
        releases(&outs),
        vec![(
            MessageId(1),
            MessageFate::Unconfirmed(UnconfirmedReason::ConnectionDied)
        )]
    );
    // The at-least-once one is back in the outbox and kept again with its write count.
    assert_eq!(
        keeps(&outs),
        vec![(MessageId(2), r#"{"type":"m","payload":2}"#.to_owned(), 1)]
    );
    h.at(10 * SEC);
    let outs = h.drain();
    assert_eq!(releases(&outs), vec![(MessageId(2), MessageFate::Expired)]);
    assert_eq!(h.pool.spool_bytes(), 0);
}

#[test]
fn close_leaves_the_undelivered_in_the_spool_and_hands_nothing_back() {
    let mut h = H::new(|b| b.pool_size(1).close_drain(2 * SEC));
    h.pool.open_spool(h.now, 1 << 20, Vec::new()).unwrap();
    let c = h.up()[0];
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    for n in 0..3 {
        h.pool.send(h.now, msg(n)).unwrap();
    }
    h.pool.close(h.now);
    h.dials();
    h.at(2 * SEC);
    let outs = h.drain();
    assert!(releases(&outs).is_empty(), "{outs:?}");
    assert!(h.pool.take_undelivered().is_empty());
    let s = h.pool.stats().sends;
    assert_eq!((s.spooled, s.closed, s.queued), (3, 0, 0), "{s:?}");
    assert!(s.conserved());
}

#[test]
fn restored_records_go_first_in_order_at_least_once_and_new_ids_follow() {
    let mut h = H::new(|b| b.pool_size(1).outbox_ttl(60 * SEC).confirm_every(100));
    // Handed over out of order: replayed in id order.
    let opened = h
        .pool
        .open_spool(
            h.now,
            1 << 20,
            vec![
                restored(9, 9, 5 * SEC),
                restored(4, 4, 6 * SEC),
                restored(7, 7, 5 * SEC),
            ],
        )
        .unwrap();
    assert_eq!((opened.replayed, opened.expired), (3, 0));
    assert_eq!(
        h.pool.send_with(h.now, msg(100), SendOptions::default()),
        Ok(MessageId(10))
    );
    let c = h.up()[0];
    let frames: Vec<String> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Transmit { frame, .. } => Some(frame.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        frames,
        vec![
            r#"{"type":"m","payload":4}"#,
            r#"{"type":"m","payload":7}"#,
            r#"{"type":"m","payload":9}"#,
            r#"{"type":"m","payload":100}"#
        ]
    );
    let s = h.pool.stats().sends;
    assert_eq!((s.replayed, s.sends, s.written), (3, 4, 4), "{s:?}");
    // Replayed at least once: a dead connection sends them back to the outbox.
    h.input(Input::Flushed { conn: c, writes: 4 });
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    let s = h.pool.stats().sends;
    assert_eq!((s.queued, s.unconfirmed), (3, 1), "{s:?}");
    assert!(s.conserved());
}

#[test]
fn restored_ttl_runs_from_the_first_send() {
    let mut h = H::new(|b| b.pool_size(1).outbox_ttl(60 * SEC));
    let opened = h
        .pool
        .open_spool(
            h.now,
            1 << 20,
            vec![restored(1, 1, 61 * SEC), restored(2, 2, 50 * SEC)],
        )
        .unwrap();
    assert_eq!((opened.replayed, opened.expired), (2, 1));
    let outs = h.drain();
    assert_eq!(releases(&outs), vec![(MessageId(1), MessageFate::Expired)]);
    // The second has 10 s left.
    h.at(9 * SEC);
    assert!(releases(&h.drain()).is_empty());
    h.at(10 * SEC);
    assert_eq!(releases(&h.drain()), vec![(MessageId(2), MessageFate::Expired)]);
    let s = h.pool.stats().sends;
    assert_eq!((s.replayed, s.expired), (2, 2), "{s:?}");
}

#[test]
fn a_full_spool_refuses_typed_and_counted_and_recovers_as_pongs_free_it() {
    let frame_len = r#"{"type":"m","payload":1}"#.len() as u64;
    let mut h = H::new(|b| b.pool_size(1).confirm_every(100));
    h.pool
        .open_spool(h.now, 2 * (frame_len + RECORD_OVERHEAD), Vec::new())
        .unwrap();
    let c = h.up()[0];
    h.pool.send(h.now, msg(1)).unwrap();
    h.pool.send(h.now, msg(2)).unwrap();
    assert_eq!(h.pool.send(h.now, msg(3)), Err(SendRefusal::SpoolFull));
    let outs = h.drain();
    assert!(events(&outs).contains(&Event::MessageDropped {
        kind: "m".into(),
        reason: DropReason::SpoolFull,
        count: 1
    }));
    let s = h.pool.stats().sends;
    assert_eq!((s.dropped, s.spool_full, s.sends), (1, 1, 3), "{s:?}");
    h.pool.flush(h.now);
    h.drain();
    h.pong(c);
    assert_eq!(h.pool.spool_bytes(), 0);
    assert!(h.pool.send(h.now, msg(4)).is_ok());
}

#[test]
fn the_spool_opens_once_and_before_any_send() {
    let mut h = H::new(|b| b.pool_size(1));
    h.pool.send(h.now, msg(1)).unwrap();
    assert_eq!(
        h.pool.open_spool(h.now, 1, Vec::new()),
        Err(SpoolOpenError::AfterSends)
    );
    let mut h = H::new(|b| b.pool_size(1));
    h.pool.open_spool(h.now, 1 << 20, Vec::new()).unwrap();
    assert_eq!(
        h.pool.open_spool(h.now, 1, Vec::new()),
        Err(SpoolOpenError::AlreadyOpen)
    );
}
