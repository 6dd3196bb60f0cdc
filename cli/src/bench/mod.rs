//! `ufsock bench`: throughput, latency, CPU and memory of the pooled client, beside a bare
//! pipelined client (`--mode raw`) that shows the limit of the machine and the server.
//!
//! This file holds the arguments and the `run` entry (the rounds, one run per mode, the
//! report). The rest, one way down: [`pooled`] and [`bare`] (which drives [`raw`] and
//! [`minimal`]) run the clients; all of them use [`measure`] (target, context, CPU readings,
//! progress, time limit), [`workload`] (what is sent) and [`report`] (what is recorded and
//! printed). Nothing below this file imports it.

mod bare;
mod chart;
mod measure;
mod minimal;
mod pooled;
mod raw;
mod report;
mod workload;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::json;
use usageflow_socket_core::redact_url;
use usageflow_socket_server::{ServerOptions, ServerThread};

use crate::procstat;
use crate::shared::{CmdResult, ProxyArgs, SecretArg, UrlArg, EXIT_OK, EXIT_OTHER};
use bare::BareClient;
use measure::{Measured, RunCtx, Target};
use pooled::{Adapter, Smol, Tokio};
use report::{latency, BenchReport, Comparison, Cpu, Errors, Latency, Memory, ModeSummary, RunReport};
use workload::Workload;

/// Extra help of `ufsock bench`.
pub(crate) const AFTER_HELP: &str = "\
Modes:
  request   C tasks share one pooled client and issue requests until R are done
            (request_for_allocation; latency per request).
  send      C tasks send fire-and-forget messages (use_allocation without an id) through the
            pooled client; the clock stops when the server counted them all (embedded server)
            or when the client flushed them all (--url).
  raw       the bare limit: N pipelined async-tungstenite connections, C requests in flight
            in total, replies matched by count (no id map, no pool, no timers). Same frames.
  raw-send  the bare limit of fire-and-forget: N connections writing frames, flushing every
            C/N frames, then one request per connection as a barrier.
  minimal   a minimal correlating client: C tasks, each request its own future waiting for
            its reply, replies matched by id, round-robin over N connections (no core, no
            timers, no reconnection, one id map per connection). Same frames.
  --compare runs the raw twin of the mode first, then the mode, against the same server, and
            prints the ratios (pooled/raw or minimal/raw req/s, CPU per operation).
  --rounds  repeats all of that N times, alternating, then prints medians per mode and the
            median of the per-round ratios with their spread (the machine's noise).

Runtimes:
  --runtime selects the adapter of the pooled modes: tokio (usageflow-socket-tokio on a Tokio
  runtime of --threads workers) or smol (usageflow-socket-smol on smol's global executor of
  --threads threads; SMOL_THREADS applies when --threads is 0). The raw modes, and the raw
  baseline of --compare, always run on Tokio.

Measurement:
  Without --url the server is embedded: it runs on its own thread and runtime (threads named
  ufsock-server), and client CPU = process CPU - those threads' CPU. Peak RSS (VmHWM, reset
  at the start of each run) then includes the server. For clean numbers run `ufsock serve`
  in another process and point --url at it. CPU times have a resolution of 10 ms.

Exit codes: 0 no errors, 1 errors happened (or the bench could not run), 2 usage error.";

