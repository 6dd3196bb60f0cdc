//! Rotation: replacing an aged connection, and its replacement dials.

use super::*;

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
        h.pong(c);
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
        h.pong(c);
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
