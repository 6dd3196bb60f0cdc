//! `ufsock request` and `ufsock send`: one message to a UsageFlow server, from the command line.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;
use usageflow_socket_tokio::{Client, ClientError, Config, Outgoing, RequestOptions, Stats};

use crate::shared::{exit_code_of, parse_json, CmdResult, ConnArgs, EXIT_OK, EXIT_OTHER, EXIT_UNAVAILABLE};

/// Options of `ufsock request`.
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The message type, such as `get_application_policies` or `request_for_allocation`.
    #[arg(value_name = "TYPE")]
    kind: String,
    /// The payload, as JSON (default `null`).
    #[arg(value_name = "PAYLOAD-JSON", value_parser = parse_json)]
    payload: Option<Value>,
    /// How long to wait for the reply, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
}

/// Options of `ufsock send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The message type, such as `report_call_chain` or `use_allocation`.
    #[arg(value_name = "TYPE")]
    kind: String,
    /// The payload, as JSON (default `null`).
    #[arg(value_name = "PAYLOAD-JSON", value_parser = parse_json)]
    payload: Option<Value>,
    /// How long to wait for the message to be written and flushed, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
    /// Keep the message in a spool in this directory until the server confirms it: what is
    /// not confirmed within the timeout stays there, and the next `ufsock send --spool DIR`
    /// sends it first.
    #[arg(long, value_name = "DIR")]
    spool: Option<std::path::PathBuf>,
}

/// A one-connection pool that does not linger on reconnects (the command ends soon anyway).
fn config(conn: &ConnArgs, request_timeout: Duration) -> Result<Config, Box<dyn std::error::Error>> {
    Ok(Config::builder(conn.url.as_str(), conn.key.expose())
        .pool_size(1)
        .handshake_timeout(conn.connect_timeout())
        .request_timeout(request_timeout)
        .backoff_base(Duration::from_millis(100))
        .backoff_cap(Duration::from_secs(1))
        .build()?)
}

/// Why no connection opened, from the pool's counters.
fn connect_hint(stats: &Stats) -> &'static str {
    if stats.rejections > 0 {
        " (the server rejected the handshake: check the API key)"
    } else if stats.dial_failures > 0 {
        " (the connection could not be opened: check the URL and that the server runs)"
    } else {
        ""
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), serde_json::Error> {
    // Through a `Value`, so a raw payload is laid out like the rest of the frame.
    println!("{}", serde_json::to_string_pretty(&serde_json::to_value(value)?)?);
    Ok(())
}

/// Sends one request and prints its reply as pretty JSON (a denial's reply too, on stdout,
/// with the reason on stderr).
pub(crate) fn run_request(args: RequestArgs) -> CmdResult {
    let timeout = Duration::from_millis(args.timeout_ms);
    let config = config(&args.conn, timeout)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = match Client::connect(args.conn.proxy.client_options(config)).await {
            Ok(client) => client,
            // A refused key: the library says so itself ("the server rejected the API key").
            Err(e) => {
                eprintln!("ufsock: {e}");
                return Ok(ExitCode::from(exit_code_of(&e)));
            }
        };
        let message = Outgoing::new(args.kind, args.payload.unwrap_or(Value::Null));
        let result = client
            .request_with(message, RequestOptions::timeout(timeout))
            .await;
        let stats = client.stats();
        client.close().await;
        match result {
            Ok(reply) => {
                print_json(&reply)?;
                Ok(ExitCode::from(EXIT_OK))
            }
            Err(e) => {
                if let Some(reply) = e.denial() {
                    print_json(reply)?;
                }
                let hint = match e {
                    ClientError::NotConnected => connect_hint(&stats),
                    _ => "",
                };
                eprintln!("ufsock: {e}{hint}");
                Ok(ExitCode::from(exit_code_of(&e)))
            }
        }
    })
}