/// Options of `ufsock bench`. `Debug` shows neither the key nor the URL's credentials.
#[derive(Debug, Args, Clone)]
pub(crate) struct BenchArgs {
    /// URL of a running server (`ufsock serve`); without it, a server is embedded.
    // The environment's value stays out of `--help`: it may hold credentials.
    #[arg(long, env = "USAGEFLOW_URL", hide_env_values = true)]
    url: Option<UrlArg>,
    /// API key for --url (never printed); the embedded server uses its own.
    #[arg(long, env = "USAGEFLOW_API_KEY", hide_env_values = true)]
    key: Option<SecretArg>,
    // The pooled client's proxy (the proxy environment applies only with --url: the
    // embedded server is dialed directly unless --proxy is given).
    #[command(flatten)]
    proxy: ProxyArgs,
    /// Connections in the pool (and raw connections).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=64))]
    pool: u16,
    /// Operations in flight (concurrent tasks; for raw, the total window).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Operations in total.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Request)]
    mode: Mode,
    /// The async runtime of the pooled client.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Tokio)]
    runtime: RuntimeKind,
    /// Run the raw twin of the mode first, then the mode, and print the ratios.
    #[arg(long)]
    compare: bool,
    /// Repeat the run (with --compare: raw, then the mode, alternating) this many times and
    /// summarize with medians; the machine's noise shows in the spread of the rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Print one JSON document on stdout instead of the text report (no progress bar).
    #[arg(long)]
    json: bool,
    /// Client runtime worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Request timeout of the pooled client, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
    /// Upper bound of one run, in seconds (a run that takes longer is stopped and reported).
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// Send mode: each send waits for room in the outbox (`send_when_room`) instead of being
    /// refused when it is full, so a producer faster than the server slows down rather than
    /// drops (the pooled client only).
    #[arg(long)]
    wait_for_room: bool,
    /// Send mode: the delivery guarantee of every message.
    #[arg(long, value_enum, default_value_t = DeliveryArg::AtMostOnce)]
    delivery: DeliveryArg,
    /// The pooled client keeps every accepted message in a spool under this directory until
    /// confirmed (group commit; a fresh subdirectory per run, removed after it). Run the same
    /// command without it to compare spool off and on.
    #[arg(long, value_name = "DIR")]
    spool: Option<std::path::PathBuf>,
    /// With --spool: sends leave their records to the spool's syncer instead of writing them
    /// to the OS before they return (faster; a kill can lose the last sync interval's sends).
    #[arg(long, requires = "spool")]
    spool_batched: bool,
    /// With --spool: when records are made durable (group commit every 2 ms by default;
    /// `every`: durable before each send returns; `never`: no fsync).
    #[arg(long, value_enum, default_value_t = SpoolSyncArg::Group, requires = "spool")]
    spool_sync: SpoolSyncArg,
    /// With --spool-sync group: the group commit interval in milliseconds (default 2).
    #[arg(long, value_name = "MS", requires = "spool")]
    spool_sync_ms: Option<u64>,
    /// Run at each of these concurrencies (comma-separated, e.g. 1,16,64,256): the raw
    /// twin of the mode, then the pooled client on Tokio and on smol, `--rounds` times each,
    /// and print the medians per line (replaces --concurrency, --compare and --runtime).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..=100_000))]
    sweep: Vec<u64>,
    /// With --sweep: write an SVG chart of it to this file (requests per second and p99
    /// latency against concurrency, raw beside the pooled client on each runtime).
    #[arg(long, requires = "sweep")]
    plot: Option<std::path::PathBuf>,
}

/// What `--mode` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Requests through the pooled client.
    Request,
    /// Fire-and-forget through the pooled client.
    Send,
    /// Requests through the bare pipelined client.
    Raw,
    /// Fire-and-forget through the bare client.
    RawSend,
    /// Requests through the minimal correlating client.
    Minimal,
}

/// What `--delivery` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DeliveryArg {
    /// Never written twice; unconfirmed when its connection dies first.
    AtMostOnce,
    /// Kept until confirmed and written again when its connection dies first.
    AtLeastOnce,
}

/// What `--runtime` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeKind {
    /// `usageflow-socket-tokio`.
    Tokio,
    /// `usageflow-socket-smol` (the raw baseline stays on Tokio).
    Smol,
}

/// The pooled client or the bare one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    Pooled,
    Raw,
    Minimal,
}

impl Mode {
    fn split(self) -> (ClientKind, Workload) {
        match self {
            Mode::Request => (ClientKind::Pooled, Workload::Request),
            Mode::Send => (ClientKind::Pooled, Workload::Send),
            Mode::Raw => (ClientKind::Raw, Workload::Request),
            Mode::RawSend => (ClientKind::Raw, Workload::Send),
            Mode::Minimal => (ClientKind::Minimal, Workload::Request),
        }
    }

