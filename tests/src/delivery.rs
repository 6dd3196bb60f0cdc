//! Delivery you can prove, over real sockets on every adapter: confirmation by ping barriers,
//! at most once and at least once through abrupt aborts and slow reads, sends that wait for
//! room, flush, a close that drains and hands back, a server that stops answering pings, and
//! one whose unsolicited pongs guess the ping payload.
//! Every test checks the client's accounting against the server's own count.

use std::time::{Duration, Instant};

use futures_util::future::{join, join_all};
use usageflow_socket_core::messages::USE_ALLOCATION;
use usageflow_socket_server::ServerThread;

use crate::*;

const MS: fn(u64) -> Duration = Duration::from_millis;

fn server_ff(server: &ServerThread) -> u64 {
    server.counters().fire_and_forget_total()
}

/// A `use_allocation` carrying the distinct `allocationId` `u-{n}`.
fn use_allocation(n: u64) -> Outgoing {
    Outgoing::new(
        USE_ALLOCATION,
        json!({"alias": "ledger-1", "amount": 1.0, "allocationId": format!("u-{n}")}),
    )
}

/// Sends `per_task × tasks` messages made by `make`, each waiting for room (never dropped),
/// while `script` runs.
async fn produce<A: Adapter>(
    client: &ClientOf<A>,
    tasks: u64,
    per_task: u64,
    options: SendOptions,
    make: fn(u64) -> Outgoing,
) {
    let producers = (0..tasks).map(|t| {
        let client = client.clone();
        async move {
            for i in 0..per_task {
                let n = t * per_task + i;
                let sent = client
                    .send_when_room(make(n), options, Duration::from_secs(10))
                    .await;
                assert!(sent.is_ok(), "{}: message {n} refused: {sent:?}", A::NAME);
                if i % 64 == 0 {
                    // Let the aborts land between the producers' bursts.
                    A::sleep(MS(1)).await;
                }
            }
        }
    });
    join_all(producers).await;
}

/// Aborts every connection (no close frame, unread bytes lost) `times` times, `every` apart,
/// once `after` has passed.
async fn abort_repeatedly<A: Adapter>(server: &ServerThread, after: Duration, every: Duration, times: u32) {
    A::sleep(after).await;
    for _ in 0..times {
        server.abort_connections();
        A::sleep(every).await;
    }
}

/// (a) At most once, under load, with the server reading slowly and aborting every
/// connection twice mid-run: nothing is left queued or written once flushed, and the
/// server's count lies within `[confirmed, confirmed + unconfirmed]`: every confirmed
/// message was read, nothing was read twice.
pub async fn at_most_once_through_aborts_and_slow_reads<A: Adapter>() {
    let server = server_with(|o| o.faults.read_delay_us = 20);
    let client = connect::<A>(config(&server.url()).outbox_capacity(500)).await;
    let options = SendOptions::default().with_delivery(Delivery::AtMostOnce);
    join(
        produce::<A>(&client, 4, 1500, options, |n| report(n, 200)),
        abort_repeatedly::<A>(&server, MS(150), MS(250), 2),
    )
    .await;
    let flushed = client.flush(Duration::from_secs(10)).await;
    assert!(flushed.is_ok(), "{}: {flushed:?}", A::NAME);
    let s = client.stats();
    let counted = server_ff(&server);
    let f = &s.sends;
    eprintln!(
        "{}: at most once: server {counted}, {f:?}, aborted {}",
        A::NAME,
        server.counters().connections_aborted()
    );
    assert!(
        server.counters().connections_aborted() >= 2,
        "the aborts happened"
    );
    assert_eq!((f.sends, f.dropped), (6000, 0), "{f:?}");
    assert_eq!((f.queued, f.written), (0, 0), "nothing left in flight: {f:?}");
    assert!(f.conserved(), "{f:?}");
    assert!(
        f.confirmed <= counted && counted <= f.confirmed + f.unconfirmed,
        "server {counted} outside [{}, {}]",
        f.confirmed,
        f.confirmed + f.unconfirmed
    );
    assert_eq!(f.rewritten, 0, "at most once writes nothing twice: {f:?}");
    client.close().await;
}

/// (b) At least once, with distinct `allocationId`s and a server that deduplicates on them,
/// through the same aborts: every id reaches the server, and no id arrives more often than
/// the rewrites allow.
pub async fn at_least_once_every_id_arrives<A: Adapter>() {
    let server = server_with(|o| o.faults.read_delay_us = 20);
    server.counters().record_allocation_ids();
    let client = connect::<A>(
        config(&server.url())
            .outbox_capacity(500)
            .server_deduplicates_allocation_ids(true),
    )
    .await;
    // No guarantee named: an `allocationId` with the switch on means at least once.
    join(
        produce::<A>(&client, 4, 1000, SendOptions::default(), use_allocation),
        abort_repeatedly::<A>(&server, MS(150), MS(250), 2),
    )
    .await;
    let flushed = client.flush(Duration::from_secs(10)).await;
    assert!(flushed.is_ok(), "{}: {flushed:?}", A::NAME);
    let s = client.stats();
    let f = &s.sends;
    let ids = server.counters().allocation_ids();
    let duplicates: u64 = ids.values().map(|n| n - 1).sum();
    eprintln!(
        "{}: at least once: {} ids, {duplicates} duplicates, {f:?}",
        A::NAME,
        ids.len()
    );
    assert_eq!((f.sends, f.confirmed, f.unconfirmed), (4000, 4000, 0), "{f:?}");
    assert_eq!(ids.len(), 4000, "every id arrived at least once");
    assert!(
        duplicates <= f.rewritten,
        "{duplicates} duplicates, only {} rewrites",
        f.rewritten
    );
    client.close().await;
}

