//! Closing the pool: idempotent close, pending failed, drain.

use super::*;

#[test]
fn close_is_idempotent_fails_pending_and_closes_normally() {
    // Without a drain: everything ends at once.
    let mut h = H::new(|b| b.pool_size(2).close_drain(Duration::ZERO));
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
