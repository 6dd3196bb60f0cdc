//! The bare client `ufsock bench --mode raw` measures: pipelined async-tungstenite
//! connections with no pool, no correlation map, no timers. Each connection keeps a window of
//! requests outstanding and matches replies by count (the server answers a connection's
//! requests in order), so the latency of a reply is the time since the oldest request still
//! outstanding on its connection. It writes the same frames as the pooled client (the same
//! encoder, UUID-sized ids). Plain `ws://` only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use usageflow_socket_core::frame;

use crate::bench::report::{latency, Errors};
use crate::bench::workload::{request_message, send_message, Chunks, Workload};

/// One raw connection.
pub(crate) type RawSocket = WebSocketStream<TokioAdapter<TcpStream>>;

/// Opens `n` raw connections to `url` with `key` (TCP_NODELAY, like the pooled client).
pub(crate) async fn connect(url: &str, key: &str, n: usize) -> Result<Vec<RawSocket>, String> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let mut request = url
            .into_client_request()
            .map_err(|e| format!("raw client: invalid URL: {e}"))?;
        let value = HeaderValue::from_str(key).map_err(|_| "raw client: invalid API key".to_owned())?;
        request.headers_mut().insert("x-usage-key", value);
        let uri = request.uri();
        if uri.scheme_str() != Some("ws") {
            return Err("raw client: only ws:// URLs are supported".into());
        }
        let host = uri
            .host()
            .unwrap_or("127.0.0.1")
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("raw client: cannot connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (socket, _) = async_tungstenite::tokio::client_async(request, tcp)
            .await
            .map_err(|e| format!("raw client: handshake failed: {e}"))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// A UUID-shaped id (36 characters, like the pool's request ids), unique per run.
pub(crate) fn raw_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Shared state of one raw run.
pub(crate) struct RawRun {
    /// Operations to issue in total.
    pub(crate) total: u64,
    /// Tickets drawn so far (an operation is issued by whoever draws a ticket below `total`).
    pub(crate) issued: AtomicU64,
    /// Operations completed (replies received, or sends written), for the progress bar.
    pub(crate) completed: Arc<AtomicU64>,
    /// Errors by kind.
    pub(crate) errors: Errors,
}

/// Runs `workload` over `sockets`, with `window` operations in flight per connection
/// (requests outstanding, or sends fed between flushes).
pub(crate) async fn run(sockets: Vec<RawSocket>, windows: Vec<usize>, workload: Workload, run: Arc<RawRun>) {
    let mut tasks = tokio::task::JoinSet::new();
    for (socket, window) in sockets.into_iter().zip(windows) {
        let run = Arc::clone(&run);
        match workload {
            Workload::Request => tasks.spawn(requests(socket, window.max(1), run)),
            Workload::Send => tasks.spawn(sends(socket, window.max(1), run)),
        };
    }
    while tasks.join_next().await.is_some() {}
}

/// Pipelined requests on one connection: up to `window` outstanding, replies matched by count.
async fn requests(socket: RawSocket, window: usize, run: Arc<RawRun>) {
    let (mut sink, mut stream) = socket.split();
    let permits = Semaphore::new(window);
    let started: Mutex<VecDeque<Instant>> = Mutex::new(VecDeque::with_capacity(window));
    let message = request_message();
    let writer = async {
        loop {
            // Wait for one slot in the window, then take every other free one without waiting,
            // feed them all and flush once.
            let Ok(permit) = permits.acquire().await else {
                return Ok(());
            };
            permit.forget();
            let mut batch = 1;
            while let Ok(p) = permits.try_acquire() {
                p.forget();
                batch += 1;
            }
            let mut fed = 0;
            for _ in 0..batch {
                let ticket = run.issued.fetch_add(1, Relaxed);
                if ticket >= run.total {
                    break;
                }
                let text = frame::encode(&message.clone(), Some(&raw_id(ticket)));
                started
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(Instant::now());
                sink.feed(Message::Text(text.into())).await?;
                fed += 1;
            }
            // Give back the slots not used (the run is over).
            permits.add_permits(batch - fed);
            if fed > 0 {
                sink.flush().await?;
            }
            if fed < batch {
                // Done: wait until every reply is in (every slot is back).
                let Ok(all) = permits.acquire_many(window as u32).await else {
                    return Ok(());
                };
                all.forget();
                let _ = sink.close(None).await;
                return Ok::<(), async_tungstenite::tungstenite::Error>(());
            }
        }
    };
    let reader = async {
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(Message::Text(_)) => {
                    let t0 = started.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    if let Some(t0) = t0 {
                        latency::record(t0.elapsed());
                        run.completed.fetch_add(1, Relaxed);
                        permits.add_permits(1);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    };
    tokio::select! {
        result = writer => {
            if result.is_err() {
                run.errors.add("write_failed", 1);
            }
        }
        () = reader => {
            run.errors.add("connection_lost", 1);
        }
    }
    // Whatever is still outstanding failed with the connection.
    let lost = started.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    if lost > 0 {
        run.errors.add("connection_lost", lost);
    }
}

/// Fire-and-forget frames on one connection, flushed every `window` frames, then one request
/// as a barrier: its reply means the server has read (and counted) every frame before it.
async fn sends(socket: RawSocket, window: usize, run: Arc<RawRun>) {
    let (mut sink, mut stream) = socket.split();
    let message = send_message();
    let result = async {
        let mut fed = 0;
        // Drawn in chunks, as the pooled send mode does.
        let mut chunks = Chunks::new(&run.issued, run.total);
        while chunks.draw() {
            let text = frame::encode(&message.clone(), None);
            sink.feed(Message::Text(text.into())).await?;
            fed += 1;
            if fed % window == 0 {
                sink.flush().await?;
                run.completed.fetch_add(window as u64, Relaxed);
            }
        }
        let barrier = frame::encode(&request_message(), Some(&raw_id(u64::MAX >> 16)));
        sink.send(Message::Text(barrier.into())).await?;
        run.completed.fetch_add((fed % window) as u64, Relaxed);
        Ok::<(), async_tungstenite::tungstenite::Error>(())
    }
    .await;
    if result.is_err() {
        run.errors.add("write_failed", 1);
        return;
    }
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(_))) => break,
            Some(Ok(_)) => {}
            _ => {
                run.errors.add("connection_lost", 1);
                return;
            }
        }
    }
    let _ = sink.close(None).await;
}
