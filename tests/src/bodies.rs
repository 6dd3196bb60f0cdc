//! The test bodies, generic over the [`Adapter`]. Each one starts its own server (own thread,
//! ephemeral port), so they run in parallel; each is bounded by [`crate::TEST_TIMEOUT`].

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use futures_util::future::{join, join_all};
use serde_json::Value;
use usageflow_socket_core::messages::{ReportCallChain, RequestForAllocation, UseAllocation};
use usageflow_socket_server::{FaultConfig, ReplyStyle, ServerThread, TlsOptions};

use crate::*;

const MS: fn(u64) -> Duration = Duration::from_millis;

/// Issues requests until one succeeds (each bounded by `each`), within `limit`. For the
/// moments right after a fault is cleared, when a freshly dialed connection may still have
/// caught the fault.
async fn request_ok_eventually<A: Adapter>(client: &ClientOf<A>, limit: Duration) -> Incoming {
    let deadline = Instant::now() + limit;
    loop {
        match client
            .request_with(policies(), RequestOptions::timeout(MS(500)))
            .await
        {
            Ok(reply) => return reply,
            Err(e) => {
                assert!(e.is_unavailable(), "{}: {e:?}", A::NAME);
                assert!(
                    Instant::now() < deadline,
                    "{}: no success within {limit:?}: {e}",
                    A::NAME
                );
                A::sleep(MS(20)).await;
            }
        }
    }
}

/// Closes the client, asserting it returns within 3 s.
async fn close_bounded<A: Adapter>(client: &ClientOf<A>) {
    let t = Instant::now();
    assert!(
        timeout::<A, _>(Duration::from_secs(3), client.close())
            .await
            .is_some(),
        "{}: close() did not return within 3 s",
        A::NAME
    );
    assert!(!client.is_connected());
    let s = client.stats();
    assert_eq!(s.pending, 0, "{s:?}");
    assert!(s.requests_conserved(), "{s:?}");
    assert!(s.sends.conserved(), "{s:?}");
    eprintln!("{}: close took {:?}", A::NAME, t.elapsed());
}

fn allocation_id(reply: &Incoming) -> String {
    reply.payload.to_value()["allocationId"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn server_ff(server: &ServerThread) -> u64 {
    server.counters().fire_and_forget_total()
}

// ----- conformance (#3) -----

/// The upgrade carries `x-usage-key` and a `User-Agent` naming the crate and version; every
/// typed helper round-trips against the local server.
pub async fn handshake_headers_and_typed_api<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url()).pool_size(3)).await;
    assert!(client.is_connected());
    assert_eq!(client.stats().open_connections, 3);
    // The client hears the 101 before the server's task counts the connection.
    must_wait::<A>(Duration::from_secs(2), "3 connections counted", || {
        server.counters().snapshot().connections_accepted == 3
    })
    .await;
    let snap = server.counters().snapshot();
    assert_eq!(snap.connections_accepted, 3);
    assert_eq!(snap.handshakes_rejected, 0);
    assert!(snap.last_key_present, "x-usage-key sent");
    let ua = snap.last_user_agent.expect("a User-Agent header");
    assert_eq!(ua, <A::Runtime as Runtime>::USER_AGENT);
    let expected = format!("usageflow-socket-{}/{}", A::NAME, env!("CARGO_PKG_VERSION"));
    assert!(ua.starts_with(&expected), "User-Agent {ua:?} names {expected:?}");

    let p = client.get_application_policies().await.unwrap();
    assert_eq!((p.total, p.policies.len()), (2, 2));
    let c = client.get_application_config().await.unwrap();
    assert_eq!(c.monitoring_paths.len(), 1);
    assert!(!c.account_reach_limit);
    let b = client.get_blocked_endpoints().await.unwrap();
    assert_eq!(b.total, 1);
    assert_eq!(b.endpoints[0].method, "DELETE");
    let mine = RequestForAllocation {
        alias: "ledger-1".into(),
        amount: 2.0,
        allocation_id: Some("my-allocation-1".into()),
        ..Default::default()
    };
    assert_eq!(
        client.request_for_allocation(&mine).await.unwrap().allocation_id,
        "my-allocation-1"
    );
    let theirs = RequestForAllocation {
        alias: "ledger-1".into(),
        amount: 1.0,
        ..Default::default()
    };
    assert_eq!(
        client
            .request_for_allocation(&theirs)
            .await
            .unwrap()
            .allocation_id
            .len(),
        36
    );
    let mut usage = UseAllocation {
        alias: "ledger-1".into(),
        amount: 1.0,
        allocation_id: "my-allocation-1".into(),
        wait_for_confirmation: Some(true),
        metadata: None,
    };
    let confirmed = client
        .use_allocation(&usage)
        .await
        .unwrap()
        .expect("a confirmation");
    assert_eq!(confirmed.event_id.len(), 36);
    let echo = client
        .request_json("get_application_policies", Value::Null)
        .await
        .unwrap();
    assert_eq!(echo.kind, "success");

    // Fire-and-forget forms.
    usage.wait_for_confirmation = None;
    assert_eq!(client.use_allocation(&usage).await.unwrap(), None);
    client.send_request_for_allocation(&mine).unwrap();
    let chain = ReportCallChain {
        method: "GET".into(),
        url: "/x".into(),
        call_chain: Value::Array(vec![]),
        timestamp: 1.into(),
        usageflow_request_id: None,
    };
    client.report_call_chain(&chain).unwrap();
    let counters = server.counters();
    must_wait::<A>(Duration::from_secs(3), "3 fire-and-forget messages", || {
        counters.fire_and_forget_total() == 3
    })
    .await;
    assert_eq!(counters.fire_and_forget("use_allocation"), 1);
    assert_eq!(counters.fire_and_forget("request_for_allocation"), 1);
    assert_eq!(counters.fire_and_forget("report_call_chain"), 1);
    assert_eq!(counters.requests("get_application_policies"), 2);
    assert_eq!(counters.requests("request_for_allocation"), 2);
    must_wait::<A>(Duration::from_secs(2), "sends confirmed", || {
        client.stats().sends.confirmed == 3
    })
    .await;
    let s = client.stats();
    assert_eq!((s.requests, s.replies, s.denials), (7, 7, 0), "{s:?}");
    assert_eq!(s.sends_by_type["report_call_chain"].confirmed, 1);
    assert!(s.sends.conserved() && s.requests_conserved());
    close_bounded::<A>(&client).await;
}

/// A 401 is permanent and clearly reported where the caller looks (issue 14, item 4):
/// `connect` fails with `Rejected { 401 }` and leaves nothing running; a client `start`ed
/// against the same server counts rejections, emits `ConnectFailed { Rejected { 401 } }` and
/// one `KeyRejected`, its requests fail with `Rejected` (unavailable for a fail-open host,
/// and told apart by `is_rejected`), its sends queue with the reason in the stats, the key
/// appears in no error or event text, and the slots back off rather than hammer the server.
pub async fn rejected_key_is_permanent_and_clear<A: Adapter>() {
    let server = server();
    let bad_key = "wrong-Key-must-not-leak-7731";

    // `connect`: every first dial refused, so the caller gets the reason, not a dead client.
    let t = Instant::now();
    let err = ClientOf::<A>::connect(options(config_key(&server.url(), bad_key)))
        .await
        .unwrap_err();
    assert_eq!(err, ClientError::Rejected { status: 401 });
    assert!(err.is_unavailable() && err.is_rejected() && !err.is_denied());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        err.to_string()
            .contains("the server rejected the API key (HTTP 401)"),
        "{err}"
    );
    let after_connect = server.counters().handshakes_rejected();
    assert_eq!(after_connect, 2, "one dial per slot");
    A::sleep(MS(600)).await;
    assert_eq!(
        server.counters().handshakes_rejected(),
        after_connect,
        "nothing keeps dialing after connect failed"
    );

    // `start`: retries in the background and says why nothing opens.
    let client = ClientOf::<A>::start(options(config_key(&server.url(), bad_key))).unwrap();
    let mut sub = client.subscribe();
    let event = wait_event::<A>(&mut sub, Duration::from_secs(3), |e| {
        matches!(e, ClientEvent::Pool(Event::ConnectFailed { .. }))
    })
    .await
    .expect("a ConnectFailed event");
    let ClientEvent::Pool(Event::ConnectFailed { error, .. }) = &event else {
        unreachable!()
    };
    assert_eq!(error, &DialError::Rejected { status: 401 });
    assert!(error.is_auth_rejection());
    for text in [format!("{event:?}"), error.to_string()] {
        assert!(!text.contains(bad_key), "the key leaked: {text}");
    }
    wait_event::<A>(&mut sub, Duration::from_secs(3), |e| {
        matches!(e, ClientEvent::Pool(Event::KeyRejected { status: 401 }))
    })
    .await
    .expect("a KeyRejected event once both slots were refused");
    assert!(!client.is_connected());
    assert_eq!(client.availability(), Availability::Unavailable);
    let s = client.stats();
    assert!(s.rejections >= 2 && s.dial_failures >= s.rejections, "{s:?}");
    assert_eq!((s.open_connections, s.rejected_status), (0, Some(401)), "{s:?}");

    let t = Instant::now();
    let err = client.request(policies()).await.unwrap_err();
    assert!(t.elapsed() < MS(200), "refused at once");
    assert_eq!(err, ClientError::Rejected { status: 401 });
    assert!(err.is_unavailable() && err.is_rejected() && !err.is_denied());
    client
        .send(Outgoing::new("report_call_chain", json!({})))
        .expect("a send still queues");
    let s = client.stats();
    assert_eq!((s.sends.queued, s.rejected_status), (1, Some(401)), "{s:?}");
    for text in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
        assert!(!text.contains(bad_key), "the key leaked: {text}");
    }
    let snap = server.counters().snapshot();
    assert_eq!(snap.connections_accepted, 0);
    assert!(snap.last_key_present);

    // Backing off: over 1.5 s, 2 slots with delays 100, 200, 400, 800 ms dial at most ~5
    // times each.
    let before = server.counters().handshakes_rejected();
    A::sleep(MS(1500)).await;
    let during = server.counters().handshakes_rejected() - before;
    assert!(
        during <= 12,
        "{during} rejections in 1.5 s: the client hammers the server"
    );
    let s = client.stats();
    assert_eq!(s.refused_not_connected, 1);
    assert!(s.reconnects >= 2, "{s:?}");
    close_bounded::<A>(&client).await;
}

