//! `ufsock bench`: throughput, latency, CPU and memory of the pooled client, beside a bare
//! pipelined client (`--mode raw`) that shows the limit of the machine and the server.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures_util::future::{select, Either};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use ufsock::server::{ServerOptions, ServerThread};
use usageflow_socket_client::{Client, Config, Outgoing, Stats, UsageFlowApi};
use usageflow_socket_core::redact_url;

use crate::bench_adapter::{self, Adapter};
use crate::bench_minimal;
use crate::bench_raw::{self, RawRun};
use crate::procstat;
use crate::shared::{error_kind, CmdResult, SecretArg, UrlArg, EXIT_OK, EXIT_OTHER};

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
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// URL of a running server (`ufsock serve`); without it, a server is embedded.
    // The environment's value stays out of `--help`: it may hold credentials.
    #[arg(long, env = "USAGEFLOW_URL", hide_env_values = true)]
    url: Option<UrlArg>,
    /// API key for --url (never printed); the embedded server uses its own.
    #[arg(long, env = "USAGEFLOW_API_KEY", hide_env_values = true)]
    key: Option<SecretArg>,
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

/// What `--runtime` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeKind {
    /// `usageflow-socket-tokio`.
    Tokio,
    /// `usageflow-socket-smol` (the raw baseline stays on Tokio).
    Smol,
}

/// Requests, or fire-and-forget messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Requests with replies.
    Request,
    /// Fire-and-forget messages.
    Send,
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

/// The request every bench operation sends (built afresh per operation, like a host would).
pub(crate) fn request_message() -> Outgoing {
    Outgoing::new("request_for_allocation", json!({"alias": "bench", "amount": 1.0}))
}

/// The fire-and-forget message of the send modes.
pub(crate) fn send_message() -> Outgoing {
    Outgoing::new(
        "use_allocation",
        json!({"alias": "bench", "amount": 1.0, "allocationId": "bench-allocation"}),
    )
}

/// Errors by kind, shared by the tasks of a run (locked only when an error happens).
#[derive(Debug, Default)]
pub(crate) struct Errors(Mutex<BTreeMap<&'static str, u64>>);

impl Errors {
    /// Counts `n` errors of `kind`.
    pub(crate) fn add(&self, kind: &'static str, n: u64) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += n;
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }
}

/// Latency recording into one HDR histogram per thread (no contention, a few histograms in
/// all), merged at the end of a run.
pub(crate) mod latency {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use hdrhistogram::Histogram;

    type Shared = Arc<Mutex<Histogram<u64>>>;

    static ALL: Mutex<Vec<Shared>> = Mutex::new(Vec::new());

    thread_local! {
        static LOCAL: Shared = {
            let h = Arc::new(Mutex::new(empty()));
            ALL.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&h));
            h
        };
    }

    /// An empty histogram of nanoseconds, 1 µs to 60 s, 3 significant digits.
    pub(crate) fn empty() -> Histogram<u64> {
        Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
    }

    /// Records one latency.
    pub(crate) fn record(d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        LOCAL.with(|h| h.lock().unwrap_or_else(|e| e.into_inner()).saturating_record(ns));
    }

    /// Every thread's recordings merged, and the per-thread histograms reset.
    pub(crate) fn take() -> Histogram<u64> {
        let mut merged = empty();
        for h in ALL.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds: adding cannot fail.
            let _ = merged.add(&*h);
            h.reset();
        }
        merged
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Serialize)]
struct Latency {
    count: u64,
    mean_us: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

impl Latency {
    fn of(h: &hdrhistogram::Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        })
    }
}

/// CPU use of a run's timed part.
#[derive(Debug, Serialize)]
struct Cpu {
    /// The whole process.
    process_s: f64,
    /// The embedded server's threads (0 with --url).
    server_s: f64,
    /// process - server.
    client_s: f64,
    /// client_s per completed operation, in microseconds.
    client_us_per_op: f64,
}

