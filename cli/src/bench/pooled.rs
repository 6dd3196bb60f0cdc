//! The pooled client's runs, on either runtime: `concurrency` tasks sharing one client, for
//! requests (each timed) or fire-and-forget sends (the clock stops when they arrived). The
//! workload is written once, over the one `Client<A::Runtime>`; the [`Adapter`] shim only
//! names the runtime and how a task yields there (spawning, joining and sleeping go through
//! the [`Runtime`] itself).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use usageflow_socket_client::{Client, Config, Delivery, Runtime, SendOptions, UsageFlowApi};

use crate::bench::measure::{within, Measured, RunCtx, Usage};
use crate::bench::report::{latency, Errors};
use crate::bench::workload::{request_message, send_message, Chunks, Workload};
use crate::shared::error_kind;

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

/// The pooled client's run, on adapter `A`.
pub(crate) async fn measure_pooled<A: Adapter>(
    ctx: &RunCtx<'_>,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let config = Config::builder(&ctx.target.url, &ctx.target.key)
        .pool_size(ctx.pool)
        .request_timeout(ctx.request_timeout)
        .build()?;
    // A fresh spool directory per run, so no run replays another's records.
    let spool_dir = ctx
        .spool
        .map(|dir| dir.join(format!("run-{}-{}", std::process::id(), t0_nanos())));
    let mut options = ctx.target.client_options_builder(config);
    if let Some(dir) = &spool_dir {
        options = options.spool(
            usageflow_socket_client::spool::SpoolOptions::new(dir)
                .write_through(ctx.spool_write_through)
                .sync(ctx.spool_sync),
        );
    }
    let client = Client::<A::Runtime>::connect(options.build()).await?;
    let _remove = spool_dir.map(RemoveDir);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.stats().open_connections < u32::from(ctx.pool) {
        if Instant::now() >= deadline {
            client.close().await;
            return Err(format!(
                "only {} of {} connections opened",
                client.stats().open_connections,
                ctx.pool
            )
            .into());
        }
        A::sleep(Duration::from_millis(5)).await;
    }
    let progress = ctx.progress();
    let before = Usage::now();
    let t0 = Instant::now();
    if !within(A::sleep(ctx.limit), pooled::<A>(&client, ctx)).await {
        ctx.errors.add("run_time_limit", 1);
    }
    let elapsed = t0.elapsed();
    let after = Usage::now();
    progress.finish();
    // Outside the measurement: let the last barriers confirm what was written, so the
    // stats show every message in a final state.
    let _ = client.flush(Duration::from_secs(5)).await;
    let stats = client.stats();
    client.close().await;
    Ok(Measured {
        before,
        after,
        elapsed,
        stats: Some(stats),
    })
}

/// Nanoseconds since the Unix epoch (a run's spool directory name).
fn t0_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Removes a bench run's spool directory when the run ends.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Most fire-and-forget messages a send task lets wait in the outbox before pausing, so a
/// bench never overruns it (10,000 by default; 256 tasks may add 8 each before they look).
const SEND_BACKLOG: usize = 4096;

/// Shared state of the pooled workload's tasks.
struct Tickets {
    total: u64,
    issued: AtomicU64,
    /// Sends the client accepted.
    accepted: AtomicU64,
    done: Arc<AtomicU64>,
    errors: Arc<Errors>,
}

impl Tickets {
    /// Draws the next operation; false once `total` were drawn.
    fn draw(&self) -> bool {
        self.issued.fetch_add(1, Relaxed) < self.total
    }
}

