//! A UsageFlow-compatible WebSocket server with fault injection, to run in your own
//! integration tests (and behind `ufsock serve`).
//!
//! Start one on an ephemeral port, point the client under test at [`ServerHandle::url`], then
//! read what the server saw from its [`Counters`], switch [`Faults`] on and off while the
//! client runs, and [`kill`](ServerHandle::kill) and [`restart`](ServerHandle::restart) it on
//! the same port to test reconnection. Nothing is global: each test starts its own server.
//!
//! It speaks [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md): it checks the `x-usage-key` header of the upgrade (401 when it is
//! missing, empty, or not the configured key), answers every message type, counts
//! fire-and-forget messages, and injects faults that can be switched at run time.
//!
//! # In an integration test
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use async_tungstenite::tungstenite::{client::IntoClientRequest, Message};
//! use futures_util::SinkExt;
//! use usageflow_socket_server::{Server, ServerOptions};
//!
//! // Port 0 (the default address, 127.0.0.1:0): the system picks a free port.
//! let server = Server::start(ServerOptions { key: Some("test-key".into()), ..Default::default() }).await?;
//! let url = server.url(); // ws://127.0.0.1:PORT/ws — give it to the client under test.
//! server.counters().record_frames(1000); // keep what the client sends (off by default)
//!
//! // The client under test would be a `usageflow_socket_tokio::Client`; a bare WebSocket
//! // keeps this example self-contained.
//! let mut request = url.as_str().into_client_request()?;
//! request.headers_mut().insert("x-usage-key", "test-key".parse()?);
//! let tcp = tokio::net::TcpStream::connect(server.addr()).await?;
//! let (mut ws, _) = async_tungstenite::tokio::client_async(request, tcp).await?;
//! ws.send(Message::text(r#"{"type":"report_call_chain","payload":{}}"#)).await?;
//!
//! // Counters: what the server saw, read any time (they survive restarts).
//! let counters = server.counters();
//! assert!(counters.wait_until(Duration::from_secs(5), |s| s.fire_and_forget.len() == 1).await);
//! assert_eq!(counters.fire_and_forget("report_call_chain"), 1);
//! // The frames themselves, in the order the server read them, as wiremock's received_requests.
//! let frames = counters.received_frames();
//! assert_eq!(frames[0].kind.as_deref(), Some("report_call_chain"));
//! assert_eq!(frames[0].payload, serde_json::json!({}));
//!
//! // An outage: kill drops every connection without a close frame and frees the port...
//! server.kill().await;
//! assert!(!server.is_running());
//! // ...restart listens again on the same port, so the client can reconnect to the same URL.
//! server.restart().await?;
//! assert_eq!(server.url(), url);
//!
//! // Faults switch at run time, one field at a time or all at once.
//! server.faults().set_drop_every(10);
//! server.faults().set_reply_delay_ms(50);
//! server.shutdown().await; // close frames with code 1001
//! # Ok(()) }
//! ```
//!
//! Without Tokio in the test (a smol client, a plain `#[test]`), [`ServerThread::spawn`] runs
//! the same server on a thread and runtime of its own, with blocking methods:
//!
//! ```
//! use usageflow_socket_server::{FaultConfig, ServerOptions, ServerThread};
//!
//! let server = ServerThread::spawn(ServerOptions {
//!     faults: FaultConfig { reply_delay_ms: 20, ..Default::default() },
//!     ..Default::default()
//! })?;
//! let _url = server.url();
//! server.kill();
//! server.restart()?;
//! assert!(server.is_running());
//! # Ok::<(), usageflow_socket_server::ServerError>(())
//! ```
//!
//! # Replies
//!
//! | request type | reply |
//! | --- | --- |
//! | `request_for_allocation` | `success`, `{"allocationId": <the client's allocationId, or a fresh UUID>}` |
//! | `use_allocation` | `success`, `{"eventId": <fresh UUID>}` |
//! | `get_application_policies` | `success`, `{"policies": [...], "total": n, "accountReachLimit": false}` |
//! | `get_application_config` | `success`, [`ReplyData::application_config`] |
//! | `get_blocked_endpoints` | `success`, `{"endpoints": [{url, method, identity}], "total": n, "accountReachLimit": false}` |
//! | `report_call_chain` | none: always fire-and-forget |
//! | any other type | `{"type": "error", "error": "unknown message type: ..."}` (a denial) |
//!
//! A frame without an `id` (or with an empty one) is fire-and-forget: counted per type in
//! [`CountersSnapshot::fire_and_forget`], never answered. Frames that are not a JSON object
//! with a string `type` are counted as invalid and ignored.
//!
//! **Denial trigger:** a `request_for_allocation` or `use_allocation` request whose payload has
//! `"alias": "deny"` or a negative `amount` is answered
//! `{"type": "error", "error": "allocation denied: ...", "replyTo": <id>}` (correlated per the
//! [`ReplyStyle`] in force).
//!
//! # Faults
//!
//! Every field of [`FaultConfig`] is a fault: set the initial ones in
//! [`ServerOptions::faults`], switch them at run time with [`Faults`] (one setter per field, or
//! [`Faults::set`] / [`Faults::clear`] for all). Counts and periods of 0 mean off.
//!
//! | field | what the server does |
//! | --- | --- |
//! | [`reply_delay_ms`](FaultConfig::reply_delay_ms), [`reply_jitter_ms`](FaultConfig::reply_jitter_ms) | delays each reply (plus a random jitter); reading goes on meanwhile |
//! | [`drop_every`](FaultConfig::drop_every) | drops every k-th reply (the request times out) |
//! | [`duplicate_replies`](FaultConfig::duplicate_replies) | sends every reply twice |
//! | [`garbage_every`](FaultConfig::garbage_every), [`binary_every`](FaultConfig::binary_every), [`stray_every`](FaultConfig::stray_every) | after every n-th reply, also sends a non-JSON text frame, a binary frame, or a reply to an unknown id |
//! | [`no_pongs`](FaultConfig::no_pongs) | never answers pings (a dead peer, as the client's liveness check sees it) |
//! | [`freeze`](FaultConfig::freeze), [`freeze_after_messages`](FaultConfig::freeze_after_messages), [`freeze_after_ms`](FaultConfig::freeze_after_ms) | a connection stops reading and writing but keeps its socket open |
//! | [`stop_reading`](FaultConfig::stop_reading) | stops reading every connection while set (the client's writes stall) |
//! | [`close_after_messages`](FaultConfig::close_after_messages), [`close_code`](FaultConfig::close_code) | sends a close frame (with that code) after n text frames |
//! | [`drop_after_messages`](FaultConfig::drop_after_messages) | drops the TCP connection abruptly after n text frames |
//! | [`drop_once_on`](FaultConfig::drop_once_on) | one-shot: drops the connection that receives a frame containing this text |
//! | [`abort_after_messages`](FaultConfig::abort_after_messages) | one-shot: after n messages (all connections), aborts every connection; the listener stays up |
//! | [`abort_every_ms`](FaultConfig::abort_every_ms) | aborts every connection this often; the listener stays up |
//! | [`read_delay_us`](FaultConfig::read_delay_us) | pauses reading a connection after each text frame (the client's writes back up) |
//! | [`reject_handshakes`](FaultConfig::reject_handshakes) | answers every upgrade with 401 (the key refused) |
//! | [`handshake_status`](FaultConfig::handshake_status), [`retry_after_secs`](FaultConfig::retry_after_secs) | answers every upgrade with this status (503, 429, ...), optionally with `Retry-After` |
//! | [`hang_handshakes`](FaultConfig::hang_handshakes) | accepts TCP connections but never answers the upgrade |
//! | [`ping_every_ms`](FaultConfig::ping_every_ms) | pings every connection this often |
//! | [`push_frames`](FaultConfig::push_frames), [`push_size`](FaultConfig::push_size) | one-shot: one connection pushes this many unsolicited frames of this size |
//!
//! The [`ReplyStyle`] (how a reply names its request) is switched with
//! [`Faults::set_reply_style`]. Beyond the fields, [`ServerHandle::kill`] drops the listener
//! and every connection without close frames, [`ServerHandle::restart`] listens again on the
//! same port (counters and faults kept), [`ServerHandle::abort_connections`] resets every
//! connection (no close frames, unread messages lost) while the listener keeps accepting, and
//! [`ServerHandle::shutdown`] closes every connection with code 1001.
//!
//! # Running it
//!
//! [`Server::start`] runs on the calling Tokio runtime; [`ServerThread::spawn`] runs it on a
//! runtime of its own, for callers without Tokio (smol-based tests) — both share one
//! implementation. `wss://` is served with [`ServerOptions::tls`]
//! ([`TlsOptions::self_signed`], with the `tls` feature, makes a certificate for `localhost`).
//!
//! # An HTTP proxy
//!
//! [`ProxyThread::spawn`] runs an HTTP `CONNECT` proxy (on a thread and runtime of its own) to
//! test clients behind one: it tunnels to any target, can require basic credentials (407
//! otherwise) or answer a fixed status ([`ProxyOptions`]), and counts what it did
//! ([`ProxyCounters`]).

