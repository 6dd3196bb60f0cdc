//! The Tokio dialect of the shared driver: channels, task handles, the dial, the driver task.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use async_tungstenite::tokio::{client_async_tls_with_connector_and_config, ConnectStream};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;
use usageflow_socket_common::handshake::{connect_error, dial_error, dial_target, upgrade_request};
use usageflow_socket_common::{
    run_connection, run_writer, ClientEvent, Driver, Report, ReportSink, Runtime, WriteCommand, WriteQueue,
};
use usageflow_socket_core::{Config, ConnId, DialError, Outcome};

/// Capacity of the report channel from connection tasks to the driver task. Bounded: a reader
/// that outpaces the driver waits, and TCP pushes back on the server.
const REPORT_CAPACITY: usize = 1024;

/// Most reports handled per lock of the driver, so app commands are not starved.
const REPORT_BATCH: usize = 64;

/// What a dial needs, shared by every dial task.
pub(crate) struct DialContext {
    pub(crate) config: Config,
    pub(crate) tls: TlsConnector,
    pub(crate) websocket: WebSocketConfig,
    pub(crate) user_agent: String,
}

/// A connection's writer: its command channel and its task.
pub(crate) struct TokioWriter {
    // Unbounded is safe here only because the core bounds what it hands one connection:
    // at most `max_unflushed_writes` Transmit/Ping outputs are outstanding (not yet reported
    // flushed) per connection, so this queue never holds more than that plus a close.
    commands: mpsc::UnboundedSender<WriteCommand>,
    task: AbortHandle,
}

pub(crate) struct TokioRuntime {
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) dial: Arc<DialContext>,
    pub(crate) reports: mpsc::Sender<Report<TokioWriter>>,
    pub(crate) events: broadcast::Sender<ClientEvent>,
}

struct ReportTx(mpsc::Sender<Report<TokioWriter>>);

impl ReportSink<TokioWriter> for ReportTx {
    async fn report(&mut self, report: Report<TokioWriter>) -> bool {
        self.0.send(report).await.is_ok()
    }
}

struct Queue(mpsc::UnboundedReceiver<WriteCommand>);

impl WriteQueue for Queue {
    async fn recv(&mut self) -> Option<WriteCommand> {
        self.0.recv().await
    }

    fn try_recv(&mut self) -> Option<WriteCommand> {
        self.0.try_recv().ok()
    }
}

type Socket = (WebSocketSender<ConnectStream>, WebSocketReceiver<ConnectStream>);

/// TCP connect, TLS for `wss://`, WebSocket upgrade. No timeout here: the core's handshake
/// deadline aborts this task.
async fn dial(ctx: &DialContext) -> Result<Socket, DialError> {
    let request = upgrade_request(&ctx.config, &ctx.user_agent)?;
    let target = dial_target(&request)?;
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| connect_error(&target, &e))?;
    // Small JSON frames: send them now rather than waiting for more.
    let _ = tcp.set_nodelay(true);
    let connector = target.tls.then(|| ctx.tls.clone());
    let (socket, _response) =
        client_async_tls_with_connector_and_config(request, tcp, connector, Some(ctx.websocket))
            .await
            .map_err(dial_error)?;
    Ok(socket.split())
}

impl Runtime for TokioRuntime {
    type Waiter = oneshot::Sender<Outcome>;
    type Task = AbortHandle;
    type Writer = TokioWriter;

    fn complete(&mut self, waiter: Self::Waiter, outcome: Outcome) {
        // The caller may have gone (its future was dropped after the outcome was drawn).
        let _ = waiter.send(outcome);
    }

    fn dial(&mut self, conn: ConnId) -> AbortHandle {
        let ctx = Arc::clone(&self.dial);
        let reports = self.reports.clone();
        let handle = self.handle.clone();
        self.handle
            .spawn(async move {
                let writer_reports = reports.clone();
                let spawn_writer = move |conn: ConnId, sink: WebSocketSender<ConnectStream>| {
                    let (commands, queue) = mpsc::unbounded_channel();
                    let task = handle
                        .spawn(run_writer(conn, sink, Queue(queue), ReportTx(writer_reports)))
                        .abort_handle();
                    TokioWriter { commands, task }
                };
                run_connection(conn, dial(&ctx), spawn_writer, ReportTx(reports)).await;
            })
            .abort_handle()
    }

