//! Metrics: the client's counters in Prometheus's text format, through the `metrics` facade
//! and `metrics-exporter-prometheus`. Starts a local server on its own, so it needs nothing
//! else:
//!
//! ```text
//! cargo run -p usageflow-socket-tokio --features metrics --example prometheus
//! ```
//!
//! A service would rather serve `handle.render()` on its `/metrics` endpoint (or enable the
//! exporter's own `http-listener` feature), and call `handle.run_upkeep()` every few seconds
//! (`install_recorder` does not): it drains the request histogram's samples.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use usageflow_socket_server::{ServerOptions, ServerThread};
use usageflow_socket_tokio::messages::RequestForAllocation;
use usageflow_socket_tokio::{Client, Config, Outgoing, UsageFlowApi};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Install the recorder first: the client describes its metrics when it starts. Buckets
    // make the request latency a Prometheus histogram (aggregatable across instances) rather
    // than the exporter's default summary.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("usageflow_request_duration_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )?
        .install_recorder()?;

    // A local UsageFlow-compatible server stands in for the service.
    let server = ServerThread::spawn(ServerOptions {
        key: Some("dev-key".into()),
        ..Default::default()
    })?;
    let config = Config::builder(server.url(), "dev-key").pool_size(2).build()?;
    let client = Client::connect(config).await?;

    // A few requests (one denied by the server) and fire-and-forget messages.
    for alias in ["ledger-1", "ledger-2", "deny"] {
        let allocation = RequestForAllocation {
            alias: alias.into(),
            amount: 1.0,
            ..Default::default()
        };
        match client.request_for_allocation(&allocation).await {
            Ok(reply) => println!("# allocated {}", reply.allocation_id),
            Err(e) => println!("# {alias}: {e}"),
        }
    }
    for n in 0..10 {
        client.send(Outgoing::new(
            "report_call_chain",
            serde_json::json!({"method": "GET", "url": format!("/r/{n}"), "timestamp": n}),
        ))?;
    }
    client.flush(Duration::from_secs(5)).await?;

    // `stats` publishes the counters at once (the client also does so every second).
    let _ = client.stats();
    print!("{}", handle.render());

    client.close().await;
    Ok(())
}
