//! `ufsock demo`: the README's first command. Starts the local server, brings a pool up,
//! runs a mixed workload, kills and restarts the server, shows the pool failing fast, queueing
//! fire-and-forget messages and recovering, and ends with an accounting summary. Every wait is
//! bounded; the whole demo takes a few seconds.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::future::join_all;
use serde_json::json;
use tokio::task::JoinHandle;
use usageflow_socket_core::redact_url;
use usageflow_socket_server::{Server, ServerHandle, ServerOptions};
use usageflow_socket_tokio::messages::{ReportCallChain, RequestForAllocation, UseAllocation};
use usageflow_socket_tokio::{
    Availability, Client, ClientError, ClientEvent, Config, Event, RecvError, Stats, Subscription,
    UsageFlowApi,
};

use crate::shared::{error_kind, CmdResult, EXIT_OTHER};

/// The demo server's key (a throwaway; never printed anyway).
const KEY: &str = "ufsock-demo-key";

/// Options of `ufsock demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Connections in the pool.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pool: u16,
    /// Port of the local server (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// How long the server stays down, in milliseconds.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    outage_ms: u64,
}

/// Prints lines stamped with the time since the demo started.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn say(&self, tag: &str, message: impl Display) {
        println!("{:>8.3}s  {tag:<9} {message}", self.0.elapsed().as_secs_f64());
    }

    fn heading(&self, title: &str) {
        println!();
        println!("{:>8.3}s  == {title} ==", self.0.elapsed().as_secs_f64());
    }
}

/// What the demo's own calls ended with.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    replies: u64,
    denials: u64,
    failures: BTreeMap<&'static str, u64>,
    sends: u64,
    sends_refused: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn request<T>(&mut self, result: &Result<T, ClientError>) {
        self.requests += 1;
        match result {
            Ok(_) => self.replies += 1,
            Err(e) if e.is_denied() => self.denials += 1,
            Err(e) => *self.failures.entry(error_kind(e)).or_default() += 1,
        }
    }

    fn send(&mut self, result: &Result<(), ClientError>) {
        self.sends += 1;
        if let Err(e) = result {
            *self.sends_refused.entry(error_kind(e)).or_default() += 1;
        }
    }
}

/// What the event log saw.
#[derive(Debug, Default)]
struct EventSummary {
    connected: u64,
    disconnected: u64,
    reconnects_scheduled: u64,
    dial_failures: u64,
    dropped: u64,
    transitions: Vec<Availability>,
}

/// Prints the pool's events as they come, until the client stops.
async fn event_log(mut events: Subscription, clock: Clock, summary: Arc<Mutex<EventSummary>>) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(n)) => {
                clock.say("event", format!("({n} events missed)"));
                continue;
            }
            // Closed, or a reason added later: no event will come.
            Err(_) => return,
        };
        let mut s = summary.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            ClientEvent::Pool(Event::Connected { conn }) => {
                s.connected += 1;
                clock.say(
                    "event",
                    format!("slot {} connected (dial #{})", conn.slot, conn.generation),
                );
            }
            ClientEvent::Pool(Event::ConnectFailed { .. }) => s.dial_failures += 1,
            ClientEvent::Pool(Event::Disconnected { conn, reason }) => {
                s.disconnected += 1;
                clock.say("event", format!("slot {} disconnected: {reason}", conn.slot));
            }
            ClientEvent::Pool(Event::ReconnectScheduled { slot, attempt, delay }) => {
                s.reconnects_scheduled += 1;
                clock.say(
                    "event",
                    format!(
                        "slot {slot} redials in {} ms (attempt {})",
                        delay.as_millis(),
                        attempt + 1
                    ),
                );
            }
            ClientEvent::Pool(Event::AttemptsExhausted { slot }) => {
                clock.say("event", format!("slot {slot} used up its attempts; resting"));
            }
            ClientEvent::Pool(Event::MessageDropped { kind, reason, count }) => {
                s.dropped += count;
                clock.say("event", format!("{count} {kind} message(s) dropped: {reason}"));
            }
            ClientEvent::Pool(Event::AvailabilityChanged { availability }) => {
                s.transitions.push(availability);
                clock.say("event", format!("pool is {}", availability_name(availability)));
            }
            ClientEvent::Stopped => {
                clock.say("event", "client stopped");
                return;
            }
            _ => {}
        }
    }
}

fn availability_name(a: Availability) -> &'static str {
    match a {
        Availability::Available => "AVAILABLE",
        Availability::Degraded => "DEGRADED",
        Availability::Unavailable => "UNAVAILABLE",
        _ => "OTHER",
    }
}