#![cfg_attr(docsrs, feature(doc_cfg))]

mod conn;
mod counters;
mod faults;
mod options;
mod pong_filter;
mod proxy;
mod recording;
mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub use counters::{Counters, CountersSnapshot};
pub use faults::Faults;

/// The largest counter the `forge_pongs_every_ms` fault puts in its unsolicited pongs.
pub const FORGED_PONG_MAX: u64 = 64;
pub use options::{FaultConfig, ReplyData, ReplyStyle, ServerOptions, TlsOptions};
pub use proxy::{ProxyCounters, ProxyOptions, ProxyThread};
pub use recording::ReceivedFrame;
#[cfg(feature = "tls")]
pub use tls::{self_signed_localhost, TestCa};

/// How long [`ServerHandle::kill`] waits for the aborted connection tasks to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long a graceful shutdown waits for connections to finish their close handshake.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Why the server could not start or restart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding or listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: io::Error,
    },
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(rustls::Error),
    /// A certificate or key could not be made or read.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The server thread's runtime could not be built.
    #[error("cannot build the server runtime: {0}")]
    Runtime(io::Error),
    /// The server's runtime is gone (its thread was shut down).
    #[error("the server runtime is gone")]
    RuntimeGone,
}

/// Raw JSON of the constant reply payloads, serialized once.
#[derive(Debug)]
pub(crate) struct Payloads {
    pub(crate) policies: String,
    pub(crate) config: String,
    pub(crate) blocked: String,
}

