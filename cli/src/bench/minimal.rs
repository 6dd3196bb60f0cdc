//! The client `ufsock bench --mode minimal` measures: the least a request client must do
//! beside the bare client of `--mode raw`, and nothing else. Every request is its own future
//! that waits for its reply, and replies are matched by id (decoded with the same decoder as
//! the pooled client; the ids are UUID-sized, from a counter like raw's). It has no core, no timers, no reconnection, no selection rule (requests
//! go round-robin), no pool-wide lock (each connection has its own id map). Its writers gather
//! frames before a flush the way the pooled client's do.
//!
//! It answers a question the raw baseline cannot: how much of the pooled client's distance to
//! raw any correlating client pays, and how much is the pool's own. Plain `ws://` only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use usageflow_socket_core::frame;

use crate::bench::raw::{raw_id, RawRun, RawSocket};
use crate::bench::report::latency;
use crate::bench::workload::request_message;

/// Most frames a writer feeds before one flush.
const MAX_WRITES_PER_FLUSH: usize = 256;
/// Most times a writer yields to gather more frames before a flush (the pooled client's
/// Tokio budget).
const GATHER_YIELDS: u32 = 8;
/// Most replies a reader correlates under one lock.
const MAX_FRAMES_PER_BATCH: usize = 64;
/// The largest reply accepted.
const MAX_FRAME_SIZE: usize = 1 << 20;

/// The requests waiting on one connection, by id.
#[derive(Default)]
struct Waiters {
    by_id: HashMap<String, oneshot::Sender<()>>,
    /// The connection ended: new requests fail at once.
    closed: bool,
}

/// One connection: its writer's queue and its waiting requests.
struct Connection {
    queue: mpsc::UnboundedSender<String>,
    waiters: Mutex<Waiters>,
    /// Requests written or queued and not yet answered (the writer gathers while > 1).
    in_flight: AtomicUsize,
}

impl Connection {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection ended: every waiting request fails (its sender is dropped).
    fn fail_all(&self) {
        let mut waiters = self.waiters();
        waiters.closed = true;
        waiters.by_id.clear();
        self.in_flight.store(0, Relaxed);
    }
}

/// Runs `concurrency` request tasks over `sockets` until `run.total` requests were issued and
/// answered (or failed).
pub(crate) async fn run(sockets: Vec<RawSocket>, concurrency: u64, run: Arc<RawRun>) {
    let mut io = tokio::task::JoinSet::new();
    let mut connections = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let (queue, commands) = mpsc::unbounded_channel();
        let connection = Arc::new(Connection {
            queue,
            waiters: Mutex::new(Waiters::default()),
            in_flight: AtomicUsize::new(0),
        });
        let (sink, stream) = socket.split();
        io.spawn(write(sink, commands, Arc::clone(&connection)));
        io.spawn(read(stream, Arc::clone(&connection)));
        connections.push(connection);
    }
    let connections: Arc<[Arc<Connection>]> = connections.into();
    let next = Arc::new(AtomicU64::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        callers.spawn(requests(
            Arc::clone(&connections),
            Arc::clone(&next),
            Arc::clone(&run),
        ));
    }
    while callers.join_next().await.is_some() {}
    // Every request ended; dropping the tasks drops the sockets.
    io.abort_all();
}

/// One caller: requests one after another, each waiting for its reply.
async fn requests(connections: Arc<[Arc<Connection>]>, next: Arc<AtomicU64>, run: Arc<RawRun>) {
    let message = request_message();
    loop {
        let ticket = run.issued.fetch_add(1, Relaxed);
        if ticket >= run.total {
            return;
        }
        let t0 = Instant::now();
        // Unique and UUID-sized, and cheaper than a random UUID (no random source).
        let id = raw_id(ticket);
        // A message per request, as raw clones one and a pooled caller hands one over.
        let text = frame::encode(&message.clone(), Some(&id));
        let pick = next.fetch_add(1, Relaxed) % connections.len() as u64;
        let connection = &connections[pick as usize];
        let (done, reply) = oneshot::channel();
        {
            let mut waiters = connection.waiters();
            if waiters.closed {
                run.errors.add("connection_lost", 1);
                continue;
            }
            waiters.by_id.insert(id, done);
        }
        connection.in_flight.fetch_add(1, Relaxed);
        if connection.queue.send(text).is_err() || reply.await.is_err() {
            run.errors.add("connection_lost", 1);
            continue;
        }
        latency::record(t0.elapsed());
        run.completed.fetch_add(1, Relaxed);
    }
}

/// A connection's writer: feeds every queued frame, gathering while replies are due, then
/// flushes once.
async fn write(
    mut sink: WebSocketSender<TokioAdapter<TcpStream>>,
    mut commands: mpsc::UnboundedReceiver<String>,
    connection: Arc<Connection>,
) {
    while let Some(first) = commands.recv().await {
        let mut next = Some(first);
        let mut fed = 0;
        let mut yields = 0;
        while let Some(text) = next.take() {
            if sink.feed(Message::Text(text.into())).await.is_err() {
                connection.fail_all();
                return;
            }
            fed += 1;
            if fed == MAX_WRITES_PER_FLUSH {
                break;
            }
            next = commands.try_recv().ok();
            while next.is_none() && yields < GATHER_YIELDS && connection.in_flight.load(Relaxed) > 1 {
                yields += 1;
                tokio::task::yield_now().await;
                next = commands.try_recv().ok();
            }
        }
        if sink.flush().await.is_err() {
            connection.fail_all();
            return;
        }
    }
}

/// A connection's reader: decodes every reply already received, matches the batch under one
/// lock, and wakes their requests after releasing it.
async fn read(mut stream: WebSocketReceiver<TokioAdapter<TcpStream>>, connection: Arc<Connection>) {
    let mut decoded = Vec::with_capacity(MAX_FRAMES_PER_BATCH);
    let mut answered = Vec::with_capacity(MAX_FRAMES_PER_BATCH);
    let mut ended = false;
    while let Some(Ok(first)) = stream.next().await {
        let mut item = Some(first);
        while let Some(message) = item.take() {
            if let Message::Text(text) = message {
                decoded.push(frame::decode(text.as_str(), MAX_FRAME_SIZE));
            }
            if decoded.len() < MAX_FRAMES_PER_BATCH {
                match stream.next().now_or_never() {
                    Some(Some(Ok(message))) => item = Some(message),
                    Some(Some(Err(_)) | None) => ended = true,
                    None => {}
                }
            }
        }
        {
            let mut waiters = connection.waiters();
            for reply in decoded.drain(..).flatten() {
                if let Some(done) = reply.correlation_id().and_then(|id| waiters.by_id.remove(id)) {
                    answered.push(done);
                }
            }
        }
        connection.in_flight.fetch_sub(answered.len(), Relaxed);
        for done in answered.drain(..) {
            let _ = done.send(());
        }
        if ended {
            break;
        }
    }
    connection.fail_all();
}
