//! An axum service metered by UsageFlow through [`usageflow_tower`]'s layer, on Tokio. The
//! middleware itself (403 on blocked endpoints, an allocation before the handler with 429 on a
//! denial and fail-open when UsageFlow is unavailable, a fire-and-forget `use_allocation`
//! after the response) is the published `usageflow-tower` crate; this crate only names it
//! for Tokio and runs it in a demo (`examples/demo.rs`). The layer's end-to-end tests under
//! axum are in `tower/tests/axum.rs`.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use usageflow_axum_example::{Meter, UsageFlow};
//! use usageflow_socket_tokio::{Client, Config};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::builder("wss://usageflow.example/ws", "my-api-key").build()?;
//! let client = Client::connect(config.clone()).await?;
//! let usageflow = UsageFlow::new(client, &config)
//!     .meter(|_method, path| path.starts_with("/api/").then(|| Meter::new("ledger-1", 1.0)))
//!     .identity_header("x-user-id");
//! if let Err(e) = usageflow.refresh_blocked().await {
//!     eprintln!("blocked endpoints not fetched yet: {e}"); // retried every 30 s below
//! }
//! let _refresh = usageflow.spawn_blocked_refresh(Duration::from_secs(30))?;
//!
//! let app: Router = Router::new()
//!     .route("/api/orders", get(|| async { "orders" }))
//!     .layer(usageflow);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub use usageflow_tower::{endpoint_matches, path_matches, BlockedRefresh, Meter, REASON_HEADER};

/// The UsageFlow layer on Tokio's client.
pub type UsageFlow = usageflow_tower::UsageFlowLayer<usageflow_socket_tokio::Tokio>;
