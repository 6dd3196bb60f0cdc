//! Resilience over real sockets, generic over the [`Adapter`]: idempotent resends, the
//! availability state, staggered connections (jittered backoff, initial dial spread, maximum
//! connection age) and per-type loss accounting through an outage; and each handle's slot
//! affinity.
//!
//! Each body starts its own server and is bounded by [`crate::TEST_TIMEOUT`]; timings are
//! short (backoff 100–300 ms, ages of 1 s, TTLs of 250 ms). The one long wait is the
//! availability hold (5 s, a constant of the core), which the availability test crosses once.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::future::{join, join_all, select, Either};
use serde_json::json;
use usageflow_socket_core::messages::UseAllocation;
use usageflow_socket_server::ServerThread;

use crate::*;

const MS: fn(u64) -> Duration = Duration::from_millis;

/// The core's hold before `Degraded` turns back into `Available` (not configurable).
const HOLD: Duration = Duration::from_secs(5);

/// Runs `main` while `background` runs alongside; `background` is dropped when `main` ends.
async fn alongside<T>(main: impl Future<Output = T>, background: impl Future<Output = ()>) -> T {
    match select(pin!(main), pin!(background)).await {
        Either::Left((out, _)) => out,
        Either::Right(((), main)) => main.await,
    }
}

// ----- 1. resend tied to an idempotency key -----

/// With the one-shot `drop_once_on` fault, the server drops exactly the connection that
/// receives a given request, before answering it (the request is counted).
///
/// - a `use_allocation` with `allocationId` and `waitForConfirmation` is not re-sent by
///   default (nothing says the server deduplicates on the id): it fails at once with
///   `ConnectionLost`, seen once;
/// - a request marked idempotent (`RequestOptions::with_idempotent`) does the same;
/// - the same non-idempotent request fails at once with `ConnectionLost`; the server saw it
///   once and nothing was re-sent;
/// - with a pool of one there is no other connection: even an idempotent request fails at
///   once with `ConnectionLost`, seen once;
/// - with `server_deduplicates_allocation_ids` on, the keyed `use_allocation` is re-sent once
///   on the other connection and succeeds within its deadline; the server saw it twice.
pub async fn resend_idempotent_once<A: Adapter>() {
    let server = server();
    let counters = server.counters();
    let faults = server.faults();
    let client = connect::<A>(config(&server.url()).pool_size(2)).await;
    wait_open::<A>(&client, 2, Duration::from_secs(2)).await;

    // (a) A client-made `allocationId` alone does not make a request safe to repeat.
    faults.set_drop_once_on(Some("resend-key-1".into()));
    let t = Instant::now();
    let err = client
        .use_allocation(&keyed_usage("resend-key-1"))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(err, ClientError::ConnectionLost(_)),
        "{}: a keyed request is not re-sent by default: {err:?}",
        A::NAME
    );
    assert!(took < MS(500), "fails at once, not at its deadline: {took:?}");
    let s = client.stats();
    assert_eq!((s.resent, s.connection_lost), (0, 1), "{s:?}");
    assert_eq!(counters.requests("use_allocation"), 1, "the server saw it once");
    assert_eq!(counters.snapshot().connections_dropped, 1);

    // (b) Idempotent by flag.
    wait_open::<A>(&client, 2, Duration::from_secs(2)).await;
    faults.set_drop_once_on(Some("get_application_policies".into()));
    let idempotent = RequestOptions::timeout(Duration::from_secs(2)).with_idempotent(true);
    let t = Instant::now();
    let reply = client.request_with(policies(), idempotent).await;
    assert!(reply.is_ok(), "{}: flagged request: {reply:?}", A::NAME);
    assert!(t.elapsed() < Duration::from_secs(2));
    let s = client.stats();
    assert_eq!((s.resent, s.replies, s.connection_lost), (1, 1, 1), "{s:?}");
    assert_eq!(counters.requests("get_application_policies"), 2);

    // (c) Not idempotent: fails at once, sent once.
    wait_open::<A>(&client, 2, Duration::from_secs(2)).await;
    faults.set_drop_once_on(Some("get_application_policies".into()));
    let t = Instant::now();
    let err = client
        .request_with(policies(), RequestOptions::timeout(Duration::from_secs(2)))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(err, ClientError::ConnectionLost(_)),
        "{}: {err:?}",
        A::NAME
    );
    assert!(took < MS(500), "fails at once, not at its deadline: {took:?}");
    let s = client.stats();
    assert_eq!((s.resent, s.connection_lost), (1, 2), "nothing re-sent: {s:?}");
    assert_eq!(
        counters.requests("get_application_policies"),
        3,
        "the server saw the non-idempotent request once"
    );
    assert!(s.requests_conserved() && s.pending == 0, "{s:?}");
    client.close().await;

    // (d) Idempotent, but no other connection to carry it: fails at once.
    let solo = connect::<A>(config(&server.url()).pool_size(1)).await;
    wait_open::<A>(&solo, 1, Duration::from_secs(2)).await;
    faults.set_drop_once_on(Some("solo-key".into()));
    let t = Instant::now();
    let err = solo.request(allocation("solo-key")).await.unwrap_err();
    assert!(
        matches!(err, ClientError::ConnectionLost(_)),
        "{}: {err:?}",
        A::NAME
    );
    assert!(t.elapsed() < MS(500));
    let s = solo.stats();
    assert_eq!((s.resent, s.connection_lost), (0, 1), "{s:?}");
    assert_eq!(counters.requests("request_for_allocation"), 1);
    assert_eq!(counters.snapshot().connections_dropped, 4);
    solo.close().await;

    // (e) The server deduplicates on `allocationId` (the host says so): the keyed request
    // is re-sent once on the other connection.
    let dedup = connect::<A>(
        config(&server.url())
            .pool_size(2)
            .server_deduplicates_allocation_ids(true),
    )
    .await;
    wait_open::<A>(&dedup, 2, Duration::from_secs(2)).await;
    faults.set_drop_once_on(Some("resend-key-2".into()));
    let t = Instant::now();
    let reply = dedup
        .use_allocation(&keyed_usage("resend-key-2"))
        .await
        .unwrap_or_else(|e| panic!("{}: the keyed request must survive: {e:?}", A::NAME))
        .expect("a confirmation");
    let took = t.elapsed();
    assert_eq!(reply.event_id.len(), 36);
    assert!(took < Duration::from_secs(2), "within its deadline: {took:?}");
    let s = dedup.stats();
    assert_eq!((s.resent, s.replies, s.connection_lost), (1, 1, 0), "{s:?}");
    assert_eq!(counters.requests("use_allocation"), 3, "the server saw it twice");
    dedup.close().await;
}