impl Payloads {
    fn new(data: &ReplyData) -> Self {
        let policies = serde_json::json!({
            "policies": data.policies,
            "total": data.policies.len(),
            "accountReachLimit": false,
        });
        let blocked = serde_json::json!({
            "endpoints": data.blocked_endpoints,
            "total": data.blocked_endpoints.len(),
            "accountReachLimit": false,
        });
        Self {
            policies: policies.to_string(),
            config: data.application_config.to_string(),
            blocked: blocked.to_string(),
        }
    }
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) key: Option<String>,
    pub(crate) faults: Arc<Faults>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) max_frame_size: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) payloads: Payloads,
    /// Connection tasks alive (any stage), so `kill` can wait for them to be gone.
    pub(crate) live_tasks: AtomicU64,
    /// The current abort epoch: every connection task holds receivers of the epoch it was
    /// accepted in, until it ends; aborting sends `true` on it and starts a new epoch.
    abort_epoch: Mutex<watch::Sender<bool>>,
}

impl Shared {
    /// A receiver of the current abort epoch, for a connection accepted now.
    pub(crate) fn abort_receiver(&self) -> watch::Receiver<bool> {
        self.abort_epoch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subscribe()
    }

    /// Aborts every connection accepted so far (the tasks notice at once, wherever they are,
    /// and reset their sockets) and starts a new epoch for the connections accepted from now
    /// on. Returns the aborted epoch: its receivers are gone once every aborted task has ended.
    pub(crate) fn abort_connections(&self) -> watch::Sender<bool> {
        let aborted = {
            let mut epoch = self.abort_epoch.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *epoch, watch::channel(false).0)
        };
        aborted.send_replace(true);
        aborted
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately left out.
        f.debug_struct("Shared")
            .field("faults", &self.faults)
            .field("counters", &self.counters)
            .field("tls", &self.tls.is_some())
            .field("max_frame_size", &self.max_frame_size)
            .finish_non_exhaustive()
    }
}