/// A 503 (or 429) answer is the service being unavailable, not a refused key (issue 14,
/// item 5): no rejection is counted, `connect` returns a client that retries, no sooner than
/// the server's `Retry-After`, and requests fail `NotConnected`.
pub async fn unavailable_status_is_not_a_rejection<A: Adapter>() {
    let server = server_with(|o| {
        o.faults.handshake_status = 503;
        o.faults.retry_after_secs = 1;
    });
    let client = connect::<A>(
        config(&server.url())
            .pool_size(1)
            .backoff_base(MS(50))
            .backoff_cap(Duration::from_secs(5))
            .backoff_jitter(0.0),
    )
    .await;
    let mut sub = client.subscribe();
    let err = client.request(policies()).await.unwrap_err();
    assert_eq!(err, ClientError::NotConnected);
    assert!(!err.is_rejected());
    let scheduled = wait_event::<A>(&mut sub, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Pool(Event::ReconnectScheduled { .. }))
    })
    .await;
    // The first failure's decision may predate the subscription; the next one is seen.
    let Some(ClientEvent::Pool(Event::ReconnectScheduled { delay, .. })) = scheduled else {
        panic!("{}: no ReconnectScheduled: {scheduled:?}", A::NAME)
    };
    assert_eq!(
        delay,
        Duration::from_secs(1),
        "Retry-After over the 50 ms schedule"
    );
    let s = client.stats();
    assert_eq!((s.rejections, s.rejected_status), (0, None), "{s:?}");
    assert!(s.dial_failures >= 1, "{s:?}");
    // Over 1.5 s at most two more dials (one a second), not the schedule's dozen.
    let before = server.counters().handshakes_rejected();
    A::sleep(MS(1500)).await;
    let during = server.counters().handshakes_rejected() - before;
    assert!(
        during <= 2,
        "{}: {during} dials in 1.5 s despite Retry-After: 1",
        A::NAME
    );
    // The service comes back: the slot opens at its next dial.
    server.faults().set_handshake_status(0);
    wait_open::<A>(&client, 1, Duration::from_secs(3)).await;
    close_bounded::<A>(&client).await;
}

/// Server pings are signs of life (issue 14, item 8): a server that never answers the
/// client's pings but pings on its own keeps its connections.
pub async fn server_pings_keep_a_connection_alive<A: Adapter>() {
    let server = server_with(|o| {
        o.faults.no_pongs = true;
        o.faults.ping_every_ms = 50;
    });
    // Without confirmation: with it, an unanswered ping of ours is fatal whatever else
    // arrives (see `delivery::a_server_that_stops_ponging_is_replaced`).
    let client = connect::<A>(
        config(&server.url())
            .pool_size(1)
            .ping_period(MS(100))
            .pong_wait(MS(300))
            .confirm_delivery(false),
    )
    .await;
    wait_open::<A>(&client, 1, Duration::from_secs(2)).await;
    A::sleep(MS(1200)).await;
    let s = client.stats();
    assert_eq!(
        s.disconnects,
        0,
        "{}: alive on the server's pings alone: {s:?}",
        A::NAME
    );
    assert!(server.counters().pings_sent() >= 10);
    // Without them, the silent server is dead within the pong wait.
    server.faults().set_ping_every_ms(0);
    A::sleep(MS(700)).await;
    let s = client.stats();
    assert!(s.disconnects >= 1, "{}: {s:?}", A::NAME);
    close_bounded::<A>(&client).await;
}

/// A resting slot comes back on demand while another slot is open (issue 14, item 1): the
/// pool is not degraded for good.
pub async fn resting_slot_returns_while_another_is_open<A: Adapter>() {
    let server = server();
    let faults = server.faults();
    let client = connect::<A>(
        config(&server.url())
            .pool_size(2)
            .backoff_attempts(1)
            .backoff_base(MS(20))
            .backoff_cap(MS(200))
            .backoff_jitter(0.0),
    )
    .await;
    wait_open::<A>(&client, 2, Duration::from_secs(2)).await;
    // Slot down and kept down: it uses its one retry and rests.
    faults.set_handshake_status(503);
    faults.set_drop_once_on(Some("/rest-me".into()));
    client
        .send(Outgoing::new("report_call_chain", json!({"url": "/rest-me"})))
        .unwrap();
    let t = Instant::now();
    while client.stats().exhausted == 0 {
        assert!(t.elapsed() < Duration::from_secs(3), "{}: never rested", A::NAME);
        A::sleep(MS(10)).await;
    }
    assert_eq!(client.stats().open_connections, 1);
    assert_eq!(client.availability(), Availability::Degraded);
    // The service is back; requests on the open slot re-arm the resting one.
    faults.set_handshake_status(0);
    A::sleep(MS(250)).await;
    client.request(policies()).await.expect("served by the open slot");
    wait_open::<A>(&client, 2, Duration::from_secs(2)).await;
    let s = client.stats();
    assert!(s.rearms >= 1, "{s:?}");
    close_bounded::<A>(&client).await;
}

/// Replies are correlated in each reply style: `replyTo` + fresh `id`, both equal, `id` only,
/// and a careless server's numeric `id` (issue 14, item 2: a field of another type never
/// makes the reply unreadable).
pub async fn correlation_in_every_reply_style<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url())).await;
    for style in [
        ReplyStyle::ReplyTo,
        ReplyStyle::Both,
        ReplyStyle::IdOnly,
        ReplyStyle::Hostile,
    ] {
        server.faults().set_reply_style(style);
        let ids: Vec<String> = (0..20).map(|i| format!("{style:?}-{i}")).collect();
        let replies = join_all(ids.iter().map(|id| client.request(allocation(id)))).await;
        for (id, reply) in ids.iter().zip(replies) {
            let reply = reply.unwrap_or_else(|e| panic!("{style:?}: {e}"));
            assert_eq!(allocation_id(&reply), *id);
            match style {
                ReplyStyle::ReplyTo => {
                    assert!(reply.reply_to.is_some() && reply.id.is_some() && reply.id != reply.reply_to)
                }
                ReplyStyle::Both => assert!(reply.reply_to.is_some() && reply.id == reply.reply_to),
                ReplyStyle::IdOnly => assert!(reply.reply_to.is_none() && reply.id.is_some()),
                _ => assert!(
                    reply.reply_to.is_some() && reply.id.is_none(),
                    "a numeric id is no id"
                ),
            }
        }
        let p = client.get_application_policies().await.unwrap();
        assert_eq!(p.total, 2);
    }
    // A denial whose `error` is an object is a denial, at once, not a timeout.
    let t = Instant::now();
    let denied = client
        .request(Outgoing::new(
            "request_for_allocation",
            json!({"alias": "deny", "amount": 1.0}),
        ))
        .await
        .unwrap_err();
    assert!(denied.is_denied(), "{}: {denied:?}", A::NAME);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let text = denied.denial_text().unwrap_or_default().to_owned();
    assert!(text.contains("\"code\":429") && text.contains("alias"), "{text}");
    let s = client.stats();
    assert_eq!(
        (
            s.replies,
            s.denials,
            s.orphan_replies,
            s.skipped_frames,
            s.disconnects
        ),
        (84, 1, 0, 0, 0)
    );
    close_bounded::<A>(&client).await;
}

/// With random reply delays many concurrent requests complete out of order, each with its
/// own reply (the allocation id is echoed).
pub async fn out_of_order_replies<A: Adapter>() {
    let server = server_with(|o| o.faults.reply_jitter_ms = 100);
    let client = connect::<A>(config(&server.url())).await;
    let order = RefCell::new(Vec::new());
    let n = 300;
    let results = join_all((0..n).map(|i| {
        let (client, order) = (&client, &order);
        async move {
            let id = format!("ooo-{i}");
            let reply = client.request(allocation(&id)).await.unwrap();
            assert_eq!(allocation_id(&reply), id, "request {i} got someone else's reply");
            order.borrow_mut().push(i);
        }
    }))
    .await;
    assert_eq!(results.len(), n);
    let order = order.into_inner();
    assert!(
        order.windows(2).any(|w| w[0] > w[1]),
        "replies came back out of order"
    );
    let s = client.stats();
    assert_eq!(
        (s.requests, s.replies, s.pending, s.orphan_replies),
        (300, 300, 0, 0),
        "{s:?}"
    );
    close_bounded::<A>(&client).await;
}