    fn abort(&mut self, task: AbortHandle) {
        task.abort();
    }

    fn write(&mut self, writer: &TokioWriter, command: WriteCommand) -> bool {
        writer.commands.send(command).is_ok()
    }

    fn abort_writer(&mut self, writer: TokioWriter) {
        writer.task.abort();
    }

    fn publish(&mut self, event: ClientEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
}

/// What the driver task tells waiters of `connect` and `close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct DriverState {
    /// Every slot's first dial settled.
    pub(crate) settled: bool,
    /// The driver stopped (closed, or its task ended).
    pub(crate) stopped: bool,
}

/// State shared by the client handles, the request guards and the driver task.
pub(crate) struct Shared {
    driver: Mutex<Driver<TokioRuntime>>,
    wake: Notify,
    pub(crate) state: watch::Sender<DriverState>,
    pub(crate) events: broadcast::Sender<ClientEvent>,
}

impl Shared {
    pub(crate) fn new(driver: Driver<TokioRuntime>, events: broadcast::Sender<ClientEvent>) -> Self {
        Self {
            driver: Mutex::new(driver),
            wake: Notify::new(),
            state: watch::Sender::new(DriverState::default()),
            events,
        }
    }

    /// Locks the driver. Never held across an `.await`. A panic while locked (a bug) does not
    /// make every later call panic too.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Driver<TokioRuntime>> {
        self.driver.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs an application command on the driver, then wakes the driver task if the command
    /// moved the next deadline earlier (or closed the pool).
    pub(crate) fn command<T>(&self, f: impl FnOnce(&mut Driver<TokioRuntime>, Instant) -> T) -> T {
        let (result, wake) = {
            let mut driver = self.lock();
            let result = f(&mut driver, Instant::now());
            (result, driver.needs_wake())
        };
        if wake {
            self.wake.notify_one();
        }
        result
    }

    fn publish_state(&self, state: DriverState) {
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }
}

/// Marks the driver stopped however its task ends (even by a panic), so `close` never hangs.
struct StopOnExit(Arc<Shared>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| {
            s.settled = true;
            s.stopped = true;
        });
    }
}

/// The driver task: feeds reports, sleeps until the next deadline, handles timeouts; ends
/// when the client is closed and everything finished.
pub(crate) async fn drive(shared: Arc<Shared>, mut reports: mpsc::Receiver<Report<TokioWriter>>) {
    let _stop = StopOnExit(Arc::clone(&shared));
    let sleep = tokio::time::sleep(std::time::Duration::from_secs(86_400));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    let mut sleeping = false;
    loop {
        let deadline = {
            let mut driver = shared.lock();
            let now = Instant::now();
            // Trust the clock, not the sleep: handle the deadline only once it really passed.
            if driver.poll_timeout().is_some_and(|t| t <= now) {
                driver.handle_timeout(now);
            }
            let stopped = driver.check_stopped(now);
            let settled = driver.first_dials_settled();
            shared.publish_state(DriverState { settled, stopped });
            if stopped {
                return;
            }
            driver.arm()
        };
        // Reset the sleep only when the deadline changed (or the old sleep already fired).
        if deadline != armed || (!sleeping && deadline.is_some()) {
            armed = deadline;
            sleeping = false;
            if let Some(at) = deadline {
                sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                sleeping = true;
            }
        }
        tokio::select! {
            biased;
            report = reports.recv() => {
                // The runtime holds a sender for the driver's whole life: `None` cannot happen.
                let Some(report) = report else { return };
                let mut driver = shared.lock();
                driver.handle_report(Instant::now(), report);
                for _ in 1..REPORT_BATCH {
                    match reports.try_recv() {
                        Ok(report) => driver.handle_report(Instant::now(), report),
                        Err(_) => break,
                    }
                }
            }
            () = shared.wake.notified() => {}
            () = &mut sleep, if sleeping => {
                sleeping = false;
            }
        }
    }
}

/// The channel pair of a new client's reports.
pub(crate) fn report_channel() -> (
    mpsc::Sender<Report<TokioWriter>>,
    mpsc::Receiver<Report<TokioWriter>>,
) {
    mpsc::channel(REPORT_CAPACITY)
}