/// Memory of a run.
#[derive(Debug, Serialize)]
struct Memory {
    /// VmHWM at the end of the run (reset at its start when `peak_reset`).
    peak_rss_kib: u64,
    /// VmRSS at the end of the run.
    end_rss_kib: u64,
    /// Whether the peak was reset at the start of the run (else it covers the whole process).
    peak_reset: bool,
}

/// The result of one run.
#[derive(Debug, Serialize)]
struct RunReport {
    mode: &'static str,
    client: &'static str,
    runtime: &'static str,
    pool: u16,
    concurrency: u64,
    operations: u64,
    /// Operations that succeeded (replies; or sends written and, with an embedded server,
    /// counted by it).
    completed: u64,
    errors: BTreeMap<String, u64>,
    error_total: u64,
    elapsed_s: f64,
    ops_per_s: f64,
    /// Request latency; for the pooled send mode, the cost of the `send()` call, timed on
    /// one call in [`SEND_LATENCY_SAMPLE`].
    latency: Option<Latency>,
    cpu: Cpu,
    memory: Memory,
    /// Fire-and-forget messages the embedded server counted during the run.
    server_counted: Option<u64>,
    /// The pooled client's counters at the end (requests, replies, sends...).
    client_stats: Option<serde_json::Value>,
}

/// The comparison of `--compare`: per round, the mode against the raw run just before it.
#[derive(Debug, Serialize)]
struct Comparison {
    /// pooled (or minimal) ops/s divided by raw ops/s (the median over the rounds).
    rate_ratio: f64,
    /// pooled (or minimal) client CPU per operation divided by raw's (the median over the
    /// rounds where raw's did not round to 0).
    cpu_per_op_ratio: Option<f64>,
    /// The rate ratio of every round.
    rate_ratios: Vec<f64>,
    /// The CPU ratio of every round where it is known.
    cpu_per_op_ratios: Vec<f64>,
}

impl Comparison {
    /// The comparison of `(raw, mode)` run pairs.
    fn of(pairs: &[(&RunReport, &RunReport)]) -> Comparison {
        let rate_ratios: Vec<f64> = pairs
            .iter()
            .map(|(raw, run)| run.ops_per_s / raw.ops_per_s.max(f64::MIN_POSITIVE))
            .collect();
        let cpu_per_op_ratios: Vec<f64> = pairs
            .iter()
            .filter(|(raw, _)| raw.cpu.client_us_per_op > 0.0)
            .map(|(raw, run)| run.cpu.client_us_per_op / raw.cpu.client_us_per_op)
            .collect();
        Comparison {
            rate_ratio: median(&rate_ratios).unwrap_or(0.0),
            cpu_per_op_ratio: median(&cpu_per_op_ratios),
            rate_ratios,
            cpu_per_op_ratios,
        }
    }
}

/// Medians of one mode over the rounds of `--rounds`.
#[derive(Debug, Serialize)]
struct ModeSummary {
    mode: &'static str,
    rounds: usize,
    ops_per_s: f64,
    ops_per_s_min: f64,
    ops_per_s_max: f64,
    client_us_per_op: f64,
    p50_us: f64,
    p99_us: f64,
    /// The highest peak RSS of the rounds.
    peak_rss_kib: u64,
}