/// A denial (alias "deny", negative amount, unknown type) is `Denied`: a round trip whose
/// answer is no, not an unavailability; the connection stays up.
pub async fn denials_are_distinct_from_unavailability<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url())).await;
    let deny = RequestForAllocation {
        alias: "deny".into(),
        amount: 1.0,
        ..Default::default()
    };
    let e = client.request_for_allocation(&deny).await.unwrap_err();
    assert!(e.is_denied() && !e.is_unavailable(), "{e:?}");
    assert!(e.denial_text().unwrap().contains("denied"), "{e}");
    assert!(e.denial().unwrap().reply_to.is_some());
    let negative = UseAllocation {
        alias: "ledger-1".into(),
        amount: -1.0,
        allocation_id: "a".into(),
        wait_for_confirmation: Some(true),
        metadata: None,
    };
    let e = client.use_allocation(&negative).await.unwrap_err();
    assert!(e.is_denied(), "{e:?}");
    let e = client
        .request(Outgoing::new("no_such_type", Value::Null))
        .await
        .unwrap_err();
    assert!(e.is_denied(), "{e:?}");
    assert!(e.denial_text().unwrap().contains("unknown message type"), "{e}");
    // An unavailability, for contrast: a timeout.
    server.faults().set_reply_delay_ms(1000);
    let e = client
        .request_with(policies(), RequestOptions::timeout(MS(50)))
        .await
        .unwrap_err();
    assert!(e.is_unavailable() && !e.is_denied(), "{e:?}");
    let s = client.stats();
    assert_eq!(
        (s.denials, s.replies, s.timeouts, s.disconnects),
        (3, 0, 1, 0),
        "{s:?}"
    );
    assert_eq!(server.counters().snapshot().denials_sent, 3);
    assert!(client.is_connected());
    close_bounded::<A>(&client).await;
}

/// A server slower than the request timeout gives `Timeout` at about the deadline (default
/// and per-request), counted; the late replies are orphans; the connection stays up.
pub async fn timeout_at_the_deadline<A: Adapter>() {
    let server = server_with(|o| o.faults.reply_delay_ms = 1500);
    let client = connect::<A>(config(&server.url()).request_timeout(MS(400))).await;
    let t = Instant::now();
    let e = client
        .request_with(policies(), RequestOptions::timeout(MS(300)))
        .await
        .unwrap_err();
    let elapsed = t.elapsed();
    assert_eq!(e, ClientError::Timeout);
    assert!(
        elapsed >= MS(300) && elapsed < MS(800),
        "per-request timeout after {elapsed:?}"
    );
    let t = Instant::now();
    let e = client.request(policies()).await.unwrap_err();
    let elapsed = t.elapsed();
    assert_eq!(e, ClientError::Timeout);
    assert!(
        elapsed >= MS(400) && elapsed < MS(900),
        "default timeout after {elapsed:?}"
    );
    assert_eq!(client.stats().timeouts, 2);
    must_wait::<A>(
        Duration::from_secs(3),
        "2 late replies counted as orphans",
        || client.stats().orphan_replies == 2,
    )
    .await;
    let s = client.stats();
    assert_eq!((s.disconnects, s.replies, s.pending), (0, 0, 0), "{s:?}");
    assert!(client.is_connected());
    close_bounded::<A>(&client).await;
}

/// Duplicate, stray, garbage and binary frames are counted (orphans, skipped) and the
/// connection stays up; every request still gets its own reply.
pub async fn noise_frames_are_counted_and_harmless<A: Adapter>() {
    let server = server_with(|o| {
        o.faults = FaultConfig {
            duplicate_replies: true,
            garbage_every: 3,
            binary_every: 4,
            stray_every: 5,
            ..Default::default()
        }
    });
    let client = connect::<A>(config(&server.url())).await;
    let mut sub = client.subscribe();
    for batch in 0..6 {
        let ids: Vec<String> = (0..10).map(|i| format!("noise-{batch}-{i}")).collect();
        let replies = join_all(ids.iter().map(|id| client.request(allocation(id)))).await;
        for (id, reply) in ids.iter().zip(replies) {
            assert_eq!(allocation_id(&reply.unwrap()), *id);
        }
    }
    let counters = server.counters();
    must_wait::<A>(Duration::from_secs(3), "every noise frame counted", || {
        let (s, c) = (client.stats(), counters.snapshot());
        s.orphan_replies == c.duplicates_sent + c.stray_sent
            && s.skipped_frames == c.garbage_sent + c.binary_sent
    })
    .await;
    let (s, c) = (client.stats(), counters.snapshot());
    assert_eq!(c.duplicates_sent, 60);
    assert!(
        c.garbage_sent >= 20 && c.binary_sent >= 15 && c.stray_sent >= 12,
        "{c:?}"
    );
    assert_eq!((s.replies, s.disconnects, s.dials), (60, 0, 2), "{s:?}");
    assert!(client.is_connected());
    let unsolicited = wait_event::<A>(&mut sub, Duration::from_secs(1), |e| {
        matches!(e, ClientEvent::Unsolicited { .. })
    })
    .await;
    assert!(unsolicited.is_some(), "orphans are handed to subscribers");
    close_bounded::<A>(&client).await;
}

/// A subscriber that reads nothing while the server pushes many large unsolicited frames
/// makes the client hold at most `max_unsolicited_bytes` of them (plus one frame), far below
/// the event stream's count bound: the oldest are dropped, the subscriber is told how many it
/// lost, and it still receives the newest.
pub async fn stalled_subscriber_holds_bounded_bytes<A: Adapter>() {
    const FRAMES: u64 = 200;
    const PAYLOAD: u64 = 16 * 1024;
    const BUDGET: usize = 256 * 1024;
    let server = server();
    let config = config(&server.url())
        .pool_size(1)
        .build()
        .expect("a valid test config");
    let options = ClientOptions::builder(config)
        .max_unsolicited_bytes(BUDGET)
        .build();
    let client = ClientOf::<A>::connect(options).await.expect("connect");
    let mut sub = client.subscribe();
    let faults = server.faults();
    faults.set_push_size(PAYLOAD);
    faults.set_push_frames(FRAMES);
    // The pool counts a frame as an orphan in the same step that publishes it: once all are
    // counted, the stream holds what it will hold for this subscriber.
    must_wait::<A>(Duration::from_secs(10), "every pushed frame handed over", || {
        client.stats().orphan_replies == FRAMES
    })
    .await;
    assert_eq!(server.counters().snapshot().pushes_sent, FRAMES);

    let newest = format!("push-{}", FRAMES - 1);
    let (mut frames, mut bytes, mut largest, mut lost) = (0u64, 0usize, 0usize, 0u64);
    loop {
        let event = timeout::<A, _>(Duration::from_secs(2), recv_event(&mut sub)).await;
        match event.flatten() {
            Some(Ok(ClientEvent::Unsolicited { frame, .. })) => {
                frames += 1;
                bytes += frame.text_len();
                largest = largest.max(frame.text_len());
                if frame.id.as_deref() == Some(newest.as_str()) {
                    break;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(n)) => lost += n,
            None => panic!(
                "{}: no newest frame after {frames} frames and {lost} lost events",
                A::NAME
            ),
        }
    }
    eprintln!(
        "{}: held {frames} frames ({bytes} bytes) of {FRAMES}, {lost} events lost",
        A::NAME
    );
    assert!(bytes <= BUDGET + largest, "{}: held {bytes} bytes", A::NAME);
    assert!(
        frames <= BUDGET as u64 / PAYLOAD + 1,
        "{}: held {frames} frames",
        A::NAME
    );
    assert!(frames >= 2, "{}: the newest frames are kept: {frames}", A::NAME);
    assert!(
        frames + lost >= FRAMES,
        "{}: every frame is received or counted as lost: {frames} + {lost}",
        A::NAME
    );
    assert!(client.is_connected());
    close_bounded::<A>(&client).await;
}

/// Requests in flight on a connection the server closes fail at once with
/// `ConnectionLost`, far before their timeout; the pool reconnects.
pub async fn in_flight_fail_at_once_on_server_close<A: Adapter>() {
    let server = server_with(|o| {
        o.faults.reply_delay_ms = 10_000;
        o.faults.close_after_messages = 10;
    });
    let client = connect::<A>(
        config(&server.url())
            .pool_size(1)
            .request_timeout(Duration::from_secs(10))
            .resend_idempotent(false),
    )
    .await;
    let t = Instant::now();
    let results = join_all((0..10).map(|_| client.request(policies()))).await;
    let elapsed = t.elapsed();
    for r in &results {
        match r {
            Err(ClientError::ConnectionLost(DisconnectReason::Closed(_))) => {}
            other => panic!("expected ConnectionLost(Closed), got {other:?}"),
        }
    }
    assert!(
        elapsed < Duration::from_secs(2),
        "failed after {elapsed:?}, timeout is 10 s"
    );
    server.faults().clear();
    request_ok_eventually::<A>(&client, Duration::from_secs(5)).await;
    let s = client.stats();
    assert_eq!((s.connection_lost, s.timeouts, s.pending), (10, 0, 0), "{s:?}");
    assert!(s.reconnects >= 1 && s.disconnects >= 1, "{s:?}");
    close_bounded::<A>(&client).await;
}

/// Requests in flight when the server process dies fail at once with `ConnectionLost`.
pub async fn in_flight_fail_at_once_on_kill<A: Adapter>() {
    let server = server_with(|o| o.faults.reply_delay_ms = 10_000);
    let client = connect::<A>(
        config(&server.url())
            .request_timeout(Duration::from_secs(10))
            .resend_idempotent(false),
    )
    .await;
    let killed_at = Cell::new(None);
    let requests = join_all((0..20).map(|_| async {
        let r = client.request(policies()).await;
        (r, Instant::now())
    }));
    let killer = async {
        let counters = server.counters();
        must_wait::<A>(Duration::from_secs(3), "20 requests at the server", || {
            counters.requests_total() == 20
        })
        .await;
        killed_at.set(Some(Instant::now()));
        server.kill();
    };
    let (results, ()) = join(requests, killer).await;
    let killed_at = killed_at.get().unwrap();
    for (r, at) in results {
        assert!(matches!(r, Err(ClientError::ConnectionLost(_))), "{r:?}");
        let after = at.saturating_duration_since(killed_at);
        assert!(
            after < MS(2500),
            "failed {after:?} after the kill (the kill itself blocks up to 2 s)"
        );
    }
    let s = client.stats();
    assert_eq!(
        (s.connection_lost, s.pending, s.open_connections),
        (20, 0, 0),
        "{s:?}"
    );
    close_bounded::<A>(&client).await;
}

/// After the server is killed and restarted on the same port, the pool reconnects by itself.
pub async fn reconnects_after_restart<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url())).await;
    let mut sub = client.subscribe();
    client.request(policies()).await.unwrap();
    server.kill();
    must_wait::<A>(Duration::from_secs(2), "disconnected", || !client.is_connected()).await;
    let event = wait_event::<A>(&mut sub, Duration::from_secs(1), |e| {
        matches!(e, ClientEvent::Pool(Event::Disconnected { .. }))
    })
    .await;
    assert!(event.is_some());
    let t = Instant::now();
    assert_eq!(
        client.request(policies()).await.unwrap_err(),
        ClientError::NotConnected
    );
    assert!(t.elapsed() < MS(200));
    server.restart().unwrap();
    must_wait::<A>(Duration::from_secs(4), "both slots reconnected", || {
        client.stats().open_connections == 2
    })
    .await;
    client.request(policies()).await.unwrap();
    let s = client.stats();
    assert!(s.reconnects >= 2 && s.disconnects == 2, "{s:?}");
    assert_eq!(server.counters().connections_accepted(), 4);
    close_bounded::<A>(&client).await;
}

