//! The shutdown matrix (issue 21): every way a client can end, on both runtimes. Each row
//! checks that every message the client accepted ends confirmed, handed back by `close`, or
//! named in an ERROR line with its count (captured with the test subscriber, by the client's
//! URL) — never silent — and that nothing hangs (each row runs on its own thread, bounded).
//!
//! These rows own their runtimes (they stop them), so they are not bodies of the
//! [`conformance!`](crate::conformance) suite. [`Ends`] names a runtime that can be built and
//! stopped: Tokio's `Runtime`, and for smol a `smol::Executor` the test owns and runs on its
//! own threads — smol's global executor (what `usageflow_socket_smol::Smol` spawns on) never
//! stops, so a stoppable executor of the same parts (async-executor, async-io's timers and
//! sockets) is the closest a smol service gets to "the runtime stops".
//!
//! The messages are at least once, to a server that never answers pings: they stay written
//! and unconfirmed until the client ends, so each row sees them in its end.

use std::future::Future;
use std::io;
use std::sync::{mpsc, Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use usageflow_socket_server::ServerThread;

use crate::*;

/// Messages each row sends.
pub const MESSAGES: u64 = 20;

/// A runtime that a test can build, run futures on, and stop by dropping its owner.
pub trait Ends: 'static {
    /// For messages.
    const NAME: &'static str;
    /// The client's runtime.
    type Runtime: Runtime + Clone;
    /// The runtime itself: dropping it stops it (its tasks are dropped).
    type Owner: Send + 'static;

    /// A runtime with two worker threads.
    fn multi_thread() -> Self::Owner;
    /// A runtime whose tasks run only while [`Ends::block_on`] runs on the calling thread.
    fn current_thread() -> Self::Owner;
    /// A runtime that cannot time anything, if this kind of runtime can be built so (Tokio
    /// without `enable_time`); `None` when it cannot (smol's timers always exist).
    fn without_timers() -> Option<Self::Owner>;
    /// The client's handle on `owner`.
    fn runtime(owner: &Self::Owner) -> Self::Runtime;
    /// Runs `f` to completion on `owner`.
    fn block_on<F: Future>(owner: &Self::Owner, f: F) -> F::Output;
}

/// Tokio: `tokio::runtime::Runtime`.
pub struct TokioEnds;

impl Ends for TokioEnds {
    const NAME: &'static str = "tokio";
    type Runtime = usageflow_socket_tokio::Tokio;
    type Owner = tokio::runtime::Runtime;

    fn multi_thread() -> Self::Owner {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn current_thread() -> Self::Owner {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn without_timers() -> Option<Self::Owner> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_io()
            .build()
            .unwrap();
        Some(rt)
    }

    fn runtime(owner: &Self::Owner) -> Self::Runtime {
        usageflow_socket_tokio::Tokio::new(owner.handle().clone())
    }

    fn block_on<F: Future>(owner: &Self::Owner, f: F) -> F::Output {
        owner.block_on(f)
    }
}

/// smol's parts: a `smol::Executor` run by threads of the test (none for "current thread":
/// its tasks run only inside [`Ends::block_on`]).
pub struct SmolEnds;

/// A `smol::Executor` and the threads that run it; dropping it stops the threads, then drops
/// the executor and every task on it.
pub struct SmolOwner {
    executor: Option<Arc<smol::Executor<'static>>>,
    stop: Option<async_channel::Sender<()>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl SmolOwner {
    fn new(threads: usize) -> Self {
        let executor = Arc::new(smol::Executor::new());
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let threads = (0..threads)
            .map(|_| {
                let executor = Arc::clone(&executor);
                let stopped = stopped.clone();
                thread::spawn(move || loop {
                    // A panicking task unwinds out of `run`: keep running the others, as smol's
                    // global executor does.
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        smol::block_on(executor.run(stopped.recv()))
                    }));
                    if run.is_ok() {
                        break;
                    }
                })
            })
            .collect();
        Self {
            executor: Some(executor),
            stop: Some(stop),
            threads,
        }
    }
}

impl Drop for SmolOwner {
    fn drop(&mut self) {
        drop(self.stop.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // The last reference: the executor drops every task it still holds.
        drop(self.executor.take());
    }
}

/// The client's handle on a [`SmolOwner`]'s executor: like a Tokio `Handle`, it does not keep
/// the executor alive, and a task spawned once it is gone is dropped.
#[derive(Clone)]
pub struct SmolExecutor {
    executor: Weak<smol::Executor<'static>>,
}

impl Runtime for SmolExecutor {
    type Tcp = smol::net::TcpStream;