    /// The raw mode of `workload` (the baseline of `--compare`).
    fn raw_twin(workload: Workload) -> Mode {
        match workload {
            Workload::Request => Mode::Raw,
            Workload::Send => Mode::RawSend,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Request => "request",
            Mode::Send => "send",
            Mode::Raw => "raw",
            Mode::RawSend => "raw-send",
            Mode::Minimal => "minimal",
        }
    }
}

/// The server a bench measures against: `--url` (with its key), or one embedded here.
fn target(args: &BenchArgs) -> Result<Target, Box<dyn std::error::Error>> {
    Ok(match &args.url {
        Some(url) => Target {
            url: url.as_str().to_owned(),
            key: args
                .key
                .as_ref()
                .map(|key| key.expose().to_owned())
                .ok_or("--url needs --key (or USAGEFLOW_API_KEY)")?,
            server: None,
            proxy: args.proxy.clone(),
        },
        None => {
            let key = "ufsock-bench-key".to_owned();
            let server = ServerThread::spawn(ServerOptions {
                key: Some(key.clone()),
                ..ServerOptions::default()
            })?;
            Target {
                url: server.url(),
                key,
                server: Some(server),
                proxy: ProxyArgs {
                    no_proxy_env: true,
                    ..args.proxy.clone()
                },
            }
        }
    })
}

/// Runs the benchmark.
pub(crate) fn run(args: BenchArgs) -> CmdResult {
    if !args.sweep.is_empty() {
        return run_sweep(args);
    }
    if args.runtime == RuntimeKind::Smol {
        // Before any thread starts (the embedded server, the Tokio runtime).
        pooled::smol_threads(args.threads);
    }
    let (client, workload) = args.mode.split();
    let target = target(&args)?;
    let mut phases = Vec::new();
    if args.compare && client != ClientKind::Raw {
        phases.push(Mode::raw_twin(workload));
    }
    phases.push(args.mode);

    let rt = crate::shared::runtime(args.threads, "ufsock-bench")?;
    let mut runs = Vec::new();
    for (round, &mode) in (1..=args.rounds).flat_map(|r| phases.iter().map(move |m| (r, m))) {
        if !args.json {
            let round = if args.rounds > 1 {
                format!("round {round}/{}: ", args.rounds)
            } else {
                String::new()
            };
            eprintln!(
                "ufsock bench: {round}{} x{} over {} connection(s), concurrency {}, {} runtime -> {}{}",
                mode.name(),
                args.requests,
                args.pool,
                args.concurrency,
                runtime_name(mode, args.runtime),
                redact_url(&target.url),
                if target.server.is_some() {
                    " (embedded server)"
                } else {
                    ""
                }
            );
        }
        let report = run_one(mode, &args, &target, &rt)?;
        if !args.json {
            report.print();
        }
        runs.push(report);
    }
    let summary: Vec<ModeSummary> = if args.rounds > 1 {
        phases
            .iter()
            .map(|mode| ModeSummary::of(mode.name(), &runs))
            .collect()
    } else {
        Vec::new()
    };
    if !args.json {
        for s in &summary {
            s.print();
        }
    }
    let comparison = (phases.len() == 2).then(|| {
        let pairs: Vec<(&RunReport, &RunReport)> = runs.chunks(2).map(|p| (&p[0], &p[1])).collect();
        let c = Comparison::of(&pairs);
        if !args.json {
            c.print(pairs[0].1.client);
        }
        c
    });
    let errors: u64 = runs.iter().map(|r| r.error_total).sum();
    let report = BenchReport {
        server: if target.server.is_some() {
            "embedded"
        } else {
            "external"
        },
        url: redact_url(&target.url),
        rounds: args.rounds,
        runs,
        summary,
        comparison,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    drop(rt);
    drop(target);
    Ok(ExitCode::from(if errors == 0 { EXIT_OK } else { EXIT_OTHER }))
}

/// `--sweep`: at each concurrency, `--rounds` times, the raw twin then the pooled client on
/// Tokio and on smol; the medians per line, optionally drawn (`--plot`).
fn run_sweep(args: BenchArgs) -> CmdResult {
    // Before any thread starts (the embedded server, the Tokio runtime).
    pooled::smol_threads(args.threads);
    let (client, workload) = args.mode.split();
    if client != ClientKind::Pooled {
        return Err("--sweep measures the pooled client (--mode request or send) beside its raw twin".into());
    }
    let target = target(&args)?;
    let rt = crate::shared::runtime(args.threads, "ufsock-bench")?;
    let phases = [
        (Mode::raw_twin(workload), RuntimeKind::Tokio),
        (args.mode, RuntimeKind::Tokio),
        (args.mode, RuntimeKind::Smol),
    ];
    let mut runs = Vec::new();
    for &concurrency in &args.sweep {
        for round in 1..=args.rounds {
            for (mode, runtime) in phases {
                let mut one = args.clone();
                one.concurrency = concurrency;
                one.runtime = runtime;
                if !args.json {
                    eprintln!(
                        "ufsock bench sweep: concurrency {concurrency}, round {round}/{}: {} on {}",
                        args.rounds,
                        mode.name(),
                        runtime_name(mode, runtime)
                    );
                }
                let report = run_one(mode, &one, &target, &rt)?;
                runs.push(report);
            }
        }
    }
    let errors: u64 = runs.iter().map(|r| r.error_total).sum();
    let sweep = chart::Sweep::of(args.mode.name(), &runs);
    if let Some(path) = &args.plot {
        let title = format!(
            "ufsock bench --mode {} ({} connections, {} operations per run, medians of {} rounds)",
            args.mode.name(),
            args.pool,
            args.requests,
            args.rounds
        );
        sweep.plot(path, &title)?;
        if !args.json {
            eprintln!("ufsock bench: chart written to {}", path.display());
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "sweep": sweep, "runs": runs }))?
        );
    } else {
        sweep.print();
    }
    drop(rt);
    drop(target);
    Ok(ExitCode::from(if errors == 0 { EXIT_OK } else { EXIT_OTHER }))
}

