//! Quickstart on smol: connect, meter a few calls fire-and-forget while watching the event
//! stream, check the blocked endpoints, close. (`usageflow-socket-tokio`'s quickstart walks
//! through allocations; the client is the same on both runtimes.)
//!
//! Start a local server first (`ufsock serve`), then:
//!
//! ```text
//! USAGEFLOW_URL=ws://localhost:9000/ws USAGEFLOW_API_KEY=dev-key cargo run -p usageflow-socket-smol --example smol_quickstart
//! ```

use smol::stream::StreamExt;
use usageflow_socket_smol::messages::ReportCallChain;
use usageflow_socket_smol::{Client, ClientEvent, ClientOptions, Config, UsageFlowApi};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let url = std::env::var("USAGEFLOW_URL").unwrap_or_else(|_| "ws://localhost:9000/ws".into());
    let key = std::env::var("USAGEFLOW_API_KEY").unwrap_or_else(|_| "dev-key".into());
    let options = ClientOptions::builder(Config::builder(url, key).pool_size(2).build()?).build();

    smol::block_on(async {
        let client = Client::connect(options).await?;
        println!("connected: {}", client.is_connected());

        // The event stream is also a `futures` `Stream`.
        let mut events = client.subscribe();
        let watcher = smol::spawn(async move {
            while let Some(event) = events.next().await {
                println!("event: {event:?}");
                if event == ClientEvent::Stopped {
                    break;
                }
            }
        });

        // Metering messages go out at once, or wait in the bounded outbox.
        for n in 0..3u64 {
            let report = ReportCallChain {
                method: "GET".into(),
                url: format!("/orders/{n}"),
                call_chain: "gateway>orders".into(),
                timestamp: n.into(),
                usageflow_request_id: None,
            };
            client.report_call_chain(&report)?;
        }

        match client.get_blocked_endpoints().await {
            Ok(blocked) => println!("blocked endpoints: {blocked:?}"),
            Err(e) => println!("unavailable, failing open: {e}"),
        }
        println!("sends: {:?}", client.stats().sends);
        client.close().await;
        watcher.await;
        Ok(())
    })
}
