//! Conformance and fault tests of the usageflow-socket adapters, over loopback against the
//! local server (`usageflow_socket_server`).
//!
//! # Design
//!
//! - [`Adapter`] names what differs between the runtimes: the [`Runtime`] the one
//!   [`Client`] runs on ([`ClientOf`]), `block_on` and `sleep`. Everything else is the
//!   client's own API, the same on every runtime.
//! - Every test body in [`bodies`] is an `async fn name<A: Adapter>()`. The
//!   [`conformance!`] macro instantiates all of them for one adapter as plain `#[test]`s, each
//!   run under [`run`] with a global time limit ([`TEST_TIMEOUT`]).
//! - The server always runs on its own thread and Tokio runtime ([`ServerThread`]), so a
//!   body never depends on the client's runtime, and every test has its own server on an
//!   ephemeral port: tests run in parallel.
//! - Nothing waits with a blind sleep: [`wait_until`] polls a predicate (client stats,
//!   server counters) until it holds or a deadline passes.
#![allow(missing_docs, reason = "test support crate")]

pub mod bodies;
pub mod delivery;
pub mod ends;
pub mod proxy;
pub mod resilience;
pub mod shutdown;
mod smol_adapter;
pub mod spool;
mod tokio_adapter;

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use serde_json::json;
pub use usageflow_socket_client::{
    Availability, Client, ClientError, ClientEvent, ClientOptions, Config, ConfigBuilder, Delivery,
    DialError, DisconnectReason, Event, Incoming, Outgoing, RecvError, RequestOptions, Runtime, SendOptions,
    Stats, Subscription, UsageFlowApi,
};
use usageflow_socket_server::{ServerOptions, ServerThread};

pub use smol_adapter::SmolAdapter;
pub use tokio_adapter::TokioAdapter;

/// The time limit of every test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The API key the test servers accept.
pub const KEY: &str = "test-key-Secr3t-0123456789";

/// What the suite needs beside the client: which [`Runtime`] it runs on, and how to run a
/// future on it (it sleeps through the [`Runtime`] itself). Everything else is the one [`Client`], the same on every runtime.
pub trait Adapter: 'static {
    /// For messages.
    const NAME: &'static str;
    /// The client's runtime.
    type Runtime: Runtime;

    /// Runs a future to completion on this runtime.
    fn block_on<F: Future>(f: F) -> F::Output;

    /// Sleeps on this runtime's timer (the client's own [`Runtime::sleep_until`]).
    fn sleep(d: Duration) -> impl Future<Output = ()> {
        let runtime = Self::Runtime::current().expect("a test body runs within its runtime");
        let deadline = Instant::now() + d;
        async move { runtime.sleep_until(deadline).await }
    }
}

/// The client on `A`'s runtime.
pub type ClientOf<A> = Client<<A as Adapter>::Runtime>;

/// The next event (`Ok`), or how many events the subscriber lost since its last receive
/// (`Err`); `None` when the subscription ended.
pub async fn recv_event(sub: &mut Subscription) -> Option<Result<ClientEvent, u64>> {
    match sub.recv().await {
        Ok(event) => Some(Ok(event)),
        Err(RecvError::Lagged(n)) => Some(Err(n)),
        // Closed, or a reason added later: either way no event will come.
        Err(_) => None,
    }
}

/// The next event, or `None` when the subscription ended. Lagging skips lost events.
pub async fn next_event(sub: &mut Subscription) -> Option<ClientEvent> {
    loop {
        match recv_event(sub).await? {
            Ok(event) => return Some(event),
            Err(_lost) => continue,
        }
    }
}

/// Runs one test body under [`TEST_TIMEOUT`], on the adapter's runtime.
pub fn run<A: Adapter, F: Future<Output = ()>>(name: &str, body: F) {
    run_within::<A, F>(name, TEST_TIMEOUT, body);
}