/// The runtime that runs `mode`: the raw and minimal clients are always on Tokio.
fn runtime_name(mode: Mode, runtime: RuntimeKind) -> &'static str {
    match (mode.split().0, runtime) {
        (ClientKind::Raw | ClientKind::Minimal, _) | (ClientKind::Pooled, RuntimeKind::Tokio) => Tokio::NAME,
        (ClientKind::Pooled, RuntimeKind::Smol) => Smol::NAME,
    }
}

/// One run of `mode`: measures it with its client, then builds its report.
fn run_one(
    mode: Mode,
    args: &BenchArgs,
    target: &Target,
    rt: &tokio::runtime::Runtime,
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let (client_kind, workload) = mode.split();
    let peak_reset = procstat::reset_peak_rss();
    let ctx = RunCtx {
        target,
        label: mode.name(),
        workload,
        pool: args.pool,
        concurrency: args.concurrency,
        requests: args.requests,
        request_timeout: Duration::from_millis(args.timeout_ms),
        quiet: args.json,
        done: Arc::new(AtomicU64::new(0)),
        errors: Arc::new(Errors::default()),
        limit: Duration::from_secs(args.max_seconds),
        server_base: target
            .server
            .as_ref()
            .map(|s| s.counters().fire_and_forget_total()),
        wait_for_room: args.wait_for_room,
        at_least_once: args.delivery == DeliveryArg::AtLeastOnce,
        spool: args.spool.as_deref(),
        spool_write_through: !args.spool_batched,
        spool_sync: args.spool_sync.policy(args.spool_sync_ms),
    };
    let _ = latency::take();

    let measured = match (client_kind, args.runtime) {
        (ClientKind::Raw, _) => rt.block_on(bare::measure_bare(BareClient::Raw, &ctx))?,
        (ClientKind::Minimal, _) => rt.block_on(bare::measure_bare(BareClient::Minimal, &ctx))?,
        (ClientKind::Pooled, RuntimeKind::Tokio) => rt.block_on(pooled::measure_pooled::<Tokio>(&ctx))?,
        (ClientKind::Pooled, RuntimeKind::Smol) => smol::block_on(pooled::measure_pooled::<Smol>(&ctx))?,
    };
    let Measured {
        before,
        after,
        elapsed,
        stats: client_stats,
    } = measured;
    let hist = latency::take();
    let server_counted = match (&target.server, ctx.server_base) {
        (Some(s), Some(base)) if workload == Workload::Send => {
            Some(s.counters().fire_and_forget_total().saturating_sub(base))
        }
        _ => None,
    };
    let errors = ctx.errors.snapshot();
    let error_total: u64 = errors.values().sum();
    let completed = match (workload, client_kind) {
        (Workload::Request, _) => hist.len(),
        (Workload::Send, _) => server_counted.unwrap_or_else(|| match &client_stats {
            Some(s) => s.sends.confirmed + s.sends.written,
            None => ctx.done.load(Relaxed),
        }),
    };
    let process = after.process.saturating_sub(before.process);
    let server = after.server.saturating_sub(before.server);
    let client_cpu = process.saturating_sub(server);
    let secs = elapsed.as_secs_f64();
    Ok(RunReport {
        mode: mode.name(),
        client: match client_kind {
            ClientKind::Pooled => "pooled",
            ClientKind::Raw => "raw",
            ClientKind::Minimal => "minimal",
        },
        runtime: runtime_name(mode, args.runtime),
        pool: args.pool,
        concurrency: args.concurrency,
        operations: args.requests,
        completed,
        error_total,
        errors,
        elapsed_s: secs,
        ops_per_s: completed as f64 / secs.max(1e-9),
        latency: Latency::of(&hist),
        cpu: Cpu {
            process_s: process.as_secs_f64(),
            server_s: server.as_secs_f64(),
            client_s: client_cpu.as_secs_f64(),
            client_us_per_op: client_cpu.as_secs_f64() * 1e6 / completed.max(1) as f64,
        },
        memory: Memory {
            peak_rss_kib: procstat::peak_rss_kib().unwrap_or(0),
            end_rss_kib: procstat::rss_kib().unwrap_or(0),
            peak_reset,
        },
        server_counted,
        client_stats: client_stats.map(|s| {
            json!({
                "requests": s.requests,
                "replies": s.replies,
                "denials": s.denials,
                "timeouts": s.timeouts,
                "connection_lost": s.connection_lost,
                "reconnects": s.reconnects,
                "sends": s.sends.sends,
                "confirmed": s.sends.confirmed,
                "unconfirmed": s.sends.unconfirmed,
                "dropped": s.sends.dropped,
                "expired": s.sends.expired,
                "closed": s.sends.closed,
                "queued": s.sends.queued,
                "written": s.sends.written,
                "rewritten": s.sends.rewritten,
                "rewrites_exhausted": s.sends.rewrites_exhausted,
                "confirm_latency_p50_us": s.confirm_latency.quantile(0.5).map(|d| d.as_micros() as u64),
                "confirm_latency_p99_us": s.confirm_latency.quantile(0.99).map(|d| d.as_micros() as u64),
                "pongs": s.pongs,
                "sends_by_type": s.sends_by_type,
            })
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::tests::{assert_hidden, parse, SECRET_URL};

    #[test]
    fn bench_args_debug_hides_key_and_url_credentials() {
        let args: BenchArgs = parse(&["--url", SECRET_URL, "--key", "secret-123", "--pool", "2"]);
        assert_hidden("BenchArgs' Debug", &format!("{args:?}"));
        assert_hidden("BenchArgs' pretty Debug", &format!("{args:#?}"));
        assert!(format!("{args:?}").contains("127.0.0.1:9/ws"));
        assert_eq!(args.pool, 2);
    }
}

/// `--spool-sync`: the spool's sync policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SpoolSyncArg {
    /// Group commit, at most every 2 ms (the default).
    Group,
    /// Durable before each send returns.
    Every,
    /// No fsync.
    Never,
}

impl SpoolSyncArg {
    fn policy(self, interval_ms: Option<u64>) -> usageflow_socket_client::spool::SyncPolicy {
        use usageflow_socket_client::spool::SyncPolicy;
        match self {
            SpoolSyncArg::Group => interval_ms.map_or(SyncPolicy::default(), |ms| {
                SyncPolicy::Group(std::time::Duration::from_millis(ms))
            }),
            SpoolSyncArg::Every => SyncPolicy::EverySend,
            SpoolSyncArg::Never => SyncPolicy::Never,
        }
    }
}
