//! What a bench run records and reports: errors by kind, latency histograms, the per-run
//! report (CPU, memory, counters), medians and ratios over rounds, the `--json` document and
//! the text report.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

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

    /// Counts every error of `other` here too.
    pub(crate) fn add_all(&self, other: &Errors) {
        for (k, v) in other.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            self.add(k, *v);
        }
    }

    /// The counts, by kind.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
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
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
}

impl Latency {
    pub(crate) fn of(h: &hdrhistogram::Histogram<u64>) -> Option<Latency> {
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
pub(crate) struct Cpu {
    /// The whole process.
    pub(crate) process_s: f64,
    /// The embedded server's threads (0 with --url).
    pub(crate) server_s: f64,
    /// process - server.
    pub(crate) client_s: f64,
    /// client_s per completed operation, in microseconds.
    pub(crate) client_us_per_op: f64,
}

/// Memory of a run.
#[derive(Debug, Serialize)]
pub(crate) struct Memory {
    /// VmHWM at the end of the run (reset at its start when `peak_reset`).
    pub(crate) peak_rss_kib: u64,
    /// VmRSS at the end of the run.
    pub(crate) end_rss_kib: u64,
    /// Whether the peak was reset at the start of the run (else it covers the whole process).
    pub(crate) peak_reset: bool,
}

/// The result of one run.
#[derive(Debug, Serialize)]
pub(crate) struct RunReport {
    pub(crate) mode: &'static str,
    pub(crate) client: &'static str,
    pub(crate) runtime: &'static str,
    pub(crate) pool: u16,
    pub(crate) concurrency: u64,
    pub(crate) operations: u64,
    /// Operations that succeeded (replies; or sends written and, with an embedded server,
    /// counted by it).
    pub(crate) completed: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) error_total: u64,
    pub(crate) elapsed_s: f64,
    pub(crate) ops_per_s: f64,
    /// Request latency; for the pooled send mode, the cost of the `send()` call, timed on
    /// one call in 16 (the pooled send mode's `SEND_LATENCY_SAMPLE`).
    pub(crate) latency: Option<Latency>,
    pub(crate) cpu: Cpu,
    pub(crate) memory: Memory,
    /// Fire-and-forget messages the embedded server counted during the run.
    pub(crate) server_counted: Option<u64>,
    /// The pooled client's counters at the end (requests, replies, sends...).
    pub(crate) client_stats: Option<serde_json::Value>,
}

/// The comparison of `--compare`: per round, the mode against the raw run just before it.
#[derive(Debug, Serialize)]
pub(crate) struct Comparison {
    /// pooled (or minimal) ops/s divided by raw ops/s (the median over the rounds).
    pub(crate) rate_ratio: f64,
    /// pooled (or minimal) client CPU per operation divided by raw's (the median over the
    /// rounds where raw's did not round to 0).
    pub(crate) cpu_per_op_ratio: Option<f64>,
    /// The rate ratio of every round.
    pub(crate) rate_ratios: Vec<f64>,
    /// The CPU ratio of every round where it is known.
    pub(crate) cpu_per_op_ratios: Vec<f64>,
}

impl Comparison {
    /// The comparison of `(raw, mode)` run pairs.
    pub(crate) fn of(pairs: &[(&RunReport, &RunReport)]) -> Comparison {
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
pub(crate) struct ModeSummary {
    pub(crate) mode: &'static str,
    pub(crate) rounds: usize,
    pub(crate) ops_per_s: f64,
    pub(crate) ops_per_s_min: f64,
    pub(crate) ops_per_s_max: f64,
    pub(crate) client_us_per_op: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    /// The highest peak RSS of the rounds.
    pub(crate) peak_rss_kib: u64,
}

impl ModeSummary {
    /// The summary of the runs of `mode` among `runs`.
    pub(crate) fn of(mode: &'static str, runs: &[RunReport]) -> ModeSummary {
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
pub(crate) struct BenchReport {
    pub(crate) server: &'static str,
    /// The target's URL with its credentials redacted.
    pub(crate) url: String,
    /// Rounds run (`--rounds`); `runs` holds every run of every round, in order.
    pub(crate) rounds: u32,
    pub(crate) runs: Vec<RunReport>,
    /// Medians per mode (with more than one round).
    pub(crate) summary: Vec<ModeSummary>,
    pub(crate) comparison: Option<Comparison>,
}

impl RunReport {
    /// Prints the run in the text report.
    pub(crate) fn print(&self) {
        let r = self;
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
        if let Some(stats) = &r.client_stats {
            let us = |k: &str| stats.get(k).and_then(|v| v.as_u64());
            if let (Some(p50), Some(p99)) = (us("confirm_latency_p50_us"), us("confirm_latency_p99_us")) {
                println!("  confirmed   write to pong p50 <= {p50} µs, p99 <= {p99} µs");
            }
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
                "confirmed",
                "unconfirmed",
                "dropped",
                "expired",
                "closed",
                "queued",
                "written",
                "rewritten",
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
}

impl ModeSummary {
    /// Prints the summary line of the text report.
    pub(crate) fn print(&self) {
        let s = self;
        println!(
            "  median of {}  {:<10} {:>10.0} ops/s ({:.0}-{:.0})   client CPU {:.2} us/op   p50 {:.0} us  p99 {:.0} us",
            s.rounds, s.mode, s.ops_per_s, s.ops_per_s_min, s.ops_per_s_max, s.client_us_per_op, s.p50_us, s.p99_us
        );
    }
}

impl Comparison {
    /// Prints the comparison line of the text report; `client` names the client compared
    /// with raw.
    pub(crate) fn print(&self, client: &str) {
        let c = self;
        let rounds = c.rate_ratios.len();
        let cpu = c
            .cpu_per_op_ratio
            .map_or_else(|| "n/a (raw CPU below 10 ms)".to_owned(), |r| format!("{r:.2}x"));
        let spread = if rounds > 1 {
            let (lo, hi) = min_max(&c.rate_ratios);
            format!(" (median of {rounds} rounds, {lo:.2}-{hi:.2}x)")
        } else {
            String::new()
        };
        println!(
            "  {client} / raw   rate {:.2}x{spread}   client CPU per op {cpu}",
            c.rate_ratio
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), (1.0, 5.0));
        assert_eq!(min_max(&[]), (0.0, 0.0));
    }
}