/// The pooled workload: `concurrency` tasks on one client until `requests` operations.
async fn pooled<A: Adapter>(client: &Client<A::Runtime>, ctx: &RunCtx<'_>) {
    let tickets = Arc::new(Tickets {
        total: ctx.requests,
        issued: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        done: Arc::clone(&ctx.done),
        errors: Arc::clone(&ctx.errors),
    });
    let tasks = (0..ctx.concurrency).map(|_| (client.clone(), Arc::clone(&tickets)));
    match ctx.workload {
        Workload::Request => A::join_all(tasks.map(|(c, t)| request_task(c, t))).await,
        Workload::Send => {
            let wait = ctx.wait_for_room;
            let options = if ctx.at_least_once {
                SendOptions::default().with_delivery(Delivery::AtLeastOnce)
            } else {
                SendOptions::default()
            };
            A::join_all(tasks.map(|(c, t)| send_task::<A>(c, t, wait, options))).await
        }
    }
    if ctx.workload == Workload::Send {
        // The clock stops when the messages arrived: counted by the embedded server, or else
        // flushed by the client.
        let accepted = tickets.accepted.load(Relaxed);
        loop {
            let arrived = match (&ctx.target.server, ctx.server_base) {
                (Some(server), Some(base)) => {
                    server.counters().fire_and_forget_total().saturating_sub(base) >= accepted
                }
                _ => {
                    let s = client.stats().sends;
                    s.queued + s.written == 0
                }
            };
            if arrived {
                break;
            }
            A::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// One task of the request mode: requests one after another, timing each.
async fn request_task<C: UsageFlowApi>(client: C, tickets: Arc<Tickets>) {
    while tickets.draw() {
        let t0 = Instant::now();
        match client.request(request_message()).await {
            Ok(_) => latency::record(t0.elapsed()),
            Err(e) => tickets.errors.add(error_kind(&e), 1),
        }
        tickets.done.fetch_add(1, Relaxed);
    }
}

/// The pooled send mode times one `send()` call in this many.
const SEND_LATENCY_SAMPLE: u64 = 16;

/// One task of the send mode: sends that never wait, timing one `send()` call in
/// [`SEND_LATENCY_SAMPLE`]. Its counts reach the shared counters once every 64 sends, when it
/// pauses anyway.
///
/// With `wait_for_room`, each send waits for room (`send_when_room`, up to 10 s) instead:
/// the client's own backpressure replaces the backlog pause.
async fn send_task<A: Adapter>(
    client: Client<A::Runtime>,
    tickets: Arc<Tickets>,
    wait_for_room: bool,
    options: SendOptions,
) {
    let mut chunks = Chunks::new(&tickets.issued, tickets.total);
    let mut n: u64 = 0;
    let mut accepted: u64 = 0;
    while chunks.draw() {
        let message = send_message();
        // Timing every call would add two clock reads and a histogram update to a ~1 µs
        // call (raw's sends are not timed at all): time one in `SEND_LATENCY_SAMPLE`.
        let t0 = (n % SEND_LATENCY_SAMPLE == 0).then(Instant::now);
        let result = if wait_for_room {
            client
                .send_when_room(message, options, Duration::from_secs(10))
                .await
                .map(drop)
        } else {
            client.send_with(message, options).map(drop)
        };
        match result {
            Ok(()) => {
                if let Some(t0) = t0 {
                    latency::record(t0.elapsed());
                }
                accepted += 1;
            }
            Err(e) => tickets.errors.add(error_kind(&e), 1),
        }
        n += 1;
        // Every few sends, keep the outbox from overrunning (each task may add this many
        // before it looks again, so the pause leaves room for all of them), so the run
        // measures throughput, not the outbox; what awaits confirmation is bounded by the
        // windows.
        if !wait_for_room && n % 8 == 0 {
            while client.outbox_len() >= SEND_BACKLOG {
                A::sleep(Duration::from_millis(1)).await;
            }
        }
        // Every 64 sends let the writers run.
        if n % 64 == 0 {
            tickets.accepted.fetch_add(accepted, Relaxed);
            tickets.done.fetch_add(64, Relaxed);
            accepted = 0;
            A::yield_now().await;
        }
    }
    tickets.accepted.fetch_add(accepted, Relaxed);
    tickets.done.fetch_add(n % 64, Relaxed);
}
