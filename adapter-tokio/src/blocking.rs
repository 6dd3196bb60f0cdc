//! A blocking client for hosts without async (as `reqwest::blocking`): the same
//! [`Client`](crate::Client), on a private single-threaded Tokio runtime that runs on a thread
//! of its own. Each call hands its work to that runtime and blocks the calling thread until
//! it ends, within the call's own bound: a request within its request timeout, a flush within
//! the timeout given, a close within `close_drain`.
//!
//! ```
//! use std::time::Duration;
//! use usageflow_socket_tokio::blocking::Client;
//! use usageflow_socket_tokio::messages::RequestForAllocation;
//! use usageflow_socket_tokio::{Config, UsageFlowApi};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = usageflow_socket_server::ServerThread::spawn(usageflow_socket_server::ServerOptions {
//! #     key: Some("my-api-key".into()),
//! #     ..Default::default()
//! # })?;
//! # let url = server.url();
//! let config = Config::builder(url, "my-api-key").build()?;
//! let client = Client::connect(config)?; // no async runtime needed
//! let allocation = RequestForAllocation { alias: "ledger-1".into(), amount: 1.0, ..Default::default() };
//! // Any call of the async API, run to its end on the client's runtime:
//! match client.call(move |c| async move { c.request_for_allocation(&allocation).await })? {
//!     Ok(reply) => println!("allocated {}", reply.allocation_id),
//!     Err(e) if e.is_denied() => println!("denied: {e}"),
//!     Err(e) => println!("unavailable, failing open: {e}"),
//! }
//! client.flush(Duration::from_secs(2))?;
//! let report = client.close()?;
//! println!("{} requests", report.stats.requests);
//! # Ok(())
//! # }
//! ```
//!
//! Calls that block refuse to run on a Tokio runtime's thread (inside `block_on` or a task),
//! with [`ClientError::BlockingInAsyncContext`]: blocking there would stall the executor, or
//! deadlock it. Use the async client there, or `tokio::task::spawn_blocking`. (Other
//! executors cannot be detected: do not call it from their tasks either.)

use std::future::Future;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use usageflow_socket_client::{
    Availability, ClientError, ClientOptions, CloseReport, Incoming, MessageId, Outgoing, RequestOptions,
    SendOptions, Stats,
};

use crate::Tokio;

/// A blocking UsageFlow client: a cheap `Clone` handle on one async [`crate::Client`] and its
/// private runtime thread. When the last handle is dropped, the client is closed (as by
/// [`Client::close`]) and the runtime thread ends; the drop waits for that (at most about
/// `close_drain`) unless it happens on an async runtime's thread.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    client: crate::Client,
    handle: Handle,
    /// Ends the runtime thread (after the client is closed).
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Client")
            .field("client", &self.inner.client)
            .finish_non_exhaustive()
    }
}

/// Refuses on a Tokio runtime's thread.
fn refuse_in_async() -> Result<(), ClientError> {
    match Handle::try_current() {
        Ok(_) => Err(ClientError::BlockingInAsyncContext),
        Err(_) => Ok(()),
    }
}

/// Runs `work` on the runtime of `handle` and blocks until it ends. `Closed` when the runtime
/// is gone before it ended.
fn block<T: Send + 'static>(
    handle: &Handle,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, ClientError> {
    refuse_in_async()?;
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv().map_err(|_| ClientError::Closed)
}

impl Client {
    /// Starts the runtime thread and connects as [`crate::Client::connect`] does: blocks until
    /// every slot's first dial has ended (connected or not; at most the handshake timeout),
    /// and fails when the server refused the key on every slot, or for invalid options.
    pub fn connect(options: impl Into<ClientOptions>) -> Result<Self, ClientError> {
        refuse_in_async()?;
        let options = options.into();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::InvalidOptions(format!("the blocking client's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("usageflow-blocking".into())
            .spawn(move || {
                // Ends when told to (or when every handle is gone).
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| ClientError::InvalidOptions(format!("the blocking client's thread: {e}")))?;
        let runtime_of_client = Tokio::new(handle.clone());
        let connected = block(&handle, crate::Client::connect_on(runtime_of_client, options))
            .and_then(|connected| connected);
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                let _ = stop.send(());
                let _ = thread.join();
                return Err(e);
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                handle,
                stop: Mutex::new(Some(stop)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The async client underneath (its non-blocking methods work from anywhere).
    pub fn as_async(&self) -> &crate::Client {
        &self.inner.client
    }

    /// Runs `work` (given a handle on the async client) on the client's runtime and blocks
    /// until it ends: any call of the async API, such as the typed helpers of
    /// [`crate::UsageFlowApi`]. Bound it yourself if it may wait long (the client's own calls
    /// are bounded by their timeouts).
    pub fn call<T, F>(&self, work: impl FnOnce(crate::Client) -> F) -> Result<T, ClientError>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        block(&self.inner.handle, work(self.inner.client.clone()))
    }

    /// [`crate::Client::request`], blocking until the reply, a failure or the request timeout.
    pub fn request(&self, message: Outgoing) -> Result<Incoming, ClientError> {
        self.request_with(message, RequestOptions::default())
    }

    /// [`crate::Client::request_with`], blocking until the reply, a failure or the request's
    /// timeout.
    pub fn request_with(&self, message: Outgoing, options: RequestOptions) -> Result<Incoming, ClientError> {
        self.call(move |client| async move { client.request_with(message, options).await })?
    }

    /// [`crate::Client::send`]: fire-and-forget; never blocks, so it works from anywhere.
    pub fn send(&self, message: Outgoing) -> Result<(), ClientError> {
        self.inner.client.send(message)
    }

    /// [`crate::Client::send_with`]: fire-and-forget with options; never blocks.
    pub fn send_with(&self, message: Outgoing, options: SendOptions) -> Result<MessageId, ClientError> {
        self.inner.client.send_with(message, options)
    }

    /// [`crate::Client::flush`], blocking up to `timeout` until every message sent so far
    /// has ended.
    pub fn flush(&self, timeout: Duration) -> Result<(), ClientError> {
        self.call(move |client| async move { client.flush(timeout).await })?
    }

    /// [`crate::Client::close`], blocking until the drain ended (at most `close_drain`): the
    /// report. Idempotent. The runtime thread stays until the last handle is dropped.
    pub fn close(&self) -> Result<CloseReport, ClientError> {
        self.call(|client| async move { client.close().await })
    }

    /// Whether at least one connection is open.
    pub fn is_connected(&self) -> bool {
        self.inner.client.is_connected()
    }

    /// The pool's availability.
    pub fn availability(&self) -> Availability {
        self.inner.client.availability()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.inner.client.stats()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        let client = self.client.clone();
        // Close on the runtime, then end its thread.
        self.handle.spawn(async move {
            client.close().await;
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
        });
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some(thread), Ok(())) = (thread, refuse_in_async()) {
            let _ = thread.join();
        }
    }
}