/// The soak's length: `SOAK_SECS` (default 30 s).
pub fn soak_duration() -> Duration {
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// Runs one test body under `limit`, on the adapter's runtime.
pub fn run_within<A: Adapter, F: Future<Output = ()>>(name: &str, limit: Duration, body: F) {
    init_tracing();
    let started = Instant::now();
    let done = A::block_on(timeout::<A, _>(limit, body));
    assert!(
        done.is_some(),
        "{}::{name} did not finish within {limit:?}",
        A::NAME
    );
    eprintln!("{}::{name} passed in {:?}", A::NAME, started.elapsed());
}

/// Installs the process's subscriber once: the test writer (filtered by `RUST_LOG`, off by
/// default) and the [`captured`] lines (WARN and ERROR of the client, always).
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter =
        tracing_subscriber::EnvFilter::new(std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(filter),
        )
        .with(Capture.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
        .try_init();
}

/// Most lines [`captured`] keeps (the oldest go first).
const CAPTURE_LINES: usize = 20_000;

static CAPTURED: std::sync::Mutex<std::collections::VecDeque<CapturedLine>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// A WARN or ERROR line of the client, as the test subscriber saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedLine {
    /// `ERROR` or `WARN`.
    pub level: String,
    /// The message.
    pub message: String,
    /// Every other field, by name, as displayed.
    pub fields: std::collections::BTreeMap<String, String>,
}

impl CapturedLine {
    /// A field parsed as a number.
    pub fn number(&self, field: &str) -> Option<u64> {
        self.fields.get(field)?.parse().ok()
    }
}

/// The captured WARN and ERROR lines of the client whose redacted URL is `client`
/// (their `client` field), oldest first.
pub fn captured(client: &str) -> Vec<CapturedLine> {
    CAPTURED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|l| l.fields.get("client").map(String::as_str) == Some(client))
        .cloned()
        .collect()
}

/// The ERROR lines of `client` that name messages not delivered, and the sum of their counts.
pub fn abandoned(client: &str) -> (Vec<CapturedLine>, u64) {
    let lines: Vec<CapturedLine> = captured(client)
        .into_iter()
        .filter(|l| l.level == "ERROR" && l.message.contains("not delivered and discarded"))
        .collect();
    let total = lines.iter().map(|l| l.number("count").expect("a count")).sum();
    (lines, total)
}

/// Something to run on every captured line of one client, on the thread that writes it.
pub type LineHook = std::sync::Arc<dyn Fn(&CapturedLine) + Send + Sync>;

static HOOKS: std::sync::Mutex<Vec<(String, LineHook)>> = std::sync::Mutex::new(Vec::new());

/// Runs `hook` on every WARN or ERROR line of the client whose redacted URL is `client`, as
/// it is written, until [`remove_line_hooks`].
pub fn on_line(client: &str, hook: LineHook) {
    HOOKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((client.to_owned(), hook));
}

/// Removes the hooks of `client`.
pub fn remove_line_hooks(client: &str) {
    HOOKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|(c, _)| c != client);
}

struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if !event.metadata().target().starts_with("usageflow_socket") {
            return;
        }
        let mut line = CapturedLine {
            level: event.metadata().level().to_string(),
            message: String::new(),
            fields: Default::default(),
        };
        event.record(&mut line);
        let hooks: Vec<LineHook> = match line.fields.get("client") {
            Some(client) => HOOKS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .filter(|(c, _)| c == client)
                .map(|(_, hook)| std::sync::Arc::clone(hook))
                .collect(),
            None => Vec::new(),
        };
        for hook in hooks {
            hook(&line);
        }
        let mut captured = CAPTURED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if captured.len() == CAPTURE_LINES {
            captured.pop_front();
        }
        captured.push_back(line);
    }
}

impl tracing::field::Visit for CapturedLine {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.insert(field.name().to_owned(), value.to_owned());
        }
    }
}

/// `fut`, or `None` if `d` passes first.
pub async fn timeout<A: Adapter, F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    match select(pin!(fut), pin!(A::sleep(d))).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// Polls `pred` every 5 ms until it holds (true) or `limit` passes (false).
pub async fn wait_until<A: Adapter>(limit: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        A::sleep(Duration::from_millis(5)).await;
    }
}

