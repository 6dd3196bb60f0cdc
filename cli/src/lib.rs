//! `ufsock`: the UsageFlow socket tool.
//!
//! The library half holds what the binary's subcommands and the workspace's integration tests
//! share. Today that is [`server`]: a local UsageFlow-compatible WebSocket server with
//! runtime-switchable fault injection (`ufsock serve`).

pub mod server;
