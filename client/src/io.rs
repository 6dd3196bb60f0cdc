//! The per-connection loops, written once over `futures` traits: [`run_connection`] (dial,
//! then read) and [`run_writer`]. The client provides the channels ([`ReportSink`],
//! [`WriteQueue`]) and the dial future; these loops hold no timers: every deadline belongs to
//! the core.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Bytes, Message, Utf8Bytes};
use usageflow_socket_core::frame::{self, FrameError, Incoming};
use usageflow_socket_core::{CloseReason, ConnId, DialError, Input};

use crate::handshake::{close_frame_reason, close_reason};

/// Most writes fed before a flush, even while more are queued, so a busy connection still
/// reports progress (and clears the core's write deadline) regularly.
pub(crate) const MAX_WRITES_PER_FLUSH: u64 = 256;

/// A command for a connection's writer task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteCommand {
    /// Write this text frame (an encoded JSON message).
    Text {
        /// The frame.
        frame: String,
        /// Other requests are in flight on this connection, so more frames are likely to be
        /// queued within a scheduler tick: the writer lets other ready tasks run before it
        /// flushes, so they share the syscall. False for a lone request: it goes out at once.
        coalesce: bool,
    },
    /// Write a ping carrying this payload (the core's sequence number: its pong confirms
    /// every message written before it).
    Ping([u8; 16]),
    /// Write a normal close frame (1000) after everything queued before it, then stop.
    Close,
}

/// What a connection's tasks tell the driver: the core's `Input`s, except that a dial's
/// success carries the connection's writer handle and a text frame comes already decoded,
/// plus the end of a graceful close.
#[derive(Debug)]
pub(crate) enum Report<W> {
    /// The dial finished; `writer` is the handle of the spawned writer task.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Its writer.
        writer: W,
    },
    /// A text frame arrived, already decoded by the reader (outside the driver's lock).
    Frame {
        /// The connection.
        conn: ConnId,
        /// The decoded frame, or why it is skipped.
        frame: Result<Incoming, FrameError>,
    },
    /// Any other I/O result, in the core's own terms: a failed dial, a binary frame, a pong,
    /// flushed writes, a failed write, the connection's end.
    Io(Input<'static>),
    /// A pong arrived, with its application data (owned: a report outlives the read).
    Pong {
        /// The connection.
        conn: ConnId,
        /// The pong's data.
        payload: Bytes,
    },
    /// A graceful close frame was written and flushed.
    CloseWritten {
        /// The connection.
        conn: ConnId,
    },
}

/// The sending side of the driver's report channel. It should be bounded: a reader that
/// outpaces the driver then waits, and TCP pushes back on the server.
pub(crate) trait ReportSink<W>: Send {
    /// Delivers a report; `false` when the driver is gone (the task should end).
    fn report(&mut self, report: Report<W>) -> impl Future<Output = bool> + Send;

    /// Delivers every report of `batch` in order (leaving it empty); `false` when the driver
    /// is gone. A sink that can take them in one go (one lock for a whole read) should.
    fn report_all(&mut self, batch: &mut Vec<Report<W>>) -> impl Future<Output = bool> + Send
    where
        W: Send,
    {
        async move {
            for report in batch.drain(..) {
                if !self.report(report).await {
                    return false;
                }
            }
            true
        }
    }
}

/// The receiving side of a writer's command channel.
pub(crate) trait WriteQueue: Send {
    /// The next command; `None` when the connection handle was dropped.
    fn recv(&mut self) -> impl Future<Output = Option<WriteCommand>> + Send;
    /// The next command if one is queued now.
    fn try_recv(&mut self) -> Option<WriteCommand>;
}

/// A connection's task: runs `dial`; on failure reports `Input::ConnectFailed`; on success
/// hands the sink to `spawn_writer`, reports [`Report::Connected`] with the writer handle, and
/// then reads until the stream ends (see [`run_reader`]). The report of `Connected` precedes
/// every report of the reader, because both go through the same channel from this task.
pub(crate) async fn run_connection<D, Si, St, W, Sp, R>(
    conn: ConnId,
    dial: D,
    max_frame_size: usize,
    spawn_writer: Sp,
    mut reports: R,
) where
    D: Future<Output = Result<(Si, St), DialError>>,
    Sp: FnOnce(ConnId, Si, FlushedWrites) -> W,
    St: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    R: ReportSink<W>,
    W: Send,
{
    match dial.await {
        Err(error) => {
            reports
                .report(Report::Io(Input::ConnectFailed { conn, error }))
                .await;
        }
        Ok((sink, stream)) => {
            let flushed = FlushedWrites::default();
            let writer = spawn_writer(conn, sink, flushed.clone());
            if reports.report(Report::Connected { conn, writer }).await {
                run_reader(conn, stream, max_frame_size, flushed, reports).await;
            }
        }
    }
}