impl ModeSummary {
    /// The summary of the runs of `mode` among `runs`.
    fn of(mode: &'static str, runs: &[RunReport]) -> ModeSummary {
        let runs: Vec<&RunReport> = runs.iter().filter(|r| r.mode == mode).collect();
        let of = |f: &dyn Fn(&RunReport) -> f64| {
            median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        let rates: Vec<f64> = runs.iter().map(|r| r.ops_per_s).collect();
        let (ops_per_s_min, ops_per_s_max) = min_max(&rates);
        ModeSummary {
            mode,
            rounds: runs.len(),
            ops_per_s: of(&|r| r.ops_per_s),
            ops_per_s_min,
            ops_per_s_max,
            client_us_per_op: of(&|r| r.cpu.client_us_per_op),
            p50_us: of(&|r| r.latency.as_ref().map_or(0.0, |l| l.p50_us)),
            p99_us: of(&|r| r.latency.as_ref().map_or(0.0, |l| l.p99_us)),
            peak_rss_kib: runs.iter().map(|r| r.memory.peak_rss_kib).max().unwrap_or(0),
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The smallest and largest of `values` (0, 0 when empty).
fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold(None, |acc: Option<(f64, f64)>, &v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
        .unwrap_or((0.0, 0.0))
}

/// The whole `--json` document.
#[derive(Debug, Serialize)]
struct BenchReport {
    server: &'static str,
    /// The target's URL with its credentials redacted.
    url: String,
    /// Rounds run (`--rounds`); `runs` holds every run of every round, in order.
    rounds: u32,
    runs: Vec<RunReport>,
    /// Medians per mode (with more than one round).
    summary: Vec<ModeSummary>,
    comparison: Option<Comparison>,
}

/// Where the runs go.
struct Target {
    /// The URL as given, credentials included: print it through [`redact_url`].
    url: String,
    key: String,
    /// The embedded server, when there is no --url.
    server: Option<ServerThread>,
}

/// Name prefix of the embedded server's threads (see [`ServerThread::spawn`]).
const SERVER_THREADS: &str = "ufsock-server";

/// CPU readings at one moment.
#[derive(Clone, Copy)]
struct Usage {
    process: Duration,
    server: Duration,
}

impl Usage {
    fn now() -> Usage {
        Usage {
            process: procstat::process_cpu().unwrap_or_default(),
            server: procstat::threads_cpu(SERVER_THREADS)
                .map(|(d, _)| d)
                .unwrap_or_default(),
        }
    }
}

/// Runs the benchmark.
pub(crate) fn run(args: BenchArgs) -> CmdResult {
    if args.runtime == RuntimeKind::Smol {
        // Before any thread starts (the embedded server, the Tokio runtime).
        bench_adapter::smol_threads(args.threads);
    }
    let (client, workload) = args.mode.split();
    let target = match &args.url {
        Some(url) => Target {
            url: url.as_str().to_owned(),
            key: args
                .key
                .as_ref()
                .map(|key| key.expose().to_owned())
                .ok_or("--url needs --key (or USAGEFLOW_API_KEY)")?,
            server: None,
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
            }
        }
    };
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
            print_run(&report);
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
            println!(
                "  median of {}  {:<10} {:>10.0} ops/s ({:.0}-{:.0})   client CPU {:.2} us/op   p50 {:.0} us  p99 {:.0} us",
                s.rounds, s.mode, s.ops_per_s, s.ops_per_s_min, s.ops_per_s_max, s.client_us_per_op, s.p50_us, s.p99_us
            );
        }
    }
    let comparison = (phases.len() == 2).then(|| {
        let pairs: Vec<(&RunReport, &RunReport)> = runs.chunks(2).map(|p| (&p[0], &p[1])).collect();
        let c = Comparison::of(&pairs);
        if !args.json {
            let cpu = c
                .cpu_per_op_ratio
                .map_or_else(|| "n/a (raw CPU below 10 ms)".to_owned(), |r| format!("{r:.2}x"));
            let spread = if pairs.len() > 1 {
                let (lo, hi) = min_max(&c.rate_ratios);
                format!(" (median of {} rounds, {lo:.2}-{hi:.2}x)", pairs.len())
            } else {
                String::new()
            };
            println!(
                "  {} / raw   rate {:.2}x{spread}   client CPU per op {cpu}",
                pairs[0].1.client, c.rate_ratio
            );
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

fn print_run(r: &RunReport) {
    let unit = if r.mode.contains("send") { "msg/s" } else { "req/s" };
    println!(
        "  {:<10} {:>10.0} {unit}   {} ok, {} errors {:?}, {:.3} s",
        r.mode, r.ops_per_s, r.completed, r.error_total, r.errors, r.elapsed_s
    );
    if let Some(l) = &r.latency {
        let what = if r.mode == "send" {
            "send() call (1 in 16 timed)"
        } else {
            "latency"
        };
        println!(
            "  {what:<11} p50 {:.0} us  p90 {:.0} us  p99 {:.0} us  p99.9 {:.0} us  max {:.0} us",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
        );
    }
    println!(
        "  client CPU  {:.2} s = {:.2} us/op   (process {:.2} s - server threads {:.2} s)",
        r.cpu.client_s, r.cpu.client_us_per_op, r.cpu.process_s, r.cpu.server_s
    );
    println!(
        "  memory      peak RSS {:.1} MiB{}   end RSS {:.1} MiB",
        r.memory.peak_rss_kib as f64 / 1024.0,
        if r.memory.peak_reset {
            ""
        } else {
            " (process lifetime)"
        },
        r.memory.end_rss_kib as f64 / 1024.0
    );
    if let Some(n) = r.server_counted {
        println!("  server      counted {n} fire-and-forget messages");
    }
    // Loss accounting: every fire-and-forget message ends in exactly one column.
    let by_type = r
        .client_stats
        .as_ref()
        .and_then(|s| s.get("sends_by_type"))
        .and_then(|v| v.as_object())
        .filter(|m| !m.is_empty());
    if let Some(by_type) = by_type {
        let cols = [
            "sends",
            "sent",
            "dropped",
            "expired",
            "lost",
            "closed",
            "queued",
            "unflushed",
        ];
        println!(
            "  sends       {:<24}{}",
            "type",
            cols.map(|c| format!("{c:>10}")).concat()
        );
        for (kind, s) in by_type {
            let n = |c: &str| s.get(c).and_then(|v| v.as_u64()).unwrap_or(0);
            println!(
                "              {kind:<24}{}",
                cols.map(|c| format!("{:>10}", n(c))).concat()
            );
        }
    }
}

/// A progress bar on stderr, hidden with --json or when stderr is not a terminal. Its
/// position follows `done`, polled every 100 ms by a thread of its own, so it works under
/// either runtime and the hot path only bumps an atomic.
struct Progress {
    bar: ProgressBar,
    /// Dropping the sender stops the ticker thread.
    ticker: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Progress {
    fn start(args: &BenchArgs, label: &str, done: &Arc<AtomicU64>) -> Progress {
        if args.json || !std::io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(args.requests), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "  {msg:<9} [{bar:40.cyan/blue}] {pos:>9}/{len:9} {per_sec:>12} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = {
            let bar = bar.clone();
            let done = Arc::clone(done);
            std::thread::spawn(move || loop {
                bar.set_position(done.load(Relaxed));
                if stopped.recv_timeout(Duration::from_millis(100)) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
            })
        };
        Progress {
            bar,
            ticker: Some((stop, thread)),
        }
    }

    fn finish(self) {
        if let Some((stop, thread)) = self.ticker {
            drop(stop);
            let _ = thread.join();
        }
        self.bar.finish_and_clear();
    }
}

/// Runs `work` for at most `limit`; false when the limit came first.
async fn within<A: Adapter>(limit: Duration, work: impl Future<Output = ()>) -> bool {
    matches!(select(pin!(work), pin!(A::sleep(limit))).await, Either::Left(_))
}

/// The runtime that runs `mode`: the raw and minimal clients are always on Tokio.
fn runtime_name(mode: Mode, runtime: RuntimeKind) -> &'static str {
    match (mode.split().0, runtime) {
        (ClientKind::Raw | ClientKind::Minimal, _) | (ClientKind::Pooled, RuntimeKind::Tokio) => {
            bench_adapter::Tokio::NAME
        }
        (ClientKind::Pooled, RuntimeKind::Smol) => bench_adapter::Smol::NAME,
    }
}

/// Splits `concurrency` over `pool` connections: the windows of the connections used.
fn windows(pool: u16, concurrency: u64) -> Vec<usize> {
    let n = u64::from(pool).min(concurrency).max(1);
    (0..n)
        .map(|i| (concurrency / n + u64::from(i < concurrency % n)) as usize)
        .collect()
}

/// What the timed part of a run saw.
struct Measured {
    before: Usage,
    after: Usage,
    elapsed: Duration,
    /// The pooled client's counters at the end.
    stats: Option<Stats>,
}

/// What every run shares: the counters its tasks bump, its limit, the server's count at its
/// start.
struct RunCtx<'a> {
    args: &'a BenchArgs,
    target: &'a Target,
    label: &'static str,
    workload: Workload,
    done: Arc<AtomicU64>,
    errors: Arc<Errors>,
    limit: Duration,
    server_base: Option<u64>,
}

fn run_one(
    mode: Mode,
    args: &BenchArgs,
    target: &Target,
    rt: &tokio::runtime::Runtime,
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let (client_kind, workload) = mode.split();
    let peak_reset = procstat::reset_peak_rss();
    let ctx = RunCtx {
        args,
        target,
        label: mode.name(),
        workload,
        done: Arc::new(AtomicU64::new(0)),
        errors: Arc::new(Errors::default()),
        limit: Duration::from_secs(args.max_seconds),
        server_base: target
            .server
            .as_ref()
            .map(|s| s.counters().fire_and_forget_total()),
    };
    let _ = latency::take();

    let measured = match (client_kind, args.runtime) {
        (ClientKind::Raw | ClientKind::Minimal, _) => rt.block_on(measure_bare(client_kind, &ctx))?,
        (ClientKind::Pooled, RuntimeKind::Tokio) => {
            rt.block_on(measure_pooled::<bench_adapter::Tokio>(&ctx))?
        }
        (ClientKind::Pooled, RuntimeKind::Smol) => {
            smol::block_on(measure_pooled::<bench_adapter::Smol>(&ctx))?
        }
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
            Some(s) => s.sends.sent,
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
                "sent": s.sends.sent,
                "dropped": s.sends.dropped,
                "expired": s.sends.expired,
                "lost": s.sends.lost,
                "closed": s.sends.closed,
                "queued": s.sends.queued,
                "unflushed": s.sends.unflushed,
                "sends_by_type": s.sends_by_type,
            })
        }),
    })
}

