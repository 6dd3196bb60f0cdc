//! `ufsock`: the UsageFlow socket tool.
//!
//! Subcommands live in their own modules (`cmd_*.rs`); this file only parses the command line,
//! sets up logging and dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cmd_demo;
mod cmd_demo_spool;
mod cmd_request;
mod cmd_serve;
mod cmd_spool;
mod procstat;
mod shared;

/// UsageFlow socket tool: a local UsageFlow-compatible server, and clients to talk to one.
#[derive(Debug, Parser)]
#[command(name = "ufsock", version, about, after_help = shared::EXIT_CODES_HELP)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local UsageFlow-compatible WebSocket server (with optional fault injection).
    Serve(cmd_serve::ServeArgs),
    /// Send one request and print its reply as JSON.
    #[command(after_help = shared::EXIT_CODES_HELP)]
    Request(cmd_request::RequestArgs),
    /// Send one fire-and-forget message and wait until it is flushed.
    #[command(after_help = shared::EXIT_CODES_HELP)]
    Send(cmd_request::SendArgs),
    /// Measure throughput, latency, CPU and memory of the pooled client (and of a bare client).
    #[command(after_help = bench::AFTER_HELP)]
    Bench(bench::BenchArgs),
    /// Start a local server, drive a pool through a workload, an outage and a recovery.
    Demo(cmd_demo::DemoArgs),
    /// Look into an on-disk spool (`spool inspect DIR`).
    Spool(cmd_spool::SpoolArgs),
    /// The demo's child process for its spool phase (streams until killed).
    #[command(hide = true)]
    SpoolChild(cmd_demo_spool::ChildArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and bench print their own story; keep the library's logs for real problems.
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    // With the `metrics` feature, the client's metrics go to a real recorder (never served):
    // what a bench measures includes recording them.
    #[cfg(feature = "metrics")]
    match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        // As a service would: drain the histograms' samples now and then.
        Ok(handle) => {
            std::thread::spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                handle.run_upkeep();
            });
        }
        Err(e) => eprintln!("ufsock: no metrics recorder: {e}"),
    }
    let result = match cli.command {
        Command::Serve(args) => cmd_serve::run(args).map(|()| ExitCode::SUCCESS),
        Command::Request(args) => cmd_request::run_request(args),
        Command::Send(args) => cmd_request::run_send(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => cmd_demo::run(args),
        Command::Spool(args) => cmd_spool::run(args),
        Command::SpoolChild(args) => cmd_demo_spool::run_child(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ufsock: {e}");
            ExitCode::from(shared::EXIT_OTHER)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::tests::{assert_hidden, SECRET_URL};

    #[test]
    fn help_never_shows_environment_values() {
        // Every argument read from the environment is a key or a URL, which may hold
        // credentials: `--help` names the variable, never its value.
        let command = <Cli as clap::CommandFactory>::command();
        let mut checked = 0;
        for sub in command.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| a.get_env().is_some()) {
                assert!(
                    arg.is_hide_env_values_set(),
                    "{} --{}",
                    sub.get_name(),
                    arg.get_id()
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 7, "serve: key; request, send, bench: url and key");
    }

    #[test]
    fn cli_debug_hides_keys_and_url_credentials() {
        let key = ["--key", "secret-123"];
        let url = ["--url", SECRET_URL];
        for argv in [
            vec!["serve"],
            vec!["request", "get_application_policies"],
            vec!["send", "use_allocation"],
            vec!["bench"],
        ] {
            let mut argv = [&["ufsock"][..], &argv].concat();
            argv.extend(key);
            if argv[1] != "serve" {
                argv.extend(url);
            }
            let cli = Cli::try_parse_from(&argv).unwrap();
            assert_hidden("Cli's Debug", &format!("{cli:?}"));
        }
    }
}