/// Polls `cond` every 10 ms for at most `limit`; whether it held.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn call_chain(i: u64) -> ReportCallChain {
    ReportCallChain {
        method: "GET".into(),
        url: format!("/api/items/{i}"),
        call_chain: json!(["gateway", "items", "db"]),
        timestamp: json!(1_700_000_000_000_u64 + i),
        usageflow_request_id: Some(format!("req-{i}")),
    }
}

fn allocation(alias: &str) -> RequestForAllocation {
    RequestForAllocation {
        alias: alias.into(),
        amount: 1.0,
        ..Default::default()
    }
}

/// Runs the demo on a runtime of its own.
pub(crate) fn run(args: DemoArgs) -> CmdResult {
    let rt = crate::shared::runtime(2, "ufsock-demo")?;
    let code = rt.block_on(async { tokio::time::timeout(Duration::from_secs(25), demo(args)).await });
    rt.shutdown_timeout(Duration::from_secs(1));
    match code {
        Ok(result) => result,
        Err(_) => Err("the demo did not finish within 25 s".into()),
    }
}

/// Allocations, then a use of each (half confirmed requests, half fire-and-forget).
async fn allocate_and_use(client: &Client, tally: &mut Tally, clock: Clock, n: u64) {
    let results = join_all((0..n).map(|i| {
        let client = client.clone();
        async move {
            client
                .request_for_allocation(&allocation(&format!("ledger-{}", i % 3)))
                .await
        }
    }))
    .await;
    let mut ids = Vec::new();
    for r in &results {
        tally.request(r);
        if let Ok(reply) = r {
            ids.push(reply.allocation_id.clone());
        }
    }
    clock.say("workload", format!("{} of {n} allocations granted", ids.len()));
    let mut confirmed = 0;
    let mut unconfirmed = 0;
    for (i, id) in ids.into_iter().enumerate() {
        let usage = UseAllocation {
            alias: format!("ledger-{}", i % 3),
            amount: 1.0,
            allocation_id: id,
            wait_for_confirmation: (i % 2 == 0).then_some(true),
            metadata: None,
        };
        let r = client.use_allocation(&usage).await;
        if usage.wait_for_confirmation == Some(true) {
            tally.request(&r);
            confirmed += u64::from(r.is_ok());
        } else {
            tally.send(&r.map(|_| ()));
            unconfirmed += 1;
        }
    }
    clock.say(
        "workload",
        format!("{confirmed} uses confirmed by the server, {unconfirmed} sent fire-and-forget"),
    );
}

/// The demo, phase after phase (each prints its own heading).
async fn demo(args: DemoArgs) -> CmdResult {
    let clock = Clock(Instant::now());
    println!("ufsock demo: a pooled UsageFlow client against a local server, through an outage.");
    let mut demo = Demo::start(&args, clock).await?;
    demo.workload().await;
    demo.outage(Duration::from_millis(args.outage_ms)).await;
    demo.recovery().await?;
    let ok = demo.close().await;
    clock.heading("a crash, and the spool");
    let spool_ok = crate::cmd_demo_spool::phase(|tag, line| clock.say(tag, line)).await?;
    if !ok {
        return Ok(ExitCode::from(EXIT_OTHER));
    }
    Ok(crate::cmd_demo_spool::exit_code(spool_ok))
}

/// What the phases share: the local server, the pooled client and its event log, and what the
/// demo's own calls ended with.
struct Demo {
    clock: Clock,
    pool: u16,
    server: ServerHandle,
    client: Client,
    /// The task printing the client's events.
    log: JoinHandle<()>,
    /// What the event log saw.
    events: Arc<Mutex<EventSummary>>,
    tally: Tally,
}

