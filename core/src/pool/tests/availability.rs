//! Availability: transitions, and degradation by timeouts with hysteresis.

use super::*;

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
