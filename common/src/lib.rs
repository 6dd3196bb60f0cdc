//! Runtime-independent glue shared by the usageflow-socket adapters (Tokio, smol).
//!
//! The core (`usageflow-socket-core`) decides everything and does no I/O. This crate holds
//! everything an adapter needs beyond its runtime's calls, so the adapters read as the same
//! program in two dialects:
//!
//! - [`ClientError`]: the error of a request or send, split into *unavailable* and *denied*
//!   for fail-open hosts ([`ClientError::is_unavailable`], [`ClientError::is_denied`]).
//! - [`ClientOptions`]: the core [`Config`](usageflow_socket_core::Config) plus TLS roots, the
//!   seed and the event stream's byte budget.
//! - [`handshake`]: the upgrade request (`x-usage-key`, `User-Agent`), the rustls
//!   configuration on the `ring` provider, the WebSocket limits, the mapping of tungstenite
//!   errors.
//! - [`Driver`] over a [`Runtime`]: the pool, the request waiters, every connection's handles,
//!   and the execution of every output; an adapter's driver task just feeds [`Report`]s and
//!   sleeps until [`Driver::poll_timeout`].
//! - [`io`]: the reader and writer loops over `futures` traits ([`run_connection`],
//!   [`run_writer`]) and the [`CancelOnDrop`] guard.
//! - [`Shared`]: the driver behind its lock plus the adapter's [`Signals`], with every client
//!   operation written once ([`Shared::request`], [`Shared::send`], [`Shared::close`], the
//!   getters) and the driver task's [`Shared::turn`]; [`ClientHandle`] closes on drop.
//! - [`events`]: the event stream of both adapters, bounded in events and in the bytes of the
//!   unsolicited frames it holds ([`EventPublisher`], [`EventSubscriber`]).
//! - [`UsageFlowApi`]: typed helpers for every message type, over two required methods.
//!
//! Nothing here depends on an async runtime.
#![forbid(unsafe_code)]

pub mod api;
pub mod driver;
pub mod error;
pub mod events;
pub mod handshake;
pub mod io;
mod log_limit;
pub mod options;
pub mod shared;

pub use api::UsageFlowApi;
pub use driver::{log_event, ClientEvent, Driver, Runtime};
pub use error::{ClientError, ErrorClass};
pub use events::{EventPublisher, EventSubscriber};
pub use io::{
    run_connection, run_reader, run_writer, CancelOnDrop, FlushedWrites, Report, ReportSink, WriteCommand,
    WriteQueue,
};
pub use options::{ClientOptions, ClientOptionsBuilder};
pub use shared::{ClientHandle, DirectReports, DriverState, Shared, Signals, StopOnExit, Turn};

/// The tungstenite version the helpers speak (re-exported for the adapters).
pub use tungstenite;
