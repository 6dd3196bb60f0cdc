//! Quickstart: connect, ask for the application's configuration, meter one call, close.
//!
//! Start a local server first (`ufsock serve`), then:
//!
//! ```text
//! USAGEFLOW_URL=ws://localhost:9000/ws USAGEFLOW_API_KEY=dev-key cargo run -p usageflow-socket-smol --example smol_quickstart
//! ```

use std::time::Duration;

use usageflow_socket_smol::messages::{RequestForAllocation, UseAllocation};
use usageflow_socket_smol::{Client, ClientEvent, Config, UsageFlowApi};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol::block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();

    let url = std::env::var("USAGEFLOW_URL").unwrap_or_else(|_| "ws://localhost:9000/ws".into());
    let key = std::env::var("USAGEFLOW_API_KEY").unwrap_or_else(|_| "dev-key".into());
    let config = Config::builder(url, key)
        .pool_size(2)
        .request_timeout(Duration::from_secs(2))
        .build()?;

    let client = Client::connect(config).await?;
    println!(
        "connected: {} ({:?})",
        client.is_connected(),
        client.availability()
    );

    // Watch the client's events in the background.
    let mut events = client.subscribe();
    smol::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let ClientEvent::Stopped = event {
                break;
            }
            println!("event: {event:?}");
        }
    })
    .detach();

    match client.get_application_config().await {
        Ok(config) => println!("monitoring {} paths", config.monitoring_paths.len()),
        Err(e) if e.is_denied() => println!("denied: {e}"),
        Err(e) => println!("unavailable, failing open: {e}"),
    }

    let allocation = RequestForAllocation {
        alias: "ledger-1".into(),
        amount: 1.0,
        ..Default::default()
    };
    match client.request_for_allocation(&allocation).await {
        Ok(reply) => {
            // Fire-and-forget: report the use of the allocation.
            let usage = UseAllocation {
                alias: "ledger-1".into(),
                amount: 1.0,
                allocation_id: reply.allocation_id,
                ..Default::default()
            };
            client.use_allocation(&usage).await?;
        }
        Err(e) => println!("allocation failed: {e}"),
    }

    println!("stats: {:?}", client.stats());
    client.close().await;
    Ok(())
}