impl Demo {
    /// Starts the local server and a pool against it, and waits until every connection is
    /// open.
    async fn start(args: &DemoArgs, clock: Clock) -> Result<Demo, Box<dyn std::error::Error>> {
        let pool = args.pool;
        clock.heading("start");
        let server = Server::start(ServerOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)),
            key: Some(KEY.into()),
            ..ServerOptions::default()
        })
        .await?;
        clock.say("server", format!("listening on {}", redact_url(&server.url())));
        let config = Config::builder(server.url(), KEY)
            .pool_size(pool)
            .request_timeout(Duration::from_secs(1))
            .ping_period(Duration::from_secs(1))
            .pong_wait(Duration::from_secs(3))
            .write_wait(Duration::from_secs(2))
            .handshake_timeout(Duration::from_secs(2))
            .backoff_base(Duration::from_millis(200))
            .backoff_cap(Duration::from_secs(2))
            .backoff_attempts(20)
            // A barrier 100 ms after a message (instead of 1 s), so the summary shows most
            // messages confirmed before the server is killed.
            .confirm_after(Duration::from_millis(100))
            .build()?;
        clock.say(
            "client",
            format!("pool of {pool}, ping 1 s, pong wait 3 s, backoff 200 ms x 2^n up to 2 s"),
        );
        let client = Client::start(config)?;
        let events = Arc::new(Mutex::new(EventSummary::default()));
        let log = tokio::spawn(event_log(client.subscribe(), clock, Arc::clone(&events)));
        let all_open = |c: &Client| c.stats().open_connections == u32::from(pool);
        if !wait_until(Duration::from_secs(5), || all_open(&client)).await {
            return Err("the pool did not open within 5 s".into());
        }
        clock.say("client", format!("all {pool} connections open"));
        Ok(Demo {
            clock,
            pool,
            server,
            client,
            log,
            events,
            tally: Tally::default(),
        })
    }

    /// Every message type: typed requests, allocations and their uses, call chains, denials;
    /// then waits until the server counted every fire-and-forget message.
    async fn workload(&mut self) {
        let (clock, client, tally) = (self.clock, &self.client, &mut self.tally);
        clock.heading("workload");
        let config = client.get_application_config().await;
        tally.request(&config);
        if let Ok(c) = &config {
            clock.say(
                "workload",
                format!(
                    "application config: {} monitoring paths, {} whitelisted endpoints",
                    c.monitoring_paths.len(),
                    c.whitelist_endpoints.len()
                ),
            );
        }
        let policies = client.get_application_policies().await;
        tally.request(&policies);
        if let Ok(p) = &policies {
            clock.say("workload", format!("application policies: {} in total", p.total));
        }
        let blocked = client.get_blocked_endpoints().await;
        tally.request(&blocked);
        if let Ok(b) = &blocked {
            clock.say("workload", format!("blocked endpoints: {} in total", b.total));
        }
        allocate_and_use(client, tally, clock, 20).await;
        for i in 0..20 {
            tally.send(&client.report_call_chain(&call_chain(i)));
        }
        clock.say("workload", "20 call chains reported (fire-and-forget)");
        for _ in 0..2 {
            let r = client.request_for_allocation(&allocation("deny")).await;
            tally.request(&r);
            match r {
                Err(e) if e.is_denied() => clock.say(
                    "workload",
                    format!("alias \"deny\": denied ({})", e.denial_text().unwrap_or_default()),
                ),
                other => clock.say("workload", format!("alias \"deny\": unexpected {other:?}")),
            }
        }
        // Everything sent so far has arrived before the outage starts.
        self.wait_for_arrivals().await;
        let counters = self.server.counters();
        clock.say(
            "server",
            format!(
                "counted {} requests and {} fire-and-forget messages so far",
                counters.requests_total(),
                counters.fire_and_forget_total()
            ),
        );
    }

    /// Kills the server with requests in flight, then for `duration` shows requests failing
    /// fast and call chains queueing.
    async fn outage(&mut self, duration: Duration) {
        let (clock, client, server) = (self.clock, &self.client, &self.server);
        let tally = &mut self.tally;
        clock.heading("outage: the server is killed");
        // Slow replies down so a few requests are in flight when the server dies.
        server.faults().set_reply_delay_ms(2_000);
        let in_flight: Vec<_> = (0..3)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.get_application_policies().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.kill().await;
        server.faults().set_reply_delay_ms(0);
        clock.say("server", "killed (sockets dropped, no close frames)");
        for task in in_flight {
            if let Ok(r) = task.await {
                tally.request(&r);
                if let Err(e) = r {
                    clock.say("request", format!("in flight: {e}"));
                }
            }
        }
        wait_until(Duration::from_secs(4), || !client.is_connected()).await;
        let outage_end = Instant::now() + duration;
        let mut i = 100;
        while Instant::now() < outage_end {
            let t0 = Instant::now();
            let r = client.request_for_allocation(&allocation("ledger-0")).await;
            let took = t0.elapsed();
            tally.request(&r);
            let sent = client.report_call_chain(&call_chain(i));
            tally.send(&sent);
            i += 1;
            let outcome = match &r {
                Ok(_) => "answered".to_owned(),
                Err(e) => format!(
                    "failed fast ({}) in {:.2} ms",
                    error_kind(e),
                    took.as_secs_f64() * 1e3
                ),
            };
            clock.say(
                "request",
                format!(
                    "{outcome}; call chain {} (outbox depth {})",
                    if sent.is_ok() { "queued" } else { "refused" },
                    client.stats().outbox_depth
                ),
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Restarts the server on the same port, waits until the pool is whole and its outbox
    /// flushed, and runs a smaller workload.
    async fn recovery(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let (clock, client, server, pool) = (self.clock, &self.client, &self.server, self.pool);
        clock.heading("recovery: the server restarts on the same port");
        let restarted_at = Instant::now();
        server.restart().await?;
        clock.say(
            "server",
            format!("listening again on {}", redact_url(&server.url())),
        );
        let recovered = wait_until(Duration::from_secs(8), || {
            let s = client.stats();
            s.open_connections == u32::from(pool) && s.outbox_depth == 0
        })
        .await;
        if recovered {
            clock.say(
                "client",
                format!(
                    "all {pool} connections back after {:.2} s; outbox flushed",
                    restarted_at.elapsed().as_secs_f64()
                ),
            );
        } else {
            clock.say("client", "the pool did not fully recover within 8 s");
        }
        allocate_and_use(client, &mut self.tally, clock, 10).await;
        Ok(())
    }

    /// Waits for the last messages to arrive, closes the client and the server, and prints
    /// the summary; whether the accounting holds.
    async fn close(self) -> bool {
        self.clock.heading("closing");
        self.wait_for_arrivals().await;
        self.client.close().await;
        let stats = self.client.stats();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.log).await;
        self.server.shutdown().await;
        let counters = self.server.counters();
        let counted = counters.fire_and_forget_total();
        let counted_by_type = counters.snapshot().fire_and_forget;
        let events = std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()));
        print_summary(
            &self.tally,
            &stats,
            &events,
            (counted, &counted_by_type),
            self.clock,
        )
    }

    /// Waits (at most 3 s) until the server counted every fire-and-forget message the client
    /// flushed.
    async fn wait_for_arrivals(&self) {
        let counters = self.server.counters();
        wait_until(Duration::from_secs(3), || {
            counters.fire_and_forget_total() >= self.client.stats().sends.confirmed
        })
        .await;
    }
}

