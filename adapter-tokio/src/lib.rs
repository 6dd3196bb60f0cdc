//! UsageFlow WebSocket client on Tokio: a pool of connections with request/response
//! correlation, fire-and-forget messages, reconnection with backoff and ping/pong health.
//!
//! ```
//! use usageflow_socket_tokio::{Client, Config, UsageFlowApi};
//! use usageflow_socket_tokio::messages::RequestForAllocation;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // A local UsageFlow-compatible server (`usageflow_socket_server`) stands in for the service.
//! # let server = usageflow_socket_server::Server::start(usageflow_socket_server::ServerOptions {
//! #     key: Some("my-api-key".into()),
//! #     ..Default::default()
//! # })
//! # .await?;
//! # let url = server.url();
//! // `url` is the service's WebSocket address, such as "wss://usageflow.example/ws".
//! let config = Config::builder(url, "my-api-key").pool_size(4).build()?;
//! let client = Client::connect(config).await?;
//! assert!(client.is_connected());
//!
//! // A typed request.
//! let policies = client.get_application_policies().await?;
//! println!("{} policies", policies.total);
//!
//! // Fail open: let the host's request through when UsageFlow cannot answer.
//! let allocation = RequestForAllocation { alias: "ledger-1".into(), amount: 1.0, ..Default::default() };
//! match client.request_for_allocation(&allocation).await {
//!     Ok(reply) => println!("allocated {}", reply.allocation_id),
//!     Err(e) if e.is_denied() => println!("denied: {}", e.denial_text().unwrap_or_default()),
//!     Err(e) => println!("UsageFlow unavailable ({e}); letting the call through"),
//! }
//!
//! client.close().await;
//! assert!(client.is_closed());
//! # server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! The decisions (correlation, selection, deadlines, backoff, liveness, outbox) are made by
//! the sans-IO core, `usageflow-socket-core`; the shared glue (driver state, reader and writer
//! loops, errors, TLS) lives in `usageflow-socket-common`. This crate only supplies Tokio's
//! channels, tasks and timer:
//!
//! - one **driver task** owns the waking: it feeds the reports of the connection tasks to the
//!   core, sleeps until the core's next deadline, and handles it;
//! - each connection has a **task** (dial, then read) and a **writer task**;
//! - the public [`Client`] is a cheap `Clone` handle. An application command (request, send,
//!   cancel, close) locks the driver state (a `std::sync::Mutex`, never held across an
//!   `.await`), runs the core and carries out its outputs at once, and wakes the driver task
//!   only when the next deadline moved earlier.
//!
//! Every deadline (handshake, write, read, request, backoff) is the core's; this crate has no
//! timeout of its own beyond the one sleep of the driver task. Tracing events report
//! connects, disconnects with their reason, scheduled reconnects, exhausted attempts, skipped
//! frames and dropped messages; the API key never appears in a log or an error.
#![forbid(unsafe_code)]

mod runtime;

use std::fmt;
use std::sync::Arc;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use usageflow_socket_common::handshake::{user_agent, DialContext};
use usageflow_socket_common::{events, ClientHandle};

use crate::runtime::{drive, Shared, TokioRuntime, TokioSignals};

pub use usageflow_socket_common::shared::EVENT_CAPACITY;
pub use usageflow_socket_common::{
    ClientError, ClientEvent, ClientOptions, ClientOptionsBuilder, ErrorClass, UsageFlowApi,
};
pub use usageflow_socket_core::{
    messages, Availability, Config, ConfigBuilder, ConfigError, ConnId, DisconnectReason, Event, Incoming,
    Outgoing, RequestOptions, SendStats, Stats,
};

/// The `User-Agent` of the upgrade request: `usageflow-socket-tokio/<version>`.
pub fn default_user_agent() -> String {
    user_agent(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
}

/// A stream of [`ClientEvent`]s from [`Client::subscribe`], received like a Tokio
/// `broadcast::Receiver`. A subscriber that falls more than [`EVENT_CAPACITY`] events behind,
/// or behind by more unsolicited frames than [`ClientOptionsBuilder::max_unsolicited_bytes`]
/// allows (4 MiB by default), loses the oldest events; its next receive returns
/// [`RecvError::Lagged`] with how many, then the oldest event still held.
#[derive(Debug)]
pub struct Subscription {
    events: async_broadcast::Receiver<ClientEvent>,
}

impl Subscription {
    /// The next event: [`RecvError::Lagged`] when events were lost since the last receive,
    /// [`RecvError::Closed`] once the client is gone and every event was received.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<ClientEvent, RecvError> {
        self.events.recv_direct().await.map_err(|e| match e {
            async_broadcast::RecvError::Overflowed(n) => RecvError::Lagged(n),
            async_broadcast::RecvError::Closed => RecvError::Closed,
        })
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Result<ClientEvent, TryRecvError> {
        self.events.try_recv().map_err(|e| match e {
            async_broadcast::TryRecvError::Overflowed(n) => TryRecvError::Lagged(n),
            async_broadcast::TryRecvError::Empty => TryRecvError::Empty,
            async_broadcast::TryRecvError::Closed => TryRecvError::Closed,
        })
    }

    /// A new subscription to the same client, receiving the events published from now on.
    pub fn resubscribe(&self) -> Subscription {
        Subscription {
            events: self.events.new_receiver(),
        }
    }
}

/// A UsageFlow client: a cheap `Clone` handle on one pool of connections. When the last
/// handle is dropped, the pool closes (as by [`Client::close`], without waiting).
///
/// A clone is a new handle on the same pool that leans to the next slot: give each task its
/// own clone, and each task's requests keep to one connection while the pool is balanced
/// (see [`RequestOptions::affinity`]).
#[derive(Clone)]
pub struct Client {
    handle: ClientHandle<TokioRuntime, TokioSignals>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.handle.fmt(f)
    }
}