/// A `use_allocation` that waits for the server's confirmation, with a client-made id.
fn keyed_usage(allocation_id: &str) -> UseAllocation {
    UseAllocation {
        alias: "ledger-1".into(),
        amount: 1.0,
        allocation_id: allocation_id.into(),
        wait_for_confirmation: Some(true),
        metadata: None,
    }
}

// ----- 2. availability for fail-open hosts -----

/// The availability getter and the stream of `AvailabilityChanged` events, through:
/// startup against a server that answers every handshake 503 (`Unavailable`), start-up recovery
/// (`Degraded` at the first connection, `Available` as soon as all are open), a steady phase
/// under noise frames (zero changes), one slot down (`Degraded` at once), a total outage
/// (`Unavailable` at once) and recovery again (`Degraded`, then `Available` after the hold).
/// The stream matches the getter at every step and has exactly the expected changes.
pub async fn availability_state<A: Adapter>() {
    let server = server_with(|o| o.faults.handshake_status = 503);
    let faults = server.faults();
    let client = connect::<A>(config(&server.url()).pool_size(2)).await;
    assert!(!client.is_connected());
    assert_eq!(
        client.availability(),
        Availability::Unavailable,
        "before any connection"
    );
    let mut sub = client.subscribe();
    let log_cell: RefCell<Vec<Availability>> = RefCell::new(Vec::new());
    let log = &log_cell;
    let collector = async {
        while let Some(event) = next_event(&mut sub).await {
            if let ClientEvent::Pool(Event::AvailabilityChanged { availability }) = event {
                log.borrow_mut().push(availability);
            }
        }
    };
    let script = async {
        let c = &client;
        // The stream has caught up with the getter, which shows `want`.
        let settled =
            |want: Availability| move || c.availability() == want && log.borrow().last() == Some(&want);

        // Start-up (never Available yet): Degraded at the first connection, Available as soon
        // as every slot is open: a clean start is not a flap, so it waits for no hold.
        faults.clear();
        wait_open::<A>(c, 2, Duration::from_secs(3)).await;
        let full = Instant::now();
        must_wait::<A>(
            Duration::from_secs(1),
            "Available",
            settled(Availability::Available),
        )
        .await;
        assert!(
            full.elapsed() < MS(500),
            "no hold at start-up: {:?}",
            full.elapsed()
        );
        assert_eq!(*log.borrow(), [Availability::Degraded, Availability::Available]);

        // Steady phase with noise (garbage, binary and stray frames): no change at all.
        faults.set_garbage_every(2);
        faults.set_binary_every(3);
        faults.set_stray_every(4);
        let changes_before = log.borrow().len();
        let steady = Instant::now();
        let mut n = 0;
        while steady.elapsed() < MS(1000) {
            let r = c.request_with(allocation(&format!("steady-{n}")), RequestOptions::default());
            r.await.unwrap();
            c.send(report(n, 16)).unwrap();
            assert_eq!(c.availability(), Availability::Available, "steady phase");
            n += 1;
        }
        faults.clear();
        let s = c.stats();
        assert!(
            s.skipped_frames > 0 && s.orphan_replies > 0,
            "noise arrived: {s:?}"
        );
        assert_eq!(
            log.borrow().len(),
            changes_before,
            "no change while steady ({n} requests)"
        );

        // One slot down (dropped, and kept down by rejected handshakes): Degraded at once.
        faults.set_reject_handshakes(true);
        faults.set_drop_once_on(Some("/availability-drop".into()));
        let t = Instant::now();
        c.send(Outgoing::new(
            "report_call_chain",
            json!({"method": "GET", "url": "/availability-drop", "callChain": [], "timestamp": 1}),
        ))
        .unwrap();
        must_wait::<A>(
            Duration::from_secs(2),
            "Degraded",
            settled(Availability::Degraded),
        )
        .await;
        assert!(t.elapsed() < MS(500), "worse at once: {:?}", t.elapsed());
        assert_eq!(c.stats().open_connections, 1);

        // Total outage: Unavailable at once.
        server.kill();
        must_wait::<A>(
            Duration::from_secs(2),
            "Unavailable",
            settled(Availability::Unavailable),
        )
        .await;
        assert!(!c.is_connected());

        // Recovery: Degraded at the first connection, Available after the hold.
        faults.clear();
        server.restart().unwrap();
        must_wait::<A>(
            Duration::from_secs(3),
            "Degraded",
            settled(Availability::Degraded),
        )
        .await;
        wait_open::<A>(c, 2, Duration::from_secs(3)).await;
        let full = Instant::now();
        crossing_the_hold::<A>(c, full).await;
        must_wait::<A>(
            HOLD + Duration::from_secs(2),
            "Available",
            settled(Availability::Available),
        )
        .await;
        let held = full.elapsed();
        assert!(held >= HOLD - MS(500), "Available only after the hold: {held:?}");
    };
    alongside(script, collector).await;
    use Availability::*;
    let log = log_cell.into_inner();
    assert_eq!(
        log,
        [Degraded, Available, Degraded, Unavailable, Degraded, Available],
        "{}: the stream of changes",
        A::NAME
    );
    client.close().await;
}