/// The run of the raw or the minimal client (on Tokio).
async fn measure_bare(kind: ClientKind, ctx: &RunCtx<'_>) -> Result<Measured, Box<dyn std::error::Error>> {
    let windows = windows(ctx.args.pool, ctx.args.concurrency);
    let sockets = bench_raw::connect(&ctx.target.url, &ctx.target.key, windows.len()).await?;
    let run = Arc::new(RawRun {
        total: ctx.args.requests,
        issued: AtomicU64::new(0),
        completed: Arc::clone(&ctx.done),
        errors: Errors::default(),
    });
    let progress = Progress::start(ctx.args, ctx.label, &ctx.done);
    let before = Usage::now();
    let t0 = Instant::now();
    let mut work = match kind {
        ClientKind::Minimal => tokio::spawn(bench_minimal::run(
            sockets,
            ctx.args.concurrency,
            Arc::clone(&run),
        )),
        _ => tokio::spawn(bench_raw::run(sockets, windows, ctx.workload, Arc::clone(&run))),
    };
    let finished = within::<bench_adapter::Tokio>(ctx.limit, async {
        let _ = (&mut work).await;
    })
    .await;
    // Past the limit: stop the client (dropping its sockets) rather than leave it running.
    work.abort();
    let elapsed = t0.elapsed();
    let after = Usage::now();
    progress.finish();
    if !finished {
        ctx.errors.add("run_time_limit", 1);
    }
    for (k, v) in run.errors.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        ctx.errors.add(k, *v);
    }
    Ok(Measured {
        before,
        after,
        elapsed,
        stats: None,
    })
}

