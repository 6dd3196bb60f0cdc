//! Sans-IO core of the UsageFlow WebSocket client.
//!
//! [`Pool`] is a pure state machine that makes every decision of the client: which connection
//! takes a request, how replies are correlated, when a request times out, when to ping, when
//! a connection is dead, when to reconnect and with what backoff, what happens to
//! fire-and-forget messages while no connection is open, and how the pool closes. It does no
//! I/O, spawns nothing, never reads the clock and never touches OS randomness: the caller
//! passes the current time and a seed, feeds I/O results in and carries actions out. That is
//! what lets the same core run on Tokio, on smol, on a plain thread, in a deterministic
//! simulation (the `sim` module, behind the `sim` feature) and under a fuzzer.
//!
//! # The contract
//!
//! The methods come in four families (the shape of quinn-proto):
//!
//! | family | methods |
//! | --- | --- |
//! | getters | [`Pool::stats`], [`Pool::is_connected`], [`Pool::availability`], [`Pool::slot_state`], [`Pool::is_settled`], [`Pool::live_messages`] |
//! | I/O results | [`Pool::handle_input`], [`Pool::handle_timeout`] |
//! | application commands | [`Pool::connect`], [`Pool::request`], [`Pool::send`], [`Pool::send_with`], [`Pool::flush`], [`Pool::cancel`], [`Pool::close`], [`Pool::take_undelivered`] |
//! | outputs | [`Pool::poll_output`], [`Pool::poll_timeout`] |
//!
//! **The drain rule:** after every call of the I/O or command families, call
//! [`Pool::poll_output`] until it returns `None` and carry out each [`Output`]; then read
//! [`Pool::poll_timeout`] and call [`Pool::handle_timeout`] when that instant comes.
//!
//! # Example
//!
//! One request round trip, with the "network" played by hand:
//!
//! ```
//! use std::time::Instant;
//! use usageflow_socket_core::{Config, Input, Outcome, Output, Pool, RequestOptions, messages};
//!
//! let config = Config::builder("ws://127.0.0.1:9000/ws", "my-api-key").pool_size(1).build()?;
//! let now = Instant::now();
//! let mut pool = Pool::new(config, 42, now);
//!
//! // Connect: the pool asks for a dial; we pretend it succeeded.
//! pool.connect(now);
//! let Some(Output::Dial { conn }) = pool.poll_output() else { unreachable!() };
//! pool.handle_input(now, Input::Connected { conn });
//! while pool.poll_output().is_some() {} // Connected and availability events
//!
//! // A request: the pool hands us the frame to write.
//! let id = pool.request(now, messages::get_application_policies(), RequestOptions::default())?;
//! let Some(Output::Transmit { frame, .. }) = pool.poll_output() else { unreachable!() };
//! assert!(frame.contains("get_application_policies"));
//!
//! // The server's reply comes back on the socket.
//! let reply = format!(r#"{{"type":"success","payload":{{"policies":[],"total":0}},"replyTo":"{id}"}}"#);
//! pool.handle_input(now, Input::Text { conn, text: &reply });
//! let Some(Output::Completed { id: done, outcome: Outcome::Reply(frame) }) = pool.poll_output() else {
//!     unreachable!()
//! };
//! assert_eq!(done, id);
//! let policies: messages::PoliciesReply = frame.payload_as()?;
//! assert_eq!(policies.total, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `core/examples/blocking.rs` drives the pool over real sockets from one plain thread.
//!
//! Fire-and-forget messages are confirmed by ping barriers and sent at most or at least once:
//! see the [`delivery`] module for what "confirmed" proves.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
pub mod config;
pub mod delivery;
mod dial_io;
mod error;
mod event;
pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "fuzzing")))]
pub mod fuzzing;
mod input;
pub mod messages;
mod output;
mod pool;
mod request;
#[cfg(any(test, feature = "sim"))]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod spool;
pub mod stats;

pub use config::{redact_url, ApiKey, Config, ConfigBuilder, ConfigError, EnvError};
pub use delivery::{Delivery, MessageFate, MessageId, SendOptions, UnconfirmedReason, Undelivered};
pub use dial_io::{DialIoError, DialStage};
pub use error::{RequestError, RequestFailure, SendError, SendRefusal};
pub use event::{Availability, DisconnectReason, DropReason, Event};
pub use frame::{EncodedRequest, EncodedSend, FrameError, Incoming, Outgoing, Payload};
pub use input::{CloseReason, DialError, Input};
pub use output::{Outcome, Output};
pub use pool::{Pool, AVAILABILITY_HOLD};
pub use request::{ConnId, RequestId, RequestIdBuildHasher, RequestIdHasher, RequestOptions, SlotState};
pub use spool::{Restored, SpoolOpenError, SpoolOpened, SpoolRecord};
pub use stats::{LatencySummary, SendStats, Stats};
