//! Sans-IO core of the UsageFlow WebSocket client.
#![forbid(unsafe_code)]

mod backoff;
pub mod config;
pub mod frame;
pub mod io;
pub mod messages;
mod pool;
pub mod stats;

pub use config::{ApiKey, Config, ConfigBuilder, ConfigError};
pub use frame::{FrameError, Incoming, Outgoing};
pub use io::*;
pub use pool::Pool;
pub use stats::{SendStats, Stats};