/// The pooled client's run, on adapter `A`.
async fn measure_pooled<A: Adapter>(ctx: &RunCtx<'_>) -> Result<Measured, Box<dyn std::error::Error>> {
    let args = ctx.args;
    let config = Config::builder(&ctx.target.url, &ctx.target.key)
        .pool_size(args.pool)
        .request_timeout(Duration::from_millis(args.timeout_ms))
        .build()?;
    let client = Client::<A::Runtime>::connect(config).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.stats().open_connections < u32::from(args.pool) {
        if Instant::now() >= deadline {
            client.close().await;
            return Err(format!(
                "only {} of {} connections opened",
                client.stats().open_connections,
                args.pool
            )
            .into());
        }
        A::sleep(Duration::from_millis(5)).await;
    }
    let progress = Progress::start(args, ctx.label, &ctx.done);
    let before = Usage::now();
    let t0 = Instant::now();
    if !within::<A>(ctx.limit, pooled::<A>(&client, ctx)).await {
        ctx.errors.add("run_time_limit", 1);
    }
    let elapsed = t0.elapsed();
    let after = Usage::now();
    progress.finish();
    let stats = client.stats();
    client.close().await;
    Ok(Measured {
        before,
        after,
        elapsed,
        stats: Some(stats),
    })
}