/// A connection's write progress, shared by its writer, its reader and the driver:
///
/// - the number of writes flushed: when the connection ends, the reader reports the writer's
///   last count before the end itself, so writes that did reach the socket are never taken
///   for unflushed because two tasks raced;
/// - the number of writes started (handed to the socket), and a stop switch: when the pool
///   drops the connection, the driver stops the writer and learns which writes never
///   started, so their messages go out again elsewhere without any risk of a duplicate
///   ([`Input::Unwritten`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct FlushedWrites(Arc<Progress>);

#[derive(Debug, Default)]
pub(crate) struct Progress {
    flushed: AtomicU64,
    started: AtomicU64,
    stopped: AtomicBool,
}

impl FlushedWrites {
    fn set(&self, writes: u64) {
        self.0.flushed.store(writes, Ordering::Release);
    }

    fn get(&self) -> u64 {
        self.0.flushed.load(Ordering::Acquire)
    }

    /// The writer is about to start write number `n`: false when it must not (stopped).
    /// The count is raised before the switch is read, and [`FlushedWrites::stop`] sets the
    /// switch before it reads the count, so a write is either counted as started or never
    /// made (sequentially consistent on both sides).
    fn start(&self, n: u64) -> bool {
        self.0.started.store(n, Ordering::SeqCst);
        !self.0.stopped.load(Ordering::SeqCst)
    }

    /// Stops the writer: it starts no write from now on. Returns the number of the first
    /// write it never started.
    pub(crate) fn stop(&self) -> u64 {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.started.load(Ordering::SeqCst) + 1
    }
}

/// Most frames a reader hands the driver in one report batch (one lock).
pub(crate) const MAX_FRAMES_PER_BATCH: usize = 64;

/// Most bytes of frames a reader gathers in one batch before handing it over: a batch holds
/// at most this plus one frame (of up to the socket layer's limit), not 64 frames of that
/// limit each (64 MiB per connection with the default 1 MiB `max_frame_size`).
pub(crate) const MAX_BYTES_PER_BATCH: usize = 256 << 10;

/// Reads frames and reports them. Every frame the socket has already delivered (up to
/// [`MAX_FRAMES_PER_BATCH`] frames or [`MAX_BYTES_PER_BATCH`] bytes) is decoded and handed
/// over in one batch, so a burst of replies costs one lock, not one each. Pings are answered by tungstenite itself and reported as
/// signs of life. The first close
/// frame, read error or end of stream is reported once as `Input::Closed`, preceded by the
/// writer's final `Input::Flushed` count; after a close frame the loop keeps reading so
/// tungstenite can finish the close handshake.
pub(crate) async fn run_reader<St, W, R>(
    conn: ConnId,
    mut stream: St,
    max_frame_size: usize,
    flushed: FlushedWrites,
    mut reports: R,
) where
    St: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    R: ReportSink<W>,
    W: Send,
{
    let mut closed = false;
    let mut batch: Vec<Report<W>> = Vec::new();
    'read: while let Some(first) = stream.next().await {
        let mut item = Some(first);
        let mut bytes = 0usize;
        // Take every item already delivered, without waiting, until the batch is full.
        while let Some(next) = item.take() {
            bytes += match &next {
                Ok(message) => message.len(),
                Err(_) => 0,
            };
            match read_item(conn, next, max_frame_size) {
                Read::Report(report) => batch.push(report),
                Read::Skip => {}
                Read::End { reason, last } => {
                    // What came before the end is reported first, then the end (once).
                    if !reports.report_all(&mut batch).await {
                        return;
                    }
                    if !closed {
                        closed = true;
                        if !report_end(conn, &flushed, &mut reports, reason).await {
                            return;
                        }
                    }
                    if last {
                        return;
                    }
                    continue 'read;
                }
            }
            if batch.len() < MAX_FRAMES_PER_BATCH && bytes < MAX_BYTES_PER_BATCH {
                item = ready_now(&mut stream).await;
            }
        }
        if !reports.report_all(&mut batch).await {
            return;
        }
    }
    if !closed {
        report_end(conn, &flushed, &mut reports, CloseReason::Eof).await;
    }
}