/// Half-way through the hold after every slot opened at `full`, the pool still says Degraded.
async fn crossing_the_hold<A: Adapter>(client: &ClientOf<A>, full: Instant) {
    let half = HOLD / 2;
    if let Some(rest) = half.checked_sub(full.elapsed()) {
        A::sleep(rest).await;
    }
    assert_eq!(
        client.availability(),
        Availability::Degraded,
        "{}: still Degraded {:?} after the pool became whole",
        A::NAME,
        full.elapsed()
    );
}

// ----- 3. staggered connections -----

/// Polls the server's rejected-handshake counter every millisecond until it reaches `n` or
/// `limit` passes; the time (since `t0`) at which each rejection was seen. These are the
/// server-side dial times (a rejection is answered at once).
async fn rejection_times<A: Adapter>(
    server: &ServerThread,
    n: u64,
    t0: Instant,
    limit: Duration,
) -> Vec<Duration> {
    let counters = server.counters();
    let mut times = Vec::new();
    while (times.len() as u64) < n && t0.elapsed() < limit {
        let seen = counters.handshakes_rejected();
        while (times.len() as u64) < seen.min(n) {
            times.push(t0.elapsed());
        }
        A::sleep(MS(1)).await;
    }
    times
}

fn spread(times: &[Duration]) -> Duration {
    let max = times.iter().max().copied().unwrap_or_default();
    let min = times.iter().min().copied().unwrap_or_default();
    max - min
}