/// A running accept loop.
#[derive(Debug)]
struct Running {
    task: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    rt: Handle,
    addr: SocketAddr,
    recv_buffer_size: Option<u32>,
    rebind_timeout: Duration,
    running: Mutex<Option<Running>>,
}

impl Inner {
    fn take_running(&self) -> Option<Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|r| !r.task.is_finished())
    }

    /// Starts the accept loop on `listener`. Must run on the server's runtime.
    fn spawn_listener(&self, listener: TcpListener) {
        let (tx, rx) = watch::channel(false);
        let task = self.rt.spawn(accept_loop(listener, self.shared.clone(), rx));
        let old = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(Running { task, shutdown: tx });
        if let Some(old) = old {
            old.task.abort();
        }
    }

    async fn kill(self: Arc<Self>) {
        if let Some(r) = self.take_running() {
            r.task.abort();
            let _ = r.task.await;
            tracing::info!(addr = %self.addr, "server killed");
        }
        self.wait_tasks_gone(KILL_WAIT).await;
    }

    async fn shutdown(self: Arc<Self>) {
        if let Some(r) = self.take_running() {
            let _ = r.shutdown.send(true);
            let mut task = r.task;
            if tokio::time::timeout(SHUTDOWN_WAIT + Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
            tracing::info!(addr = %self.addr, "server shut down");
        }
        self.wait_tasks_gone(KILL_WAIT).await;
    }

    async fn restart(self: Arc<Self>) -> Result<(), ServerError> {
        self.clone().kill().await;
        let deadline = Instant::now() + self.rebind_timeout;
        loop {
            match bind(self.addr, self.recv_buffer_size) {
                Ok(listener) => {
                    self.spawn_listener(listener);
                    tracing::info!(addr = %self.addr, "server restarted");
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(source) => {
                    return Err(ServerError::Bind {
                        addr: self.addr,
                        source,
                    })
                }
            }
        }
    }

    async fn abort_connections(self: Arc<Self>) {
        let aborted = self.shared.abort_connections();
        let deadline = Instant::now() + KILL_WAIT;
        while aborted.receiver_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tracing::info!(addr = %self.addr, "connections aborted");
    }

    async fn wait_tasks_gone(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.shared.live_tasks.load(Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Binds with `SO_REUSEADDR` (so a restart can take the same port at once). Needs a runtime.
fn bind(addr: SocketAddr, recv_buffer_size: Option<u32>) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if let Some(n) = recv_buffer_size {
        socket.set_recv_buffer_size(n)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts until shut down (gracefully) or aborted (every connection task is aborted with it,
/// since they live in this task's `JoinSet`). Also runs the `abort_every_ms` ticker.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    let faults = shared.faults.clone();
    let mut abort_every = 0;
    let abort_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(abort_timer);
    loop {
        let changed = faults.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let ms = faults.abort_every_ms();
        if ms != abort_every {
            abort_every = ms;
            abort_timer
                .as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_millis(ms));
        }
        tokio::select! {
            biased;
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = &mut abort_timer, if abort_every > 0 => {
                tracing::debug!("aborting every connection (abort_every_ms)");
                shared.abort_connections();
                abort_timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + Duration::from_millis(abort_every));
            }
            _ = &mut changed => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    Counters::add(&shared.counters.tcp_accepted);
                    let _ = stream.set_nodelay(true);
                    // The abort epoch is taken at once: an abort from now on covers this connection.
                    let abort = shared.abort_receiver();
                    tasks.spawn(conn::handle_tcp(stream, peer, shared.clone(), shutdown.clone(), abort));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Namespace of [`Server::start`].
#[derive(Debug)]
pub struct Server {
    _private: (),
}

impl Server {
    /// Binds `options.addr` and serves on the current Tokio runtime until the returned handle
    /// is killed, shut down or dropped.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub async fn start(options: ServerOptions) -> Result<ServerHandle, ServerError> {
        let tls = match &options.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(t)?)),
            None => None,
        };
        let listener = bind(options.addr, options.recv_buffer_size).map_err(|source| ServerError::Bind {
            addr: options.addr,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: options.addr,
            source,
        })?;
        let ws_config = WebSocketConfig::default()
            .max_frame_size(Some(options.max_frame_size))
            .max_message_size(Some(options.max_frame_size));
        let shared = Arc::new(Shared {
            key: options.key.clone(),
            faults: Arc::new(Faults::new(&options.faults, options.reply_style)),
            counters: Arc::new(Counters::default()),
            ws_config,
            max_frame_size: options.max_frame_size,
            handshake_timeout: options.handshake_timeout,
            tls,
            payloads: Payloads::new(&options.data),
            live_tasks: AtomicU64::new(0),
            abort_epoch: Mutex::new(watch::channel(false).0),
        });
        let inner = Arc::new(Inner {
            shared,
            rt: Handle::current(),
            addr,
            recv_buffer_size: options.recv_buffer_size,
            rebind_timeout: options.rebind_timeout,
            running: Mutex::new(None),
        });
        inner.spawn_listener(listener);
        tracing::info!(%addr, tls = inner.shared.tls.is_some(), "server listening");
        Ok(ServerHandle { inner })
    }
}

/// A running server. Dropping it aborts the listener and every connection (like
/// [`kill`](Self::kill), without waiting).
///
/// Its async methods run their work on the server's own runtime, so they may be awaited from
/// any runtime.
#[derive(Debug)]
pub struct ServerHandle {
    inner: Arc<Inner>,
}

impl ServerHandle {
    /// The address it listens on (the same after a restart).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `ws://127.0.0.1:PORT/ws`, or `wss://` when serving TLS.
    pub fn url(&self) -> String {
        self.url_for_host(&self.inner.addr.ip().to_string())
    }

    /// The URL with another host name, such as `localhost` for a TLS client that checks the
    /// certificate's name.
    pub fn url_for_host(&self, host: &str) -> String {
        let scheme = if self.inner.shared.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!("{scheme}://{host}:{}/ws", self.inner.addr.port())
    }

    /// The counters (shared; kept across restarts).
    pub fn counters(&self) -> Arc<Counters> {
        self.inner.shared.counters.clone()
    }

    /// The run-time fault switches.
    pub fn faults(&self) -> Arc<Faults> {
        self.inner.shared.faults.clone()
    }

    /// Whether the accept loop is running (not killed or shut down).
    pub fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    /// Aborts the listener and every connection at once: sockets are dropped, no close frames
    /// are sent, the port is free. Returns once the connection tasks are gone (at most ~2 s).
    pub async fn kill(&self) {
        self.run(self.inner.clone().kill()).await;
    }

    /// Listens again on the same port (killing the current listener first, if any), retrying
    /// the bind for up to [`ServerOptions::rebind_timeout`]. Counters and faults are kept.
    pub async fn restart(&self) -> Result<(), ServerError> {
        self.run(self.inner.clone().restart())
            .await
            .unwrap_or(Err(ServerError::RuntimeGone))
    }

    /// Stops accepting, closes every connection with code 1001 and waits (about 2 s at most)
    /// for the close handshakes, then aborts what is left.
    pub async fn shutdown(&self) {
        self.run(self.inner.clone().shutdown()).await;
    }

    /// Aborts every open connection, as an abrupt server restart would, while the listener
    /// keeps accepting: each socket is reset (`SO_LINGER` 0: the peer sees a reset, no close
    /// frame), and whatever the server had not read yet, in the kernel or in its own buffers,
    /// is lost. Frames already read were counted. Connections still in their handshake are
    /// dropped too. Counted in [`CountersSnapshot::connections_aborted`]. Returns once the
    /// aborted connections are gone (at most ~2 s); connections accepted meanwhile are not
    /// aborted.
    pub async fn abort_connections(&self) {
        self.run(self.inner.clone().abort_connections()).await;
    }

    /// Runs `fut` on the server's runtime and waits for it from any runtime.
    async fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
        self.inner.rt.spawn(fut).await.ok()
    }

    /// Runs `fut` on the server's runtime and blocks the calling thread until it is done.
    fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(r) = self.inner.take_running() {
            r.task.abort();
        }
    }
}

