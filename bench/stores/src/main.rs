//! `stores`: the client's spool (an append-only segment log) against SQLite, redb and fjall on
//! the client's workload. See README.md for what it measures and how to read the table.

mod fjall_store;
mod glue;
mod redb_store;
mod sqlite;

use glue::{Channeled, Recovered};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use usageflow_socket_client::spool::{Spool, SpoolError, SpoolKey, SpoolOptions, SpoolRecord, SyncPolicy};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Log,
    LogWriteThrough,
    Sqlite,
    Redb,
    Fjall,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::LogWriteThrough => "log-wt",
            Kind::Sqlite => "sqlite",
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
        }
    }

    fn parse(s: &str) -> Result<Kind, String> {
        [
            Kind::Log,
            Kind::LogWriteThrough,
            Kind::Sqlite,
            Kind::Redb,
            Kind::Fjall,
        ]
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| format!("unknown store {s:?} (log, log-wt, sqlite, redb, fjall)"))
    }
}

struct Args {
    n: u64,
    recover_n: u64,
    rounds: usize,
    window: usize,
    interval: Duration,
    rate: Option<f64>,
    stores: Vec<Kind>,
}

const USAGE: &str = "usage: stores [--n N] [--recover-n N] [--rounds R] [--window W] [--interval-ms MS] [--rate RECORDS_PER_S] [--stores log,log-wt,sqlite,redb,fjall]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        n: 1_000_000,
        recover_n: 1_000_000,
        rounds: 3,
        window: 1000,
        interval: Duration::from_millis(2),
        rate: None,
        stores: vec![
            Kind::Log,
            Kind::LogWriteThrough,
            Kind::Sqlite,
            Kind::Redb,
            Kind::Fjall,
        ],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = || {
            value
                .replace('_', "")
                .parse::<u64>()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--n" => args.n = num()?,
            "--recover-n" => args.recover_n = num()?,
            "--rounds" => args.rounds = num()? as usize,
            "--window" => args.window = num()? as usize,
            "--interval-ms" => args.interval = Duration::from_millis(num()?),
            "--rate" => args.rate = Some(num()? as f64).filter(|r| *r > 0.0),
            "--stores" => args.stores = value.split(',').map(Kind::parse).collect::<Result<_, _>>()?,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// The writer's backlog bound, the same for every store: the spool refuses appends past
/// `max(max_bytes, 8 MiB)` of unwritten bytes; the embedded stores' channel holds as many
/// records of this workload (about 256 bytes each).
const BACKLOG_BYTES: u64 = 8 << 20;
const CHANNEL_RECORDS: usize = (BACKLOG_BYTES / 256) as usize;

/// One store opened for writing.
enum Handle {
    /// The spool, records staged and written by its syncer (`write_through` false).
    Log(Spool),
    /// The spool, each record written to the OS by `append` (the client's default).
    LogWriteThrough(Spool),
    Embedded(Channeled),
}

impl Handle {
    fn open(kind: Kind, dir: &Path, max_bytes: u64, interval: Duration) -> Result<Handle, String> {
        Ok(match kind {
            Kind::Log | Kind::LogWriteThrough => {
                let opts = SpoolOptions::new(dir)
                    .sync(SyncPolicy::Group(interval))
                    .max_bytes(max_bytes);
                let (spool, _recovery) = Spool::open(opts).map_err(|e| e.to_string())?;
                if kind == Kind::Log {
                    Handle::Log(spool)
                } else {
                    Handle::LogWriteThrough(spool)
                }
            }
            Kind::Sqlite => {
                let (b, next) = sqlite::writer(dir)?;
                Handle::Embedded(Channeled::start(b, next, CHANNEL_RECORDS, interval))
            }
            Kind::Redb => {
                let (b, next) = redb_store::writer(dir)?;
                Handle::Embedded(Channeled::start(b, next, CHANNEL_RECORDS, interval))
            }
            Kind::Fjall => {
                let (b, next) = fjall_store::writer(dir)?;
                Handle::Embedded(Channeled::start(b, next, CHANNEL_RECORDS, interval))
            }
        })
    }

    fn append(&mut self, rec: &SpoolRecord) -> Result<u64, String> {
        match self {
            Handle::Log(spool) => loop {
                match spool.stage(spool.next_key(), rec) {
                    Ok(a) => return Ok(a.key.0),
                    // The syncer is 8 MiB behind: wait for it, as a bounded channel would.
                    Err(SpoolError::Backlogged { .. }) => std::thread::sleep(Duration::from_micros(50)),
                    Err(e) => return Err(e.to_string()),
                }
            },
            Handle::LogWriteThrough(spool) => spool.append(rec).map(|a| a.key.0).map_err(|e| e.to_string()),
            Handle::Embedded(c) => Ok(c.append(rec)),
        }
    }

    fn release(&mut self, key: u64) {
        match self {
            Handle::Log(spool) | Handle::LogWriteThrough(spool) => {
                spool.release(SpoolKey(key));
            }
            Handle::Embedded(c) => c.release(key),
        }
    }

    /// Makes everything durable and closes: returns the number of syncs (commits).
    fn finish(self) -> Result<u64, String> {
        match self {
            Handle::Log(spool) | Handle::LogWriteThrough(spool) => {
                let mark = spool.written_mark();
                let deadline = Instant::now() + Duration::from_secs(120);
                if !spool
                    .wait_durable_blocking(mark, deadline)
                    .map_err(|e| e.to_string())?
                {
                    return Err("the spool did not become durable in 120 s".into());
                }
                let syncs = spool.stats().syncs;
                spool.close_blocking().map_err(|e| e.to_string())?;
                Ok(syncs)
            }
            Handle::Embedded(c) => c.finish(),
        }
    }
}

fn recover(kind: Kind, dir: &Path, max_bytes: u64) -> Result<Recovered, String> {
    match kind {
        Kind::Log | Kind::LogWriteThrough => {
            let opts = SpoolOptions::new(dir).max_bytes(max_bytes);
            let (spool, recovery) = Spool::open(opts).map_err(|e| e.to_string())?;
            let records = recovery
                .records
                .into_iter()
                .map(|r| (r.key.0, r.record))
                .collect();
            Ok((records, Box::new(spool)))
        }
        Kind::Sqlite => sqlite::recover(dir),
        Kind::Redb => redb_store::recover(dir),
        Kind::Fjall => fjall_store::recover(dir),
    }
}

/// The client's message for index `i`: a `use_allocation` frame of about 200 bytes, distinct
/// per message.
fn fill(rec: &mut SpoolRecord, i: u64) {
    rec.message_id = i;
    rec.first_sent_unix_ms = 1_780_000_000_000 + i;
    rec.frame.clear();
    let _ = write!(
        rec.frame,
        r#"{{"type":"use_allocation","id":"{:016x}","payload":{{"allocationId":"alloc-{:010}","accountId":"acct-{:04}","amount":{},"unit":"tokens","route":"/v1/chat/completions"}},"ts":{}}}"#,
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        i,
        i % 977,
        (i * 37) % 10_000,
        rec.first_sent_unix_ms,
    );
}

fn new_record() -> SpoolRecord {
    SpoolRecord {
        message_id: 0,
        kind: "use_allocation".into(),
        frame: String::with_capacity(256),
        at_least_once: true,
        first_sent_unix_ms: 0,
        rewrites: 0,
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The bytes the directory's files take on disk (allocated blocks, so a preallocated or sparse
/// file counts for what it really holds).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Samples the directory's size every 20 ms until dropped; keeps the peak.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(dir: PathBuf) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(dir_bytes(&dir), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

#[derive(Default, Clone)]
struct Run {
    secs: f64,
    cpu_us: f64,
    syncs: u64,
    end_bytes: u64,
    peak_bytes: u64,
    live_bytes: u64,
    recover_secs: f64,
}

impl Run {
    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.secs
    }
    fn syncs_per_s(&self) -> f64 {
        self.syncs as f64 / self.secs
    }
}

/// The throughput run: `n` appends, each released once `window` newer ones were appended.
fn throughput(kind: Kind, dir: &Path, args: &Args) -> Result<Run, String> {
    let mut rec = new_record();
    let sampler = Sampler::start(dir.to_path_buf());
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut h = Handle::open(kind, dir, BACKLOG_BYTES, args.interval)?;
    let mut window = VecDeque::with_capacity(args.window + 1);
    for i in 0..args.n {
        if let Some(rate) = args.rate {
            // Paced: the caller sleeps whenever it is more than 1 ms ahead of the schedule.
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        fill(&mut rec, i);
        window.push_back(h.append(&rec)?);
        if window.len() > args.window {
            let key = window.pop_front().expect("window is not empty");
            h.release(key);
        }
    }
    while let Some(key) = window.pop_front() {
        h.release(key);
    }
    let syncs = h.finish()?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let peak_bytes = sampler.peak();
    let end_bytes = dir_bytes(dir);
    Ok(Run {
        secs,
        cpu_us: cpu * 1e6 / args.n as f64,
        syncs,
        end_bytes,
        peak_bytes: peak_bytes.max(end_bytes),
        ..Run::default()
    })
}

/// The recovery run: `recover_n` records left live, closed, then opened and read back in order.
fn recovery(kind: Kind, dir: &Path, args: &Args) -> Result<(u64, f64), String> {
    let max_bytes = 4 << 30;
    let mut rec = new_record();
    let mut h = Handle::open(kind, dir, max_bytes, args.interval)?;
    for i in 0..args.recover_n {
        fill(&mut rec, i);
        h.append(&rec)?;
    }
    h.finish()?;
    let live_bytes = dir_bytes(dir);
    let t0 = Instant::now();
    let (records, store) = recover(kind, dir, max_bytes)?;
    let secs = t0.elapsed().as_secs_f64();
    drop(store);
    if records.len() as u64 != args.recover_n {
        return Err(format!(
            "{}: recovered {} of {} records",
            kind.name(),
            records.len(),
            args.recover_n
        ));
    }
    let mut expect = new_record();
    for (i, (_key, r)) in records.iter().enumerate() {
        fill(&mut expect, i as u64);
        if *r != expect {
            return Err(format!(
                "{}: record {i} came back different or out of order",
                kind.name()
            ));
        }
    }
    Ok((live_bytes, secs))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Lines of code: neither blank nor a comment.
fn loc(sources: &[&str]) -> usize {
    sources
        .iter()
        .flat_map(|s| s.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .count()
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let root = std::env::temp_dir().join(format!("usageflow-bench-stores-{}", std::process::id()));
    let code = match run_all(&args, &root) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    let _ = std::fs::remove_dir_all(&root);
    std::process::exit(code);
}

fn run_all(args: &Args, root: &Path) -> Result<(), String> {
    let mut rec = new_record();
    fill(&mut rec, 123_456);
    eprintln!(
        "n = {}, rate = {}, recover_n = {}, rounds = {}, window = {}, group interval = {:?}, frame = {} bytes",
        args.n,
        args.rate.map_or("unpaced".to_string(), |r| format!("{r} records/s")),
        args.recover_n,
        args.rounds,
        args.window,
        args.interval,
        rec.frame.len()
    );
    let mut runs: Vec<(Kind, Run)> = Vec::new();
    for round in 0..args.rounds {
        for &kind in &args.stores {
            let dir = root.join(format!("{}-{round}", kind.name()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let mut run = throughput(kind, &dir, args)?;
            std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            (run.live_bytes, run.recover_secs) = recovery(kind, &dir, args)?;
            std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
            eprintln!(
                "round {} {:>6}: {:>9.0} rec/s, {:>6.2} µs CPU/rec, {:>5.0} syncs/s, end {} peak {}, {} live {} recovered in {:.3} s",
                round + 1,
                kind.name(),
                run.rate(args.n),
                run.cpu_us,
                run.syncs_per_s(),
                mib(run.end_bytes as f64),
                mib(run.peak_bytes as f64),
                args.recover_n,
                mib(run.live_bytes as f64),
                run.recover_secs
            );
            runs.push((kind, run));
        }
    }
    let spool_loc = loc(&[
        include_str!("../../../client/src/spool/format.rs"),
        include_str!("../../../client/src/spool/store.rs"),
        include_str!("../../../client/src/spool/writer.rs"),
        include_str!("../../../client/src/spool/mod.rs"),
    ]);
    let glue_loc = loc(&[include_str!("glue.rs")]);
    println!(
        "\n| store | records/s, median (min–max) | CPU µs/record | syncs/s | disk at end | peak disk | disk, {} live | recovery of {} live, median (min–max) | code to keep |",
        args.recover_n, args.recover_n
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &kind in &args.stores {
        let mine: Vec<&Run> = runs.iter().filter(|(k, _)| *k == kind).map(|(_, r)| r).collect();
        let med = |f: &dyn Fn(&Run) -> f64| median(mine.iter().map(|r| f(r)).collect());
        let range = |f: &dyn Fn(&Run) -> f64, digits: usize| {
            let v: Vec<f64> = mine.iter().map(|r| f(r)).collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{:.digits$} ({lo:.digits$}–{hi:.digits$})", median(v))
        };
        let code = match kind {
            Kind::Log | Kind::LogWriteThrough => format!("{spool_loc} (spool)"),
            Kind::Sqlite => format!(
                "{} (adapter + {glue_loc} glue)",
                loc(&[include_str!("sqlite.rs")])
            ),
            Kind::Redb => format!(
                "{} (adapter + {glue_loc} glue)",
                loc(&[include_str!("redb_store.rs")])
            ),
            Kind::Fjall => format!(
                "{} (adapter + {glue_loc} glue)",
                loc(&[include_str!("fjall_store.rs")])
            ),
        };
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {} | {} s | {} |",
            kind.name(),
            range(&|r| r.rate(args.n), 0),
            med(&|r| r.cpu_us),
            med(&|r| r.syncs_per_s()),
            mib(med(&|r| r.end_bytes as f64)),
            mib(med(&|r| r.peak_bytes as f64)),
            mib(med(&|r| r.live_bytes as f64)),
            range(&|r| r.recover_secs, 2),
            code
        );
    }
    Ok(())
}
