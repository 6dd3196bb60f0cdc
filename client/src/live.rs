//! [`Live`]: the driver's [`Effects`] on a real [`Runtime`] — connection tasks spawned on it
//! (aborted through `futures` [`AbortHandle`]s), writers fed through `futures-channel` mpsc, waiters
//! completed through `futures-channel` oneshots, events published on the event stream.
//!
//! The connection tasks' reports go to a [`ReportSink`] given to [`Live`] (the client's
//! shared state, one module up): this module knows nothing of what lies above it.

use std::future::Future;
use std::sync::Arc;

use futures_channel::{mpsc, oneshot};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::StreamExt;
use tracing::Instrument;
use usageflow_socket_core::{ConnId, Outcome};

use crate::driver::{ClientEvent, Effects};
use crate::events::EventPublisher;
use crate::handshake::{DialContext, MaybeTls};
use crate::io::{run_connection, run_writer, FlushedWrites, ReportSink, WriteCommand, WriteQueue};
use crate::Runtime;

/// The sending half of a request's oneshot channel.
pub(crate) type Waiter = oneshot::Sender<Outcome>;

/// A connection's writer: its command channel and its task.
pub(crate) struct LiveWriter {
    // Unbounded is safe here only because the core bounds what it hands one connection:
    // at most `max_unflushed_writes` Transmit/Ping outputs are outstanding (not yet reported
    // flushed) per connection, so this queue never holds more than that plus a close.
    //
    // `futures-channel`'s mpsc, not `async-channel`: one write per request goes through it,
    // and its single-waker hand-off costs less than async-channel's concurrent queue plus
    // event-listener notification (callgrind: 634 fewer instructions per request, 22,286 -> 21,652, memset aside).
    commands: mpsc::UnboundedSender<WriteCommand>,
    task: AbortHandle,
    /// Its progress: the stop switch and the count of writes started.
    progress: FlushedWrites,
}

/// The driver's effects on the runtime `R`; connection tasks report to (clones of) `S`.
pub(crate) struct Live<R: Runtime, S> {
    pub(crate) runtime: Arc<R>,
    pub(crate) dial: Arc<DialContext>,
    /// Where every connection task (and its writer) sends its reports.
    pub(crate) reports: S,
    pub(crate) events: EventPublisher,
}

/// Spawns `task` on `runtime`, cancelled by the returned handle (at its next poll: the
/// handle wakes it).
pub(crate) fn spawn_abortable<R: Runtime>(
    runtime: &R,
    task: impl Future<Output = ()> + Send + 'static,
) -> AbortHandle {
    let (handle, registration) = AbortHandle::new_pair();
    runtime.spawn(async move {
        let _ = Abortable::new(task, registration).await;
    });
    handle
}

struct Queue(mpsc::UnboundedReceiver<WriteCommand>);

impl WriteQueue for Queue {
    async fn recv(&mut self) -> Option<WriteCommand> {
        self.0.next().await
    }

    fn try_recv(&mut self) -> Option<WriteCommand> {
        self.0.try_recv().ok()
    }
}

impl<R: Runtime, S: ReportSink<LiveWriter> + Clone + 'static> Effects for Live<R, S> {
    type Waiter = Waiter;
    type Task = AbortHandle;
    type Writer = LiveWriter;

    fn dial(&mut self, conn: ConnId) -> AbortHandle {
        let ctx = Arc::clone(&self.dial);
        let runtime = Arc::clone(&self.runtime);
        let reports = self.reports.clone();
        // The connection's span, carried by its reader and writer tasks; the dial records
        // the address it reached as `peer`.
        let span = tracing::info_span!(
            "usageflow_connection",
            slot = conn.slot,
            generation = conn.generation,
            peer = tracing::field::Empty,
        );
        let task = async move {
            let writer_reports = reports.clone();
            let yields = runtime.writer_yields();
            let spawner = Arc::clone(&runtime);
            let spawn_writer = move |conn: ConnId,
                                     sink: async_tungstenite::WebSocketSender<MaybeTls<R::Tcp>>,
                                     flushed: FlushedWrites| {
                let (commands, queue) = mpsc::unbounded();
                let progress = flushed.clone();
                let writer = run_writer(conn, sink, Queue(queue), flushed, writer_reports, yields);
                let task = spawn_abortable(&*spawner, writer.instrument(tracing::Span::current()));
                LiveWriter {
                    commands,
                    task,
                    progress,
                }
            };
            let max_frame_size = ctx.config().max_frame_size();
            run_connection(conn, ctx.dial(&*runtime), max_frame_size, spawn_writer, reports).await;
        };
        spawn_abortable(&*self.runtime, task.instrument(span))
    }

    fn abort(&mut self, task: AbortHandle) {
        task.abort();
    }

    fn write(&mut self, writer: &LiveWriter, command: WriteCommand) -> bool {
        writer.commands.unbounded_send(command).is_ok()
    }

    fn abort_writer(&mut self, writer: LiveWriter) {
        writer.task.abort();
    }

    fn stop_writes(&mut self, writer: &LiveWriter) -> Option<u64> {
        Some(writer.progress.stop())
    }

    fn publish(&mut self, event: ClientEvent) {
        self.events.publish(event);
    }
}
