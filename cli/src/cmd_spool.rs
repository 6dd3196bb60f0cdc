//! `ufsock spool inspect DIR`: what a spool directory holds, read without taking its lock.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use usageflow_socket_client::spool::{inspect, Inspection};

use crate::shared::CmdResult;

/// `ufsock spool ...`
#[derive(Debug, Args)]
pub(crate) struct SpoolArgs {
    /// What to do with the spool.
    #[command(subcommand)]
    command: SpoolCommand,
}

/// The spool subcommands.
#[derive(Debug, Subcommand)]
enum SpoolCommand {
    /// Print what a spool directory holds: records, bytes, oldest age, per type and state, and
    /// damaged records skipped (reads only; safe while a client owns the spool).
    Inspect(InspectArgs),
}

/// `ufsock spool inspect`
#[derive(Debug, Args)]
struct InspectArgs {
    /// The spool directory.
    dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: SpoolArgs) -> CmdResult {
    match args.command {
        SpoolCommand::Inspect(args) => {
            let seen = inspect(&args.dir)?;
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let text = if args.json {
                serde_json::to_string_pretty(&to_json(&seen, now_ms))?
            } else {
                render(&args.dir, &seen, now_ms)
            };
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Seconds since `first_sent_unix_ms`, if any.
fn age_secs(first_sent_unix_ms: Option<u64>, now_ms: u64) -> Option<f64> {
    first_sent_unix_ms.map(|t| now_ms.saturating_sub(t) as f64 / 1000.0)
}

fn to_json(seen: &Inspection, now_ms: u64) -> serde_json::Value {
    let by_kind: serde_json::Map<String, serde_json::Value> = seen
        .by_kind
        .iter()
        .map(|(kind, k)| {
            let summary = serde_json::json!({
                "records": k.records,
                "bytes": k.bytes,
                "unsent": k.unsent,
                "sent": k.sent,
                "resent": k.resent,
                "at_least_once": k.at_least_once,
                "oldest_age_secs": age_secs(k.oldest_first_sent_unix_ms, now_ms),
            });
            (kind.clone(), summary)
        })
        .collect();
    let d = &seen.damage;
    serde_json::json!({
        "records": seen.records,
        "live_bytes": seen.live_bytes,
        "disk_bytes": seen.disk_bytes,
        "segments": seen.segments,
        "oldest_age_secs": age_secs(seen.oldest_first_sent_unix_ms, now_ms),
        "in_use": seen.in_use,
        "by_type": by_kind,
        "damage": {
            "damaged_headers": d.damaged_headers,
            "torn_tails": d.torn_tails,
            "corrupt_regions": d.corrupt_regions,
            "malformed_records": d.malformed_records,
            "skipped_bytes": d.skipped_bytes,
        },
    })
}

fn render(dir: &std::path::Path, seen: &Inspection, now_ms: u64) -> String {
    use std::fmt::Write;
    let age = |t| age_secs(t, now_ms).map_or_else(|| "-".to_string(), |s| format!("{s:.1} s"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "spool {}: {} records, {} live bytes, {} bytes on disk in {} segments, oldest sent {} ago{}",
        dir.display(),
        seen.records,
        seen.live_bytes,
        seen.disk_bytes,
        seen.segments,
        age(seen.oldest_first_sent_unix_ms),
        if seen.in_use {
            " (in use by a running client)"
        } else {
            ""
        },
    );
    let _ = writeln!(
        out,
        "{:<24} {:>9} {:>11} {:>8} {:>8} {:>8} {:>13} {:>10}",
        "type", "records", "bytes", "unsent", "sent", "resent", "at-least-once", "oldest age"
    );
    for (kind, k) in &seen.by_kind {
        let _ = writeln!(
            out,
            "{kind:<24} {:>9} {:>11} {:>8} {:>8} {:>8} {:>13} {:>10}",
            k.records,
            k.bytes,
            k.unsent,
            k.sent,
            k.resent,
            k.at_least_once,
            age(k.oldest_first_sent_unix_ms)
        );
    }
    let d = &seen.damage;
    if d.is_clean() {
        out.push_str("damage: none");
    } else {
        let _ = write!(
            out,
            "damage: {} damaged headers, {} torn tails, {} corrupt regions, {} malformed records, {} bytes skipped",
            d.damaged_headers, d.torn_tails, d.corrupt_regions, d.malformed_records, d.skipped_bytes
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use usageflow_socket_client::spool::{Spool, SpoolOptions, SpoolRecord};

    fn record(kind: &str, first_sent_unix_ms: u64, rewrites: u32) -> SpoolRecord {
        SpoolRecord {
            message_id: 1,
            kind: kind.into(),
            frame: format!(r#"{{"type":"{kind}","payload":{{}}}}"#),
            at_least_once: true,
            first_sent_unix_ms,
            rewrites,
        }
    }

    #[test]
    fn inspect_reports_records_per_type_and_state_with_ages() {
        let dir = std::env::temp_dir().join(format!("ufsock-cli-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now_ms = 1_800_000_000_000;
        let (spool, _) = Spool::open(SpoolOptions::new(&dir)).unwrap();
        spool.append(&record("use_allocation", 0, 0)).unwrap();
        spool
            .append(&record("use_allocation", now_ms - 30_000, 0))
            .unwrap();
        spool
            .append(&record("report_call_chain", now_ms - 4_000, 2))
            .unwrap();
        let gone = spool
            .append(&record("report_call_chain", now_ms - 90_000, 0))
            .unwrap();
        spool.release(gone.key);
        spool.close_blocking().unwrap();

        let seen = inspect(&dir).unwrap();
        let json = to_json(&seen, now_ms);
        assert_eq!(json["records"], 3);
        assert_eq!(json["in_use"], false);
        assert_eq!(json["oldest_age_secs"], 30.0);
        assert_eq!(json["by_type"]["use_allocation"]["unsent"], 1);
        assert_eq!(json["by_type"]["use_allocation"]["sent"], 1);
        assert_eq!(json["by_type"]["report_call_chain"]["resent"], 1);
        assert_eq!(json["by_type"]["report_call_chain"]["oldest_age_secs"], 4.0);
        assert_eq!(json["damage"]["torn_tails"], 0);

        let text = render(&dir, &seen, now_ms);
        assert!(text.contains("3 records"), "{text}");
        let row = text.lines().find(|l| l.starts_with("use_allocation")).unwrap();
        let cols: Vec<_> = row.split_whitespace().collect();
        assert_eq!(
            cols[1..6],
            [
                "2",
                &seen.by_kind["use_allocation"].bytes.to_string(),
                "1",
                "1",
                "0"
            ]
        );
        assert!(text.ends_with("damage: none"), "{text}");

        // A torn tail (a crash mid-write) shows up as damage, the good records stay.
        let seg = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(len - 5).unwrap();
        let seen = inspect(&dir).unwrap();
        assert_eq!(seen.damage.torn_tails, 1);
        assert!(render(&dir, &seen, now_ms).contains("1 torn tails"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn inspecting_a_missing_directory_is_an_error() {
        let missing = std::env::temp_dir().join("ufsock-cli-spool-missing-dir");
        assert!(inspect(&missing).is_err());
    }
}