/// A pool of 6 against a server that answers every handshake 503, with backoff 300 ms and
/// `jitter`: the server-side times of the 6 first dials and of the 6 first retries, and the
/// delays of the second retries (attempt 1) from the event stream, per slot.
async fn reconnect_pattern<A: Adapter>(
    jitter: f64,
    seed: u64,
) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let server = server_with(|o| o.faults.handshake_status = 503);
    let builder = config(&server.url())
        .pool_size(6)
        .backoff_base(MS(300))
        .backoff_cap(Duration::from_secs(5))
        .backoff_jitter(jitter);
    let options = ClientOptions::builder(builder.build().unwrap())
        .seed(seed)
        .build();
    let t0 = Instant::now();
    let events = async {
        let client = ClientOf::<A>::connect(options).await.unwrap();
        // Subscribed before any retry failed (the first comes after >= 240 ms).
        let mut sub = client.subscribe();
        let mut delays: BTreeMap<u16, Duration> = BTreeMap::new();
        timeout::<A, _>(Duration::from_secs(3), async {
            while delays.len() < 6 {
                match next_event(&mut sub).await {
                    Some(ClientEvent::Pool(Event::ReconnectScheduled {
                        slot,
                        attempt: 1,
                        delay,
                    })) => {
                        delays.insert(slot, delay);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        })
        .await;
        (client, delays)
    };
    let ((client, delays), times) = join(
        events,
        rejection_times::<A>(&server, 12, t0, Duration::from_secs(3)),
    )
    .await;
    assert_eq!(
        times.len(),
        12,
        "{}: 6 first dials and 6 retries: {times:?}",
        A::NAME
    );
    assert_eq!(delays.len(), 6, "{}: attempt-1 delays {delays:?}", A::NAME);
    client.close().await;
    (
        times[..6].to_vec(),
        times[6..].to_vec(),
        delays.into_values().collect(),
    )
}

/// Slots never reconnect in lockstep, and `initial_dial_spread` spreads the first dials:
///
/// - the default jitter is 0.2;
/// - with jitter 0.2 the first retries of a pool of 6 (all failed together) reach the server
///   spread out, and the attempt-1 delays differ per slot, within `[0.8, 1] × 600 ms`;
/// - with jitter 0 the delays are exactly the schedule (600 ms for every slot);
/// - with `initial_dial_spread` 1 s the 6 first dials reach the server spread over the second,
///   slot 0 at once, and `connect` returns once all of them settled.
///
/// Fixed seeds make the draws (and so the assertions on spreads) replay exactly; they were
/// picked for wide draws (the 6 first retries of seed `0x5eed_003a` fall 59 ms apart out of the
/// 60 ms that jitter 0.2 allows on 300 ms), so the assertions test the mechanism, not luck.
pub async fn staggered_connections<A: Adapter>() {
    let defaults = Config::builder("ws://127.0.0.1:9/ws", KEY).build().unwrap();
    assert_eq!(defaults.backoff_jitter(), 0.2, "jitter 0.2 by default");

    let (first, retries, delays) = reconnect_pattern::<A>(0.2, 0x5eed_003a).await;
    eprintln!(
        "{}: jitter 0.2: first dials spread {:?}, first retries at {retries:?} (spread {:?}), attempt-1 delays {delays:?}",
        A::NAME,
        spread(&first),
        spread(&retries)
    );
    assert!(
        spread(&retries) >= MS(30),
        "{}: retries in lockstep: {retries:?}",
        A::NAME
    );
    assert!(
        delays.iter().all(|d| *d >= MS(480) && *d <= MS(600)),
        "{delays:?}"
    );
    assert!(
        spread(&delays) >= MS(5),
        "{}: attempt-1 delays in lockstep: {delays:?}",
        A::NAME
    );

    let (_, retries0, delays0) = reconnect_pattern::<A>(0.0, 0x5eed_003a).await;
    eprintln!(
        "{}: jitter 0: first retries at {retries0:?} (spread {:?}), attempt-1 delays {delays0:?}",
        A::NAME,
        spread(&retries0)
    );
    assert!(
        delays0.iter().all(|d| *d == MS(600)),
        "the exact schedule: {delays0:?}"
    );

    // Initial dial spread: the first dials of a pool starting against a server that is down.
    let server = server_with(|o| o.faults.handshake_status = 503);
    let builder = config(&server.url())
        .pool_size(6)
        .backoff_base(Duration::from_secs(5))
        .backoff_cap(Duration::from_secs(5))
        .initial_dial_spread(Duration::from_secs(1));
    let options = ClientOptions::builder(builder.build().unwrap())
        .seed(0x5eed_0007)
        .build();
    let t0 = Instant::now();
    let (connected_after, dials) = join(
        async {
            let client = ClientOf::<A>::connect(options).await.unwrap();
            (t0.elapsed(), client)
        },
        rejection_times::<A>(&server, 6, t0, Duration::from_secs(3)),
    )
    .await;
    let (connected_after, client) = connected_after;
    eprintln!(
        "{}: initial dial spread 1 s: first dials at {dials:?}, connect returned after {connected_after:?}",
        A::NAME
    );
    assert_eq!(dials.len(), 6, "{dials:?}");
    assert!(dials[0] < MS(300), "slot 0 dials at once: {dials:?}");
    assert!(spread(&dials) >= MS(200), "first dials spread out: {dials:?}");
    assert!(dials[5] <= Duration::from_secs(1) + MS(300), "{dials:?}");
    assert!(
        connected_after + MS(50) >= dials[5],
        "connect waits for every first dial"
    );
    assert!(
        connected_after <= dials[5] + MS(300),
        "{}: connect returns once the last first dial settled ({:?}), not later: {connected_after:?}",
        A::NAME,
        dials[5]
    );
    assert_eq!(client.stats().dials, 6, "no retry yet (backoff 5 s)");
    client.close().await;
}

/// `connect` returns as soon as every first dial settled, not at the driver's next deadline:
/// with the default timings (ping 30 s, handshake 10 s, backoff 5 s) against a healthy server,
/// and against one that answers every handshake 503 (unavailable; a refused key makes `connect` fail instead), a pool of 4 is back from `connect` within
/// 1 s. (Found by the initial-dial-spread test: `connect` used to wait for the next timer of
/// the driver task, here the handshake deadline of the last dial, 10 s.)
pub async fn connect_returns_when_dials_settle<A: Adapter>() {
    for reject in [false, true] {
        let server = server_with(|o| o.faults.handshake_status = if reject { 503 } else { 0 });
        let builder = Config::builder(server.url(), KEY).pool_size(4);
        let t = Instant::now();
        let client = ClientOf::<A>::connect(options(builder)).await.unwrap();
        let took = t.elapsed();
        eprintln!("{}: connect (reject {reject}) returned after {took:?}", A::NAME);
        assert_eq!(client.is_connected(), !reject);
        let s = client.stats();
        assert_eq!(s.dials, 4, "{s:?}");
        assert!(
            took < Duration::from_secs(1),
            "{}: connect took {took:?} (reject {reject})",
            A::NAME
        );
        client.close().await;
    }
}

/// `max_connection_age` 1 s (the lowest allowed) on a pool of 3 under continuous request
/// load (replies jittered up to 20 ms, so rotations catch requests in flight): every slot
/// is rotated, no request fails, the pool never has fewer than 3 open connections (the new
/// connection opens before the old stops taking work), nothing is lost or re-sent, and the
/// old connections close gracefully with code 1000 once drained.
pub async fn rotation_under_load<A: Adapter>() {
    let server = server_with(|o| o.faults.reply_jitter_ms = 20);
    let counters = server.counters();
    let client = connect::<A>(
        config(&server.url())
            .pool_size(3)
            .max_connection_age(Some(Duration::from_secs(1))),
    )
    .await;
    wait_open::<A>(&client, 3, Duration::from_secs(2)).await;
    let stop = Cell::new(false);
    let outcomes = RefCell::new(Outcomes::default());
    let min_open = Cell::new(u32::MAX);
    let worker = |w: u64| {
        let (client, stop, outcomes, min_open) = (&client, &stop, &outcomes, &min_open);
        async move {
            let mut n = 0;
            while !stop.get() {
                let r = if n % 2 == 0 {
                    client.request(policies()).await
                } else {
                    client.request(allocation(&format!("rot-{w}-{n}"))).await
                };
                if let Err(e) = &r {
                    eprintln!("{}: request failed during rotation: {e:?}", A::NAME);
                }
                outcomes.borrow_mut().record(&r);
                min_open.set(min_open.get().min(client.stats().open_connections));
                n += 1;
                A::sleep(MS(1)).await;
            }
        }
    };
    let script = async {
        must_wait::<A>(
            Duration::from_secs(5),
            "every slot rotated, old ones closed",
            || {
                let closed_1000 = counters
                    .close_codes()
                    .iter()
                    .filter(|c| **c == Some(1000))
                    .count();
                client.stats().rotations >= 3 && closed_1000 >= 3
            },
        )
        .await;
        stop.set(true);
    };
    join(join_all((0..4).map(worker)), script).await;
    let o = outcomes.into_inner();
    let s = client.stats();
    let snap = counters.snapshot();
    eprintln!(
        "{}: rotations {} over {} requests; min open {}; server accepted {} connections, close codes {:?}",
        A::NAME,
        s.rotations,
        o.total(),
        min_open.get(),
        snap.connections_accepted,
        snap.close_codes
    );
    assert!(o.total() > 100, "load ran: {o:?}");
    assert_eq!(
        o.ok,
        o.total(),
        "{}: no request fails because of a rotation: {o:?}",
        A::NAME
    );
    assert!(s.rotations >= 3, "{s:?}");
    assert_eq!(
        (s.disconnects, s.connection_lost, s.resent, s.timeouts),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(
        min_open.get(),
        3,
        "the new connection opens before the old one stops"
    );
    assert!(s.requests_conserved() && s.pending == 0, "{s:?}");
    assert!(snap.connections_accepted >= 3 + s.rotations, "{snap:?}");
    assert!(
        snap.close_codes.iter().all(|c| *c == Some(1000)),
        "old connections close with 1000: {:?}",
        snap.close_codes
    );
    assert_eq!(
        snap.requests.values().sum::<u64>(),
        o.ok,
        "every request seen once"
    );
    client.close().await;
}

// ----- 4. loss accounting -----

const LOSS_KINDS: [&str; 3] = ["report_call_chain", "use_allocation", "request_for_allocation"];

/// The `n`-th fire-and-forget message of the loss test: the three types in turn.
fn loss_message(n: u64) -> (usize, Outgoing) {
    let k = (n % 3) as usize;
    let message = match k {
        0 => report(n, 32),
        1 => Outgoing::new(
            "use_allocation",
            json!({"alias": "ledger-1", "amount": 1.0, "allocationId": format!("ff-{n}")}),
        ),
        _ => Outgoing::new(
            "request_for_allocation",
            json!({"alias": "ledger-1", "amount": 1.0, "allocationId": format!("ff-{n}")}),
        ),
    };
    (k, message)
}

/// What the sender saw, per type.
#[derive(Debug, Default, Clone, Copy)]
struct Issued {
    issued: u64,
    outbox_full: u64,
    closed: u64,
}

/// An outage with fire-and-forget traffic of three types flowing throughout, and a check
/// against the server's own per-type counts that every message is accounted for exactly once.
///
/// Pool of 2, outbox capacity 40, TTL 250 ms, one message per millisecond or so. The cut is
/// made exact: the sender pauses for the instant of the cut, until nothing is queued or
/// unflushed and the server has counted everything sent; the server is then killed, and the
/// sender resumes once the client has noticed both closes. During the outage the outbox fills
/// (drops) and its messages pass their TTL (expiries); after the restart it is flushed. One
/// message is sent after `close` (closed). Then, per type: sends = sent + dropped + expired +
/// lost + closed, queued = unflushed = 0, server count = sent, and the sender's own refusals
/// match `dropped` and `closed`.
pub async fn loss_accounting_outage<A: Adapter>() {
    let server = server();
    let counters = server.counters();
    let client = connect::<A>(
        config(&server.url())
            .pool_size(2)
            .outbox_capacity(40)
            .outbox_ttl(MS(250)),
    )
    .await;
    wait_open::<A>(&client, 2, Duration::from_secs(2)).await;
    let stop = Cell::new(false);
    let paused = Cell::new(false);
    let issued = RefCell::new([Issued::default(); 3]);
    let sender = async {
        let mut n = 0;
        while !stop.get() {
            if !paused.get() {
                let (k, message) = loss_message(n);
                n += 1;
                let mut issued = issued.borrow_mut();
                issued[k].issued += 1;
                match client.send(message) {
                    Ok(()) => {}
                    Err(ClientError::OutboxFull(_)) => issued[k].outbox_full += 1,
                    Err(e) => panic!("{}: unexpected send error {e:?}", A::NAME),
                }
            }
            A::sleep(MS(1)).await;
        }
    };
    let sent = || client.stats().sends.confirmed;
    let script = async {
        must_wait::<A>(Duration::from_secs(3), "traffic flowing", || sent() >= 150).await;

        // The exact cut.
        paused.set(true);
        must_wait::<A>(Duration::from_secs(3), "nothing in flight", || {
            let s = client.stats().sends;
            s.queued == 0 && s.written == 0 && counters.fire_and_forget_total() == s.confirmed
        })
        .await;
        server.kill();
        wait_open::<A>(&client, 0, Duration::from_secs(2)).await;
        paused.set(false);
        let outage = Instant::now();

        // The outage: the outbox fills and expires.
        must_wait::<A>(Duration::from_secs(3), "drops and expiries", || {
            let s = client.stats().sends;
            s.dropped > 0 && s.expired > 0
        })
        .await;
        server.restart().unwrap();
        must_wait::<A>(Duration::from_secs(3), "reconnected", || client.is_connected()).await;
        eprintln!("{}: outage lasted {:?}", A::NAME, outage.elapsed());
        let after = sent();
        must_wait::<A>(Duration::from_secs(3), "traffic after the outage", || {
            sent() >= after + 100
        })
        .await;
        stop.set(true);
    };
    join(sender, script).await;

    must_wait::<A>(Duration::from_secs(3), "every message settled", || {
        let s = client.stats();
        s.sends.queued == 0
            && s.sends.written == 0
            && LOSS_KINDS
                .iter()
                .all(|k| counters.fire_and_forget(k) == s.sends_by_type.get(*k).map_or(0, |t| t.confirmed))
    })
    .await;
    client.close().await;
    let after_close = client.send(loss_message(0).1);
    assert!(matches!(after_close, Err(ClientError::Closed)), "{after_close:?}");
    {
        let mut issued = issued.borrow_mut();
        issued[0].issued += 1;
        issued[0].closed += 1;
    }

    let s = client.stats();
    let issued = issued.into_inner();
    println!(
        "loss accounting ({}), outbox 40 / TTL 250 ms, pool 2, kill + restart:",
        A::NAME
    );
    println!(
        "  {:<24} {:>6} {:>6} {:>7} {:>7} {:>7} {:>5} {:>6}",
        "type", "sends", "conf", "server", "dropped", "expired", "unconf", "closed"
    );
    let mut total = SendStatsRow::default();
    for (k, kind) in LOSS_KINDS.iter().enumerate() {
        let t = s.sends_by_type.get(*kind).cloned().unwrap_or_default();
        let server_count = counters.fire_and_forget(kind);
        let row = SendStatsRow {
            sends: t.sends,
            confirmed: t.confirmed,
            server: server_count,
            dropped: t.dropped,
            expired: t.expired,
            unconfirmed: t.unconfirmed,
            closed: t.closed,
        };
        println!("  {:<24} {}", kind, row.cells());
        total.add(&row);
        assert!(t.conserved(), "{kind}: {t:?}");
        assert_eq!(
            t.sends,
            t.confirmed + t.dropped + t.expired + t.unconfirmed + t.closed,
            "{kind}: {t:?}"
        );
        assert_eq!((t.queued, t.written), (0, 0), "{kind}: {t:?}");
        assert_eq!(
            server_count, t.confirmed,
            "{kind}: the server counted exactly what was sent"
        );
        assert_eq!(t.sends, issued[k].issued, "{kind}: every send() is counted");
        assert_eq!(
            t.dropped, issued[k].outbox_full,
            "{kind}: drops = OutboxFull errors"
        );
        assert_eq!(t.closed, issued[k].closed, "{kind}: closed = Closed errors");
        assert_eq!(t.unconfirmed, 0, "{kind}: the cut left nothing unflushed");
    }
    println!("  {:<24} {}", "total", total.cells());
    assert!(
        total.dropped > 0 && total.expired > 0,
        "the outage dropped and expired: {total:?}"
    );
    assert_eq!(s.sends.sends, total.sends);
    assert_eq!(counters.fire_and_forget_total(), total.server);
    assert_eq!(counters.requests_total(), 0);
}

#[derive(Debug, Default)]
struct SendStatsRow {
    sends: u64,
    confirmed: u64,
    server: u64,
    dropped: u64,
    expired: u64,
    unconfirmed: u64,
    closed: u64,
}

impl SendStatsRow {
    fn add(&mut self, o: &SendStatsRow) {
        self.sends += o.sends;
        self.confirmed += o.confirmed;
        self.server += o.server;
        self.dropped += o.dropped;
        self.expired += o.expired;
        self.unconfirmed += o.unconfirmed;
        self.closed += o.closed;
    }

    fn cells(&self) -> String {
        format!(
            "{:>6} {:>6} {:>7} {:>7} {:>7} {:>5} {:>6}",
            self.sends,
            self.confirmed,
            self.server,
            self.dropped,
            self.expired,
            self.unconfirmed,
            self.closed
        )
    }
}

// ----- 7. handle affinity -----

/// Each clone of a client leans to its own slot (the first handle to slot 0, each clone to
/// the next): among the connections tied for fewest pending, a handle's request takes its
/// own; fewest pending still comes first. Against a slow server (replies after 2 s), so the
/// pending counts stay put while they are read:
///
/// - the handle of slot 2 goes first and takes slot 2 (round-robin alone would take slot 1);
/// - the handle of slot 1 takes slot 1 (tied with slot 0 at none pending);
/// - the first handle takes slot 0, the only one with none pending;
/// - the handle of slot 2 again: all tied at one, it takes slot 2;
/// - a fifth handle (slot 4, modulo 3 = 1) takes slot 1, tied with slot 0 at one.
pub async fn each_handle_keeps_to_its_slot<A: Adapter>() {
    let server = server_with(|o| o.faults.reply_delay_ms = 2_000);
    let client = connect::<A>(
        config(&server.url())
            .pool_size(3)
            .request_timeout(Duration::from_secs(5)),
    )
    .await;
    wait_open::<A>(&client, 3, Duration::from_secs(2)).await;
    let slot_1 = client.clone();
    let slot_2 = client.clone();
    let _slot_3 = client.clone();
    let slot_4 = client.clone();
    // Each handle in turn, one step apart, with the pending counts once its request is out.
    let steps: [(&ClientOf<A>, [u32; 3]); 5] = [
        (&slot_2, [0, 0, 1]),
        (&slot_1, [0, 1, 1]),
        (&client, [1, 1, 1]),
        (&slot_2, [1, 1, 2]),
        (&slot_4, [1, 2, 2]),
    ];
    let step = MS(150);
    let t0 = Instant::now();
    let at = |k: u32, extra: Duration| async move {
        A::sleep((t0 + step * k + extra).saturating_duration_since(Instant::now())).await;
    };
    let requests = join_all(steps.iter().zip(0..).map(|(&(handle, _), k)| async move {
        at(k, Duration::ZERO).await;
        handle.request(policies()).await
    }));
    let results = alongside(requests, async {
        // Half a step after each request went out (the server holds every reply for 2 s).
        for (&(_, expected), k) in steps.iter().zip(0..) {
            at(k, step / 2).await;
            assert_eq!(client.stats().pending_per_slot, expected, "after request {k}");
        }
        std::future::pending::<()>().await
    })
    .await;
    for r in results {
        r.expect("every request answered");
    }
    assert_eq!(client.stats().pending, 0);
    client.close().await;
}
