//! The Tokio runtime under test.

use std::future::Future;

use crate::Adapter;

/// `usageflow-socket-tokio` on a two-worker multi-thread runtime.
pub struct TokioAdapter;

impl Adapter for TokioAdapter {
    const NAME: &'static str = "tokio";
    type Runtime = usageflow_socket_tokio::Tokio;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a Tokio runtime")
            .block_on(f)
    }
}
