//! Process and thread resource usage from `/proc` (Linux), without `libc`.
//!
//! CPU times come from `/proc/self/stat` and `/proc/self/task/<tid>/stat` (fields 14 and 15,
//! `utime` and `stime`, in clock ticks of 1/100 s, the value of `CLK_TCK` on every Linux
//! architecture we run on); memory from `/proc/self/status` (`VmHWM`, `VmRSS`). On other
//! systems every reading is `None`.

use std::time::Duration;

/// Clock ticks per second of `/proc` CPU times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const CLOCK_TICKS: u64 = 100;

/// `utime + stime` of a `stat` file's contents.
fn cpu_of_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / CLOCK_TICKS))
}

/// CPU time (user + system) of the whole process so far, exited threads included.
pub(crate) fn process_cpu() -> Option<Duration> {
    cpu_of_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// CPU time of the live threads whose name starts with `prefix` (threads that already exited
/// are not counted), and how many there are.
pub(crate) fn threads_cpu(prefix: &str) -> Option<(Duration, usize)> {
    let mut total = Duration::ZERO;
    let mut count = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        if let Some(cpu) = std::fs::read_to_string(path.join("stat"))
            .ok()
            .as_deref()
            .and_then(cpu_of_stat)
        {
            total += cpu;
            count += 1;
        }
    }
    Some((total, count))
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Peak resident set size (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM")
}

/// Resident set size now (`VmRSS`), in KiB.
pub(crate) fn rss_kib() -> Option<u64> {
    status_kib("VmRSS")
}

/// Resets the peak RSS to the current RSS (writes `5` to `/proc/self/clear_refs`), so the
/// next [`peak_rss_kib`] covers only what follows. Returns whether that worked.
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat() {
        let stat = "1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_of_stat(stat), Some(Duration::from_secs(3)));
    }

    #[test]
    fn reads_self() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu().is_some());
            assert!(peak_rss_kib().unwrap() > 0);
            assert!(rss_kib().unwrap() > 0);
            assert!(threads_cpu("").unwrap().1 >= 1);
        }
    }
}
