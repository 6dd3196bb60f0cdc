//! The two runtimes `ufsock bench --runtime` can drive: which [`Runtime`] the one client runs
//! on, plus the few runtime calls the pooled workload needs (spawn and join tasks, sleep,
//! yield). The workload itself (`cmd_bench`) is written once, over `Client<A::Runtime>`.

use std::future::Future;
use std::time::Duration;

use usageflow_socket_client::Runtime;

/// A runtime as the bench sees it.
pub(crate) trait Adapter: Send + Sync + 'static {
    /// The runtime's name in reports.
    const NAME: &'static str;
    /// The client's runtime.
    type Runtime: Runtime;

    /// Spawns every task at once, then waits until all ended.
    fn join_all<F>(tasks: impl IntoIterator<Item = F>) -> impl Future<Output = ()> + Send
    where
        F: Future<Output = ()> + Send + 'static;
    /// Sleeps for `duration`.
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send;
    /// Lets the other ready tasks run.
    fn yield_now() -> impl Future<Output = ()> + Send;
}

/// `usageflow-socket-tokio` on the bench's multi-threaded Tokio runtime.
pub(crate) struct Tokio;

impl Adapter for Tokio {
    const NAME: &'static str = "tokio";
    type Runtime = usageflow_socket_tokio::Tokio;

    fn join_all<F>(tasks: impl IntoIterator<Item = F>) -> impl Future<Output = ()> + Send
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut set = tokio::task::JoinSet::new();
        for task in tasks {
            set.spawn(task);
        }
        async move { while set.join_next().await.is_some() {} }
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn yield_now() -> impl Future<Output = ()> + Send {
        tokio::task::yield_now()
    }
}

/// `usageflow-socket-smol` on smol's global executor (its threads: see [`smol_threads`]).
pub(crate) struct Smol;

impl Adapter for Smol {
    const NAME: &'static str = "smol";
    type Runtime = usageflow_socket_smol::Smol;

    fn join_all<F>(tasks: impl IntoIterator<Item = F>) -> impl Future<Output = ()> + Send
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let tasks: Vec<smol::Task<()>> = tasks.into_iter().map(smol::spawn).collect();
        async move {
            for task in tasks {
                task.await;
            }
        }
    }

    async fn sleep(duration: Duration) {
        smol::Timer::after(duration).await;
    }

    fn yield_now() -> impl Future<Output = ()> + Send {
        smol::future::yield_now()
    }
}

/// Sizes smol's global executor like the Tokio runtime of `--threads`: that many threads, or
/// with 0 one per core (unless `SMOL_THREADS` says otherwise). smol reads that variable once,
/// when the executor first starts, so this must run before anything is spawned on it, while
/// the process has a single thread.
pub(crate) fn smol_threads(threads: usize) {
    if std::env::var_os("SMOL_THREADS").is_some() && threads == 0 {
        return;
    }
    let n = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    std::env::set_var("SMOL_THREADS", n.to_string());
}