/// (c1) `close()` while the server is down, with messages sent meanwhile: the server comes
/// back within the drain, the drain delivers them, and nothing is handed back.
pub async fn close_drains_when_the_server_returns<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url()).close_drain(Duration::from_secs(3))).await;
    server.kill();
    must_wait::<A>(Duration::from_secs(2), "the connections noticed", || {
        !client.is_connected()
    })
    .await;
    for n in 0..5 {
        client.send(report(n, 10)).unwrap();
    }
    let restart = async {
        A::sleep(MS(300)).await;
        server.restart().unwrap();
    };
    let (report, ()) = join(client.close(), restart).await;
    eprintln!("{}: drained: {:?}", A::NAME, report.stats.sends);
    assert!(report.undelivered.is_empty(), "{:?}", report.undelivered);
    assert_eq!(report.stats.sends.confirmed, 5, "{:?}", report.stats.sends);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(server_ff(&server), 5);
}

/// (c2) The server stays down longer than the drain: `close()` hands back exactly the
/// messages sent while it was down, in send order, counted as `closed`.
pub async fn close_hands_back_what_it_could_not_deliver<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url()).close_drain(MS(500))).await;
    client.send(report(100, 10)).unwrap();
    client.flush(Duration::from_secs(2)).await.unwrap();
    server.kill();
    must_wait::<A>(Duration::from_secs(2), "the connections noticed", || {
        !client.is_connected()
    })
    .await;
    let sent: Vec<Outgoing> = (0..5).map(|n| report(n, 10)).collect();
    for m in &sent {
        client.send(m.clone()).unwrap();
    }
    let t = Instant::now();
    let report = client.close().await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "bounded by the drain: {:?}",
        t.elapsed()
    );
    let back: Vec<Outgoing> = report
        .undelivered
        .iter()
        .map(|u| u.to_outgoing().unwrap())
        .collect();
    assert_eq!(back, sent, "exactly the messages sent while down, in order");
    assert!(report.undelivered.iter().all(|u| !u.written_before));
    let f = &report.stats.sends;
    assert_eq!((f.sends, f.confirmed, f.closed), (6, 1, 5), "{f:?}");
    assert!(!report.is_clean());
    assert_eq!(server_ff(&server), 1);
}

/// (d) A server that stops answering pings: the connection is replaced within the pong
/// wait (even though it still answers requests), and nothing is confirmed that the server
/// did not read.
pub async fn a_server_that_stops_ponging_is_replaced<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url()).pool_size(1)).await;
    client.send(report(0, 10)).unwrap();
    client.flush(Duration::from_secs(2)).await.unwrap();
    let mut sub = client.subscribe();
    // The server goes on pinging (frames keep arriving) but answers no ping.
    server.faults().set_ping_every_ms(50);
    server.faults().set_no_pongs(true);
    let t = Instant::now();
    for n in 1..=20 {
        client.send(report(n, 10)).unwrap();
    }
    let event = wait_event::<A>(&mut sub, Duration::from_secs(3), |e| {
        matches!(e, ClientEvent::Pool(Event::Disconnected { .. }))
    })
    .await;
    let elapsed = t.elapsed();
    let Some(ClientEvent::Pool(Event::Disconnected { reason, .. })) = event else {
        panic!("{}: not replaced: {event:?}", A::NAME)
    };
    assert_eq!(reason, DisconnectReason::PongTimeout);
    assert!(elapsed < MS(800) + Duration::from_secs(1), "{elapsed:?}");
    let s = client.stats();
    assert_eq!(
        s.sends.confirmed, 1,
        "nothing confirmed without a pong: {:?}",
        s.sends
    );
    assert!(server_ff(&server) >= s.sends.confirmed);
    server.faults().set_no_pongs(false);
    wait_open::<A>(&client, 1, Duration::from_secs(3)).await;
    client.send(report(99, 10)).unwrap();
    client.flush(Duration::from_secs(3)).await.unwrap();
    let s = client.stats();
    let counted = server_ff(&server);
    assert!(
        s.sends.confirmed <= counted && counted <= s.sends.confirmed + s.sends.unconfirmed,
        "server {counted} vs {:?}",
        s.sends
    );
    client.close().await;
}

