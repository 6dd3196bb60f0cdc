//! The smol runtime under test.

use std::future::Future;

use crate::Adapter;

/// `usageflow-socket-smol`: the test body runs under `smol::block_on`, the client's tasks on
/// smol's global executor.
pub struct SmolAdapter;

impl Adapter for SmolAdapter {
    const NAME: &'static str = "smol";
    type Runtime = usageflow_socket_smol::Smol;

    fn block_on<F: Future>(f: F) -> F::Output {
        smol::block_on(f)
    }
}