/// Most fire-and-forget messages a send task lets wait (queued or unflushed) before pausing,
/// so a bench never overruns the outbox.
const SEND_BACKLOG: u64 = 8192;

/// Shared state of the pooled workload's tasks.
struct Tickets {
    total: u64,
    issued: AtomicU64,
    /// Sends the client accepted.
    accepted: AtomicU64,
    done: Arc<AtomicU64>,
    errors: Arc<Errors>,
}

impl Tickets {
    /// Draws the next operation; false once `total` were drawn.
    fn draw(&self) -> bool {
        self.issued.fetch_add(1, Relaxed) < self.total
    }
}

/// Operations a send task draws at once. A send costs about a microsecond, so one shared
/// counter bumped per send (by tasks on every core) would be a measurable part of what the
/// bench measures; a chunk leaves a tail of at most this many sends per task.
const SEND_CHUNK: u64 = 16;

/// A task's share of the tickets, drawn [`SEND_CHUNK`] at a time from a shared counter.
pub(crate) struct Chunks<'a> {
    issued: &'a AtomicU64,
    total: u64,
    left: u64,
}

impl<'a> Chunks<'a> {
    /// Draws from `issued` until `total` were drawn.
    pub(crate) fn new(issued: &'a AtomicU64, total: u64) -> Self {
        Self {
            issued,
            total,
            left: 0,
        }
    }

    /// Takes the next operation; false once every operation was drawn.
    pub(crate) fn draw(&mut self) -> bool {
        if self.left == 0 {
            let first = self.issued.fetch_add(SEND_CHUNK, Relaxed);
            self.left = self.total.saturating_sub(first).min(SEND_CHUNK);
            if self.left == 0 {
                return false;
            }
        }
        self.left -= 1;
        true
    }
}

