//! End-to-end tests of the `ufsock` binary: `demo`, `request`, `send`, `bench` and `spool`, each
//! bounded in time.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use usageflow_socket_server::{ServerOptions, ServerThread};

const KEY: &str = "cli-test-key";

/// Runs `ufsock ARGS` and returns its output; kills it and fails after `limit`.
fn ufsock(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_ufsock"))
        .args(args)
        .env_remove("USAGEFLOW_API_KEY")
        .env_remove("USAGEFLOW_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the ufsock binary starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("ufsock ran"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("ufsock {args:?} did not finish within {limit:?}");
        }
    }
}

fn server() -> ServerThread {
    ServerThread::spawn(ServerOptions {
        key: Some(KEY.into()),
        ..ServerOptions::default()
    })
    .expect("the server starts")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

const T: Duration = Duration::from_secs(30);

#[test]
fn spool_inspect_prints_a_spool_and_fails_for_a_missing_directory() {
    use usageflow_socket_client::spool::{Spool, SpoolOptions, SpoolRecord};
    let dir = std::env::temp_dir().join(format!("ufsock-bin-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (spool, _) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    for i in 0..5u64 {
        let record = SpoolRecord {
            message_id: i,
            kind: "use_allocation".into(),
            frame: format!(r#"{{"type":"use_allocation","payload":{{"allocationId":"a-{i}"}}}}"#),
            at_least_once: true,
            first_sent_unix_ms: 0,
            rewrites: 0,
        };
        spool.append(&record).unwrap();
    }
    let written = spool.written_mark();
    let durable = smol::block_on(spool.wait_durable(written, smol::Timer::after(Duration::from_secs(10))));
    assert_eq!(durable, Ok(true));
    // While a client owns the spool, inspect still reads it (without its lock) and says so.
    let dir_arg = dir.to_str().unwrap();
    let out = ufsock(&["spool", "inspect", "--json", dir_arg], Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["records"], 5);
    assert_eq!(json["in_use"], true);
    assert_eq!(json["by_type"]["use_allocation"]["unsent"], 5);
    spool.close_blocking().unwrap();

    let out = ufsock(&["spool", "inspect", dir_arg], Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("5 records") && text.contains("use_allocation") && text.contains("damage: none"),
        "{text}"
    );

    let missing = dir.join("missing");
    let out = ufsock(
        &["spool", "inspect", missing.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("spool"), "a clear error: {}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_ends_by_itself_and_its_accounting_matches() {
    let out = ufsock(&["demo"], Duration::from_secs(60));
    let text = stdout(&out);
    assert!(out.status.success(), "demo failed: {text}\n{}", stderr(&out));
    assert!(text.contains("== summary =="), "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("accounting"))
        .unwrap_or_else(|| panic!("no accounting line: {text}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {line}"))
    };
    // What confirmation proves: the server read every confirmed message; it may have read the
    // unconfirmed ones (their connections died first).
    assert!(field("confirmed") > 0);
    assert!(field("confirmed") <= field("counted"), "{line}");
    assert!(
        field("counted") <= field("confirmed") + field("unconfirmed"),
        "{line}"
    );
    assert_eq!(field("queued") + field("written"), 0, "{line}");
    for zero in ["dropped", "expired", "closed", "queued", "written"] {
        assert_eq!(field(zero), 0, "{line}");
    }
    assert!(text.contains("check            OK"), "{text}");
    assert!(text.contains("failed fast (not_connected)"), "{text}");
    assert!(text.contains("denied"), "{text}");
}

#[test]
fn request_exit_codes() {
    let server = server();
    let url = server.url();
    let ok = ufsock(
        &["request", "--url", &url, "--key", KEY, "get_application_policies"],
        T,
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let reply: Value = serde_json::from_str(&stdout(&ok)).expect("the reply is JSON");
    assert_eq!(reply["type"], "success");
    assert!(reply["payload"]["total"].as_i64().is_some());

    let denied = ufsock(
        &[
            "request",
            "--url",
            &url,
            "--key",
            KEY,
            "request_for_allocation",
            r#"{"alias":"deny","amount":1}"#,
        ],
        T,
    );
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
    let reply: Value = serde_json::from_str(&stdout(&denied)).expect("the denial is JSON");
    assert_eq!(reply["type"], "error");
    assert!(stderr(&denied).contains("denied"));

    let dead = format!("ws://127.0.0.1:{}/ws", dead_port());
    let unavailable = ufsock(
        &["request", "--url", &dead, "--key", KEY, "get_application_config"],
        T,
    );
    assert_eq!(unavailable.status.code(), Some(4), "{}", stderr(&unavailable));

    let wrong_key = ufsock(
        &[
            "request",
            "--url",
            &url,
            "--key",
            "wrong",
            "get_application_config",
        ],
        T,
    );
    assert_eq!(wrong_key.status.code(), Some(4));
    assert!(stderr(&wrong_key).contains("API key"), "{}", stderr(&wrong_key));
    assert!(
        !stderr(&wrong_key).contains("wrong"),
        "the key must never be printed"
    );

    let usage = ufsock(&["request", "--url", &url, "--key", KEY, "x", "{not json"], T);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn send_waits_until_flushed() {
    let server = server();
    let url = server.url();
    let payload = r#"{"method":"GET","url":"/a","callChain":[],"timestamp":1}"#;
    let out = ufsock(
        &["send", "--url", &url, "--key", KEY, "report_call_chain", payload],
        T,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(server
        .counters()
        .wait_until_blocking(Duration::from_secs(5), |c| c
            .fire_and_forget
            .get("report_call_chain")
            == Some(&1)));

    let dead = format!("ws://127.0.0.1:{}/ws", dead_port());
    let out = ufsock(
        &[
            "send",
            "--url",
            &dead,
            "--key",
            KEY,
            "--timeout-ms",
            "500",
            "report_call_chain",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

fn bench(extra: &[&str]) -> Value {
    let mut args = vec![
        "bench",
        "--requests",
        "2000",
        "--json",
        "--pool",
        "4",
        "--concurrency",
        "16",
    ];
    args.extend_from_slice(extra);
    let out = ufsock(&args, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("bench --json prints JSON")
}

fn assert_clean(run: &Value, mode: &str) {
    assert_eq!(run["mode"], mode, "{run}");
    assert_eq!(run["operations"], 2000, "{run}");
    assert_eq!(run["completed"], 2000, "{run}");
    assert_eq!(run["error_total"], 0, "{run}");
    assert!(run["ops_per_s"].as_f64().unwrap() > 0.0, "{run}");
    assert!(run["memory"]["peak_rss_kib"].as_u64().unwrap() > 0, "{run}");
}

#[test]
fn bench_request_mode() {
    let report = bench(&["--mode", "request"]);
    let run = &report["runs"][0];
    assert_clean(run, "request");
    assert_eq!(run["latency"]["count"], 2000);
    assert_eq!(run["client_stats"]["replies"], 2000);
}

#[test]
fn bench_send_mode() {
    let report = bench(&["--mode", "send"]);
    let run = &report["runs"][0];
    assert_clean(run, "send");
    assert_eq!(run["server_counted"], 2000);
    assert_eq!(run["client_stats"]["confirmed"], 2000);
    // One call in 16 is timed, counted per task (each task times its first call).
    let timed = run["latency"]["count"].as_u64().unwrap();
    let tasks = run["concurrency"].as_u64().unwrap();
    assert!(
        (2000 / 16..=2000 / 16 + tasks).contains(&timed),
        "{timed} timed of 2000"
    );
}

#[test]
fn bench_raw_modes() {
    let report = bench(&["--mode", "raw"]);
    let run = &report["runs"][0];
    assert_clean(run, "raw");
    assert_eq!(run["latency"]["count"], 2000);
    let report = bench(&["--mode", "raw-send"]);
    let run = &report["runs"][0];
    assert_clean(run, "raw-send");
    assert_eq!(run["server_counted"], 2000);
}

#[test]
fn bench_compare_runs_raw_then_pooled() {
    let report = bench(&["--mode", "request", "--compare"]);
    assert_clean(&report["runs"][0], "raw");
    assert_clean(&report["runs"][1], "request");
    assert!(report["comparison"]["rate_ratio"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_rounds_alternate_raw_and_the_mode_and_summarize() {
    let report = bench(&["--mode", "request", "--compare", "--rounds", "2"]);
    assert_eq!(report["rounds"], 2);
    let modes: Vec<&str> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["raw", "request", "raw", "request"]);
    for run in report["runs"].as_array().unwrap() {
        assert_clean(run, run["mode"].as_str().unwrap());
    }
    let summary = report["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 2);
    assert_eq!(summary[1]["mode"], "request");
    assert_eq!(summary[1]["rounds"], 2);
    let (lo, hi) = (
        summary[1]["ops_per_s_min"].as_f64().unwrap(),
        summary[1]["ops_per_s_max"].as_f64().unwrap(),
    );
    let median = summary[1]["ops_per_s"].as_f64().unwrap();
    assert!(lo <= median && median <= hi && lo > 0.0, "{summary:?}");
    let ratios = report["comparison"]["rate_ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), 2);
}

#[test]
fn bench_minimal_mode_beside_raw() {
    let report = bench(&["--mode", "minimal", "--compare"]);
    assert_clean(&report["runs"][0], "raw");
    let run = &report["runs"][1];
    assert_clean(run, "minimal");
    assert_eq!(run["client"], "minimal");
    // Every request was answered through its own id, and timed.
    assert_eq!(run["latency"]["count"], 2000);
    assert!(report["comparison"]["rate_ratio"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_on_smol() {
    let report = bench(&["--mode", "request", "--runtime", "smol"]);
    let run = &report["runs"][0];
    assert_clean(run, "request");
    assert_eq!(run["runtime"], "smol");
    assert_eq!(run["latency"]["count"], 2000);
    assert_eq!(run["client_stats"]["replies"], 2000);

    let report = bench(&["--mode", "send", "--runtime", "smol", "--compare"]);
    let raw = &report["runs"][0];
    assert_clean(raw, "raw-send");
    assert_eq!(raw["runtime"], "tokio", "the raw baseline stays on Tokio");
    let run = &report["runs"][1];
    assert_clean(run, "send");
    assert_eq!(run["runtime"], "smol");
    assert_eq!(run["server_counted"], 2000);
    assert_eq!(run["client_stats"]["confirmed"], 2000);
}

/// `--sweep` runs raw and the pooled client on both runtimes at each concurrency, and
/// `--plot` draws them (pure-Rust SVG with the bundled font).
#[test]
fn bench_sweep_draws_a_chart() {
    let dir = std::env::temp_dir().join(format!("ufsock-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("chart.svg");
    let svg_arg = svg.to_str().unwrap().to_owned();
    let report = bench(&["--mode", "send", "--sweep", "1,8", "--plot", &svg_arg]);
    let lines = report["sweep"]["lines"].as_object().expect("lines");
    let names: Vec<&String> = lines.keys().collect();
    assert_eq!(
        names,
        ["pooled (smol)", "pooled (tokio)", "raw (tokio)"],
        "{report}"
    );
    for points in lines.values() {
        let cs: Vec<u64> = points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["concurrency"].as_u64().unwrap())
            .collect();
        assert_eq!(cs, [1, 8]);
    }
    assert_eq!(report["runs"].as_array().unwrap().len(), 6);
    let text = std::fs::read_to_string(&svg).expect("the chart was written");
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(200)]);
    for legend in ["pooled (smol)", "pooled (tokio)", "raw (tokio)", "concurrency"] {
        assert!(text.contains(legend), "the chart names {legend}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