/// A frozen server (no reads, no writes, TCP open) is detected by the read deadline within
/// about the pong wait; the pool reconnects once the server is healthy.
pub async fn frozen_server_read_timeout<A: Adapter>() {
    dead_peer_read_timeout::<A>(|f, on| f.set_freeze(on)).await;
}

/// A server that never answers pings (and sends nothing else) is detected the same way.
pub async fn no_pong_server_read_timeout<A: Adapter>() {
    dead_peer_read_timeout::<A>(|f, on| f.set_no_pongs(on)).await;
}

async fn dead_peer_read_timeout<A: Adapter>(fault: impl Fn(&usageflow_socket_server::Faults, bool)) {
    let server = server();
    let pong_wait = MS(600);
    let client = connect::<A>(config(&server.url()).pool_size(1).pong_wait(pong_wait)).await;
    client.request(policies()).await.unwrap();
    let mut sub = client.subscribe();
    let t = Instant::now();
    fault(&server.faults(), true);
    let event = wait_event::<A>(&mut sub, Duration::from_secs(3), |e| {
        matches!(e, ClientEvent::Pool(Event::Disconnected { .. }))
    })
    .await
    .expect("a disconnect");
    let elapsed = t.elapsed();
    fault(&server.faults(), false);
    let ClientEvent::Pool(Event::Disconnected { reason, .. }) = event else {
        unreachable!()
    };
    assert_eq!(reason, DisconnectReason::ReadTimeout);
    // The deadline is the last pong (at most a ping period, 200 ms, before the fault) plus
    // the pong wait.
    assert!(
        elapsed >= pong_wait - MS(250) && elapsed <= pong_wait + MS(500),
        "detected after {elapsed:?} (pong wait {pong_wait:?})"
    );
    request_ok_eventually::<A>(&client, Duration::from_secs(5)).await;
    let s = client.stats();
    assert!(s.reconnects >= 1 && s.pending == 0, "{s:?}");
    close_bounded::<A>(&client).await;
}

/// Writes keep succeeding long after the first ping (the Go package's writes all failed
/// ~40 s in): requests and sends over 15 ping periods, no disconnect.
pub async fn writes_keep_working_across_many_ping_periods<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url())).await;
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs(3) {
        let id = format!("long-{n}");
        assert_eq!(allocation_id(&client.request(allocation(&id)).await.unwrap()), id);
        client.send(report(n, 32)).unwrap();
        n += 1;
        A::sleep(MS(25)).await;
    }
    let counters = server.counters();
    must_wait::<A>(Duration::from_secs(2), "every send at the server", || {
        counters.fire_and_forget_total() == n
    })
    .await;
    // And confirmed: the last barrier comes within `confirm_after`.
    client.flush(Duration::from_secs(2)).await.unwrap();
    let s = client.stats();
    assert_eq!(
        (s.disconnects, s.dials, s.replies, s.sends.confirmed),
        (0, 2, n, n),
        "{s:?}"
    );
    assert!(s.pings >= 20, "pings: {}", s.pings);
    assert!(counters.pings_received() >= 20);
    close_bounded::<A>(&client).await;
}