/// Like [`wait_until`], panicking with `what` (and the adapter's name) when it times out.
pub async fn must_wait<A: Adapter>(limit: Duration, what: &str, pred: impl FnMut() -> bool) {
    assert!(
        wait_until::<A>(limit, pred).await,
        "{}: timed out after {limit:?} waiting for: {what}",
        A::NAME
    );
}

/// Waits until the client has `n` open connections.
pub async fn wait_open<A: Adapter>(client: &ClientOf<A>, n: u32, limit: Duration) {
    must_wait::<A>(limit, &format!("{n} open connections"), || {
        client.stats().open_connections == n
    })
    .await;
}

/// The next event for which `pred` holds, within `limit`.
pub async fn wait_event<A: Adapter>(
    sub: &mut Subscription,
    limit: Duration,
    mut pred: impl FnMut(&ClientEvent) -> bool,
) -> Option<ClientEvent> {
    timeout::<A, _>(limit, async {
        while let Some(event) = next_event(sub).await {
            if pred(&event) {
                return Some(event);
            }
        }
        None
    })
    .await
    .flatten()
}

/// A server with the test key and `tweak` applied to its options.
pub fn server_with(tweak: impl FnOnce(&mut ServerOptions)) -> ServerThread {
    let mut options = ServerOptions {
        key: Some(KEY.into()),
        rebind_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    tweak(&mut options);
    ServerThread::spawn(options).expect("the test server starts")
}

/// A server with the test key.
pub fn server() -> ServerThread {
    server_with(|_| {})
}

/// The suite's configuration: short timings so faults are detected within a second.
///
/// ping 200 ms, pong wait 800 ms (4 ping periods: a loaded 2-core machine must not see
/// spurious read timeouts), write wait 1 s, handshake 1 s, backoff 100 ms doubling to 1 s
/// without jitter, 20 attempts (no slot rests during a test), request timeout 2 s; a
/// barrier 50 ms after a message at the latest, a close drain of 1 s.
pub fn config(url: &str) -> ConfigBuilder {
    config_key(url, KEY)
}

/// [`config`] with another API key.
pub fn config_key(url: &str, key: &str) -> ConfigBuilder {
    Config::builder(url, key)
        .pool_size(2)
        .request_timeout(Duration::from_secs(2))
        .ping_period(Duration::from_millis(200))
        .pong_wait(Duration::from_millis(800))
        .write_wait(Duration::from_secs(1))
        .handshake_timeout(Duration::from_secs(1))
        .confirm_after(Duration::from_millis(50))
        .close_drain(Duration::from_secs(1))
        .backoff_base(Duration::from_millis(100))
        .backoff_cap(Duration::from_secs(1))
        .backoff_jitter(0.0)
        .backoff_attempts(20)
}

/// Options from a config builder (default TLS roots, random seed).
pub fn options(builder: ConfigBuilder) -> ClientOptions {
    ClientOptions::from(builder.build().expect("a valid test config"))
}

/// Connects with `builder`'s config, panicking on an options error.
pub async fn connect<A: Adapter>(builder: ConfigBuilder) -> ClientOf<A> {
    ClientOf::<A>::connect(options(builder)).await.expect("connect")
}

/// A non-idempotent request (no `allocationId`) that the server answers with success.
pub fn policies() -> Outgoing {
    Outgoing::new("get_application_policies", serde_json::Value::Null)
}

/// A `request_for_allocation` whose reply echoes `allocation_id` (idempotent: it carries an
/// idempotency key).
pub fn allocation(allocation_id: &str) -> Outgoing {
    Outgoing::new(
        "request_for_allocation",
        json!({"alias": "ledger-1", "amount": 1.0, "allocationId": allocation_id}),
    )
}

/// A fire-and-forget `report_call_chain`, with `size` bytes of padding.
pub fn report(n: u64, size: usize) -> Outgoing {
    Outgoing::new(
        "report_call_chain",
        json!({"method": "GET", "url": format!("/r/{n}"), "callChain": "x".repeat(size), "timestamp": n}),
    )
}

/// How a request ended, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcomes {
    pub ok: u64,
    pub denied: u64,
    pub timeout: u64,
    pub connection_lost: u64,
    pub not_connected: u64,
    pub backpressure: u64,
    pub closed: u64,
    pub cancelled: u64,
    pub other: u64,
}

