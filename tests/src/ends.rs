//! The waits a caller can make (`flush`, `send_confirmed`, `send_when_room`, receipts) from
//! anywhere and with any timeout, and the warnings of an outage rate-limited (issue 21, items
//! 4, 8, 9 and 15).

use std::thread;
use std::time::{Duration, Instant};

use usageflow_socket_client::{ClientError, MessageFate};

use crate::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn at_least_once() -> SendOptions {
    SendOptions::default().with_delivery(Delivery::AtLeastOnce)
}

/// Runs `f` on a plain thread (outside every runtime) and waits for it within `limit`.
async fn on_plain_thread<A: Adapter, T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let thread = thread::spawn(f);
    must_wait::<A>(limit, "the plain thread's work", || thread.is_finished()).await;
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Item 4: `flush`, `send_confirmed` and `send_when_room` (including when it has to wait)
/// work from a plain thread, outside the client's runtime: before, the Tokio adapter panicked
/// there ("there is no reactor running").
pub async fn waits_work_outside_the_runtime<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url()).outbox_capacity(2)).await;
    wait_open::<A>(&client, 2, SECS(5)).await;
    let c = client.clone();
    on_plain_thread::<A, _>(SECS(10), move || {
        smol::block_on(async {
            c.flush(SECS(5)).await.expect("flush from a plain thread");
            c.send_confirmed(report(1, 10), at_least_once(), SECS(5))
                .await
                .expect("send_confirmed from a plain thread");
            c.send_when_room(report(2, 10), at_least_once(), SECS(5))
                .await
                .expect("send_when_room from a plain thread");
        })
    })
    .await;
    // No connection and a full outbox: send_when_room has to wait for room, on its timer.
    client.flush(SECS(5)).await.unwrap();
    server.kill();
    must_wait::<A>(SECS(5), "no open connection", || !client.is_connected()).await;
    for n in 0..2 {
        client.send(report(10 + n, 10)).unwrap();
    }
    let c = client.clone();
    let (waited, result) = on_plain_thread::<A, _>(SECS(10), move || {
        smol::block_on(async {
            let started = Instant::now();
            let result = c
                .send_when_room(report(20, 10), at_least_once(), Duration::from_millis(200))
                .await;
            (started.elapsed(), result)
        })
    })
    .await;
    assert!(
        matches!(result, Err(ClientError::OutboxFull(_))),
        "{}: {result:?}",
        A::NAME
    );
    assert!(
        waited >= Duration::from_millis(200),
        "it waited for room: {waited:?}"
    );
    client.close().await;
}

/// Item 8: `Duration::MAX` (or any huge timeout) saturates in `flush`, `send_confirmed` and
/// `send_when_room` instead of panicking on an `Instant` overflow.
pub async fn huge_timeouts_saturate<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url())).await;
    wait_open::<A>(&client, 2, SECS(5)).await;
    for timeout in [Duration::MAX, Duration::from_secs(u64::MAX / 2), SECS(1 << 40)] {
        client.flush(timeout).await.expect("flush");
        client
            .send_confirmed(report(1, 10), at_least_once(), timeout)
            .await
            .expect("send_confirmed");
        client
            .send_when_room(report(2, 10), at_least_once(), timeout)
            .await
            .expect("send_when_room");
        client.flush(timeout).await.expect("flush");
    }
    assert!(client.close().await.is_clean());
}