/// Fire-and-forget messages sent while the server is down wait in the outbox (a full
/// outbox refuses with `OutboxFull`, handing the message back, counted) and are flushed
/// after the reconnect: the server counts exactly `sent`.
pub async fn outbox_flushed_after_reconnect<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url()).outbox_capacity(40)).await;
    for i in 0..5 {
        client.send(report(i, 16)).unwrap();
    }
    // Confirmed: the server read them (so none is in flight when it is killed).
    client.flush(Duration::from_secs(2)).await.unwrap();
    assert_eq!(server_ff(&server), 5);
    server.kill();
    must_wait::<A>(Duration::from_secs(2), "disconnected", || !client.is_connected()).await;
    let mut full = 0;
    for i in 5..55 {
        match client.send(report(i, 16)) {
            Ok(()) => {}
            Err(ClientError::OutboxFull(m)) => {
                assert_eq!(m, report(i, 16), "the refused message is handed back");
                full += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(full, 10);
    let s = client.stats();
    assert_eq!(
        (s.outbox_depth, s.sends.queued, s.sends.dropped),
        (40, 40, 10),
        "{s:?}"
    );
    server.restart().unwrap();
    must_wait::<A>(Duration::from_secs(5), "the outbox flushed", || {
        let s = client.stats();
        s.sends.queued == 0 && s.sends.written == 0 && server_ff(&server) == s.sends.confirmed
    })
    .await;
    let s = client.stats();
    assert_eq!(s.sends.confirmed, 45);
    assert_eq!(
        server_ff(&server),
        s.sends.confirmed,
        "exact: no connection died with sends in flight"
    );
    assert_eq!(
        (s.sends.sends, s.sends.unconfirmed, s.sends.expired),
        (55, 0, 0),
        "{s:?}"
    );
    assert!(s.sends.conserved());
    close_bounded::<A>(&client).await;
}

/// `close()` ends pending requests (`Closed`), refuses new work, closes every connection
/// with code 1000, and nothing reconnects afterwards.
pub async fn close_refuses_work_and_closes_cleanly<A: Adapter>() {
    let server = server_with(|o| o.faults.reply_delay_ms = 3000);
    let client = connect::<A>(
        config(&server.url())
            .pool_size(3)
            .request_timeout(Duration::from_secs(10)),
    )
    .await;
    let counters = server.counters();
    let closer = async {
        must_wait::<A>(Duration::from_secs(2), "the request at the server", || {
            counters.requests_total() == 1
        })
        .await;
        let t = Instant::now();
        client.close().await;
        t.elapsed()
    };
    let (pending, took) = join(client.request(policies()), closer).await;
    assert_eq!(pending.unwrap_err(), ClientError::Closed);
    assert!(took < Duration::from_secs(2), "close took {took:?}");
    // Idempotent, and refuses new work.
    assert!(timeout::<A, _>(MS(500), client.close()).await.is_some());
    assert_eq!(client.request(policies()).await.unwrap_err(), ClientError::Closed);
    assert_eq!(client.send(report(0, 1)).unwrap_err(), ClientError::Closed);
    assert!(!client.is_connected());
    assert_eq!(client.availability(), Availability::Unavailable);
    must_wait::<A>(Duration::from_secs(2), "3 close frames", || {
        counters.close_codes().len() == 3
    })
    .await;
    assert!(
        counters.close_codes().iter().all(|c| *c == Some(1000)),
        "{:?}",
        counters.close_codes()
    );
    // Nothing dials again: watch over 6 backoff bases.
    let accepted = counters.snapshot().tcp_accepted;
    A::sleep(MS(600)).await;
    assert_eq!(
        counters.snapshot().tcp_accepted,
        accepted,
        "a closed client dialed"
    );
    let s = client.stats();
    assert_eq!(
        (s.closed, s.refused_closed, s.sends.closed, s.pending),
        (1, 1, 1, 0),
        "{s:?}"
    );
    assert_eq!(s.dials, 3);
    assert!(s.requests_conserved() && s.sends.conserved());
}

/// `is_connected()` follows the server: false while it is down (even right after
/// `connect`), true once a connection opens, false after a kill and after `close`.
pub async fn is_connected_transitions<A: Adapter>() {
    let server = server();
    server.kill();
    let client = connect::<A>(config(&server.url())).await;
    assert!(!client.is_connected());
    assert_eq!(client.availability(), Availability::Unavailable);
    server.restart().unwrap();
    must_wait::<A>(Duration::from_secs(3), "connected", || client.is_connected()).await;
    // Usable at once; `Available` (every slot open) only after the core's 5 s hysteresis.
    assert_ne!(client.availability(), Availability::Unavailable);
    must_wait::<A>(Duration::from_secs(3), "both slots open", || {
        client.stats().open_connections == 2
    })
    .await;
    server.kill();
    must_wait::<A>(Duration::from_secs(2), "disconnected", || !client.is_connected()).await;
    server.restart().unwrap();
    must_wait::<A>(Duration::from_secs(3), "connected again", || {
        client.is_connected()
    })
    .await;
    client.close().await;
    assert!(!client.is_connected());
}

/// `wss://` against a self-signed certificate: works when the client trusts it as a root,
/// fails (a network dial error, not a rejection) when it does not.
pub async fn tls_self_signed<A: Adapter>() {
    let (tls, cert) = TlsOptions::self_signed().unwrap();
    let server = server_with(|o| o.tls = Some(tls));
    let url = server.url_for_host("localhost");
    assert!(url.starts_with("wss://"));

    let trusted = ClientOptions::builder(config(&url).build().unwrap())
        .add_root_certificate(cert.clone())
        .webpki_roots(false)
        .build();
    let client = ClientOf::<A>::connect(trusted).await.unwrap();
    assert!(client.is_connected());
    let p = client.get_application_policies().await.unwrap();
    assert_eq!(p.total, 2);
    assert!(server.counters().snapshot().last_key_present);
    close_bounded::<A>(&client).await;

    let untrusted = ClientOptions::builder(config(&url).build().unwrap()).build();
    let client = ClientOf::<A>::connect(untrusted).await.unwrap();
    let mut sub = client.subscribe();
    assert!(!client.is_connected());
    let event = wait_event::<A>(&mut sub, Duration::from_secs(3), |e| {
        matches!(e, ClientEvent::Pool(Event::ConnectFailed { .. }))
    })
    .await
    .expect("a ConnectFailed event");
    let ClientEvent::Pool(Event::ConnectFailed { error, .. }) = event else {
        unreachable!()
    };
    // The TLS failure, kept whole: an I/O error of the TLS stage.
    let DialError::Io(failure) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(failure.stage(), usageflow_socket_core::DialStage::Tls, "{error}");
    assert_eq!(
        client.request(policies()).await.unwrap_err(),
        ClientError::NotConnected
    );
    let s = client.stats();
    assert!(s.dial_failures >= 2 && s.rejections == 0, "{s:?}");
    assert!(server.counters().snapshot().handshakes_failed >= 1);
    close_bounded::<A>(&client).await;
}

/// Dropping a request future cancels its pending entry (pending 0, cancelled 1); its late
/// reply is an orphan.
pub async fn dropped_request_future_cancels<A: Adapter>() {
    let server = server_with(|o| o.faults.reply_delay_ms = 800);
    let client = connect::<A>(config(&server.url())).await;
    let counters = server.counters();
    // The timeout drops the request future after 300 ms.
    let r = timeout::<A, _>(MS(300), client.request(policies())).await;
    assert!(r.is_none());
    assert_eq!(
        counters.requests_total(),
        1,
        "the request went out before the drop"
    );
    let s = client.stats();
    assert_eq!((s.requests, s.pending, s.cancelled), (1, 0, 1), "{s:?}");
    assert!(s.pending_per_slot.iter().all(|p| *p == 0), "{s:?}");
    assert!(s.requests_conserved());
    must_wait::<A>(Duration::from_secs(2), "the late reply is an orphan", || {
        client.stats().orphan_replies == 1
    })
    .await;
    close_bounded::<A>(&client).await;
}

/// Dropping the last client handle closes the pool: every connection gets a 1000 close
/// frame and nothing dials again.
pub async fn dropping_the_last_handle_closes<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url()).pool_size(3)).await;
    let other = client.clone();
    drop(client);
    other.request(policies()).await.unwrap();
    drop(other);
    let counters = server.counters();
    must_wait::<A>(Duration::from_secs(3), "3 close frames", || {
        counters.close_codes().len() == 3
    })
    .await;
    assert!(
        counters.close_codes().iter().all(|c| *c == Some(1000)),
        "{:?}",
        counters.close_codes()
    );
    must_wait::<A>(Duration::from_secs(3), "no connection open", || {
        counters.open_connections() == 0
    })
    .await;
    let accepted = counters.snapshot().tcp_accepted;
    A::sleep(MS(400)).await;
    assert_eq!(
        counters.snapshot().tcp_accepted,
        accepted,
        "a dropped client dialed"
    );
}

/// Every open connection at its in-flight cap: a request is refused at once with
/// `Backpressure` (unavailable), nothing sent.
pub async fn backpressure_refuses_at_once<A: Adapter>() {
    let server = server_with(|o| o.faults.reply_delay_ms = 500);
    let client = connect::<A>(config(&server.url()).pool_size(1).max_in_flight(2)).await;
    let third = async {
        let counters = server.counters();
        must_wait::<A>(Duration::from_secs(2), "2 requests at the server", || {
            counters.requests_total() == 2
        })
        .await;
        let t = Instant::now();
        let r = client.request(policies()).await;
        (r, t.elapsed())
    };
    let (first, (third, took)) = join(
        join(client.request(policies()), client.request(policies())),
        third,
    )
    .await;
    assert!(first.0.is_ok() && first.1.is_ok());
    let e = third.unwrap_err();
    assert_eq!(e, ClientError::Backpressure { max_in_flight: 2 });
    assert!(e.is_unavailable() && took < MS(100), "{took:?}");
    assert_eq!(server.counters().requests_total(), 2);
    let s = client.stats();
    assert_eq!(
        (s.requests, s.replies, s.refused_backpressure),
        (2, 2, 1),
        "{s:?}"
    );
    close_bounded::<A>(&client).await;
}

/// A message that waits in the outbox past its TTL is dropped and counted `expired`, with a
/// `MessageDropped` event; it is not sent after the reconnect.
pub async fn outbox_ttl_expires<A: Adapter>() {
    let server = server();
    server.kill();
    let client = connect::<A>(config(&server.url()).outbox_ttl(MS(200))).await;
    let mut sub = client.subscribe();
    client.send(report(0, 8)).unwrap();
    let event = wait_event::<A>(&mut sub, Duration::from_secs(2), |e| {
        matches!(e, ClientEvent::Pool(Event::MessageDropped { .. }))
    })
    .await;
    assert!(event.is_some(), "a MessageDropped event");
    let s = client.stats();
    assert_eq!(
        (s.sends.expired, s.sends.queued, s.outbox_depth),
        (1, 0, 0),
        "{:?}",
        s.sends
    );
    server.restart().unwrap();
    must_wait::<A>(Duration::from_secs(3), "connected", || client.is_connected()).await;
    client.send(report(1, 8)).unwrap();
    must_wait::<A>(Duration::from_secs(2), "the fresh send delivered", || {
        server_ff(&server) == 1
    })
    .await;
    A::sleep(MS(100)).await;
    assert_eq!(server_ff(&server), 1, "the expired message was not sent");
    close_bounded::<A>(&client).await;
}

/// Slots that used up their reconnect attempts rest (no dials), and the next request
/// re-arms them: a pool in use never stays dead for good.
pub async fn exhausted_slots_rearm_on_use<A: Adapter>() {
    let server = server();
    server.kill();
    let client = connect::<A>(config(&server.url()).backoff_attempts(2)).await;
    let mut sub = client.subscribe();
    must_wait::<A>(Duration::from_secs(3), "both slots exhausted", || {
        client.stats().exhausted >= 2
    })
    .await;
    wait_event::<A>(&mut sub, MS(500), |e| {
        matches!(e, ClientEvent::Pool(Event::AttemptsExhausted { .. }))
    })
    .await
    .expect("an AttemptsExhausted event");
    server.restart().unwrap();
    let dials = client.stats().dials;
    A::sleep(MS(500)).await;
    assert_eq!(client.stats().dials, dials, "a resting slot dialed by itself");
    assert!(!client.is_connected());
    assert_eq!(
        client.request(policies()).await.unwrap_err(),
        ClientError::NotConnected
    );
    must_wait::<A>(Duration::from_secs(3), "re-armed and connected", || {
        client.is_connected()
    })
    .await;
    client.request(policies()).await.unwrap();
    close_bounded::<A>(&client).await;
}