impl Client {
    /// Starts a client and dials every slot in parallel; returns once every first dial has
    /// settled, connected or failed (bounded by the handshake timeout, plus the configured
    /// initial dial spread). Failed slots keep retrying in the background, so the client is
    /// returned even when no connection could be opened (check [`Client::is_connected`]),
    /// except when the API key was refused.
    ///
    /// Fails on options that cannot work ([`ClientError::InvalidOptions`]), when not called
    /// within a Tokio runtime, and with [`ClientError::Rejected`] when the server refused the
    /// API key on every first dial (the client is then shut down: nothing keeps retrying).
    /// Use [`Client::start`] instead to keep retrying in the background whatever the first
    /// dials met, for example when the key may be provisioned after start-up.
    pub async fn connect(options: impl Into<ClientOptions>) -> Result<Client, ClientError> {
        let client = Client::start(options)?;
        client.shared().settled_or_rejected().await?;
        Ok(client)
    }

    /// Starts a client and its dials without waiting for them: requests fail with
    /// [`ClientError::NotConnected`] until a connection opens (or [`ClientError::Rejected`]
    /// while the server refuses the API key), while sends wait in the outbox. Slots keep
    /// retrying in the background on the backoff schedule, whatever the first dials met.
    /// Must be called within a Tokio runtime.
    pub fn start(options: impl Into<ClientOptions>) -> Result<Client, ClientError> {
        let options = options.into();
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::InvalidOptions("the client must be started within a Tokio runtime".into())
        })?;
        let dial = DialContext::new(&options, default_user_agent(), TlsConnector::from)?;
        let (events, subscriber) = events::channel(&options);
        let signals = TokioSignals::new(subscriber);
        let shared = Arc::new_cyclic(|weak| {
            let runtime = TokioRuntime {
                handle: handle.clone(),
                dial: Arc::new(dial),
                shared: weak.clone(),
                events,
            };
            Shared::new(&options, runtime, signals)
        });
        handle.spawn(drive(Arc::clone(&shared)));
        shared.connect();
        Ok(Client {
            handle: ClientHandle::new(shared, options.config().url()),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        self.handle.shared()
    }

    /// Sends `message` as a request with the configured timeout and waits for its reply.
    ///
    /// Fails at once with [`ClientError::NotConnected`], [`ClientError::Backpressure`] or
    /// [`ClientError::Closed`]; later with [`ClientError::Timeout`],
    /// [`ClientError::ConnectionLost`] or [`ClientError::Closed`]; a server's "no" is
    /// [`ClientError::Denied`]. Dropping the future cancels the request.
    pub async fn request(&self, message: Outgoing) -> Result<Incoming, ClientError> {
        self.request_with(message, RequestOptions::default()).await
    }

    /// [`Client::request`] with per-request options (timeout, idempotence, a preferred slot;
    /// without one, the request leans to this handle's slot).
    pub async fn request_with(
        &self,
        message: Outgoing,
        options: RequestOptions,
    ) -> Result<Incoming, ClientError> {
        let (waiter, outcome) = oneshot::channel();
        self.handle.request(message, options, waiter, outcome).await
    }

    /// Sends `message` fire-and-forget. It goes out at once on an open connection, or waits
    /// in the bounded outbox; [`ClientError::OutboxFull`] hands it back when that is full,
    /// [`ClientError::Closed`] when the client is closed. Every drop is counted in
    /// [`Client::stats`].
    pub fn send(&self, message: Outgoing) -> Result<(), ClientError> {
        self.shared().send(message)
    }

    /// Whether at least one connection is open.
    pub fn is_connected(&self) -> bool {
        self.shared().is_connected()
    }

    /// Whether the client was closed (by [`Client::close`] or by dropping every handle); it
    /// may still be finishing its pending requests and close handshakes.
    pub fn is_closed(&self) -> bool {
        self.shared().is_closed()
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> Stats {
        self.shared().stats()
    }

    /// The pool's availability, for fail-open decisions.
    pub fn availability(&self) -> Availability {
        self.shared().availability()
    }

    /// Subscribes to the client's events: pool events (connected, disconnected, reconnect
    /// scheduled, attempts exhausted, frame skipped, message dropped, availability changed),
    /// unsolicited frames, and [`ClientEvent::Stopped`] when the client closed.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            events: self.shared().signals().events.subscribe(),
        }
    }

    /// Closes the client: refuses new work, ends every pending request (after the configured
    /// close drain), sends a normal close frame on every connection, and waits until the
    /// driver stopped. Idempotent; bounded by the core's deadlines and the write wait.
    pub async fn close(&self) {
        self.shared().close().await;
    }
}

impl UsageFlowApi for Client {
    async fn request_with(
        &self,
        message: Outgoing,
        options: RequestOptions,
    ) -> Result<Incoming, ClientError> {
        Client::request_with(self, message, options).await
    }

    fn send(&self, message: Outgoing) -> Result<(), ClientError> {
        Client::send(self, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_debug_hides_key_and_url_credentials() {
        // Nothing listens on port 1: the dial fails, the client is there all the same.
        let url = "ws://alice:hunter2@127.0.0.1:1/ws?key=qk-777&token=tk-888";
        let config = Config::builder(url, "secret-123").pool_size(1).build().unwrap();
        let client = Client::start(config).unwrap();
        let debug = format!("{client:?}");
        for secret in ["secret-123", "hunter2", "qk-777", "tk-888"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(
            debug.contains("ws://***@127.0.0.1:1/ws?key=***&token=***"),
            "{debug}"
        );
        client.close().await;
    }
}
