//! `ufsock`: the UsageFlow socket tool.
//!
//! Subcommands live in their own modules (`cmd_*.rs`); this file only parses the command line,
//! sets up logging and dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd_serve;

/// UsageFlow socket tool: a local UsageFlow-compatible server, and clients to talk to one.
#[derive(Debug, Parser)]
#[command(name = "ufsock", version, about)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => cmd_serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ufsock: {e}");
            ExitCode::FAILURE
        }
    }
}
