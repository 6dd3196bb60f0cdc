//! The spool over real sockets, on both runtimes: graceful deploy, a full spool, and the
//! crash test (this binary re-executes itself as the child that is killed).

use std::time::Duration;

use usageflow_socket_tests::spool::{
    a_full_spool_refuses_and_recovers, a_sent_message_is_on_file_when_send_returns, crash_child,
    crash_rounds, graceful_deploy_loses_nothing,
};
use usageflow_socket_tests::{run, run_within, SmolAdapter, TokioAdapter};

/// The crash child (does nothing unless the crash test started this binary as its child).
#[test]
fn crash_child_tokio() {
    crash_child::<TokioAdapter>();
}

/// The crash child on smol.
#[test]
fn crash_child_smol() {
    crash_child::<SmolAdapter>();
}

#[test]
fn crash_tokio() {
    crash_rounds::<TokioAdapter>("crash_child_tokio");
}

#[test]
fn crash_smol() {
    crash_rounds::<SmolAdapter>("crash_child_smol");
}

#[test]
fn on_file_when_send_returns_tokio() {
    run::<TokioAdapter, _>(
        "on_file_when_send_returns",
        a_sent_message_is_on_file_when_send_returns::<TokioAdapter>(),
    );
}

#[test]
fn on_file_when_send_returns_smol() {
    run::<SmolAdapter, _>(
        "on_file_when_send_returns",
        a_sent_message_is_on_file_when_send_returns::<SmolAdapter>(),
    );
}

#[test]
fn graceful_deploy_tokio() {
    run::<TokioAdapter, _>("graceful_deploy", graceful_deploy_loses_nothing::<TokioAdapter>());
}

#[test]
fn graceful_deploy_smol() {
    run::<SmolAdapter, _>("graceful_deploy", graceful_deploy_loses_nothing::<SmolAdapter>());
}

#[test]
fn full_spool_tokio() {
    run_within::<TokioAdapter, _>(
        "full_spool",
        Duration::from_secs(30),
        a_full_spool_refuses_and_recovers::<TokioAdapter>(),
    );
}

#[test]
fn full_spool_smol() {
    run_within::<SmolAdapter, _>(
        "full_spool",
        Duration::from_secs(30),
        a_full_spool_refuses_and_recovers::<SmolAdapter>(),
    );
}

/// Recovery time of a spool of 1,000,000 records through the whole client (the store's
/// recovery plus handing the records to the pool), printed; a measurement, not a timed
/// assertion: `cargo test --release -p usageflow-socket-tests --test spool -- --ignored
/// --nocapture recovery`.
#[test]
#[ignore = "a measurement (about 1 GB of memory, tens of seconds)"]
fn recovery_of_a_million_records() {
    use std::time::Instant;
    use usageflow_socket_client::spool::SpoolOptions;
    use usageflow_socket_tests::spool::{spool_config, spooled, use_allocation, SpoolDir};
    use usageflow_socket_tests::ClientOf;
    const N: u64 = 1_000_000;
    let dir = SpoolDir::new("million");
    let server = usageflow_socket_tests::server();
    let url = server.url();
    server.kill();
    <TokioAdapter as usageflow_socket_tests::Adapter>::block_on(async {
        let options = || {
            spooled(
                spool_config(&url)
                    .outbox_capacity(1_000_000)
                    .max_outbox_bytes(1 << 30)
                    .close_drain(Duration::ZERO),
                SpoolOptions::new(dir.path()).max_bytes(1 << 30),
            )
        };
        let client = ClientOf::<TokioAdapter>::start(options()).expect("start");
        let t = Instant::now();
        for n in 0..N {
            client.send(use_allocation(n)).expect("accepted");
        }
        eprintln!("spooled {N} in {:?}", t.elapsed());
        let report = client.close().await;
        assert_eq!(report.stats.sends.spooled, N);
        drop(client);
        let t = Instant::now();
        let client = ClientOf::<TokioAdapter>::start(options()).expect("reopen");
        let opened = t.elapsed();
        assert_eq!(client.stats().sends.replayed, N);
        eprintln!("recovered and queued {N} records for replay in {opened:?}");
        client.close().await;
    });
}
