//! What several subcommands share: the connection options, the exit codes, JSON payload
//! parsing, error kinds, and the runtime builder.

use std::convert::Infallible;
use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use usageflow_socket_core::redact_url;
use usageflow_socket_tokio::{ClientError, ClientOptions, ClientOptionsBuilder, Config};

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

/// A secret given on the command line or in the environment, such as an API key. Its `Debug`
/// shows `***`, so the argument structs holding one can derive `Debug`;
/// [`SecretArg::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretArg(String);

impl SecretArg {
    /// The secret itself. Never print it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretArg {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A URL given on the command line or in the environment. Its `Debug` shows it with its
/// credentials (userinfo, query values) redacted; [`UrlArg::as_str`] reads it whole.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct UrlArg(String);

impl UrlArg {
    /// The URL itself, credentials included: to dial, not to print.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UrlArg {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for UrlArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

/// Where to connect and with which key. `Debug` shows neither the key nor the URL's
/// credentials.
#[derive(Debug, Args, Clone)]
pub(crate) struct ConnArgs {
    /// WebSocket URL of the UsageFlow server.
    // The environment's value stays out of `--help`: it may hold credentials.
    #[arg(
        long,
        env = "USAGEFLOW_URL",
        hide_env_values = true,
        default_value = "ws://127.0.0.1:9000/ws"
    )]
    pub(crate) url: UrlArg,
    /// The API key, sent as `x-usage-key` (never printed).
    #[arg(long, env = "USAGEFLOW_API_KEY", hide_env_values = true)]
    pub(crate) key: SecretArg,
    /// Handshake timeout, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub(crate) connect_timeout_ms: u64,
    #[command(flatten)]
    pub(crate) proxy: ProxyArgs,
}

/// How the client reaches the server: directly or through an HTTP proxy, with the library's
/// rules (`ClientOptionsBuilder::proxy` and `proxy_from_env`). `Debug` hides the proxy's
/// credentials.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct ProxyArgs {
    /// HTTP proxy to tunnel through (CONNECT): `http://[user:pass@]host[:port]`, credentials
    /// never printed. Without it the proxy environment applies, as curl reads it:
    /// https_proxy / HTTPS_PROXY for wss://, http_proxy / HTTP_PROXY for ws://, then
    /// all_proxy / ALL_PROXY, except the hosts in no_proxy / NO_PROXY.
    #[arg(long, value_name = "URL")]
    pub(crate) proxy: Option<UrlArg>,
    /// Ignore the proxy environment variables: connect directly unless --proxy is given.
    #[arg(long, conflicts_with = "proxy")]
    pub(crate) no_proxy_env: bool,
}

impl ProxyArgs {
    /// The client options for `config`: through `--proxy`, else through the environment's
    /// proxy for the URL (unless `--no-proxy-env`); the library applies its rules.
    pub(crate) fn client_options(&self, config: Config) -> ClientOptions {
        self.client_options_builder(config).build()
    }

    /// The client options' builder with these proxy settings, for callers that add more.
    pub(crate) fn client_options_builder(&self, config: Config) -> ClientOptionsBuilder {
        let builder = ClientOptions::builder(config);
        match &self.proxy {
            Some(url) => builder.proxy(url.as_str()),
            None => builder.proxy_from_env(!self.no_proxy_env),
        }
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;

    /// A URL with a password in its userinfo and keys in its query.
    pub(crate) const SECRET_URL: &str = "ws://alice:hunter2@127.0.0.1:9/ws?key=qk-777&token=tk-888";
    /// What must never show: the key and the URL's credentials.
    pub(crate) const SECRETS: [&str; 4] = ["secret-123", "hunter2", "qk-777", "tk-888"];

    /// Parses `argv` (without the program name) into `T`, as clap does for a subcommand.
    pub(crate) fn parse<T: Args + FromArgMatches>(argv: &[&str]) -> T {
        let command = T::augment_args(clap::Command::new("t"));
        let matches = command
            .try_get_matches_from(std::iter::once("t").chain(argv.iter().copied()))
            .unwrap();
        T::from_arg_matches(&matches).unwrap()
    }

    /// Asserts that none of [`SECRETS`] shows in `text`.
    pub(crate) fn assert_hidden(what: &str, text: &str) {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
        }
    }

    #[test]
    fn secret_arg_debug_hides_the_secret() {
        let secret: SecretArg = "secret-123".parse().unwrap();
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(***)");
        assert_eq!(secret.expose(), "secret-123");
    }

    #[test]
    fn url_arg_debug_hides_credentials() {
        let url: UrlArg = SECRET_URL.parse().unwrap();
        assert_hidden("UrlArg's Debug", &format!("{url:?}"));
        assert_eq!(
            format!("{url:?}"),
            r#""ws://***@127.0.0.1:9/ws?key=***&token=***""#
        );
        assert_eq!(url.as_str(), SECRET_URL);
        let plain: UrlArg = "ws://127.0.0.1:9000/ws".parse().unwrap();
        assert_eq!(format!("{plain:?}"), r#""ws://127.0.0.1:9000/ws""#);
    }

    #[test]
    fn conn_args_debug_hides_key_and_url_credentials() {
        let args: ConnArgs = parse(&["--url", SECRET_URL, "--key", "secret-123"]);
        assert_hidden("ConnArgs' Debug", &format!("{args:?}"));
        assert_hidden("ConnArgs' pretty Debug", &format!("{args:#?}"));
        assert!(format!("{args:?}").contains("127.0.0.1:9/ws"));
    }
}
