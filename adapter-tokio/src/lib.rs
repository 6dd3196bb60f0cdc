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
//! This crate is [`Tokio`], the `usageflow-socket-client` [`Runtime`] for Tokio (tasks on the
//! runtime the client is started in, its timer, its TCP sockets), and [`Client`], the
//! runtime-independent client on it. Everything else — the pool, TLS, the WebSocket upgrade,
//! the reader, writer and driver tasks — is `usageflow-socket-client`'s, re-exported here.
//! The driver task sleeps until the core's next deadline; connection tasks hand their frames
//! straight to the core, so no task sits between a reply and its request.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::future::Future;
use std::io;
use std::time::Instant;

use async_tungstenite::tokio::TokioAdapter;
use tokio::net::TcpStream;
use tokio::runtime::Handle;

pub use usageflow_socket_client::*;

pub mod blocking;

/// The client on Tokio: `usageflow_socket_client::Client<Tokio>`. `Client::connect` and
/// `Client::start` must be called within a Tokio runtime; the client's tasks run on it.
pub type Client = usageflow_socket_client::Client<Tokio>;

/// Tokio as a [`Runtime`]: a handle on the runtime the client's tasks run on.
#[derive(Debug, Clone)]
pub struct Tokio {
    handle: Handle,
}

impl Tokio {
    /// The runtime of `handle`, for `Client::start_on` and `Client::connect_on`.
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }
}

impl Runtime for Tokio {
    type Tcp = TokioAdapter<TcpStream>;

    const USER_AGENT: &'static str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

    fn current() -> Result<Self, ClientError> {
        Handle::try_current().map(Self::new).map_err(|_| {
            ClientError::InvalidOptions("the client must be started within a Tokio runtime".into())
        })
    }

    /// Tokio offers no query for its timer: creating one on a runtime built without
    /// `enable_time()` panics, so the check creates one and catches that panic (the panic
    /// hook still prints its message once). Under `panic = "abort"` this aborts instead, as
    /// the driver task's first timer would.
    fn check(&self) -> Result<(), ClientError> {
        let _context = self.handle.enter();
        std::panic::catch_unwind(|| drop(tokio::time::sleep(std::time::Duration::ZERO))).map_err(|_| {
            ClientError::InvalidOptions(
                "the Tokio runtime has no timers: build it with enable_time() (or enable_all())".into(),
            )
        })
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(task);
    }

    /// The timer is created in the client's runtime's context, so `flush`, `send_confirmed`
    /// and `send_when_room` work from any thread.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        let _context = self.handle.enter();
        tokio::time::sleep_until(deadline.into())
    }

    async fn connect(&self, host: &str, port: u16) -> io::Result<Self::Tcp> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        Ok(TokioAdapter::new(tcp))
    }

    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<std::net::SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }

    /// Tokio re-polls a yielding task cheaply, after the other ready tasks: 8 was level with
    /// 2 and 4 at concurrency 64 and best at 16 and 256 (lowest server CPU and p99).
    fn writer_yields(&self) -> u32 {
        8
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

    #[test]
    fn start_outside_a_runtime_fails() {
        let config = Config::builder("ws://127.0.0.1:1/ws", "k").build().unwrap();
        assert!(matches!(
            Client::start(config),
            Err(ClientError::InvalidOptions(_))
        ));
    }
}
