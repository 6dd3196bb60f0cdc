//! The spool phase of `ufsock demo`: a child process (this binary, `ufsock spool-child`)
//! streams metered messages through a spool and is killed with SIGKILL mid-stream; a new
//! client opens the spool and replays what the child left; the server's own count of
//! `allocationId`s shows that every message the child's `send` had accepted arrived. Bounded: the
//! child is killed after at most 5 s, the replay waits at most 5 s.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use usageflow_socket_client::spool::SpoolOptions;
use usageflow_socket_client::ClientOptions;
use usageflow_socket_server::{Server, ServerOptions};
use usageflow_socket_tokio::{Client, ClientError, Config, Outgoing};

use crate::shared::{CmdResult, EXIT_OK, EXIT_OTHER};

/// The demo server's key (a throwaway; never printed).
const KEY: &str = "ufsock-demo-spool-key";
/// Messages the child streams (it is killed long before the end).
const STREAM: u64 = 200_000;
/// The child is killed once `send` accepted this many of its messages.
const KILL_AT: u64 = 5_000;

/// Options of the hidden `ufsock spool-child` (the demo's child process).
#[derive(Debug, Args)]
pub(crate) struct ChildArgs {
    /// The server's URL.
    #[arg(long)]
    url: String,
    /// The spool directory.
    #[arg(long)]
    dir: std::path::PathBuf,
}

fn config(url: &str) -> Result<Config, usageflow_socket_tokio::ConfigError> {
    Config::builder(url, KEY)
        .pool_size(2)
        .confirm_after(Duration::from_millis(20))
        .server_deduplicates_allocation_ids(true)
        .outbox_capacity(100_000)
        .build()
}

fn metered(n: u64) -> Outgoing {
    Outgoing::new(
        "use_allocation",
        json!({"alias": "ledger-1", "amount": 1.0, "allocationId": format!("demo-{n}")}),
    )
}

/// The child: streams messages through the spool, printing `D n` whenever `send` accepted the
/// first `n` (each one is in the spool's files when `send` returns, so it survives the kill),
/// until it is killed (or, bounded, after 30 s).
pub(crate) fn run_child(args: ChildArgs) -> CmdResult {
    let rt = crate::shared::runtime(2, "ufsock-spool-child")?;
    rt.block_on(async move {
        let options = ClientOptions::builder(config(&args.url)?)
            .spool(SpoolOptions::new(&args.dir))
            .build();
        let client = Client::connect(options).await?;
        let started = Instant::now();
        for n in 0..STREAM {
            loop {
                match client.send(metered(n)) {
                    Ok(()) => break,
                    Err(ClientError::OutboxFull(_) | ClientError::SpoolFull(_)) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if (n + 1) % 50 == 0 {
                println!("D {}", n + 1);
                if started.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
        }
        Ok(ExitCode::from(EXIT_OK))
    })
}

/// The phase: kill a streaming child mid-stream, replay its spool, check the server's count.
pub(crate) async fn phase(say: impl Fn(&str, String)) -> Result<bool, Box<dyn std::error::Error>> {
    let server = Server::start(ServerOptions {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        key: Some(KEY.into()),
        ..ServerOptions::default()
    })
    .await?;
    server.counters().record_allocation_ids();
    let dir = std::env::temp_dir().join(format!("ufsock-demo-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    say(
        "spool",
        format!(
            "a child process streams metered messages through a spool in {}",
            dir.display()
        ),
    );
    let mut child = Command::new(std::env::current_exe()?)
        .args(["spool-child", "--url", &server.url(), "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let durable = Arc::new(AtomicU64::new(0));
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let reader = {
        let durable = Arc::clone(&durable);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("D ").and_then(|n| n.parse().ok()) {
                    durable.fetch_max(n, Ordering::AcqRel);
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while durable.load(Ordering::Acquire) < KILL_AT && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill()?;
    let _ = child.wait();
    let _ = reader.join();
    let durable = durable.load(Ordering::Acquire);
    let arrived = server.counters().allocation_ids().len();
    say(
        "spool",
        format!(
            "killed it with SIGKILL mid-stream: send had accepted {durable} messages, {arrived} had reached the server"
        ),
    );
    let options = ClientOptions::builder(config(&server.url())?)
        .spool(SpoolOptions::new(&dir))
        .build();
    let client = Client::connect(options).await?;
    let replayed = client.stats().sends.replayed;
    let flushed = client.flush(Duration::from_secs(5)).await;
    let report = client.close().await;
    say(
        "spool",
        format!(
            "a new client opened the spool and replayed {replayed} messages ({} confirmed)",
            report.stats.sends.confirmed
        ),
    );
    let ids = server.counters().allocation_ids();
    let missing = (0..durable)
        .filter(|n| !ids.contains_key(&format!("demo-{n}")))
        .count();
    let twice = ids.values().filter(|&&n| n > 1).count();
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let ok = missing == 0 && flushed.is_ok() && durable > 0;
    if ok {
        say(
            "spool",
            format!("the server counted every one of the {durable} accepted messages ({twice} twice: at least once, deduplicated by allocationId)"),
        );
    } else {
        say(
            "spool",
            format!("LOST {missing} of {durable} accepted messages ({flushed:?})"),
        );
    }
    Ok(ok)
}

/// The exit code of the spool phase.
pub(crate) fn exit_code(ok: bool) -> ExitCode {
    ExitCode::from(if ok { EXIT_OK } else { EXIT_OTHER })
}