    fn current() -> Result<Self, ClientError> {
        Err(ClientError::InvalidOptions("start it with `start_on`".into()))
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Some(executor) = self.executor.upgrade() {
            executor.spawn(task).detach();
        }
    }

    #[allow(clippy::manual_async_fn, reason = "an async fn would borrow self")]
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        async move {
            smol::Timer::at(deadline).await;
        }
    }

    async fn connect(&self, host: &str, port: u16) -> io::Result<Self::Tcp> {
        let tcp = smol::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

impl Ends for SmolEnds {
    const NAME: &'static str = "smol";
    type Runtime = SmolExecutor;
    type Owner = SmolOwner;

    fn multi_thread() -> Self::Owner {
        SmolOwner::new(2)
    }

    fn current_thread() -> Self::Owner {
        SmolOwner::new(0)
    }

    fn without_timers() -> Option<Self::Owner> {
        None
    }

    fn runtime(owner: &Self::Owner) -> Self::Runtime {
        SmolExecutor {
            executor: Arc::downgrade(owner.executor.as_ref().unwrap()),
        }
    }

    fn block_on<F: Future>(owner: &Self::Owner, f: F) -> F::Output {
        smol::block_on(owner.executor.as_ref().unwrap().run(f))
    }
}

/// A runtime whose timers panic when created, as a Tokio runtime built without timers does,
/// but that does not say so when the client starts: what becomes of a client whose driver
/// task dies.
#[derive(Clone)]
pub struct NoTimers<R>(pub R);

impl<R: Runtime + Clone> Runtime for NoTimers<R> {
    type Tcp = R::Tcp;

    fn current() -> Result<Self, ClientError> {
        R::current().map(NoTimers)
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.0.spawn(task);
    }

    fn sleep_until(&self, _deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        if Instant::now().elapsed() < Duration::MAX {
            panic!("timers are disabled (as on a Tokio runtime built without enable_time)");
        }
        std::future::ready(())
    }

    fn connect(&self, host: &str, port: u16) -> impl Future<Output = io::Result<Self::Tcp>> + Send {
        self.0.connect(host, port)
    }
}

/// Runs `row` on its own thread and fails if it does not finish within `limit`.
pub fn bounded(name: &str, limit: Duration, row: impl FnOnce() + Send + 'static) {
    init_tracing();
    let (done, finished) = mpsc::channel();
    let thread = thread::spawn(move || {
        row();
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => thread.join().unwrap(),
        // The row panicked: report its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name} did not finish within {limit:?}"),
    }
}

/// A server that reads every message and never answers a ping: nothing is ever confirmed.
fn pongless_server() -> ServerThread {
    server_with(|o| o.faults.no_pongs = true)
}

/// One connection, a barrier soon after each message, no pong expected for 20 s, a short drain.
fn matrix_options(url: &str) -> ClientOptions {
    options(
        config(url)
            .pool_size(1)
            .ping_period(Duration::from_secs(5))
            .pong_wait(Duration::from_secs(20))
            .confirm_after(Duration::from_millis(20))
            .close_drain(Duration::from_millis(300)),
    )
}

fn at_least_once() -> SendOptions {
    SendOptions::default().with_delivery(Delivery::AtLeastOnce)
}

/// Sends [`MESSAGES`] messages; returns how many were accepted.
fn send_all<R: Runtime>(client: &Client<R>) -> u64 {
    (0..MESSAGES)
        .filter(|&n| client.send_with(report(n, 50), at_least_once()).is_ok())
        .count() as u64
}

/// Polls `pred` on `runtime`'s timer until it holds, or panics after `limit`.
async fn wait_on<R: Runtime>(runtime: &R, limit: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        runtime
            .sleep_until(Instant::now() + Duration::from_millis(5))
            .await;
    }
}

/// Connects on `runtime`, sends [`MESSAGES`] and waits until they are all written.
async fn connected_and_written<R: Runtime + Clone>(runtime: &R, url: &str) -> Client<R> {
    let client = Client::connect_on(runtime.clone(), matrix_options(url))
        .await
        .unwrap();
    assert!(client.is_connected());
    assert_eq!(send_all(&client), MESSAGES);
    wait_on(runtime, Duration::from_secs(5), "every message written", || {
        client.stats().sends.written == MESSAGES
    })
    .await;
    client
}

/// A pongless server, and a client on a new multi-thread runtime with [`MESSAGES`] written to it.
fn written_on_multi_thread<E: Ends>() -> (ServerThread, String, E::Owner, Client<E::Runtime>) {
    let server = pongless_server();
    let url = server.url();
    let owner = E::multi_thread();
    let runtime = E::runtime(&owner);
    let client = E::block_on(&owner, connected_and_written(&runtime, &url));
    (server, url, owner, client)
}

/// Checks that the `accepted` messages of the client of `url` ended confirmed, handed back, or
/// named in ERROR lines (waiting up to 5 s for the lines of a drain in the background), and
/// that the lines name none too many. Returns the lines' count.
#[track_caller]
fn account(url: &str, accepted: u64, confirmed: u64, handed_back: u64) -> u64 {
    let client = usageflow_socket_core::redact_url(url);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (lines, named) = abandoned(&client);
        let ended = confirmed + handed_back + named;
        assert!(ended <= accepted, "{ended} > {accepted}: {lines:?}");
        if ended == accepted {
            // Nothing more comes later.
            thread::sleep(Duration::from_millis(100));
            assert_eq!(abandoned(&client).1, named, "{lines:?}");
            return named;
        }
        assert!(
            Instant::now() < deadline,
            "{accepted} accepted, {confirmed} confirmed, {handed_back} handed back, {named} named: some went silently ({lines:?})"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The ERROR lines' messages of the client of `url`.
fn error_messages(url: &str) -> Vec<String> {
    abandoned(&usageflow_socket_core::redact_url(url))
        .0
        .into_iter()
        .map(|l| l.message)
        .collect()
}

/// Row 1: a current-thread runtime with `close().await`: everything not confirmed is handed
/// back, nothing is logged.
pub fn current_thread_close<E: Ends>() {
    let server = pongless_server();
    let url = server.url();
    let owner = E::current_thread();
    let runtime = E::runtime(&owner);
    let report = E::block_on(&owner, async {
        let client = connected_and_written(&runtime, &url).await;
        client.close().await
    });
    let handed_back = report.undelivered.len() as u64;
    assert_eq!(handed_back, MESSAGES, "{}", E::NAME);
    assert!(report.undelivered.iter().all(|m| m.written_before));
    let named = account(&url, MESSAGES, report.stats.sends.confirmed, handed_back);
    assert_eq!(named, 0, "{}: handed back, so not logged", E::NAME);
}

/// Row 2: a multi-thread runtime dropped with the client alive: the client refuses new work
/// with a clear error, and when it is dropped it names every message it held.
pub fn runtime_dropped_with_the_client_alive<E: Ends>() {
    // The server lives to the end of the row.
    let (_server, url, owner, client) = written_on_multi_thread::<E>();
    drop(owner);
    assert_eq!(
        client.send(report(99, 10)),
        Err(ClientError::DriverGone),
        "{}",
        E::NAME
    );
    assert_eq!(
        smol::block_on(client.request(policies())).unwrap_err(),
        ClientError::DriverGone
    );
    assert!(matches!(
        smol::block_on(client.flush(Duration::from_secs(1))),
        Err(ClientError::DriverGone)
    ));
    let confirmed = client.stats().sends.confirmed;
    drop(client);
    assert_eq!(account(&url, MESSAGES, confirmed, 0), MESSAGES, "{}", E::NAME);
    assert!(
        error_messages(&url)[0].contains("driver task ended"),
        "{:?}",
        error_messages(&url)
    );
}

/// Row 2b (item 3's `#[tokio::main]` shape): the client dropped, then at once the runtime,
/// in the middle of the close drain: the driver task is dropped, and what the client held is
/// named as it goes.
pub fn client_then_runtime_dropped<E: Ends>() {
    // The server lives to the end of the row.
    let (_server, url, owner, client) = written_on_multi_thread::<E>();
    drop(client);
    drop(owner);
    assert_eq!(account(&url, MESSAGES, 0, 0), MESSAGES, "{}", E::NAME);
}

/// Row 3: the client dropped from a plain thread while its runtime runs: the drain runs in the
/// background, then names what it could not deliver.
pub fn client_dropped_from_a_plain_thread<E: Ends>() {
    // The server lives to the end of the row.
    let (_server, url, owner, client) = written_on_multi_thread::<E>();
    thread::spawn(move || drop(client)).join().unwrap();
    assert_eq!(account(&url, MESSAGES, 0, 0), MESSAGES, "{}", E::NAME);
    assert!(error_messages(&url)[0].contains("dropped without close()"));
    drop(owner);
}

/// Row 4: `close()` abandoned by a timeout shorter than the drain, then the client dropped:
/// the drain ends in the background and names the hand-back nobody took.
pub fn close_abandoned_then_dropped<E: Ends>() {
    let server = pongless_server();
    let url = server.url();
    let owner = E::multi_thread();
    let runtime = E::runtime(&owner);
    E::block_on(&owner, async {
        let client = connected_and_written(&runtime, &url).await;
        {
            let close = std::pin::pin!(client.close());
            let timer = std::pin::pin!(runtime.sleep_until(Instant::now() + Duration::from_millis(50)));
            let abandoned = matches!(
                futures_util::future::select(close, timer).await,
                futures_util::future::Either::Right(_)
            );
            assert!(abandoned, "the drain (300 ms) outlasts the timeout");
        }
        drop(client);
    });
    assert_eq!(account(&url, MESSAGES, 0, 0), MESSAGES, "{}", E::NAME);
    assert!(error_messages(&url)[0].contains("close() was abandoned"));
    drop(owner);
}

/// Row 5: a client started on a runtime that shuts down before its driver task ever runs:
/// `close` returns at once and hands back what was accepted; `connect` on the stopped runtime
/// fails at once.
pub fn runtime_stopped_before_the_driver_ran<E: Ends>() {
    let server = pongless_server();
    let url = server.url();
    let owner = E::current_thread();
    let runtime = E::runtime(&owner);
    let client = Client::start_on(runtime.clone(), matrix_options(&url)).unwrap();
    let accepted = send_all(&client);
    assert_eq!(accepted, MESSAGES);
    drop(owner);
    let report = smol::block_on(client.close());
    assert_eq!(report.undelivered.len() as u64, MESSAGES, "{}", E::NAME);
    assert!(report.undelivered.iter().all(|m| !m.written_before));
    assert_eq!(account(&url, accepted, 0, MESSAGES), 0);
    let error = smol::block_on(Client::connect_on(runtime, matrix_options(&url))).unwrap_err();
    assert_eq!(error, ClientError::DriverGone, "{}", E::NAME);
}

/// Row 6: a runtime without timers. Tokio: refused when the client starts, with a clear
/// error. Both: a runtime whose timers fail only once the driver runs (the closest smol has:
/// its timers always exist) leaves a client that refuses new work with a clear error and
/// accounts for what it had accepted.
pub fn runtime_without_timers<E: Ends>() {
    let server = pongless_server();
    let url = server.url();
    if let Some(owner) = E::without_timers() {
        let runtime = E::runtime(&owner);
        let error = Client::start_on(runtime.clone(), matrix_options(&url)).unwrap_err();
        assert!(
            matches!(&error, ClientError::InvalidOptions(m) if m.contains("no timers")),
            "{}: {error}",
            E::NAME
        );
        let error = smol::block_on(Client::connect_on(runtime, matrix_options(&url))).unwrap_err();
        assert!(matches!(error, ClientError::InvalidOptions(_)));
    }
    let owner = E::multi_thread();
    let runtime = NoTimers(E::runtime(&owner));
    let client = Client::start_on(runtime, matrix_options(&url)).unwrap();
    let mut accepted = send_all(&client);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.send_with(report(100, 10), at_least_once()) {
            Ok(_) => accepted += 1,
            Err(error) => {
                assert_eq!(error, ClientError::DriverGone, "{}", E::NAME);
                break;
            }
        }
        assert!(Instant::now() < deadline, "{}: the client never noticed", E::NAME);
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        smol::block_on(client.request(policies())).unwrap_err(),
        ClientError::DriverGone,
        "{}",
        E::NAME
    );
    let report = smol::block_on(client.close());
    account(
        &url,
        accepted,
        report.stats.sends.confirmed,
        report.undelivered.len() as u64,
    );
    drop(owner);
}

/// The matrix's rows for one [`Ends`], as `#[test]`s in the invoking module.
#[macro_export]
macro_rules! shutdown_matrix {
    ($ends:ty) => {
        $crate::shutdown_matrix!(@rows $ends;
            current_thread_close,
            runtime_dropped_with_the_client_alive,
            client_then_runtime_dropped,
            client_dropped_from_a_plain_thread,
            close_abandoned_then_dropped,
            runtime_stopped_before_the_driver_ran,
            runtime_without_timers,
        );
    };
    (@rows $ends:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::shutdown::bounded(
                    stringify!($name),
                    std::time::Duration::from_secs(20),
                    $crate::shutdown::$name::<$ends>,
                );
            }
        )*
    };
}
