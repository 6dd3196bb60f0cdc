//! A demo axum app metered by the [`UsageFlow`] layer, on 127.0.0.1.
//!
//! Without `USAGEFLOW_URL` it starts the local UsageFlow-compatible server in process (one
//! blocked endpoint: `GET /admin/*`); with it, it talks to that server with
//! `USAGEFLOW_API_KEY`.
//!
//! ```text
//! cargo run -p usageflow-axum-example --example axum_demo
//! curl -i http://127.0.0.1:3000/api/orders   # 200, metered on ledger-1
//! curl -i http://127.0.0.1:3000/deny         # 429, the local server denies ledger "deny"
//! curl -i http://127.0.0.1:3000/admin/users  # 403, a blocked endpoint
//! curl -i http://127.0.0.1:3000/health       # 200, unmetered
//! ```
//!
//! `DEMO_ADDR` changes the listening address (default `127.0.0.1:3000`).
//!
//! Graceful shutdown on SIGTERM (what an orchestrator sends) or Ctrl-C: stop taking requests,
//! let the ones in flight finish, then `close()` the client while the runtime still runs, and
//! keep what it hands back. Returning from `main` without that would leave the client's drain
//! to a runtime that is about to stop: the client would still name the messages it lost in an
//! ERROR line, but could no longer deliver or hand them back.

use std::time::Duration;

use axum::http::Method;
use axum::routing::get;
use axum::Router;
use usageflow_axum_example::{Meter, UsageFlow};
use usageflow_socket_server::{ReplyData, ServerOptions, ServerThread};
use usageflow_socket_tokio::{Client, Config};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The local server lives as long as `main` when no URL is given.
    let mut local = None;
    let (url, key) = match std::env::var("USAGEFLOW_URL") {
        Ok(url) => (
            url,
            std::env::var("USAGEFLOW_API_KEY").unwrap_or_else(|_| "dev-key".into()),
        ),
        Err(_) => {
            let server = ServerThread::spawn(ServerOptions {
                key: Some("dev-key".into()),
                data: ReplyData {
                    blocked_endpoints: vec![serde_json::json!({"url": "/admin/*", "method": "GET"})],
                    ..Default::default()
                },
                ..Default::default()
            })?;
            let url = server.url();
            println!("local UsageFlow server at {url}");
            local = Some(server);
            (url, "dev-key".to_owned())
        }
    };

    let config = Config::builder(url, key)
        .pool_size(2)
        .request_timeout(Duration::from_millis(500))
        .build()?;
    // `connect` waits until the first dials settled, connected or not: the app comes up even
    // when UsageFlow is down (fail open); only a refused API key stops it here.
    let client = Client::connect(config.clone()).await?;
    println!("UsageFlow {:?}", client.availability());
    let usageflow = UsageFlow::new(client.clone(), &config)
        .meter(|method: &Method, path: &str| match path {
            "/health" => None,
            "/deny" => Some(Meter::new("deny", 1.0)),
            _ if path.starts_with("/api/") => Some(Meter::new(
                "ledger-1",
                if method == Method::GET { 1.0 } else { 2.0 },
            )),
            _ => None,
        })
        .identity_header("x-user-id");
    // Blocked endpoints: fetched now, then every 30 s in the background.
    match usageflow.refresh_blocked().await {
        Ok(n) => println!("{n} blocked endpoints"),
        Err(e) => println!("blocked endpoints not fetched yet ({e}); retried every 30 s"),
    }
    let refresh = usageflow.spawn_blocked_refresh(Duration::from_secs(30))?;

    let app = Router::new()
        .route(
            "/api/orders",
            get(|| async { "orders\n" }).post(|| async { "created\n" }),
        )
        .route("/deny", get(|| async { "never served\n" }))
        .route("/admin/{page}", get(|| async { "never served\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .layer(usageflow);

    let addr = std::env::var("DEMO_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("demo app on http://{}, Ctrl-C to stop", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    // Every request has been answered: close the client now, while the runtime runs. `close`
    // gives queued and unconfirmed messages up to `close_drain` (3 s by default) and returns
    // what it could not deliver.
    refresh.stop();
    let report = client.close().await;
    for message in &report.undelivered {
        // A real service would write these somewhere durable (a file, its own queue) to send
        // them again after the restart; the demo only says which.
        tracing::error!(
            id = %message.id,
            kind = %message.kind,
            written_before = message.written_before,
            "usage not delivered before shutdown"
        );
    }
    println!(
        "closed: {} requests ({} denied), {} use_allocation confirmed, {} undelivered",
        report.stats.requests,
        report.stats.denials,
        report.stats.sends.confirmed,
        report.undelivered.len()
    );
    if let Some(server) = local {
        let counted = server.counters().snapshot();
        println!(
            "local server counted requests {:?}, fire-and-forget {:?}",
            counted.requests, counted.fire_and_forget
        );
    }
    Ok(())
}

/// Resolves on SIGTERM (Unix) or Ctrl-C, whichever comes first.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            // No SIGTERM handler: Ctrl-C still works.
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => println!("Ctrl-C: shutting down"),
        () = terminate => println!("SIGTERM: shutting down"),
    }
}