/// Sends one fire-and-forget message and waits (bounded) until it was flushed to the socket.
pub(crate) fn run_send(args: SendArgs) -> CmdResult {
    let wait = Duration::from_millis(args.timeout_ms);
    let config = config(&args.conn, Duration::from_secs(2))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let started = Instant::now();
        let mut options = args.conn.proxy.client_options_builder(config);
        if let Some(dir) = &args.spool {
            options = options.spool(usageflow_socket_client::spool::SpoolOptions::new(dir));
        }
        let client = match Client::connect(options.build()).await {
            Ok(client) => client,
            // A refused key: the library says so itself ("the server rejected the API key").
            Err(e) => {
                eprintln!("ufsock: {e}");
                return Ok(ExitCode::from(exit_code_of(&e)));
            }
        };
        let message = Outgoing::new(args.kind, args.payload.unwrap_or(Value::Null));
        if let Err(e) = client.send(message) {
            client.close().await;
            eprintln!("ufsock: {e}");
            return Ok(ExitCode::from(exit_code_of(&e)));
        }
        // The message is written now or waits in the outbox: wait until it was confirmed, or
        // ended otherwise (dropped, expired, unconfirmed), or the time is up.
        let deadline = started + wait;
        let _ = client
            .flush(deadline.saturating_duration_since(Instant::now()))
            .await;
        let stats = client.stats();
        let report = client.close().await;
        let s = &stats.sends;
        if s.replayed > 0 {
            eprintln!("ufsock: replayed {} messages an earlier run left in the spool", s.replayed);
        }
        let spooled: u64 = report.spooled.values().sum();
        if spooled > 0 {
            if let Some(dir) = &args.spool {
                eprintln!(
                    "ufsock: UsageFlow unavailable: {spooled} messages stay in the spool {}; the next `ufsock send --spool` sends them first",
                    dir.display()
                );
            }
            return Ok(ExitCode::from(EXIT_UNAVAILABLE));
        }
        if s.confirmed == s.sends && s.sends > 0 {
            eprintln!("ufsock: sent (confirmed by the server's WebSocket endpoint)");
            Ok(ExitCode::from(EXIT_OK))
        } else if s.queued + s.written > 0 {
            eprintln!(
                "ufsock: UsageFlow unavailable: the message was not confirmed within {} ms{}",
                args.timeout_ms,
                connect_hint(&stats)
            );
            Ok(ExitCode::from(EXIT_UNAVAILABLE))
        } else if s.unconfirmed + s.dropped + s.expired > 0 {
            eprintln!("ufsock: UsageFlow unavailable: the message was not delivered ({s:?})");
            Ok(ExitCode::from(EXIT_UNAVAILABLE))
        } else {
            eprintln!("ufsock: the message was not sent ({s:?})");
            Ok(ExitCode::from(EXIT_OTHER))
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Args as _;

    use super::*;
    use crate::shared::tests::{assert_hidden, parse, SECRET_URL};

    #[test]
    fn request_args_debug_hides_key_and_url_credentials() {
        let args: RequestArgs = parse(&[
            "--url",
            SECRET_URL,
            "--key",
            "secret-123",
            "get_application_policies",
        ]);
        assert_hidden("RequestArgs' Debug", &format!("{args:?}"));
        assert_hidden("RequestArgs' pretty Debug", &format!("{args:#?}"));
        assert!(format!("{args:?}").contains("get_application_policies"));
        // The client still gets the URL and the key as they were given.
        let config = config(&args.conn, Duration::from_secs(1)).unwrap();
        assert_eq!(config.url(), SECRET_URL);
        assert_eq!(config.api_key().expose(), "secret-123");
    }

    /// `--proxy` sends `request` and `send` through the proxy (a tunnel each), and its
    /// credentials stay out of `Debug`.
    #[test]
    fn request_and_send_go_through_the_proxy() {
        use usageflow_socket_server::{ProxyOptions, ProxyThread, ServerOptions, ServerThread};
        let server = ServerThread::spawn(ServerOptions {
            key: Some("k-1".into()),
            ..Default::default()
        })
        .unwrap();
        let proxy = ProxyThread::spawn(ProxyOptions {
            credentials: Some(("alice".into(), "hunter2".into())),
            ..Default::default()
        })
        .unwrap();
        let proxy_url = proxy.url_with_credentials("alice", "hunter2");
        let url = server.url();
        let common = [
            "--url",
            url.as_str(),
            "--key",
            "k-1",
            "--proxy",
            proxy_url.as_str(),
        ];
        let args: RequestArgs = parse(&[&common[..], &["get_application_policies"]].concat());
        assert!(!format!("{args:?}").contains("hunter2"), "{args:?}");
        assert_eq!(run_request(args).unwrap(), ExitCode::from(EXIT_OK));
        let args: SendArgs = parse(&[&common[..], &["report_call_chain", "{}"]].concat());
        assert_eq!(run_send(args).unwrap(), ExitCode::from(EXIT_OK));
        assert_eq!(proxy.counters().tunnels_opened(), 2);
        assert_eq!(server.counters().requests("get_application_policies"), 1);
        assert_eq!(server.counters().fire_and_forget("report_call_chain"), 1);
    }

    /// Without `--proxy` the environment's proxy applies (the library's rules), unless
    /// `--no-proxy-env`; the two flags exclude each other.
    #[test]
    fn the_proxy_environment_applies_unless_turned_off() {
        let config = || Config::builder("ws://127.0.0.1:9/ws", "k").build().unwrap();
        let args: RequestArgs = parse(&["--key", "k", "get_application_policies"]);
        assert!(args.conn.proxy.client_options(config()).proxy_from_env());
        let args: RequestArgs = parse(&["--key", "k", "--no-proxy-env", "get_application_policies"]);
        let options = args.conn.proxy.client_options(config());
        assert!(!options.proxy_from_env());
        assert_eq!(options.resolve_proxy_redacted().unwrap(), None);
        let args: RequestArgs = parse(&["--key", "k", "--proxy", "http://u:p@proxy:3128", "x"]);
        let options = args.conn.proxy.client_options(config());
        assert_eq!(
            options.resolve_proxy_redacted().unwrap().as_deref(),
            Some("http://***@proxy:3128")
        );
        let both = RequestArgs::augment_args(clap::Command::new("t")).try_get_matches_from([
            "t",
            "--key",
            "k",
            "--proxy",
            "http://proxy:3128",
            "--no-proxy-env",
            "x",
        ]);
        assert!(both.is_err(), "--proxy and --no-proxy-env together");
    }

    #[test]
    fn send_args_debug_hides_key_and_url_credentials() {
        let args: SendArgs = parse(&["--url", SECRET_URL, "--key", "secret-123", "use_allocation", "{}"]);
        assert_hidden("SendArgs' Debug", &format!("{args:?}"));
        assert_hidden("SendArgs' pretty Debug", &format!("{args:#?}"));
        assert!(format!("{args:?}").contains("use_allocation"));
    }
}