// ----- load generation for the fault tests (#5) -----

/// Shared state of a load run: workers loop until `stop`; sends only while `sends_on`.
#[derive(Default)]
pub struct Load {
    pub stop: Cell<bool>,
    pub sends_on: Cell<bool>,
    pub issued: Cell<u64>,
    pub outcomes: RefCell<Outcomes>,
    pub sends_issued: Cell<u64>,
    pub sends_refused: Cell<u64>,
    next: Cell<u64>,
}

impl Load {
    pub fn new() -> Self {
        let l = Self::default();
        l.sends_on.set(true);
        l
    }

    fn next(&self) -> u64 {
        let n = self.next.get();
        self.next.set(n + 1);
        n
    }

    pub fn outcomes(&self) -> Outcomes {
        self.outcomes.borrow().clone()
    }
}

/// Issues requests back to back (a mix: non-idempotent policies, idempotent allocations,
/// denials), each with `timeout`, pausing `pace` after each.
pub async fn request_worker<A: Adapter>(
    client: &ClientOf<A>,
    load: &Load,
    timeout: Duration,
    pace: Duration,
) {
    while !load.stop.get() {
        let n = load.next();
        load.issued.set(load.issued.get() + 1);
        let options = RequestOptions::timeout(timeout);
        let result = match n % 10 {
            0 => {
                let deny = RequestForAllocation {
                    alias: "deny".into(),
                    amount: 1.0,
                    ..Default::default()
                };
                client.request_with(deny.to_message(), options).await
            }
            1 | 4 | 7 => {
                let id = format!("load-{n}");
                let r = client.request_with(allocation(&id), options).await;
                if let Ok(reply) = &r {
                    assert_eq!(allocation_id(reply), id, "a reply for another request");
                }
                r
            }
            _ => client.request_with(policies(), options).await,
        };
        if let Err(e) = &result {
            assert!(
                e.is_denied() || e.is_unavailable(),
                "{}: unexpected error {e:?}",
                A::NAME
            );
        }
        load.outcomes.borrow_mut().record(&result);
        A::sleep(pace).await;
    }
}

/// Sends a `report_call_chain` of `size` bytes every `pace` while `sends_on`.
pub async fn send_worker<A: Adapter>(client: &ClientOf<A>, load: &Load, size: usize, pace: Duration) {
    while !load.stop.get() {
        if load.sends_on.get() {
            let n = load.next();
            load.sends_issued.set(load.sends_issued.get() + 1);
            match client.send(report(n, size)) {
                Ok(()) => {}
                Err(ClientError::OutboxFull(_)) | Err(ClientError::Closed) => {
                    load.sends_refused.set(load.sends_refused.get() + 1)
                }
                Err(e) => panic!("{}: unexpected send error {e:?}", A::NAME),
            }
        }
        A::sleep(pace).await;
    }
}

/// Runs `workers` request workers and one send worker alongside `script`; stops them when
/// the script returns and waits for every worker to finish.
async fn with_load<A: Adapter, T>(
    client: &ClientOf<A>,
    load: &Load,
    workers: usize,
    timeout: Duration,
    script: impl std::future::Future<Output = T>,
) -> T {
    let requests = join_all((0..workers).map(|_| request_worker::<A>(client, load, timeout, MS(2))));
    let sends = send_worker::<A>(client, load, 64, MS(2));
    let script = async {
        let out = script.await;
        load.stop.set(true);
        out
    };
    let ((_, ()), out) = join(join(requests, sends), script).await;
    out
}

/// Stops the sends and waits until every message is flushed and counted by the server, so a
/// fault injected next cannot catch a message in flight (which would make the server's count
/// inexact: a message flushed to a socket that is then killed is `sent` but never arrives).
async fn quiesce_sends<A: Adapter>(client: &ClientOf<A>, load: &Load, server: &ServerThread) {
    load.sends_on.set(false);
    must_wait::<A>(Duration::from_secs(3), "sends quiesced", || {
        let s = client.stats();
        s.sends.queued == 0 && s.sends.written == 0 && server_ff(server) == s.sends.confirmed
    })
    .await;
}

/// The end-of-test checks: outcomes vs stats, nothing pending, send conservation.
fn check_load<A: Adapter>(name: &str, client: &ClientOf<A>, load: &Load) -> Stats {
    let s = client.stats();
    let o = load.outcomes();
    eprintln!("{}::{name}: outcomes {o:?}", A::NAME);
    eprintln!("{}::{name}: sends {:?}", A::NAME, s.sends);
    assert_outcomes_match(name, load.issued.get(), &o, &s);
    assert!(s.sends.conserved(), "{name}: {:?}", s.sends);
    // The load's own stream (`report`): a test may send other types beside it.
    let own = s
        .sends_by_type
        .get("report_call_chain")
        .cloned()
        .unwrap_or_default();
    assert_eq!(own.sends, load.sends_issued.get());
    assert_eq!(own.dropped + own.closed, load.sends_refused.get());
    s
}

/// Waits until the outbox and the writers are empty and the server counted what it will.
async fn settle_sends<A: Adapter>(client: &ClientOf<A>, server: &ServerThread, expect_exact: bool) {
    let ok = wait_until::<A>(Duration::from_secs(5), || {
        let s = client.stats();
        s.sends.queued == 0
            && s.sends.written == 0
            && (!expect_exact || server_ff(server) == s.sends.confirmed)
    })
    .await;
    let s = client.stats();
    assert!(
        ok,
        "{}: sends did not settle: server {} vs {:?}",
        A::NAME,
        server_ff(server),
        s.sends
    );
    if !expect_exact {
        // The last messages flushed may still be on their way to the server (or lost with a
        // killed socket): give its count time to reach `sent`, or to stop moving.
        let mut last = (server_ff(server), Instant::now());
        wait_until::<A>(Duration::from_secs(3), || {
            let counted = server_ff(server);
            if counted != last.0 {
                last = (counted, Instant::now());
            }
            counted >= s.sends.confirmed || last.1.elapsed() >= MS(300)
        })
        .await;
    }
}

// ----- fault tests (#5) -----

/// The server is killed and restarted twice under load (concurrent requests + sends).
/// First outage: sends quiesced before the kill, so the server's count must equal `sent`
/// exactly. Second outage: sends keep flowing into the kill; then messages flushed to the
/// dying sockets are `sent` yet may never reach the server, so the server's count is only
/// bounded: `sent - window <= server <= sent + lost`, where `window` is what the client
/// counted `sent` between the kill and its noticing the loss.
pub async fn fault_kill_restart_under_load<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url()).pool_size(4)).await;
    let load = Load::new();
    let window = with_load::<A, _>(&client, &load, 8, Duration::from_secs(1), async {
        A::sleep(MS(500)).await;
        // Outage 1, exact.
        quiesce_sends::<A>(&client, &load, &server).await;
        server.kill();
        must_wait::<A>(Duration::from_secs(2), "all lost", || {
            client.stats().open_connections == 0
        })
        .await;
        load.sends_on.set(true); // into the outbox
        A::sleep(MS(300)).await;
        server.restart().unwrap();
        must_wait::<A>(Duration::from_secs(4), "reconnected", || {
            client.stats().open_connections == 4
        })
        .await;
        // Pause the sends so that everything written can be confirmed (a steady stream is
        // never all confirmed at one instant), check the count is exact, then resume.
        load.sends_on.set(false);
        settle_sends::<A>(&client, &server, true).await;
        let s = client.stats();
        assert_eq!(
            server_ff(&server),
            s.sends.confirmed,
            "exact after a quiesced outage: {:?}",
            s.sends
        );
        assert_eq!(s.sends.unconfirmed, 0);
        load.sends_on.set(true);
        A::sleep(MS(300)).await;
        // Outage 2, sends in flight.
        let server_before = server_ff(&server);
        server.kill();
        let server_at_kill = server_ff(&server);
        must_wait::<A>(Duration::from_secs(2), "all lost", || {
            client.stats().open_connections == 0
        })
        .await;
        // No connection is open, so nothing more becomes `sent` until the restart.
        let sent_at_detection = client.stats().sends.confirmed;
        eprintln!(
            "{}: outage 2: server counted {server_before}..{server_at_kill}, client sent {sent_at_detection}",
            A::NAME
        );
        A::sleep(MS(300)).await;
        server.restart().unwrap();
        must_wait::<A>(Duration::from_secs(4), "reconnected", || {
            client.stats().open_connections == 4
        })
        .await;
        A::sleep(MS(500)).await;
        sent_at_detection.saturating_sub(server_at_kill)
    })
    .await;
    settle_sends::<A>(&client, &server, false).await;
    let s = check_load::<A>("fault_kill_restart_under_load", &client, &load);
    let o = load.outcomes();
    assert!(o.ok > 100, "{o:?}");
    assert!(
        o.connection_lost + o.not_connected > 0,
        "the outages were seen: {o:?}"
    );
    let counted = server_ff(&server);
    eprintln!(
        "{}: server counted {counted}, client sent {} lost {} (window {window})",
        A::NAME,
        s.sends.confirmed,
        s.sends.unconfirmed
    );
    assert!(
        counted + window >= s.sends.confirmed && counted <= s.sends.confirmed + s.sends.unconfirmed,
        "server {counted} vs sent {} lost {} window {window}",
        s.sends.confirmed,
        s.sends.unconfirmed
    );
    close_bounded::<A>(&client).await;
}

