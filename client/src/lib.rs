//! UsageFlow WebSocket client for any async runtime: a pool of connections with
//! request/response correlation, fire-and-forget messages, reconnection with backoff and
//! ping/pong health. One [`Client`] serves every runtime through the small [`Runtime`] trait;
//! `usageflow-socket-tokio` and `usageflow-socket-smol` implement it for Tokio and smol.
//!
//! ```
//! use usageflow_socket_client::messages::RequestForAllocation;
//! use usageflow_socket_client::{Client, Config, UsageFlowApi};
//! # use std::future::Future;
//! # use std::time::Instant;
//! # use usageflow_socket_client::{ClientError, Runtime};
//! # /// smol's global executor (see [`Runtime`]'s docs).
//! # struct Smol;
//! # impl Runtime for Smol {
//! #     type Tcp = smol::net::TcpStream;
//! #     fn current() -> Result<Self, ClientError> { Ok(Smol) }
//! #     fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) { smol::spawn(task).detach(); }
//! #     fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> + Send + 'static {
//! #         async move { smol::Timer::at(at).await; }
//! #     }
//! #     async fn connect(&self, host: &str, port: u16) -> std::io::Result<Self::Tcp> {
//! #         let tcp = smol::net::TcpStream::connect((host, port)).await?;
//! #         tcp.set_nodelay(true)?;
//! #         Ok(tcp)
//! #     }
//! # }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // A local UsageFlow-compatible server (`usageflow_socket_server`, on a thread of its own) stands in
//! # // for the service.
//! # let server = usageflow_socket_server::ServerThread::spawn(usageflow_socket_server::ServerOptions {
//! #     key: Some("my-api-key".into()),
//! #     ..Default::default()
//! # })?;
//! # let url = server.url();
//! smol::block_on(async {
//!     // `url` is the service's WebSocket address, such as "wss://usageflow.example/ws".
//!     let config = Config::builder(url, "my-api-key").pool_size(4).build()?;
//!     // `Smol` is a `Runtime`; the adapters export their runtime and a `Client` alias.
//!     let client = Client::<Smol>::connect(config).await?;
//!     assert!(client.is_connected());
//!
//!     // A typed request.
//!     let policies = client.get_application_policies().await?;
//!     println!("{} policies", policies.total);
//!
//!     // Fail open: let the host's request through when UsageFlow cannot answer.
//!     let allocation = RequestForAllocation { alias: "ledger-1".into(), amount: 1.0, ..Default::default() };
//!     match client.request_for_allocation(&allocation).await {
//!         Ok(reply) => println!("allocated {}", reply.allocation_id),
//!         Err(e) if e.is_denied() => println!("denied: {}", e.denial_text().unwrap_or_default()),
//!         Err(e) => println!("UsageFlow unavailable ({e}); letting the call through"),
//!     }
//!
//!     client.close().await;
//!     assert!(client.is_closed());
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })
//! # }
//! ```
//!
//! # How it works
//!
//! The decisions (correlation, selection, deadlines, backoff, liveness, outbox) are made by
//! the sans-IO core, `usageflow-socket-core`. This crate carries them out, once for every
//! runtime:
//!
//! - the [`Client`] is a cheap `Clone` handle. An application command (request, send, cancel,
//!   close) locks the driver state (a `std::sync::Mutex`, never held across an `.await`), runs
//!   the core and carries out its outputs at once, and wakes the driver task only when the
//!   next deadline moved earlier;
//! - each connection has a **task** (dial: TCP from the [`Runtime`], TLS with
//!   `futures-rustls`, the WebSocket upgrade with `async-tungstenite`; then read) and a
//!   **writer task**. The reader hands every frame already received to the core in one batch
//!   under the lock, and wakes the requests it completed after releasing it;
//! - one **driver task** owns the clock: it sleeps until the core's next deadline (the
//!   runtime's one timer) and handles it. It is off the request path.
//!
//! Every deadline (handshake, write, read, request, backoff) is the core's; the client has no
//! timeout of its own beyond the one timer of the driver task. Tracing events report
//! connects, disconnects with their reason, scheduled reconnects, exhausted attempts, skipped
//! frames and dropped messages (these two rate-limited: the first, then one summary per 10 s),
//! and, in one ERROR line, whatever a client that ended without `close` could not deliver;
//! they are written after the client's lock is released, and the API key never appears in a
//! log or an error.
//!
//! # Metrics
//!
//! With the optional `metrics` feature (off by default; the adapters pass it through), the
//! client publishes its counters through the [`metrics`](https://docs.rs/metrics) facade to
//! whatever recorder the application installs, such as `metrics-exporter-prometheus`:
//! `usageflow_requests_total{outcome}`, `usageflow_request_duration_seconds{outcome}` (a
//! histogram), `usageflow_messages_total{type,state}`, `usageflow_messages{type,state}`
//! (queued and written now), `usageflow_message_confirm_seconds` (a histogram),
//! `usageflow_open_connections`, `usageflow_availability` (0 unavailable, 1 degraded,
//! 2 available), `usageflow_dials_total`, `usageflow_reconnects_total`,
//! `usageflow_handshakes_rejected_total`, `usageflow_disconnects_total` and a few more.
//! They come from [`Client::stats`]'s counters, published by the driver task at most once a
//! second, on every [`Client::stats`] call, and when the client stops; the only work added to
//! a request is timing it. Message types in labels are bounded (64 named, the rest
//! `"*other*"`). Gauges move by differences, so several clients in one process add up
//! (except `usageflow_availability`: the last client to publish sets it).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod api;
mod client;
mod driver;
mod error;
mod events;
mod eyeballs;
mod handshake;
mod io;
mod leftovers;
mod live;
mod log_limit;
mod logs;
#[cfg(feature = "metrics")]
mod metrics_bridge;
mod options;
mod proxy;
mod receipt;
mod runtime;
mod shared;
#[cfg(feature = "spool")]
pub mod spool;
#[cfg(feature = "spool")]
mod spooling;

pub use api::{decode_reply, UsageFlowApi};
pub use client::{Client, RecvError, Subscription, TryRecvError};
pub use driver::ClientEvent;
pub use error::{ClientError, ErrorClass};
pub use events::{DEFAULT_MAX_UNSOLICITED_BYTES, EVENT_CAPACITY};
pub use eyeballs::ConnectAttemptsFailed;
pub use options::{
    ClientOptions, ClientOptionsBuilder, DEFAULT_CONNECT_ATTEMPT_DELAY, DEFAULT_CONNECT_ATTEMPT_TIMEOUT,
};
pub use receipt::Receipt;
pub use runtime::Runtime;
pub use shared::CloseReport;
pub use usageflow_socket_core::{
    messages, ApiKey, Availability, CloseReason, Config, ConfigBuilder, ConfigError, ConnId, Delivery,
    DialError, DialIoError, DialStage, DisconnectReason, DropReason, Event, FrameError, Incoming,
    LatencySummary, MessageFate, MessageId, Outgoing, Payload, RequestOptions, SendOptions, SendStats, Stats,
    UnconfirmedReason, Undelivered,
};