/// Item 9: a service that keeps sending into a full outbox during an outage gets one WARN for
/// the first refusal and one summary with the counts (here at the stop), not one line per
/// refused send; every refusal is counted in them.
pub async fn outage_drop_warnings_are_rate_limited<A: Adapter>() {
    let server = server();
    let url = server.url();
    let client = connect::<A>(config(&url).outbox_capacity(4)).await;
    server.kill();
    must_wait::<A>(SECS(5), "no open connection", || !client.is_connected()).await;
    let mut refused = 0;
    for n in 0..500 {
        if let Err(ClientError::OutboxFull(_)) = client.send(report(n, 10)) {
            refused += 1;
        }
    }
    assert!(refused >= 490, "{refused}");
    let redacted = usageflow_socket_core::redact_url(&url);
    let drop_lines = || -> Vec<CapturedLine> {
        captured(&redacted)
            .into_iter()
            .filter(|l| l.message.contains("not delivered"))
            .filter(|l| l.level == "WARN")
            .collect()
    };
    assert_eq!(
        drop_lines().len(),
        1,
        "{}: the first refusal only: {:?}",
        A::NAME,
        drop_lines().first()
    );
    client.close().await;
    let lines = drop_lines();
    assert!(lines.len() <= 3, "{}: {} lines", A::NAME, lines.len());
    // Every refusal is in a line: the first alone, the rest in the summary's counts.
    let outbox_full: u64 = lines
        .iter()
        .map(|l| match l.fields.get("counts") {
            Some(counts) => counts
                .split("; ")
                .filter(|c| c.contains("outbox full"))
                .map(|c| c.rsplit(": ").next().unwrap().parse::<u64>().unwrap())
                .sum(),
            None if l.fields.get("reason").map(String::as_str) == Some("outbox full") => {
                l.number("count").unwrap()
            }
            None => 0,
        })
        .sum();
    assert_eq!(outbox_full, refused, "{}: {lines:?}", A::NAME);
}

/// Item 9: no line is written while the client's lock is held. A hook on the test subscriber
/// takes the client's lock (`outbox_len`) while each of its lines is written: a line written
/// under the lock would deadlock the sending thread (bounded here by the plain thread's wait).
pub async fn lines_are_written_outside_the_lock<A: Adapter>() {
    let server = server();
    let url = server.url();
    let client = connect::<A>(config(&url).outbox_capacity(4)).await;
    let redacted = usageflow_socket_core::redact_url(&url);
    let hooked = client.clone();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&seen);
    on_line(
        &redacted,
        std::sync::Arc::new(move |_| {
            let _ = hooked.outbox_len();
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }),
    );
    server.kill();
    must_wait::<A>(SECS(5), "no open connection", || !client.is_connected()).await;
    let sender = client.clone();
    on_plain_thread::<A, _>(SECS(5), move || {
        for n in 0..10 {
            let _ = sender.send(report(n, 10));
        }
        // The close drain's hand-back and the drop summary are lines too.
        smol::block_on(sender.close());
    })
    .await;
    remove_line_hooks(&redacted);
    assert!(
        seen.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "{}",
        A::NAME
    );
}

/// Item 15: a receipt per message tells its end: delivered (confirmed by a pong) or how else
/// it ended (here, handed back by a close whose drain could not deliver it).
pub async fn receipts_tell_each_message_fate<A: Adapter>() {
    let server = server();
    let client = connect::<A>(config(&server.url())).await;
    wait_open::<A>(&client, 2, SECS(5)).await;
    let receipts: Vec<_> = (0..20)
        .map(|n| client.send_with_receipt(report(n, 10), at_least_once()).unwrap())
        .collect();
    let ids: Vec<_> = receipts.iter().map(|r| r.id()).collect();
    for (receipt, id) in receipts.into_iter().zip(ids) {
        let result = timeout::<A, _>(SECS(5), receipt)
            .await
            .expect("a receipt within 5 s");
        assert_eq!(result, Ok(id), "{}", A::NAME);
    }
    assert_eq!(client.stats().sends.confirmed, 20);
    // The server goes away: the next messages wait in the outbox until close hands them back.
    server.kill();
    must_wait::<A>(SECS(5), "no open connection", || !client.is_connected()).await;
    let receipt = client.send_with_receipt(report(99, 10), at_least_once()).unwrap();
    let closed = client.close().await;
    assert_eq!(closed.undelivered.len(), 1);
    let result = timeout::<A, _>(SECS(5), receipt)
        .await
        .expect("a receipt within 5 s");
    assert_eq!(
        result,
        Err(ClientError::NotDelivered(MessageFate::Closed)),
        "{}",
        A::NAME
    );
    // A closed client refuses at once, as `send` does.
    assert_eq!(
        client
            .send_with_receipt(report(100, 10), at_least_once())
            .unwrap_err(),
        ClientError::Closed
    );
}