/// A server that freezes under load (stops reading and answering pings) is detected within
/// the pong wait: in-flight requests fail `ConnectionLost(ReadTimeout)` then, not at their
/// timeout; the pool reconnects once the server thaws. Sends are quiesced around the
/// freeze, so the server's count is exact.
pub async fn fault_frozen_server_under_load<A: Adapter>() {
    let server = server();
    let pong_wait = MS(600);
    let client = connect::<A>(config(&server.url()).pong_wait(pong_wait)).await;
    let load = Load::new();
    let mut sub = client.subscribe();
    let detected = with_load::<A, _>(&client, &load, 4, Duration::from_secs(3), async {
        A::sleep(MS(500)).await;
        quiesce_sends::<A>(&client, &load, &server).await;
        let t = Instant::now();
        server.faults().set_freeze(true);
        let mut lost = 0;
        while lost < 2 {
            let e = wait_event::<A>(&mut sub, Duration::from_secs(3), |e| {
                matches!(e, ClientEvent::Pool(Event::Disconnected { .. }))
            })
            .await
            .expect("both connections detected dead");
            let ClientEvent::Pool(Event::Disconnected { reason, .. }) = e else {
                unreachable!()
            };
            assert_eq!(reason, DisconnectReason::ReadTimeout);
            lost += 1;
        }
        let detected = t.elapsed();
        server.faults().set_freeze(false);
        load.sends_on.set(true);
        must_wait::<A>(Duration::from_secs(4), "reconnected", || {
            client.stats().open_connections == 2
        })
        .await;
        let ok_before = load.outcomes().ok;
        must_wait::<A>(Duration::from_secs(4), "requests succeed again", || {
            load.outcomes().ok > ok_before + 20
        })
        .await;
        detected
    })
    .await;
    assert!(detected <= pong_wait + MS(500), "detected after {detected:?}");
    settle_sends::<A>(&client, &server, true).await;
    let s = check_load::<A>("fault_frozen_server_under_load", &client, &load);
    let o = load.outcomes();
    assert!(
        o.connection_lost > 0,
        "in-flight requests failed at detection: {o:?}"
    );
    assert_eq!(o.timeout, 0, "nothing waited for its 3 s timeout: {o:?}");
    assert_eq!(server_ff(&server), s.sends.confirmed, "{:?}", s.sends);
    close_bounded::<A>(&client).await;
}

/// A server that accepts TCP but never answers the upgrade: each dial ends at the handshake
/// timeout (`ConnectFailed { Timeout }`), then backs off; requests fail `NotConnected` at
/// once, sends wait in the outbox; once the server answers, the pool connects and flushes.
pub async fn fault_handshake_hang<A: Adapter>() {
    let server = server_with(|o| o.faults.hang_handshakes = true);
    let handshake = MS(300);
    let t = Instant::now();
    let client = connect::<A>(config(&server.url()).handshake_timeout(handshake)).await;
    let took = t.elapsed();
    assert!(
        took >= handshake - MS(50) && took <= handshake + MS(700),
        "connect returned after {took:?}"
    );
    assert!(!client.is_connected());
    let mut sub = client.subscribe();
    let e = wait_event::<A>(&mut sub, Duration::from_secs(2), |e| {
        matches!(e, ClientEvent::Pool(Event::ConnectFailed { .. }))
    })
    .await
    .expect("a ConnectFailed event");
    let ClientEvent::Pool(Event::ConnectFailed { error, .. }) = e else {
        unreachable!()
    };
    assert_eq!(error, DialError::Timeout);
    let backoff = wait_event::<A>(&mut sub, Duration::from_secs(2), |e| {
        matches!(e, ClientEvent::Pool(Event::ReconnectScheduled { .. }))
    })
    .await;
    assert!(backoff.is_some(), "a reconnect is scheduled after the timeout");
    let t = Instant::now();
    assert_eq!(
        client.request(policies()).await.unwrap_err(),
        ClientError::NotConnected
    );
    assert!(t.elapsed() < MS(200));
    client.send(report(1, 8)).unwrap();
    let s = client.stats();
    assert!(
        s.dial_failures >= 3 && s.rejections == 0 && s.sends.queued == 1,
        "{s:?}"
    );
    assert!(server.counters().snapshot().handshakes_hung >= 3);
    server.faults().set_hang_handshakes(false);
    must_wait::<A>(Duration::from_secs(4), "connected", || {
        client.stats().open_connections == 2
    })
    .await;
    client.request(policies()).await.unwrap();
    must_wait::<A>(Duration::from_secs(2), "the queued send delivered", || {
        server_ff(&server) == 1
    })
    .await;
    close_bounded::<A>(&client).await;
}

/// A server that closes every connection after n messages, under load: requests fail
/// `ConnectionLost` or succeed, the pool keeps reconnecting, everything is accounted for.
/// The server reads until the client's close reply, so every message the client flushed
/// before it saw the close frame is counted: `sent <= server <= sent + lost` (a message
/// counted `lost`, written but not yet reported flushed, may still have arrived).
pub async fn fault_close_after_n_messages<A: Adapter>() {
    let server = server_with(|o| o.faults.close_after_messages = 25);
    let client = connect::<A>(config(&server.url())).await;
    let load = Load::new();
    with_load::<A, _>(&client, &load, 4, Duration::from_secs(1), A::sleep(MS(2500))).await;
    settle_sends::<A>(&client, &server, false).await;
    let s = check_load::<A>("fault_close_after_n_messages", &client, &load);
    let o = load.outcomes();
    let counted = server_ff(&server);
    eprintln!("{}: server counted {counted}, client {:?}", A::NAME, s.sends);
    assert!(o.ok > 50 && o.connection_lost > 0, "{o:?}");
    assert!(server.counters().snapshot().closes_sent >= 5);
    assert!(s.reconnects >= 5, "{s:?}");
    assert!(
        counted >= s.sends.confirmed && counted <= s.sends.confirmed + s.sends.unconfirmed,
        "server {counted} vs {:?}",
        s.sends
    );
    close_bounded::<A>(&client).await;
}

/// A slow server: every timeout fires at its deadline, not late (elapsed within
/// [timeout, timeout + 500 ms]); requests with a longer timeout succeed; the late replies
/// are orphans; pings keep the connection up.
pub async fn fault_slow_server_deadlines<A: Adapter>() {
    let server = server_with(|o| o.faults.reply_delay_ms = 1000);
    let client = connect::<A>(config(&server.url())).await;
    let timeouts = [100u64, 200, 300, 450, 600, 3000];
    let results = join_all(timeouts.iter().flat_map(|&ms| {
        let client = &client;
        (0..4).map(move |_| async move {
            let t = Instant::now();
            let r = client
                .request_with(policies(), RequestOptions::timeout(MS(ms)))
                .await;
            (ms, r, t.elapsed())
        })
    }))
    .await;
    for (ms, r, elapsed) in results {
        if ms >= 3000 {
            assert!(r.is_ok(), "{r:?}");
            assert!(elapsed >= MS(1000), "{elapsed:?}");
        } else {
            assert_eq!(r.unwrap_err(), ClientError::Timeout);
            assert!(
                elapsed >= MS(ms) && elapsed <= MS(ms + 500),
                "timeout {ms} ms fired after {elapsed:?}"
            );
        }
    }
    must_wait::<A>(Duration::from_secs(3), "20 late replies are orphans", || {
        client.stats().orphan_replies == 20
    })
    .await;
    let s = client.stats();
    assert_eq!(
        (s.timeouts, s.replies, s.disconnects, s.pending),
        (20, 4, 0, 0),
        "{s:?}"
    );
    close_bounded::<A>(&client).await;
}

