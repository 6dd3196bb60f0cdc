//! What several subcommands share: the connection options, the exit codes, JSON payload
//! parsing, error kinds, and the runtime builder.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use usageflow_socket_tokio::ClientError;

/// Exit code: success.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code: any other failure (bad options, I/O errors, a bench run with errors).
pub(crate) const EXIT_OTHER: u8 = 1;
/// Exit code: the command line could not be parsed (clap's own code).
#[allow(dead_code, reason = "documents clap's code beside ours")]
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code: the server answered with a denial.
pub(crate) const EXIT_DENIED: u8 = 3;
/// Exit code: UsageFlow was unavailable (not connected, timeout, connection lost, outbox full).
pub(crate) const EXIT_UNAVAILABLE: u8 = 4;

/// The exit-code table, for `--help`.
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other failure (invalid options, I/O error, a bench run with errors)
  2  usage error (the command line could not be parsed)
  3  denied: the server answered with an error reply
  4  unavailable: not connected, timeout, connection lost, or not flushed in time";

/// What a subcommand ends with: an exit code, or an error printed as `ufsock: <error>` with
/// [`EXIT_OTHER`].
pub(crate) type CmdResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Where to connect and with which key.
#[derive(Debug, Args, Clone)]
pub(crate) struct ConnArgs {
    /// WebSocket URL of the UsageFlow server.
    #[arg(long, env = "USAGEFLOW_URL", default_value = "ws://127.0.0.1:9000/ws")]
    pub(crate) url: String,
    /// The API key, sent as `x-usage-key` (never printed).
    #[arg(long, env = "USAGEFLOW_API_KEY", hide_env_values = true)]
    pub(crate) key: String,
    /// Handshake timeout, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub(crate) connect_timeout_ms: u64,
}

impl ConnArgs {
    /// The handshake timeout.
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// Parses a JSON value for clap (a usage error when it is not JSON).
pub(crate) fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

/// A short stable name for an error, for counting errors by kind.
pub(crate) fn error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::NotConnected => "not_connected",
        ClientError::Timeout => "timeout",
        ClientError::ConnectionLost(_) => "connection_lost",
        ClientError::Closed => "closed",
        ClientError::Backpressure { .. } => "backpressure",
        ClientError::OutboxFull(_) => "outbox_full",
        ClientError::Cancelled => "cancelled",
        ClientError::Denied(_) => "denied",
        ClientError::InvalidReply { .. } => "invalid_reply",
        ClientError::InvalidOptions(_) => "invalid_options",
        _ => "other",
    }
}

/// The exit code of a client error: denied, unavailable, or other.
pub(crate) fn exit_code_of(e: &ClientError) -> u8 {
    if e.is_denied() {
        EXIT_DENIED
    } else if e.is_unavailable() {
        EXIT_UNAVAILABLE
    } else {
        EXIT_OTHER
    }
}

/// A multi-threaded Tokio runtime (`threads` workers, 0 for one per core) whose threads are
/// named `name`.
pub(crate) fn runtime(threads: usize, name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name(name);
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.build()
}
