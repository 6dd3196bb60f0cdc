//! The layer in axum, end to end: the local UsageFlow-compatible server, the axum app on
//! 127.0.0.1:0, and a few hundred plain HTTP/1.1 requests through it. Everything is bounded
//! in count and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use usageflow_socket_server::{ReplyData, ServerOptions, ServerThread};
use usageflow_socket_tokio::messages::{REQUEST_FOR_ALLOCATION, USE_ALLOCATION};
use usageflow_socket_tokio::{Client, Config, Delivery, Tokio};
use usageflow_tower::{Meter, UsageFlowLayer};

type UsageFlow = UsageFlowLayer<Tokio>;

const KEY: &str = "axum-test-key";
/// Concurrent HTTP requests in flight.
const CONCURRENCY: usize = 16;

fn server() -> ServerThread {
    ServerThread::spawn(ServerOptions {
        key: Some(KEY.into()),
        data: ReplyData {
            blocked_endpoints: vec![
                json!({"url": "/blocked/*", "method": "GET", "identity": ""}),
                json!({"url": "/api/orders", "method": "DELETE", "identity": "user-9"}),
            ],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

fn config(server: &ServerThread, dedup: bool) -> Config {
    Config::builder(server.url(), KEY)
        .pool_size(2)
        .request_timeout(Duration::from_millis(500))
        .server_deduplicates_allocation_ids(dedup)
        .build()
        .unwrap()
}

/// `/api/*` on ledger-1; `/deny` on the ledger the server denies; the rest unmetered.
fn meter(_: &Method, path: &str) -> Option<Meter> {
    if path.starts_with("/api/") {
        Some(Meter::new("ledger-1", 1.0))
    } else if path == "/deny" {
        Some(Meter::new("deny", 1.0))
    } else {
        None
    }
}

/// The app behind the middleware, served on 127.0.0.1:0.
async fn serve(usageflow: UsageFlow) -> SocketAddr {
    let app = Router::new()
        .route(
            "/api/orders",
            get(|| async { "orders\n" }).delete(|| async { "deleted\n" }),
        )
        .route("/deny", get(|| async { "never\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .route("/blocked/{thing}", get(|| async { "never\n" }))
        .layer(usageflow);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// One HTTP/1.1 request (`Connection: close`), bounded at 5 s; returns the status code.
async fn http(addr: SocketAddr, method: &str, path: &str, user: Option<&str>) -> u16 {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let user = user.map(|u| format!("x-user-id: {u}\r\n")).unwrap_or_default();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{user}Connection: close\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split(' ')
            .nth(1)
            .unwrap_or_else(|| panic!("bad response {text:?}"));
        status.parse::<u16>().unwrap()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("HTTP request took more than 5 s")
}

/// `n` GETs of `path`, `CONCURRENCY` at a time; returns each status.
async fn drive(addr: SocketAddr, path: &'static str, n: usize) -> Vec<u16> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                statuses.push(http(addr, "GET", path, None).await);
            }
            statuses
        });
    }
    let mut all = Vec::new();
    while let Some(statuses) = tasks.join_next().await {
        all.extend(statuses.unwrap());
    }
    assert_eq!(all.len(), n);
    all
}

async fn healthy(dedup: bool) {
    const N: usize = 300;
    const DENIED: usize = 20;
    let server = server();
    let counters = server.counters();
    counters.record_allocation_ids();
    let config = config(&server, dedup);
    let client = Client::connect(config.clone()).await.unwrap();
    let usageflow = UsageFlow::new(client.clone(), &config)
        .meter(meter)
        .identity_header("x-user-id");
    let expected = if dedup {
        Delivery::AtLeastOnce
    } else {
        Delivery::AtMostOnce
    };
    assert_eq!(usageflow.delivery(), expected);
    assert_eq!(usageflow.refresh_blocked().await.unwrap(), 2);
    let refresh = usageflow.spawn_blocked_refresh(Duration::from_secs(30)).unwrap();
    let addr = serve(usageflow).await;

    // Every metered request is served, with one allocation each.
    let statuses = drive(addr, "/api/orders", N).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(counters.requests(REQUEST_FOR_ALLOCATION), N as u64);

    // Blocked: any identity on /blocked/*; DELETE /api/orders only for user-9.
    assert_eq!(http(addr, "GET", "/blocked/x", None).await, 403);
    assert_eq!(http(addr, "DELETE", "/api/orders", Some("user-9")).await, 403);
    assert_eq!(http(addr, "DELETE", "/api/orders", Some("user-1")).await, 200);
    // Unmetered.
    assert_eq!(http(addr, "GET", "/health", None).await, 200);
    // Denied allocations are 429, and their handler never runs (no use_allocation).
    let denied = drive(addr, "/deny", DENIED).await;
    assert!(denied.iter().all(|s| *s == 429), "{denied:?}");

    let served = N as u64 + 1;
    assert_eq!(counters.requests(REQUEST_FOR_ALLOCATION), served + DENIED as u64);
    client.flush(Duration::from_secs(5)).await.unwrap();
    let arrived = counters
        .wait_until(Duration::from_secs(5), |s| {
            s.fire_and_forget.get(USE_ALLOCATION).copied().unwrap_or(0) >= served
        })
        .await;
    assert!(arrived, "{:?}", counters.snapshot());
    assert_eq!(counters.fire_and_forget(USE_ALLOCATION), served);
    assert_eq!(counters.fire_and_forget_total(), served);
    // One use_allocation per served request, each allocation id once.
    let ids = counters.allocation_ids();
    assert_eq!(ids.len() as u64, served);
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");

    refresh.stop();
    client.close().await;
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meters_blocks_and_denies_at_most_once() {
    healthy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meters_blocks_and_denies_at_least_once_when_the_server_deduplicates() {
    healthy(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fails_open_when_the_server_is_gone() {
    const N: usize = 200;
    let server = server();
    let counters = server.counters();
    let config = config(&server, false);
    let client = Client::connect(config.clone()).await.unwrap();
    let usageflow = UsageFlow::new(client.clone(), &config)
        .meter(meter)
        .identity_header("x-user-id");
    // The background refresh fetches the list (every 50 ms here, 30 s in a real service).
    let refresh = usageflow
        .spawn_blocked_refresh(Duration::from_millis(50))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while usageflow.blocked_endpoints().len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the background refresh never fetched the list"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addr = serve(usageflow.clone()).await;
    assert_eq!(http(addr, "GET", "/api/orders", None).await, 200);
    assert_eq!(counters.requests(REQUEST_FOR_ALLOCATION), 1);

    server.kill();
    let started = Instant::now();
    let statuses = tokio::time::timeout(Duration::from_secs(20), drive(addr, "/api/orders", N))
        .await
        .expect("fail-open requests took more than 20 s");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Even the denying ledger is served: nobody is there to deny.
    assert_eq!(http(addr, "GET", "/deny", None).await, 200);
    println!("{N} fail-open requests in {:?}", started.elapsed());

    // Failed refreshes keep the last list: blocked endpoints stay blocked.
    assert!(usageflow.refresh_blocked().await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!refresh.is_finished());
    assert_eq!(usageflow.blocked_endpoints().len(), 2);
    assert_eq!(http(addr, "GET", "/blocked/x", None).await, 403);
    assert_eq!(counters.requests(REQUEST_FOR_ALLOCATION), 1);

    tokio::time::timeout(Duration::from_secs(10), client.close())
        .await
        .expect("close took more than 10 s");
    // The refresh task ends by itself once the client is closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !refresh.is_finished() {
        assert!(Instant::now() < deadline, "the refresh task outlived the client");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fails_open_after_the_request_timeout_when_the_server_is_slow() {
    const N: usize = 48;
    let server = server();
    let counters = server.counters();
    let config = config(&server, false);
    let client = Client::connect(config.clone()).await.unwrap();
    let usageflow = UsageFlow::new(client.clone(), &config).meter(meter);
    let addr = serve(usageflow).await;

    // Replies come 5 s late: every allocation times out (500 ms) and the request is served.
    server.faults().set_reply_delay_ms(5_000);
    let started = Instant::now();
    let statuses = tokio::time::timeout(Duration::from_secs(20), drive(addr, "/api/orders", N))
        .await
        .expect("fail-open requests took more than 20 s");
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // At least one request timeout per wave of CONCURRENCY requests, far less than the delay.
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(counters.requests(REQUEST_FOR_ALLOCATION), N as u64);
    // Unmetered: no allocation was granted, so no use_allocation goes out.
    let stats = client.stats();
    assert_eq!(stats.timeouts, N as u64, "{stats:?}");
    assert_eq!(stats.sends.sends, 0, "{stats:?}");
    assert_eq!(counters.fire_and_forget(USE_ALLOCATION), 0);

    tokio::time::timeout(Duration::from_secs(10), client.close())
        .await
        .expect("close took more than 10 s");
    server.kill();
}