/// A peer that stops reading: big writes fill the socket buffers (small SO_RCVBUF at the
/// server), the write deadline passes, the connection is dropped as `WriteTimeout` and its
/// in-flight request fails at once; the pool reconnects once the server reads again.
pub async fn fault_write_stall<A: Adapter>() {
    let server = server_with(|o| o.recv_buffer_size = Some(4096));
    let write_wait = MS(400);
    let client = connect::<A>(
        config(&server.url())
            .pool_size(1)
            .write_wait(write_wait)
            .pong_wait(Duration::from_secs(5))
            .request_timeout(Duration::from_secs(5))
            .resend_idempotent(false)
            // A window larger than the socket buffers, so the writes stall (the default
            // 1 MiB window would keep the rest in the outbox, which is its purpose).
            .max_unconfirmed_bytes(64 << 20),
    )
    .await;
    client.request(policies()).await.unwrap();
    let mut sub = client.subscribe();
    server.faults().set_stop_reading(true);
    let t = Instant::now();
    // 40 × 256 KiB = 10 MiB: more than the loopback socket buffers hold.
    for i in 0..40 {
        client.send(report(i, 256 * 1024)).unwrap();
    }
    let (request, event) = join(
        client.request(policies()),
        wait_event::<A>(&mut sub, Duration::from_secs(4), |e| {
            matches!(e, ClientEvent::Pool(Event::Disconnected { .. }))
        }),
    )
    .await;
    let elapsed = t.elapsed();
    let ClientEvent::Pool(Event::Disconnected { reason, .. }) = event.expect("a disconnect") else {
        unreachable!()
    };
    assert_eq!(reason, DisconnectReason::WriteTimeout);
    assert_eq!(
        request.unwrap_err(),
        ClientError::ConnectionLost(DisconnectReason::WriteTimeout)
    );
    assert!(
        elapsed < write_wait + Duration::from_secs(2),
        "stall detected after {elapsed:?}"
    );
    server.faults().set_stop_reading(false);
    request_ok_eventually::<A>(&client, Duration::from_secs(5)).await;
    let s = client.stats();
    eprintln!(
        "{}: write stall: {:?}, server {}",
        A::NAME,
        s.sends,
        server_ff(&server)
    );
    assert!(s.sends.conserved() && s.sends.unconfirmed > 0, "{:?}", s.sends);
    assert!(server_ff(&server) <= s.sends.confirmed + s.sends.unconfirmed);
    close_bounded::<A>(&client).await;
}

/// `close()` against a peer that never answers the close frame (frozen) still returns,
/// bounded by the write wait, and leaves nothing pending.
pub async fn fault_close_against_frozen_server<A: Adapter>() {
    let server = server_with(|o| o.faults.reply_delay_ms = 5000);
    let write_wait = MS(500);
    // No close drain: this is about the close handshake's own bound.
    let client = connect::<A>(
        config(&server.url())
            .write_wait(write_wait)
            .pong_wait(Duration::from_secs(5))
            .close_drain(Duration::ZERO),
    )
    .await;
    let counters = server.counters();
    let closer = async {
        must_wait::<A>(Duration::from_secs(2), "requests at the server", || {
            counters.requests_total() == 4
        })
        .await;
        server.faults().set_freeze(true);
        must_wait::<A>(Duration::from_secs(2), "frozen", || {
            counters.snapshot().connections_frozen == 2
        })
        .await;
        let t = Instant::now();
        client.close().await;
        t.elapsed()
    };
    let (results, took) = join(join_all((0..4).map(|_| client.request(policies()))), closer).await;
    for r in results {
        assert_eq!(r.unwrap_err(), ClientError::Closed);
    }
    assert!(took <= write_wait + MS(700), "close took {took:?}");
    let s = client.stats();
    assert_eq!((s.pending, s.closed, s.open_connections), (0, 4, 0), "{s:?}");
    assert!(s.requests_conserved());
}

// ----- soak -----

/// Sustained load with random faults toggled periodically, for `SOAK_SECS` (default 30)
/// seconds; prints RSS at start and end and the totals; asserts every request completed
/// exactly once and every message is accounted for.
pub async fn soak<A: Adapter>() {
    let secs = soak_duration().as_secs();
    let rss_start = rss_kib();
    let server = server_with(|o| o.recv_buffer_size = Some(64 * 1024));
    // Rewrites enough for any run of faults: every at-least-once message must arrive.
    let client = connect::<A>(
        config(&server.url())
            .pool_size(4)
            .outbox_capacity(5000)
            .max_rewrites(100),
    )
    .await;
    let load = Load::new();
    let seed = fastrand::u64(..);
    eprintln!(
        "{}::soak: {secs} s, seed {seed}, RSS at start {rss_start} KiB",
        A::NAME
    );
    let rng = RefCell::new(fastrand::Rng::with_seed(seed));
    let faults_seen = RefCell::new(Vec::new());
    let kills = Cell::new(0u64);
    // Beside the at-most-once `report_call_chain` stream of the load: an at-least-once
    // stream of `use_allocation` with distinct ids, counted per id by the server.
    server.counters().record_allocation_ids();
    let alo_on = Cell::new(true);
    let alo_sent = Cell::new(0u64);
    let alo_stream = async {
        let options = SendOptions::default().with_delivery(Delivery::AtLeastOnce);
        while alo_on.get() {
            let n = alo_sent.get();
            let m = Outgoing::new(
                "use_allocation",
                json!({"alias": "soak", "amount": 1.0, "allocationId": format!("soak-{n}")}),
            );
            if client.send_with(m, options).is_ok() {
                alo_sent.set(n + 1);
            }
            A::sleep(MS(3)).await;
        }
    };
    let ((), ()) = join(
        alo_stream,
        with_load::<A, _>(&client, &load, 8, MS(800), async {
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let pick = rng.borrow_mut().u8(0..10);
                let faults = server.faults();
                faults.clear();
                let name = match pick {
                    0 => "none",
                    1 => {
                        faults.set_reply_delay_ms(50);
                        faults.set_reply_jitter_ms(900);
                        "slow"
                    }
                    2 => {
                        faults.set_drop_every(7);
                        "drop_every"
                    }
                    3 => {
                        faults.set_duplicate_replies(true);
                        faults.set_garbage_every(5);
                        faults.set_binary_every(7);
                        faults.set_stray_every(3);
                        "noise"
                    }
                    4 => {
                        faults.set_close_after_messages(200);
                        "close_after"
                    }
                    5 => {
                        faults.set_drop_after_messages(300);
                        "drop_after"
                    }
                    6 => {
                        kills.set(kills.get() + 1);
                        server.kill();
                        A::sleep(MS(200)).await;
                        server.restart().unwrap();
                        "kill_restart"
                    }
                    7 => {
                        faults.set_freeze_after_messages(500);
                        "freeze_after"
                    }
                    8 => {
                        faults.set_no_pongs(true);
                        "no_pongs"
                    }
                    _ => {
                        faults.set_reject_handshakes(true);
                        "reject_handshakes"
                    }
                };
                faults_seen.borrow_mut().push(name);
                let dwell = rng.borrow_mut().u64(300..1500);
                A::sleep(MS(dwell)).await;
            }
            server.faults().clear();
            alo_on.set(false);
            // Frozen connections stay frozen until detected; let the pool recover.
            must_wait::<A>(Duration::from_secs(5), "recovered", || {
                client.stats().open_connections == 4
            })
            .await;
        }),
    )
    .await;
    settle_sends::<A>(&client, &server, false).await;
    let s = check_load::<A>("soak", &client, &load);
    let counted = server_ff(&server);
    let o = load.outcomes();
    eprintln!("{}::soak: faults {:?}", A::NAME, faults_seen.borrow());
    eprintln!(
        "{}::soak: {} requests {o:?}; {} sends, server counted {counted} of {} sent ({} lost, {} kills)",
        A::NAME,
        load.issued.get(),
        s.sends.sends,
        s.sends.confirmed,
        s.sends.unconfirmed,
        kills.get()
    );
    eprintln!("{}::soak: stats {s:?}", A::NAME);
    assert!(o.ok > 0);
    // At most once (`report_call_chain`): the server read every confirmed message, and at
    // most the unconfirmed ones besides; nothing is left queued or written.
    let amo = s
        .sends_by_type
        .get("report_call_chain")
        .cloned()
        .unwrap_or_default();
    let amo_counted = server.counters().fire_and_forget("report_call_chain");
    eprintln!("{}::soak: at most once {amo:?}, server {amo_counted}", A::NAME);
    assert_eq!((amo.queued, amo.written), (0, 0), "{amo:?}");
    assert!(
        amo.confirmed <= amo_counted && amo_counted <= amo.confirmed + amo.unconfirmed,
        "server {amo_counted} outside [{}, {}]",
        amo.confirmed,
        amo.confirmed + amo.unconfirmed
    );
    // At least once (`use_allocation`): every message accepted reached the server, each id
    // at most `rewritten` times more than once in all.
    let alo = s.sends_by_type.get("use_allocation").cloned().unwrap_or_default();
    let ids = server.counters().allocation_ids();
    let duplicates: u64 = ids.values().map(|n| n - 1).sum();
    eprintln!(
        "{}::soak: at least once {alo:?}: {} of {} ids arrived, {duplicates} duplicates",
        A::NAME,
        ids.len(),
        alo_sent.get()
    );
    assert_eq!(
        alo.confirmed,
        alo_sent.get(),
        "every at-least-once message confirmed: {alo:?}"
    );
    assert_eq!(ids.len() as u64, alo_sent.get(), "every id arrived");
    assert!(duplicates <= alo.rewritten, "{duplicates} duplicates, {alo:?}");
    // In all: never below `confirmed`, never above what may have arrived (the rewrites are
    // the at-least-once duplicates).
    assert!(
        counted <= s.sends.confirmed + s.sends.unconfirmed + s.sends.rewritten,
        "server {counted} vs {:?}",
        s.sends
    );
    assert!(counted >= s.sends.confirmed, "server {counted} vs {:?}", s.sends);
    close_bounded::<A>(&client).await;
    drop(server);
    eprintln!(
        "{}::soak: RSS at start {rss_start} KiB, at end {} KiB",
        A::NAME,
        rss_kib()
    );
}
