//! The spool over real sockets, on both runtimes: graceful deploy, a full spool, and the
//! crash test (this binary re-executes itself as the child that is killed).

use std::time::Duration;

use usageflow_socket_tests::spool::{
    a_full_spool_refuses_and_recovers, crash_child, crash_rounds, graceful_deploy_loses_nothing,
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