/// (e) A pong that lies: a server that stops reading and sends unsolicited pongs carrying
/// every small counter in both byte orders (a peer or middlebox guessing ping payloads)
/// confirms nothing; the unanswered ping ends the connection as `PongTimeout`.
pub async fn guessed_pongs_confirm_nothing<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url()).pool_size(1).confirm_after(MS(20))).await;
    // One message confirmed the honest way first.
    client.send(report(0, 10)).unwrap();
    client.flush(Duration::from_secs(3)).await.unwrap();
    let mut sub = client.subscribe();
    server.faults().set_stop_reading(true);
    server.faults().set_forge_pongs_every_ms(10);
    // Let the server's connection task see the switch before anything else arrives.
    A::sleep(MS(100)).await;
    let read_before = server_ff(&server);
    for n in 1..=10 {
        client.send(report(n, 10)).unwrap();
    }
    let event = wait_event::<A>(&mut sub, Duration::from_secs(3), |e| {
        matches!(e, ClientEvent::Pool(Event::Disconnected { .. }))
    })
    .await;
    let forged = server.counters().forged_pongs_sent();
    let s = client.stats();
    assert!(forged >= 2 * 65, "{}: the fault sent {forged} pongs", A::NAME);
    assert_eq!(
        s.sends.confirmed,
        1,
        "{}: confirmed unread messages: {:?}",
        A::NAME,
        s.sends
    );
    assert_eq!(
        server_ff(&server),
        read_before,
        "{}: the server read nothing more",
        A::NAME
    );
    let Some(ClientEvent::Pool(Event::Disconnected { reason, .. })) = event else {
        panic!("{}: not replaced: {event:?}", A::NAME)
    };
    assert_eq!(reason, DisconnectReason::PongTimeout, "{}", A::NAME);
    server.faults().clear();
    client.close().await;
}

/// (f) Bounds the client promises: a message larger than the frame limit is refused up
/// front with a typed error (by `send` and at once by `send_when_room`: waiting would not
/// help) and never reaches the server; with the server down, the outbox is bounded in bytes
/// and refuses with its own error; every refusal is counted as dropped.
pub async fn oversized_and_byte_capped_sends_are_refused<A: Adapter>() {
    let server = server();
    server.kill();
    let builder = config(&server.url())
        .max_frame_size(1_024)
        .max_outbox_bytes(2_000);
    let client = connect::<A>(builder).await;
    let too_large = report(0, 2_000);
    let e = client.send(too_large.clone()).unwrap_err();
    assert!(
        matches!(&e, ClientError::TooLarge { message, len, max: 1_024 } if *message == too_large && *len > 2_000),
        "{}: {e:?}",
        A::NAME
    );
    assert!(!e.is_unavailable(), "a caller error, not an outage");
    let t = Instant::now();
    let e = client
        .send_when_room(too_large, SendOptions::default(), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::TooLarge { .. }), "{}: {e:?}", A::NAME);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "refused without waiting for room"
    );
    // About 560 bytes each: three fit in 2,000 bytes, the fourth does not.
    for n in 1..=3 {
        client.send(report(n, 500)).unwrap();
    }
    let e = client.send(report(4, 500)).unwrap_err();
    assert!(matches!(e, ClientError::OutboxBytesFull(_)), "{}: {e:?}", A::NAME);
    assert!(e.is_unavailable());
    let s = client.stats().sends;
    assert_eq!((s.sends, s.dropped, s.queued), (6, 3, 3), "{}: {s:?}", A::NAME);
    assert!(s.conserved());
    server.restart().expect("restart");
    let flushed = client.flush(Duration::from_secs(15)).await;
    assert!(flushed.is_ok(), "{}: {flushed:?}", A::NAME);
    assert_eq!(
        server_ff(&server),
        3,
        "{}: only the accepted ones arrive",
        A::NAME
    );
    client.close().await;
}

/// A slow server and a producer faster than it: with sends that wait for room, every message
/// arrives and none is dropped; the per-connection window keeps what awaits confirmation
/// bounded; `send_confirmed` resolves once its message is confirmed.
pub async fn a_slow_server_gets_everything_when_sends_wait_for_room<A: Adapter>() {
    let server = server_with(|o| o.faults.read_delay_us = 100);
    let client = connect::<A>(config(&server.url()).outbox_capacity(50).max_unconfirmed(64)).await;
    produce::<A>(&client, 4, 500, SendOptions::default(), |n| report(n, 100)).await;
    let confirmed = client
        .send_confirmed(report(9999, 10), SendOptions::default(), Duration::from_secs(5))
        .await;
    assert!(confirmed.is_ok(), "{}: {confirmed:?}", A::NAME);
    client.flush(Duration::from_secs(10)).await.unwrap();
    let s = client.stats();
    let f = &s.sends;
    assert_eq!((f.sends, f.confirmed, f.dropped), (2001, 2001, 0), "{f:?}");
    assert_eq!(server_ff(&server), 2001);
    assert!(s.pongs > 0 && s.confirm_latency.count == 2001, "{s:?}");
    client.close().await;
}
