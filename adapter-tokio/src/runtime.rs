//! The Tokio dialect of the shared driver: channels, task handles, the dial, the driver task.

use std::sync::{Arc, Weak};
use std::time::Instant;

use async_tungstenite::tokio::{client_async_tls_with_connector_and_config, ConnectStream};
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;
use usageflow_socket_common::handshake::{connect_error, dial_error, DialContext};
use usageflow_socket_common::{
    run_connection, run_writer, ClientEvent, DirectReports, DriverState, EventPublisher, EventSubscriber,
    FlushedWrites, Runtime, Signals, StopOnExit, Turn, WriteCommand, WriteQueue,
};
use usageflow_socket_core::{ConnId, DialError, Outcome};

/// Most times a writer yields to the executor to gather more frames before one flush (see
/// `run_writer`). Tokio re-polls a yielding task cheaply, after the other ready tasks: 8 was
/// level with 2 and 4 at concurrency 64 and best at 16 and 256 (lowest server CPU and p99).
const COALESCING_YIELDS: u32 = 8;

/// The shared state of a Tokio client.
pub(crate) type Shared = usageflow_socket_common::Shared<TokioRuntime, TokioSignals>;

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
    pub(crate) dial: Arc<DialContext<TlsConnector>>,
    pub(crate) shared: Weak<Shared>,
    pub(crate) events: EventPublisher,
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
async fn dial(ctx: &DialContext<TlsConnector>) -> Result<Socket, DialError> {
    let (request, target, connector) = ctx.prepare()?;
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| connect_error(&target, &e))?;
    // Small JSON frames: send them now rather than waiting for more.
    let _ = tcp.set_nodelay(true);
    let (socket, _response) =
        client_async_tls_with_connector_and_config(request, tcp, connector, Some(ctx.websocket()))
            .await
            .map_err(dial_error)?;
    Ok(socket.split())
}

impl Runtime for TokioRuntime {
    type Waiter = oneshot::Sender<Outcome>;
    type Task = AbortHandle;
    type Writer = TokioWriter;

    fn complete(waiter: Self::Waiter, outcome: Outcome) {
        // The caller may have gone (its future was dropped after the outcome was drawn).
        let _ = waiter.send(outcome);
    }

    fn dial(&mut self, conn: ConnId) -> AbortHandle {
        let ctx = Arc::clone(&self.dial);
        let reports = DirectReports::new(Weak::clone(&self.shared));
        let handle = self.handle.clone();
        self.handle
            .spawn(async move {
                let writer_reports = reports.clone();
                let spawn_writer =
                    move |conn: ConnId, sink: WebSocketSender<ConnectStream>, flushed: FlushedWrites| {
                        let (commands, queue) = mpsc::unbounded_channel();
                        let task = handle
                            .spawn(run_writer(
                                conn,
                                sink,
                                Queue(queue),
                                flushed,
                                writer_reports,
                                COALESCING_YIELDS,
                            ))
                            .abort_handle();
                        TokioWriter { commands, task }
                    };
                let max_frame_size = ctx.config().max_frame_size();
                run_connection(conn, dial(&ctx), max_frame_size, spawn_writer, reports).await;
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
        self.events.publish(event);
    }
}

/// The driver task's wake-up, the driver state for `connect` and `close`, the event
/// subscriptions.
pub(crate) struct TokioSignals {
    wake: Notify,
    state: watch::Sender<DriverState>,
    pub(crate) events: EventSubscriber,
}

impl TokioSignals {
    /// The signals over the event channel's `events` (the driver task's wake-up is a `Notify`
    /// inside them).
    pub(crate) fn new(events: EventSubscriber) -> Self {
        Self {
            wake: Notify::new(),
            state: watch::Sender::new(DriverState::default()),
            events,
        }
    }
}

impl Signals for TokioSignals {
    fn wake(&self) {
        self.wake.notify_one();
    }

    fn publish(&self, state: DriverState) {
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    async fn wait_for(&self, pred: fn(&DriverState) -> bool) {
        // An error means the driver is gone, which `wait_for` treats as done as well.
        let _ = self.state.subscribe().wait_for(pred).await;
    }
}

/// The driver task: sleeps until the next deadline or a wake-up, handles timeouts; ends when
/// the client is closed and everything finished. Connection tasks feed their reports
/// directly ([`DirectReports`]), so this task is off the request path.
pub(crate) async fn drive(shared: Arc<Shared>) {
    let _stop = StopOnExit(Arc::clone(&shared));
    let sleep = tokio::time::sleep(std::time::Duration::from_secs(86_400));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    let mut sleeping = false;
    loop {
        let Turn::Sleep(deadline) = shared.turn() else {
            return;
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
            () = shared.signals().wake.notified() => {}
            () = &mut sleep, if sleeping => {
                sleeping = false;
            }
        }
    }
}