/// A server on a thread and Tokio runtime of its own, with blocking methods: for tests and
/// tools that do not run Tokio (a smol-based client, a plain `#[test]`). Dropping it stops the
/// server and its runtime.
///
/// The blocking methods may be called from any thread, including from inside an async runtime
/// (they block that thread briefly, like any blocking call).
#[derive(Debug)]
pub struct ServerThread {
    handle: Option<ServerHandle>,
    rt: Option<Runtime>,
}

impl ServerThread {
    /// Builds a one-worker runtime on its own thread and starts the server on it.
    pub fn spawn(options: ServerOptions) -> Result<Self, ServerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // Built on a helper thread, so this works even when called from inside a runtime.
        let builder = std::thread::Builder::new().name("ufsock-server-start".into());
        builder
            .spawn(move || {
                let started = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("ufsock-server")
                    .enable_all()
                    .build()
                    .map_err(ServerError::Runtime)
                    .and_then(|rt| {
                        let handle = rt.block_on(Server::start(options))?;
                        Ok((rt, handle))
                    });
                let _ = tx.send(started);
            })
            .map_err(ServerError::Runtime)?
            .join()
            .map_err(|_| ServerError::RuntimeGone)?;
        let (rt, handle) = rx.recv().map_err(|_| ServerError::RuntimeGone)??;
        Ok(Self {
            handle: Some(handle),
            rt: Some(rt),
        })
    }

    /// The async handle, for callers that do run Tokio.
    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("present until drop")
    }

    /// See [`ServerHandle::addr`].
    pub fn addr(&self) -> SocketAddr {
        self.handle().addr()
    }

    /// See [`ServerHandle::url`].
    pub fn url(&self) -> String {
        self.handle().url()
    }

    /// See [`ServerHandle::url_for_host`].
    pub fn url_for_host(&self, host: &str) -> String {
        self.handle().url_for_host(host)
    }

    /// See [`ServerHandle::counters`].
    pub fn counters(&self) -> Arc<Counters> {
        self.handle().counters()
    }

    /// See [`ServerHandle::faults`].
    pub fn faults(&self) -> Arc<Faults> {
        self.handle().faults()
    }

    /// See [`ServerHandle::is_running`].
    pub fn is_running(&self) -> bool {
        self.handle().is_running()
    }

    /// [`ServerHandle::kill`], blocking.
    pub fn kill(&self) {
        let h = self.handle();
        h.block(h.inner.clone().kill());
    }

    /// [`ServerHandle::restart`], blocking.
    pub fn restart(&self) -> Result<(), ServerError> {
        let h = self.handle();
        h.block(h.inner.clone().restart())
            .unwrap_or(Err(ServerError::RuntimeGone))
    }

    /// [`ServerHandle::shutdown`], blocking.
    pub fn shutdown(&self) {
        let h = self.handle();
        h.block(h.inner.clone().shutdown());
    }

    /// [`ServerHandle::abort_connections`], blocking.
    pub fn abort_connections(&self) {
        let h = self.handle();
        h.block(h.inner.clone().abort_connections());
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        drop(self.handle.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
