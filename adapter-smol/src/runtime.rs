//! The smol dialect of the shared driver: channels, task handles, the dial, the driver task.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use async_tungstenite::smol::{client_async_tls_with_connector_and_config, ConnectStream};
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use event_listener::Event;
use futures_channel::oneshot;
use futures_rustls::TlsConnector;
use smol::channel::{self, Receiver, Sender};
use smol::future;
use smol::net::TcpStream;
use smol::{Task, Timer};
use usageflow_socket_common::handshake::{connect_error, dial_error, DialContext};
use usageflow_socket_common::{
    run_connection, run_writer, ClientEvent, DirectReports, DriverState, EventPublisher, EventSubscriber,
    FlushedWrites, Runtime, Signals, StopOnExit, Turn, WriteCommand, WriteQueue,
};
use usageflow_socket_core::{ConnId, DialError, Outcome};

/// Most times a writer yields before one flush (see `run_writer`): a yield on smol's
/// executor may wake another executor thread (a futex call), so more than one costs more
/// than it gathers (about 200k req/s with 1 against 134-176k with 8 at concurrency 256).
const COALESCING_YIELDS: u32 = 1;

/// The shared state of a smol client.
pub(crate) type Shared = usageflow_socket_common::Shared<SmolRuntime, SmolSignals>;

/// A connection's writer: its command channel and its task (dropping the task cancels it).
pub(crate) struct SmolWriter {
    // Unbounded is safe here only because the core bounds what it hands one connection:
    // at most `max_unflushed_writes` Transmit/Ping outputs are outstanding (not yet reported
    // flushed) per connection, so this queue never holds more than that plus a close.
    commands: Sender<WriteCommand>,
    task: Task<()>,
}

pub(crate) struct SmolRuntime {
    pub(crate) dial: Arc<DialContext<TlsConnector>>,
    pub(crate) shared: Weak<Shared>,
    pub(crate) events: EventPublisher,
}

struct Queue(Receiver<WriteCommand>);

impl WriteQueue for Queue {
    async fn recv(&mut self) -> Option<WriteCommand> {
        self.0.recv().await.ok()
    }

    fn try_recv(&mut self) -> Option<WriteCommand> {
        self.0.try_recv().ok()
    }
}

type Socket = (WebSocketSender<ConnectStream>, WebSocketReceiver<ConnectStream>);

/// TCP connect, TLS for `wss://`, WebSocket upgrade. No timeout here: the core's handshake
/// deadline cancels this task.
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

impl Runtime for SmolRuntime {
    type Waiter = oneshot::Sender<Outcome>;
    type Task = Task<()>;
    type Writer = SmolWriter;

    fn complete(waiter: Self::Waiter, outcome: Outcome) {
        // The caller may have gone (its future was dropped after the outcome was drawn).
        let _ = waiter.send(outcome);
    }

    fn dial(&mut self, conn: ConnId) -> Task<()> {
        let ctx = Arc::clone(&self.dial);
        let reports = DirectReports::new(Weak::clone(&self.shared));
        smol::spawn(async move {
            let writer_reports = reports.clone();
            let spawn_writer =
                move |conn: ConnId, sink: WebSocketSender<ConnectStream>, flushed: FlushedWrites| {
                    let (commands, queue) = channel::unbounded();
                    let task = smol::spawn(run_writer(
                        conn,
                        sink,
                        Queue(queue),
                        flushed,
                        writer_reports,
                        COALESCING_YIELDS,
                    ));
                    SmolWriter { commands, task }
                };
            let max_frame_size = ctx.config().max_frame_size();
            run_connection(conn, dial(&ctx), max_frame_size, spawn_writer, reports).await;
        })
    }

    fn abort(&mut self, task: Task<()>) {
        drop(task);
    }

    fn write(&mut self, writer: &SmolWriter, command: WriteCommand) -> bool {
        writer.commands.try_send(command).is_ok()
    }

    fn abort_writer(&mut self, writer: SmolWriter) {
        drop(writer.task);
    }

    fn publish(&mut self, event: ClientEvent) {
        self.events.publish(event);
    }
}

/// The driver task's wake-up, the driver state for `connect` and `close`, the event
/// subscriptions.
pub(crate) struct SmolSignals {
    wake: Sender<()>,
    state: Mutex<DriverState>,
    changed: Event,
    pub(crate) events: EventSubscriber,
}

impl SmolSignals {
    /// The signals over the event channel's `events`, and the receiving end of the driver
    /// task's wake-ups.
    pub(crate) fn new(events: EventSubscriber) -> (Self, Receiver<()>) {
        let (wake, wake_rx) = channel::bounded(1);
        let signals = Self {
            wake,
            state: Mutex::new(DriverState::default()),
            changed: Event::new(),
            events,
        };
        (signals, wake_rx)
    }

    fn state(&self) -> DriverState {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Signals for SmolSignals {
    fn wake(&self) {
        // A full channel already holds a wake-up.
        let _ = self.wake.try_send(());
    }

    fn publish(&self, state: DriverState) {
        let mut current = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *current != state {
            *current = state;
            self.changed.notify(usize::MAX);
        }
    }

    async fn wait_for(&self, pred: fn(&DriverState) -> bool) {
        loop {
            if pred(&self.state()) {
                return;
            }
            let listener = self.changed.listen();
            if pred(&self.state()) {
                return;
            }
            listener.await;
        }
    }
}

/// What woke the driver task.
enum Wakeup {
    Woken,
    Fired,
}

/// The driver task: sleeps until the next deadline or a wake-up, handles timeouts; ends when
/// the client is closed and everything finished. Connection tasks feed their reports
/// directly ([`DirectReports`]), so this task is off the request path.
pub(crate) async fn drive(shared: Arc<Shared>, wake: Receiver<()>) {
    let _stop = StopOnExit(Arc::clone(&shared));
    let mut sleep = Timer::never();
    let mut armed: Option<Instant> = None;
    let mut sleeping = false;
    loop {
        let Turn::Sleep(deadline) = shared.turn() else {
            return;
        };
        // Reset the timer only when the deadline changed (or the old one already fired).
        if deadline != armed || (!sleeping && deadline.is_some()) {
            armed = deadline;
            sleeping = false;
            if let Some(at) = deadline {
                sleep.set_at(at);
                sleeping = true;
            }
        }
        // Biased, like the Tokio driver: wake-ups first, then the timer.
        let woken = async {
            let _ = wake.recv().await;
            Wakeup::Woken
        };
        let fired = async {
            if sleeping {
                (&mut sleep).await;
            } else {
                future::pending::<()>().await;
            }
            Wakeup::Fired
        };
        match future::or(woken, fired).await {
            Wakeup::Woken => {}
            Wakeup::Fired => sleeping = false,
        }
    }
}
