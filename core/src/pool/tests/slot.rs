//! Slots: dialing, loss, backoff, resting and re-arming, key rejection, Retry-After.

use super::*;

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
    let st = h.pool.stats();
    assert_eq!((st.rejections, st.dial_failures), (3, 4));
    // A connection clears it, and the queued send goes out on it.
    h.at(30 * SEC);
    let dials = h.dials();
    assert!(!dials.is_empty(), "the slots dial again");
    let outs = h.input(Input::Connected { conn: dials[0] });
    assert_eq!(
        count(&outs, |o| matches!(o, Output::Transmit { .. })),
        1,
        "the queued send"
    );
    assert_eq!((h.pool.rejection(), h.pool.stats().rejected_status), (None, None));
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

/// A proxy's refusal (even a 407 about the proxy's credentials) is not a key rejection: no
/// `KeyRejected`, no `rejections`, requests fail `NotConnected`, and the slot backs off as for
/// a network error.
#[test]
fn a_proxy_refusal_is_not_a_key_rejection() {
    let mut h = H::new(|b| b.pool_size(2));
    h.pool.connect(h.now);
    let dials = h.dials();
    let mut outs = h.input(Input::ConnectFailed {
        conn: dials[0],
        error: DialError::Proxy { status: 407 },
    });
    outs.extend(h.input(Input::ConnectFailed {
        conn: dials[1],
        error: DialError::Proxy { status: 403 },
    }));
    assert_eq!(
        count(&outs, |o| matches!(o, Output::Event(Event::KeyRejected { .. }))),
        0
    );
    assert_eq!(
        count(&outs, |o| matches!(
            o,
            Output::Event(Event::ReconnectScheduled { .. })
        )),
        2,
        "{outs:?}"
    );
    assert_eq!(h.pool.rejection(), None);
    assert_eq!(
        h.pool
            .request(h.now, Outgoing::new("x", json!(null)), RequestOptions::default()),
        Err(RequestError::NotConnected)
    );
    let st = h.pool.stats();
    assert_eq!((st.rejections, st.dial_failures), (0, 2));
    assert!(!DialError::Proxy { status: 407 }.is_auth_rejection());
    assert_eq!(
        DialError::Proxy { status: 407 }.to_string(),
        "the proxy requires credentials (HTTP 407)"
    );
    assert_eq!(
        DialError::Proxy { status: 403 }.to_string(),
        "the proxy refused the tunnel (HTTP 403)"
    );
    assert_eq!(
        DialError::Proxy { status: 502 }.to_string(),
        "the proxy is unavailable (HTTP 502)"
    );
}