/// What the reader does with one item of the stream.
enum Read<W> {
    /// Hand this report to the driver.
    Report(Report<W>),
    /// Nothing to report (a ping, which tungstenite answers, or a raw frame).
    Skip,
    /// The connection ends: a close frame (`last` false: keep reading so tungstenite can
    /// finish the close handshake) or a read error (`last`: stop).
    End {
        /// Why.
        reason: CloseReason,
        /// Whether nothing more can be read.
        last: bool,
    },
}

/// Turns one stream item into what the reader does with it; text frames are decoded here,
/// outside the driver's lock.
fn read_item<W>(conn: ConnId, item: Result<Message, tungstenite::Error>, max_frame_size: usize) -> Read<W> {
    match item {
        Ok(Message::Text(text)) => Read::Report(Report::Frame {
            conn,
            frame: frame::decode(text.as_str(), max_frame_size),
        }),
        Ok(Message::Binary(data)) => Read::Report(Report::Io(Input::Binary {
            conn,
            len: data.len(),
        })),
        Ok(Message::Pong(payload)) => Read::Report(Report::Pong { conn, payload }),
        // tungstenite answers it; the core counts it as a sign of life, like any frame.
        Ok(Message::Ping(_)) => Read::Report(Report::Io(Input::Ping { conn })),
        Ok(Message::Frame(_)) => Read::Skip,
        Ok(Message::Close(frame)) => Read::End {
            reason: close_frame_reason(frame),
            last: false,
        },
        Err(error) => Read::End {
            reason: close_reason(error),
            last: true,
        },
    }
}