fn kinds(map: &BTreeMap<&'static str, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the summary; whether the accounting holds.
fn print_summary(
    t: &Tally,
    s: &Stats,
    e: &EventSummary,
    (counted, counted_by_type): (u64, &BTreeMap<String, u64>),
    clock: Clock,
) -> bool {
    let f = &s.sends;
    let transitions = e
        .transitions
        .iter()
        .map(|a| availability_name(*a))
        .collect::<Vec<_>>()
        .join(" -> ");
    // What confirmation proves: the server read every confirmed message, and may have read
    // the unconfirmed ones (their connections died first); nothing else.
    let sends_match = f.confirmed <= counted && counted <= f.confirmed + f.unconfirmed;
    let conserved = s.requests_conserved() && f.conserved();
    clock.heading("summary");
    println!(
        "  requests         {} made: {} replies, {} denials, {} failed ({})",
        t.requests,
        t.replies,
        t.denials,
        t.failures.values().sum::<u64>(),
        kinds(&t.failures)
    );
    println!("  pool counters    requests {}, replies {}, denials {}, timeouts {}, connection lost {}, refused (not connected) {}",
        s.requests, s.replies, s.denials, s.timeouts, s.connection_lost, s.refused_not_connected);
    println!(
        "  connections      {} connected events, {} disconnects, {} reconnects scheduled, {} failed dials",
        e.connected, e.disconnected, e.reconnects_scheduled, e.dial_failures
    );
    println!(
        "  availability     {transitions}   (after an outage, DEGRADED turns AVAILABLE after 5 s of health)"
    );
    println!(
        "  fire-and-forget  {} sends: {} refused ({})",
        t.sends,
        t.sends_refused.values().sum::<u64>(),
        kinds(&t.sends_refused)
    );
    println!(
        "  accounting       confirmed={} counted={} unconfirmed={} dropped={} expired={} closed={} queued={} written={} rewritten={}",
        f.confirmed, counted, f.unconfirmed, f.dropped, f.expired, f.closed, f.queued, f.written, f.rewritten
    );
    if let (Some(p50), Some(p99)) = (s.confirm_latency.quantile(0.5), s.confirm_latency.quantile(0.99)) {
        println!("  confirmation     write to pong: p50 <= {p50:?}, p99 <= {p99:?}");
    }
    println!(
        "  per type         {:<24} {:>6} {:>9} {:>7} {:>11} {:>7} {:>7} {:>6}",
        "type", "sends", "confirmed", "server", "unconfirmed", "dropped", "expired", "closed"
    );
    for (kind, k) in &s.sends_by_type {
        println!(
            "                   {:<24} {:>6} {:>9} {:>7} {:>11} {:>7} {:>7} {:>6}",
            kind,
            k.sends,
            k.confirmed,
            counted_by_type.get(kind).copied().unwrap_or(0),
            k.unconfirmed,
            k.dropped,
            k.expired,
            k.closed
        );
    }
    if sends_match {
        println!(
            "  check            OK: confirmed {} <= server counted {counted} <= confirmed + unconfirmed {}; conservation laws hold: {conserved}",
            f.confirmed,
            f.confirmed + f.unconfirmed
        );
    } else {
        println!(
            "  check            MISMATCH: server counted {counted}, outside [confirmed {}, confirmed + unconfirmed {}]",
            f.confirmed,
            f.confirmed + f.unconfirmed
        );
    }
    sends_match && conserved
}
