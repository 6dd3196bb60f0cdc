//! Liveness: pings, the read deadline and the write deadline.

use super::*;

#[test]
fn no_ping_queues_behind_an_unflushed_ping() {
    // Pings every second, writes may take half an hour: a stuck socket must not collect a ping a
    // second in the adapter's queue.
    let mut h = H::new(|b| {
        b.pool_size(1)
            .ping_period(SEC)
            .pong_wait(Duration::from_secs(3600))
            .write_wait(Duration::from_secs(1800))
            // With confirmation on, any unanswered ping holds the next one back (see below).
            .confirm_delivery(false)
    });
    let c = h.up()[0];
    h.at(SEC);
    assert_eq!(only_pings(h.drain()), vec![(c, 1)]);
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
    assert_eq!(only_pings(h.drain()), vec![(c, 2)]);
    assert_eq!(h.pool.stats().pings, 2);
}

#[test]
fn liveness_pings_and_read_deadline() {
    let mut h = H::new(|b| b.pool_size(1));
    let c = h.up()[0];
    h.at(30 * SEC);
    assert_eq!(only_pings(h.drain()), vec![(c, 1)]);
    h.input(Input::Flushed { conn: c, writes: 1 });
    h.pong(c);
    h.at(60 * SEC);
    assert_eq!(only_pings(h.drain()), vec![(c, 2)]);
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
        h.pong(c);
    }
    h.pool.send(h.now, Outgoing::new("m", json!(null))).unwrap();
    assert!(matches!(h.drain()[..], [Output::Transmit { conn, .. }] if conn == c));
    // Now a write that never flushes (nor does the barrier ping after it): dead after
    // write_wait.
    let t = 120 * SEC;
    h.at(t + Duration::from_millis(9_999));
    assert!(!h.drain().iter().any(|o| matches!(o, Output::Disconnect { .. })));
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

/// Item 8: a server's ping is a sign of life like any frame.
#[test]
fn server_ping_pushes_the_read_deadline() {
    // Without confirmation: with it, our own unanswered ping is fatal whatever else comes.
    let mut h = H::new(|b| {
        b.pool_size(1)
            .ping_period(30 * SEC)
            .pong_wait(60 * SEC)
            .confirm_delivery(false)
    });
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
