//! The spool over real sockets, on every adapter: a graceful deploy (close with the server
//! down past the drain, then a new client with the server back), a full spool under load
//! (typed, counted refusals; room comes back with confirmations), and the crash test (a
//! child process killed with SIGKILL at random moments, some during a server outage; a
//! second process replays the spool; the server's own count of `allocationId`s shows that
//! every accepted message arrived).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use usageflow_socket_client::spool::{SpoolOptions, SyncPolicy};
use usageflow_socket_core::messages::USE_ALLOCATION;
use usageflow_socket_server::ServerThread;

use crate::*;

/// A directory of its own for one test's spool, removed when dropped.
pub struct SpoolDir(PathBuf);

impl SpoolDir {
    /// A fresh, empty directory under the system's temporary directory.
    pub fn new(name: &str) -> SpoolDir {
        let dir = std::env::temp_dir().join(format!(
            "ufsock-spool-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary spool directory");
        SpoolDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SpoolDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `use_allocation` carrying the distinct `allocationId` `u-{n}`.
pub fn use_allocation(n: u64) -> Outgoing {
    Outgoing::new(
        USE_ALLOCATION,
        json!({"alias": "ledger-1", "amount": 1.0, "allocationId": format!("u-{n}")}),
    )
}

/// The suite's config for spooled sends: at least once for `allocationId`s, room in the
/// outbox for a whole crash test's stream, a window of 512 per connection.
pub fn spool_config(url: &str) -> ConfigBuilder {
    config(url)
        .server_deduplicates_allocation_ids(true)
        .outbox_capacity(50_000)
        .outbox_ttl(Duration::from_secs(600))
        .max_unconfirmed(512)
}

/// Client options with a spool in `dir`.
pub fn spooled(builder: ConfigBuilder, spool: SpoolOptions) -> ClientOptions {
    ClientOptions::builder(builder.build().expect("a valid test config"))
        .spool(spool)
        .build()
}

/// Graceful deploy: `close()` with the server down past the drain leaves every message in
/// the spool (nothing handed back to be lost, `CloseReport::spooled` per type); a new client
/// with the server back replays them all, and the server counts every id.
pub async fn graceful_deploy_loses_nothing<A: Adapter>() {
    let dir = SpoolDir::new("deploy");
    let server = server();
    server.counters().record_allocation_ids();
    let options = || {
        spooled(
            spool_config(&server.url()).close_drain(Duration::from_millis(300)),
            SpoolOptions::new(dir.path()),
        )
    };
    let client = ClientOf::<A>::connect(options()).await.expect("connect");
    server.kill();
    must_wait::<A>(Duration::from_secs(2), "the connections noticed", || {
        !client.is_connected()
    })
    .await;
    for n in 0..500 {
        client.send(use_allocation(n)).expect("accepted into the spool");
    }
    let report = client.close().await;
    assert!(
        report.undelivered.is_empty(),
        "nothing handed back: {:?}",
        report.undelivered.len()
    );
    assert_eq!(
        report.spooled,
        BTreeMap::from([(USE_ALLOCATION.to_owned(), 500)]),
        "{report:?}"
    );
    assert_eq!(report.stats.sends.spooled, 500);
    assert!(report.stats.sends.conserved());
    drop(client);

    server.restart().expect("the server restarts");
    let client = ClientOf::<A>::connect(options()).await.expect("connect");
    assert_eq!(client.stats().sends.replayed, 500, "{:?}", client.stats().sends);
    client
        .flush(Duration::from_secs(10))
        .await
        .expect("the replay is confirmed");
    let report = client.close().await;
    assert!(report.is_clean(), "{report:?}");
    let ids = server.counters().allocation_ids();
    let missing: Vec<u64> = (0..500)
        .filter(|n| !ids.contains_key(&format!("u-{n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{}: ids never reached the server: {missing:?}",
        A::NAME
    );
    // The spool is empty now: a third client replays nothing.
    let client = ClientOf::<A>::connect(options()).await.expect("connect");
    assert_eq!(client.stats().sends.replayed, 0);
    client.close().await;
}

/// A full spool: with the server down nothing is confirmed, so sends fill `max_spool_bytes`
/// and are then refused with the typed [`ClientError::SpoolFull`], each counted
/// (`spool_full`); once the server is back and confirms, the records are released and sends
/// are accepted again.
pub async fn a_full_spool_refuses_and_recovers<A: Adapter>() {
    let dir = SpoolDir::new("full");
    let server = server();
    let frame = usageflow_socket_core::frame::encode(&use_allocation(1000), None);
    let record = frame.len() as u64 + usageflow_socket_core::spool::RECORD_OVERHEAD;
    let spool = SpoolOptions::new(dir.path()).max_bytes(100 * record);
    let client = ClientOf::<A>::connect(spooled(spool_config(&server.url()), spool))
        .await
        .expect("connect");
    server.kill();
    must_wait::<A>(Duration::from_secs(2), "the connections noticed", || {
        !client.is_connected()
    })
    .await;
    let (mut accepted, mut refused) = (0u64, 0u64);
    for n in 1000..1300 {
        match client.send(use_allocation(n)) {
            Ok(()) => accepted += 1,
            Err(ClientError::SpoolFull(m)) => {
                assert_eq!(m, use_allocation(n), "the refused message is handed back");
                refused += 1;
            }
            Err(e) => panic!("{}: unexpected refusal {e:?}", A::NAME),
        }
    }
    let s = client.stats().sends;
    assert_eq!((accepted, refused), (100, 200), "{s:?}");
    assert_eq!((s.spool_full, s.dropped), (200, 200), "{s:?}");
    server.restart().expect("the server restarts");
    client
        .flush(Duration::from_secs(10))
        .await
        .expect("the spool drains");
    let spool = client.spool_stats().expect("a spool");
    assert_eq!(spool.records, 0, "{spool:?}");
    for n in 2000..2050 {
        client.send(use_allocation(n)).expect("room again");
    }
    client.flush(Duration::from_secs(10)).await.expect("confirmed");
    let s = client.close().await.stats.sends;
    assert_eq!((s.confirmed, s.spool_full), (150, 200), "{s:?}");
}

/// With the defaults, a message is in the spool's files the moment `send` returns: no flush,
/// no sync, nothing else of the client's has run since (what a kill -9 right then leaves
/// behind). With `write_through(false)` it is not, until the syncer's interval (an hour here)
/// comes: the option's whole difference.
pub async fn a_sent_message_is_on_file_when_send_returns<A: Adapter>() {
    for write_through in [true, false] {
        let dir = SpoolDir::new("write-through");
        let server = server();
        let spool = SpoolOptions::new(dir.path())
            .sync(SyncPolicy::Group(Duration::from_secs(3600)))
            .write_through(write_through);
        let config = spool_config(&server.url()).close_drain(Duration::from_millis(100));
        let client = ClientOf::<A>::connect(spooled(config, spool))
            .await
            .expect("connects");
        // Nothing is confirmed from now on, so no record is released.
        server.kill();
        for n in 0..20u64 {
            client.send(use_allocation(n)).expect("accepted");
            let on_file = usageflow_socket_client::spool::inspect(dir.path())
                .expect("readable")
                .records;
            let want = if write_through { n + 1 } else { 0 };
            assert_eq!(
                on_file,
                want,
                "{}: write_through {write_through}: records on file after send {n}",
                A::NAME
            );
        }
        let report = client.close().await;
        assert_eq!(report.stats.sends.spooled, 20, "{}: {report:?}", A::NAME);
        assert_eq!(
            usageflow_socket_client::spool::inspect(dir.path())
                .expect("readable")
                .records,
            20,
            "{}: a close writes everything",
            A::NAME
        );
    }
}

// ----- the crash test -----

/// Messages the child sends in one crash round.
pub const CRASH_MESSAGES: u64 = 20_000;

/// The environment of a crash child: the server's URL, the spool directory, the sync policy.
const CHILD_URL: &str = "UFSOCK_SPOOL_CHILD_URL";
const CHILD_DIR: &str = "UFSOCK_SPOOL_CHILD_DIR";
const CHILD_POLICY: &str = "UFSOCK_SPOOL_CHILD_POLICY";

/// The spool options of a crash child's policy: `group` (the defaults: group commit, each
/// send written through to the OS), `every` (durable before `send` returns), `never` (no
/// fsync), `batched` (group commit, records left to the syncer: no write per send).
fn crash_spool(name: &str, dir: String) -> SpoolOptions {
    let spool = SpoolOptions::new(dir);
    match name {
        "every" => spool.sync(SyncPolicy::EverySend),
        "never" => spool.sync(SyncPolicy::Never),
        "batched" => spool.write_through(false),
        _ => spool,
    }
}

/// Whether every message a crash child's `send` accepted survives its kill (the record is in
/// the OS when `send` returns); otherwise only those its `sync_spool` reported durable.
fn exact_on_kill(name: &str) -> bool {
    name != "batched"
}

/// The crash child's body (run by the test binary re-executed with the child environment;
/// does nothing without it): sends [`CRASH_MESSAGES`] messages with distinct ids through a
/// spool, printing `READY` once connected and `D n` each time the first `n` must survive a
/// kill (after every accepted send when sends write through, else once `sync_spool` reported
/// them durable), until it is killed.
pub fn crash_child<A: Adapter>() {
    let (Ok(url), Ok(dir), Ok(policy_name)) = (
        std::env::var(CHILD_URL),
        std::env::var(CHILD_DIR),
        std::env::var(CHILD_POLICY),
    ) else {
        return;
    };
    A::block_on(async move {
        let policy_name = policy_name.as_str();
        let spool = crash_spool(policy_name, dir);
        let client = ClientOf::<A>::connect(spooled(spool_config(&url), spool))
            .await
            .expect("the child connects");
        println!("READY");
        for n in 0..CRASH_MESSAGES {
            loop {
                match client.send(use_allocation(n)) {
                    Ok(()) => break,
                    Err(ClientError::OutboxFull(_) | ClientError::SpoolFull(_)) => {
                        A::sleep(Duration::from_millis(1)).await
                    }
                    Err(e) => panic!("child: send refused: {e:?}"),
                }
            }
            // Written through (or durable, under EverySend) when `send` returns: accepted
            // means it survives the kill.
            if exact_on_kill(policy_name) {
                println!("D {}", n + 1);
            } else if (n + 1) % 250 == 0 {
                client.sync_spool(Duration::from_secs(30)).await.expect("durable");
                println!("D {}", n + 1);
            }
        }
        let _ = client.flush(Duration::from_secs(60)).await;
        println!("DONE");
        // Wait to be killed (bounded: the parent kills within seconds).
        A::sleep(Duration::from_secs(60)).await;
    });
}

/// What one crash round saw.
#[derive(Debug)]
pub struct CrashRound {
    pub policy: &'static str,
    pub outage: bool,
    pub kill_at: u64,
    pub durable: u64,
    pub first_server: usize,
    pub replayed: u64,
    pub duplicates: usize,
}

/// One crash round: a child sends through a spool to server A and is killed with SIGKILL
/// mid-stream, as soon as it reported `kill_at` messages that must survive (with `outage`,
/// server A is killed at half that, so the child dies while nothing confirms); then this process opens the spool against server B and
/// replays it. Every id the child made durable reached A or B; B got only replayed ids; ids
/// that reached both were uncertain at the kill (written, unconfirmed), at most the windows.
pub async fn crash_round<A: Adapter>(
    child_test: &str,
    policy_name: &'static str,
    kill_at: u64,
    outage: bool,
) -> CrashRound {
    let dir = SpoolDir::new("crash");
    let first = server();
    first.counters().record_allocation_ids();
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([child_test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_URL, first.url())
        .env(CHILD_DIR, dir.path())
        .env(CHILD_POLICY, policy_name)
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the child starts");
    let durable = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let stdout = child.stdout.take().expect("piped");
    let reader = {
        let (durable, ready) = (Arc::clone(&durable), Arc::clone(&ready));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.ends_with("READY") {
                    ready.store(1, Ordering::Release);
                } else if let Some(n) = line.strip_prefix("D ").and_then(|n| n.trim().parse().ok()) {
                    durable.fetch_max(n, Ordering::AcqRel);
                }
            }
        })
    };
    let started = wait_until::<A>(Duration::from_secs(15), || ready.load(Ordering::Acquire) == 1).await;
    if !started {
        let _ = child.kill();
        panic!("{}: the crash child never connected", A::NAME);
    }
    let reached = |n: u64| {
        let durable = Arc::clone(&durable);
        move || durable.load(Ordering::Acquire) >= n
    };
    if outage {
        wait_until::<A>(Duration::from_secs(30), reached(kill_at / 2)).await;
        first.kill();
    }
    let in_time = wait_until::<A>(Duration::from_secs(30), reached(kill_at)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let _ = reader.join();
    let durable = durable.load(Ordering::Acquire);
    assert!(in_time, "{}: the child never reached {kill_at} messages", A::NAME);
    assert!(
        durable < CRASH_MESSAGES,
        "{}: the kill came after the stream ended",
        A::NAME
    );
    let first_ids: HashSet<String> = first.counters().allocation_ids().into_keys().collect();

    // The next process: the same spool, another server.
    let second: ServerThread = server();
    second.counters().record_allocation_ids();
    let client = ClientOf::<A>::connect(spooled(
        spool_config(&second.url()),
        SpoolOptions::new(dir.path()),
    ))
    .await
    .expect("the second process connects");
    let replayed = client.stats().sends.replayed;
    client
        .flush(Duration::from_secs(30))
        .await
        .expect("the replay is confirmed");
    let report = client.close().await;
    assert!(report.is_clean(), "{}: {report:?}", A::NAME);
    let second_ids = second.counters().allocation_ids();
    assert_eq!(
        second_ids.len() as u64,
        replayed,
        "{}: B got exactly the replayed records",
        A::NAME
    );
    let missing: Vec<u64> = (0..durable)
        .filter(|n| {
            let id = format!("u-{n}");
            !first_ids.contains(&id) && !second_ids.contains_key(&id)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{}: {} of {durable} durable ids never reached a server (first: {missing:?})",
        A::NAME,
        missing.len()
    );
    let unknown = second_ids
        .keys()
        .filter(|id| {
            id.strip_prefix("u-")
                .and_then(|n| n.parse::<u64>().ok())
                .is_none_or(|n| n >= CRASH_MESSAGES)
        })
        .count();
    assert_eq!(unknown, 0, "{}: B got ids the child never sent", A::NAME);
    let duplicates = second_ids.keys().filter(|id| first_ids.contains(*id)).count();
    // Uncertain at the kill: written and unconfirmed (two windows of 512), plus releases of
    // confirmed messages not yet written to the spool when the kill came.
    assert!(
        duplicates <= 2 * 512 + 512,
        "{}: {duplicates} duplicates",
        A::NAME
    );
    CrashRound {
        policy: policy_name,
        outage,
        kill_at,
        durable,
        first_server: first_ids.len(),
        replayed,
        duplicates,
    }
}

/// Ten crash rounds at different moments (seeded, so a failure replays), cycling through
/// the sync policies, two of them during a server outage.
pub fn crash_rounds<A: Adapter>(child_test: &str) {
    let seed = std::env::var("UFSOCK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("{}: crash rounds with UFSOCK_CRASH_SEED={seed}", A::NAME);
    let started = Instant::now();
    for round in 0..10u32 {
        let policy_name = ["group", "every", "never", "group", "batched"][round as usize % 5];
        // Mid-stream, counted in messages: a sync per send is slow (a few thousand a second
        // in a debug build), so its kills come earlier in the stream. The child goes on
        // sending while the kill is on its way: far from the end of the stream.
        let most = if policy_name == "every" {
            2_000
        } else {
            CRASH_MESSAGES / 2
        };
        let kill_at = rng.u64(50..most);
        let outage = round % 5 == 3;
        let r = A::block_on(crash_round::<A>(child_test, policy_name, kill_at, outage));
        eprintln!("{}: round {round}: {r:?}", A::NAME);
    }
    eprintln!("{}: 10 crash rounds in {:?}", A::NAME, started.elapsed());
}