impl Outcomes {
    pub fn record(&mut self, result: &Result<Incoming, ClientError>) {
        match result {
            Ok(_) => self.ok += 1,
            Err(ClientError::Denied(_)) => self.denied += 1,
            Err(ClientError::Timeout) => self.timeout += 1,
            Err(ClientError::ConnectionLost(_)) => self.connection_lost += 1,
            Err(ClientError::NotConnected) => self.not_connected += 1,
            Err(ClientError::Backpressure { .. }) => self.backpressure += 1,
            Err(ClientError::Closed) => self.closed += 1,
            Err(_) => self.other += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.ok
            + self.denied
            + self.timeout
            + self.connection_lost
            + self.not_connected
            + self.backpressure
            + self.closed
            + self.cancelled
            + self.other
    }

    /// Refused at once (never entered the pool's pending set).
    pub fn refused(&self) -> u64 {
        self.not_connected + self.backpressure
    }

    pub fn merge(&mut self, o: &Outcomes) {
        self.ok += o.ok;
        self.denied += o.denied;
        self.timeout += o.timeout;
        self.connection_lost += o.connection_lost;
        self.not_connected += o.not_connected;
        self.backpressure += o.backpressure;
        self.closed += o.closed;
        self.cancelled += o.cancelled;
        self.other += o.other;
    }
}

/// Checks that `issued` requests completed exactly once each and that the client's counters
/// agree with the outcomes the callers saw (with nothing pending).
///
/// `closed_refusals` are `Closed` errors returned at once by a closed client (counted in
/// `refused_closed`, not in `requests`).
#[track_caller]
pub fn assert_outcomes_match(name: &str, issued: u64, o: &Outcomes, s: &Stats) {
    assert_eq!(
        o.total(),
        issued,
        "{name}: every request completes exactly once: {o:?}"
    );
    assert_eq!(o.other, 0, "{name}: unexpected error kinds: {o:?}");
    assert!(s.requests_conserved(), "{name}: request conservation: {s:?}");
    assert_eq!(s.pending, 0, "{name}: nothing pending: {s:?}");
    assert_eq!(s.replies, o.ok, "{name}: replies vs Ok outcomes: {o:?} {s:?}");
    assert_eq!(s.denials, o.denied, "{name}: denials: {o:?} {s:?}");
    assert_eq!(s.timeouts, o.timeout, "{name}: timeouts: {o:?} {s:?}");
    assert_eq!(
        s.connection_lost, o.connection_lost,
        "{name}: connection lost: {o:?} {s:?}"
    );
    assert_eq!(
        s.refused_not_connected, o.not_connected,
        "{name}: not connected: {o:?} {s:?}"
    );
    assert_eq!(
        s.refused_backpressure, o.backpressure,
        "{name}: backpressure: {o:?} {s:?}"
    );
    assert_eq!(s.cancelled, o.cancelled, "{name}: cancelled: {o:?} {s:?}");
    assert_eq!(
        s.closed + s.refused_closed,
        o.closed,
        "{name}: closed (pending and refused): {o:?} {s:?}"
    );
    assert_eq!(
        s.requests + s.refused_not_connected + s.refused_backpressure + s.refused_closed,
        issued,
        "{name}: accepted + refused = issued: {s:?}"
    );
}

/// The resident set size of this process, in KiB (Linux; 0 elsewhere).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Instantiates every test body of [`bodies`], [`resilience`], [`delivery`] and [`proxy`] for one adapter, as `#[test]` functions in the
/// invoking module; `soak` is `#[ignore]`d.
///
/// ```ignore
/// mod tokio_suite {
///     usageflow_socket_tests::conformance!(usageflow_socket_tests::TokioAdapter);
/// }
/// ```
#[macro_export]
macro_rules! conformance {
    ($adapter:ty) => {
        $crate::conformance!(@tests $adapter;
            handshake_headers_and_typed_api,
            rejected_key_is_permanent_and_clear,
            unavailable_status_is_not_a_rejection,
            server_pings_keep_a_connection_alive,
            resting_slot_returns_while_another_is_open,
            correlation_in_every_reply_style,
            out_of_order_replies,
            denials_are_distinct_from_unavailability,
            timeout_at_the_deadline,
            noise_frames_are_counted_and_harmless,
            stalled_subscriber_holds_bounded_bytes,
            in_flight_fail_at_once_on_server_close,
            in_flight_fail_at_once_on_kill,
            reconnects_after_restart,
            frozen_server_read_timeout,
            no_pong_server_read_timeout,
            writes_keep_working_across_many_ping_periods,
            outbox_flushed_after_reconnect,
            close_refuses_work_and_closes_cleanly,
            is_connected_transitions,
            tls_self_signed,
            dropped_request_future_cancels,
            dropping_the_last_handle_closes,
            backpressure_refuses_at_once,
            outbox_ttl_expires,
            exhausted_slots_rearm_on_use,
            fault_kill_restart_under_load,
            fault_frozen_server_under_load,
            fault_handshake_hang,
            fault_close_after_n_messages,
            fault_slow_server_deadlines,
            fault_write_stall,
            fault_close_against_frozen_server,
        );
        $crate::conformance!(@resilience $adapter;
            resend_idempotent_once,
            availability_state,
            staggered_connections,
            connect_returns_when_dials_settle,
            rotation_under_load,
            loss_accounting_outage,
            each_handle_keeps_to_its_slot,
        );
        $crate::conformance!(@delivery $adapter;
            at_most_once_through_aborts_and_slow_reads,
            at_least_once_every_id_arrives,
            close_drains_when_the_server_returns,
            close_hands_back_what_it_could_not_deliver,
            a_server_that_stops_ponging_is_replaced,
            guessed_pongs_confirm_nothing,
            oversized_and_byte_capped_sends_are_refused,
            a_slow_server_gets_everything_when_sends_wait_for_room,
        );
        $crate::conformance!(@proxy $adapter;
            proxy_tunnels_ws,
            proxy_tunnels_wss,
            proxy_requires_credentials,
            proxy_refuses_the_tunnel,
            proxy_refusal_fails_connect_and_names_the_cause,
        );
        $crate::conformance!(@ends $adapter;
            waits_work_outside_the_runtime,
            huge_timeouts_saturate,
            outage_drop_warnings_are_rate_limited,
            lines_are_written_outside_the_lock,
            receipts_tell_each_message_fate,
        );
        #[test]
        #[ignore = "soak: cargo test -p usageflow-socket-tests -- --ignored soak (SOAK_SECS, default 30)"]
        fn soak() {
            let limit = $crate::soak_duration() + std::time::Duration::from_secs(30);
            $crate::run_within::<$adapter, _>("soak", limit, $crate::bodies::soak::<$adapter>());
        }
    };
    (@ends $adapter:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::run::<$adapter, _>(stringify!($name), $crate::ends::$name::<$adapter>());
            }
        )*
    };
    (@proxy $adapter:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::run::<$adapter, _>(stringify!($name), $crate::proxy::$name::<$adapter>());
            }
        )*
    };
    (@delivery $adapter:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::run::<$adapter, _>(stringify!($name), $crate::delivery::$name::<$adapter>());
            }
        )*
    };
    (@resilience $adapter:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::run::<$adapter, _>(stringify!($name), $crate::resilience::$name::<$adapter>());
            }
        )*
    };
    (@tests $adapter:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::run::<$adapter, _>(stringify!($name), $crate::bodies::$name::<$adapter>());
            }
        )*
    };
}

/// The README's code blocks, compiled as doc tests so the quick starts stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