/// The stream's next item if it is ready now, without waiting. At the end of the stream
/// (`None`) it says `None` too: the reader's next wait sees the end again.
async fn ready_now<St: Stream + Unpin>(stream: &mut St) -> Option<St::Item> {
    std::future::poll_fn(|cx| match stream.poll_next_unpin(cx) {
        Poll::Ready(item) => Poll::Ready(item),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Reports a connection's end, preceded by the writer's last flushed count.
async fn report_end<W, R: ReportSink<W>>(
    conn: ConnId,
    flushed: &FlushedWrites,
    reports: &mut R,
    reason: CloseReason,
) -> bool {
    let writes = flushed.get();
    if writes > 0 && !reports.report(Report::Io(Input::Flushed { conn, writes })).await {
        return false;
    }
    reports.report(Report::Io(Input::Closed { conn, reason })).await
}

fn write_failed<W>(conn: ConnId, error: tungstenite::Error) -> Report<W> {
    Report::Io(Input::WriteFailed {
        conn,
        error: error.to_string(),
    })
}

/// Yields to the executor once, so other ready tasks can queue more writes before a flush.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The writer loop: feeds queued commands to the sink, flushes when the queue is empty (or
/// after [`MAX_WRITES_PER_FLUSH`] writes), then reports `Input::Flushed` with the total
/// number of writes flushed so far. A failure is reported as `Input::WriteFailed` and ends
/// the loop; [`WriteCommand::Close`] writes a close frame 1000 after everything before it,
/// reports [`Report::CloseWritten`] and ends the loop.
///
/// Coalescing: under load (a frame marked `coalesce`, or the last batch held more than one
/// write) the writer yields to the executor, up to `max_yields` times while the queue stays
/// empty, before flushing, so frames queued by other tasks in the meantime share the
/// syscall; a lone write (light load) is flushed at once, keeping latency minimal. The
/// budget is the runtime's ([`Runtime::writer_yields`](crate::Runtime::writer_yields)),
/// because it depends on what a yield costs on its executor.
pub(crate) async fn run_writer<Si, Q, W, R>(
    conn: ConnId,
    mut sink: Si,
    mut queue: Q,
    shared_flushed: FlushedWrites,
    mut reports: R,
    max_yields: u32,
) where
    Si: Sink<Message, Error = tungstenite::Error> + Unpin,
    Q: WriteQueue,
    R: ReportSink<W>,
{
    let mut flushed: u64 = 0;
    let mut busy = false;
    while let Some(first) = queue.recv().await {
        let mut fed: u64 = 0;
        let mut next = Some(first);
        let mut close = false;
        let mut yields = 0;
        let mut gather = false;
        while let Some(command) = next.take() {
            let message = match command {
                WriteCommand::Text { frame, coalesce } => {
                    gather |= coalesce;
                    Message::Text(frame.into())
                }
                WriteCommand::Ping(payload) => Message::Ping(Bytes::copy_from_slice(&payload)),
                WriteCommand::Close => {
                    close = true;
                    break;
                }
            };
            if !shared_flushed.start(flushed + fed + 1) {
                // The pool dropped this connection: nothing more goes out on it.
                return;
            }
            if let Err(error) = sink.feed(message).await {
                reports.report(write_failed(conn, error)).await;
                return;
            }
            fed += 1;
            if fed < MAX_WRITES_PER_FLUSH {
                next = queue.try_recv();
                if gather || busy || fed > 1 {
                    while next.is_none() && yields < max_yields {
                        yields += 1;
                        YieldOnce(false).await;
                        next = queue.try_recv();
                    }
                }
            }
        }
        busy = fed > 1;
        if close {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: Utf8Bytes::default(),
            };
            let report = match sink.send(Message::Close(Some(frame))).await {
                Ok(()) => Report::CloseWritten { conn },
                Err(error) => write_failed(conn, error),
            };
            reports.report(report).await;
            return;
        }
        if let Err(error) = sink.flush().await {
            reports.report(write_failed(conn, error)).await;
            return;
        }
        flushed += fed;
        shared_flushed.set(flushed);
        if !reports
            .report(Report::Io(Input::Flushed {
                conn,
                writes: flushed,
            }))
            .await
        {
            return;
        }
    }
}

/// Runs a closure when dropped unless disarmed: the "cancel the request if its future is
/// dropped" guard. The closure typically locks the driver, calls [`crate::Driver::cancel`]
/// and wakes the driver task.
#[must_use = "the guard cancels on drop; keep it alive while the request waits"]
pub(crate) struct CancelOnDrop<F: FnOnce()> {
    on_drop: Option<F>,
}

impl<F: FnOnce()> CancelOnDrop<F> {
    /// A guard that runs `on_drop` unless [`CancelOnDrop::disarm`] is called first.
    pub(crate) fn new(on_drop: F) -> Self {
        Self {
            on_drop: Some(on_drop),
        }
    }

    /// The request completed: do nothing on drop.
    pub(crate) fn disarm(mut self) {
        self.on_drop = None;
    }
}

impl<F: FnOnce()> Drop for CancelOnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the size (frames, bytes) of every batch handed over.
    #[derive(Clone, Default)]
    struct Batches(Arc<std::sync::Mutex<Vec<(usize, usize)>>>);

    impl ReportSink<()> for Batches {
        async fn report(&mut self, _report: Report<()>) -> bool {
            true
        }

        async fn report_all(&mut self, batch: &mut Vec<Report<()>>) -> bool {
            let bytes = batch
                .iter()
                .map(|r| match r {
                    Report::Frame { frame: Ok(f), .. } => f.text_len(),
                    _ => 0,
                })
                .sum();
            if !batch.is_empty() {
                self.0.lock().unwrap().push((batch.len(), bytes));
            }
            batch.clear();
            true
        }
    }

    fn text(len: usize) -> Result<Message, tungstenite::Error> {
        let pad = "x".repeat(len.saturating_sub(40));
        Ok(Message::text(format!(r#"{{"type":"push","payload":"{pad}"}}"#)))
    }

    /// The batches (frames, bytes) a reader hands over for `count` frames of `len` bytes
    /// already delivered.
    fn batches(count: usize, len: usize) -> Vec<(usize, usize)> {
        let conn = ConnId {
            slot: 0,
            generation: 0,
        };
        let frames: Vec<_> = (0..count).map(|_| text(len)).collect();
        let sink = Batches::default();
        let stream = futures_util::stream::iter(frames);
        smol::block_on(run_reader(
            conn,
            stream,
            1 << 20,
            FlushedWrites::default(),
            sink.clone(),
        ));
        let recorded = sink.0.lock().unwrap().clone();
        recorded
    }

    /// Issue 21 item 12: a flood of large frames already delivered is handed over in batches
    /// bounded in bytes (at most one frame past the bound), not 64 frames at a time.
    #[test]
    fn a_read_batch_is_bounded_by_bytes_as_well_as_count() {
        let large = batches(40, 100 << 10);
        assert_eq!(large.iter().map(|b| b.0).sum::<usize>(), 40, "{large:?}");
        for &(count, bytes) in &large {
            assert!(
                bytes < MAX_BYTES_PER_BATCH + (100 << 10) && count <= 3,
                "a batch of {count} frames, {bytes} bytes: {large:?}"
            );
        }
        // Small frames still go many to a batch (one lock for a burst of replies).
        let counts: Vec<usize> = batches(128, 100).iter().map(|b| b.0).collect();
        assert_eq!(counts, vec![64, 64]);
    }
}