/// The pooled workload: `concurrency` tasks on one client until `requests` operations.
async fn pooled<A: Adapter>(client: &Client<A::Runtime>, ctx: &RunCtx<'_>) {
    let tickets = Arc::new(Tickets {
        total: ctx.args.requests,
        issued: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        done: Arc::clone(&ctx.done),
        errors: Arc::clone(&ctx.errors),
    });
    let tasks = (0..ctx.args.concurrency).map(|_| (client.clone(), Arc::clone(&tickets)));
    match ctx.workload {
        Workload::Request => A::join_all(tasks.map(|(c, t)| request_task(c, t))).await,
        Workload::Send => A::join_all(tasks.map(|(c, t)| send_task::<A>(c, t))).await,
    }
    if ctx.workload == Workload::Send {
        // The clock stops when the messages arrived: counted by the embedded server, or else
        // flushed by the client.
        let accepted = tickets.accepted.load(Relaxed);
        loop {
            let arrived = match (&ctx.target.server, ctx.server_base) {
                (Some(server), Some(base)) => {
                    server.counters().fire_and_forget_total().saturating_sub(base) >= accepted
                }
                _ => {
                    let s = client.stats().sends;
                    s.queued + s.unflushed == 0
                }
            };
            if arrived {
                break;
            }
            A::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// One task of the request mode: requests one after another, timing each.
async fn request_task<C: UsageFlowApi>(client: C, tickets: Arc<Tickets>) {
    while tickets.draw() {
        let t0 = Instant::now();
        match client.request(request_message()).await {
            Ok(_) => latency::record(t0.elapsed()),
            Err(e) => tickets.errors.add(error_kind(&e), 1),
        }
        tickets.done.fetch_add(1, Relaxed);
    }
}

/// The pooled send mode times one `send()` call in this many.
const SEND_LATENCY_SAMPLE: u64 = 16;

/// One task of the send mode: sends that never wait, timing one `send()` call in
/// [`SEND_LATENCY_SAMPLE`]. Its counts reach the shared counters once every 64 sends, when it
/// pauses anyway.
async fn send_task<A: Adapter>(client: Client<A::Runtime>, tickets: Arc<Tickets>) {
    let mut chunks = Chunks::new(&tickets.issued, tickets.total);
    let mut n: u64 = 0;
    let mut accepted: u64 = 0;
    while chunks.draw() {
        let message = send_message();
        // Timing every call would add two clock reads and a histogram update to a ~1 µs
        // call (raw's sends are not timed at all): time one in `SEND_LATENCY_SAMPLE`.
        let t0 = (n % SEND_LATENCY_SAMPLE == 0).then(Instant::now);
        let result = client.send(message);
        match result {
            Ok(()) => {
                if let Some(t0) = t0 {
                    latency::record(t0.elapsed());
                }
                accepted += 1;
            }
            Err(e) => tickets.errors.add(error_kind(&e), 1),
        }
        n += 1;
        // Every 64 sends let the writers run, and keep the client's backlog bounded so the
        // run measures throughput, not the outbox.
        if n % 64 == 0 {
            tickets.accepted.fetch_add(accepted, Relaxed);
            tickets.done.fetch_add(64, Relaxed);
            accepted = 0;
            loop {
                let s = client.stats().sends;
                if s.queued + s.unflushed < SEND_BACKLOG {
                    break;
                }
                A::sleep(Duration::from_millis(1)).await;
            }
            A::yield_now().await;
        }
    }
    tickets.accepted.fetch_add(accepted, Relaxed);
    tickets.done.fetch_add(n % 64, Relaxed);
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

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), (1.0, 5.0));
        assert_eq!(min_max(&[]), (0.0, 0.0));
    }

    #[test]
    fn chunks_hand_out_every_operation_exactly_once() {
        let issued = AtomicU64::new(0);
        let total = 3 * SEND_CHUNK + 5;
        let mut a = Chunks::new(&issued, total);
        let mut b = Chunks::new(&issued, total);
        let (mut got_a, mut got_b) = (0, 0);
        // Interleaved like two tasks, until both are told there is no more.
        loop {
            let (more_a, more_b) = (a.draw(), b.draw());
            got_a += u64::from(more_a);
            got_b += u64::from(more_b);
            if !more_a && !more_b {
                break;
            }
        }
        assert_eq!(got_a + got_b, total);
        assert!(!a.draw() && !b.draw(), "drawn out stays drawn out");
    }

    #[test]
    fn windows_split_the_concurrency() {
        assert_eq!(windows(10, 1), vec![1]);
        assert_eq!(windows(10, 16), vec![2, 2, 2, 2, 2, 2, 1, 1, 1, 1]);
        assert_eq!(windows(10, 256).iter().sum::<usize>(), 256);
        assert_eq!(windows(4, 3), vec![1, 1, 1]);
    }
}
