//! The two runtimes `ufsock bench --runtime` can drive: which [`Runtime`] the one client runs
//! on, and how a task yields there; spawning, joining and sleeping are written once over the
//! [`Runtime`]. The workload itself (`cmd_bench`) is written once, over `Client<A::Runtime>`.

use std::future::Future;
use std::time::{Duration, Instant};

use usageflow_socket_client::Runtime;

/// A runtime as the bench sees it: which [`Runtime`] the client runs on, and how a task
/// yields on it. Spawning, joining and sleeping go through the [`Runtime`] itself.
pub(crate) trait Adapter: Send + Sync + 'static {
    /// The runtime's name in reports.
    const NAME: &'static str;
    /// The client's runtime.
    type Runtime: Runtime;

    /// Lets the other ready tasks run, the executor's own way (it shapes the send workload).
    fn yield_now() -> impl Future<Output = ()> + Send;

    /// Spawns every task at once on the current runtime, then waits until all ended.
    fn join_all<F>(tasks: impl IntoIterator<Item = F>) -> impl Future<Output = ()> + Send
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let runtime = Self::Runtime::current().expect("the bench runs within its runtime");
        let ends: Vec<_> = tasks
            .into_iter()
            .map(|task| {
                let (end, ended) = smol::channel::bounded::<()>(1);
                runtime.spawn(async move {
                    task.await;
                    drop(end);
                });
                ended
            })
            .collect();
        // A task's channel closes when it ends (`recv` fails then).
        async move {
            for ended in ends {
                let _ = ended.recv().await;
            }
        }
    }

    /// Sleeps for `duration` on the current runtime's timer.
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
        let runtime = Self::Runtime::current().expect("the bench runs within its runtime");
        let deadline = Instant::now() + duration;
        async move { runtime.sleep_until(deadline).await }
    }
}

/// `usageflow-socket-tokio` on the bench's multi-threaded Tokio runtime.
pub(crate) struct Tokio;

impl Adapter for Tokio {
    const NAME: &'static str = "tokio";
    type Runtime = usageflow_socket_tokio::Tokio;

    fn yield_now() -> impl Future<Output = ()> + Send {
        tokio::task::yield_now()
    }
}

/// `usageflow-socket-smol` on smol's global executor (its threads: see [`smol_threads`]).
pub(crate) struct Smol;

impl Adapter for Smol {
    const NAME: &'static str = "smol";
    type Runtime = usageflow_socket_smol::Smol;

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
