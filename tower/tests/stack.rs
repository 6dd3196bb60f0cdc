//! The layer in a bare tower `ServiceBuilder` stack (no HTTP server, no axum), over a client
//! on smol: the layer is generic over the client's runtime and the service's body types.
//! Requests go straight into the service with `oneshot`; everything is bounded in time.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use serde_json::json;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use usageflow_socket_server::{ReplyData, ServerOptions, ServerThread};
use usageflow_socket_smol::messages::{REQUEST_FOR_ALLOCATION, USE_ALLOCATION};
use usageflow_socket_smol::{Client, Config, Smol};
use usageflow_tower::{Meter, UsageFlowLayer, REASON_HEADER};

const KEY: &str = "tower-test-key";

fn server() -> ServerThread {
    ServerThread::spawn(ServerOptions {
        key: Some(KEY.into()),
        data: ReplyData {
            blocked_endpoints: vec![json!({"url": "/blocked/*", "method": "GET", "identity": ""})],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

fn meter(_: &Method, path: &str) -> Option<Meter> {
    match path {
        "/deny" => Some(Meter::new("deny", 1.0)),
        "/health" => None,
        _ => Some(Meter::new("ledger-1", 1.0)),
    }
}

fn get(path: &str) -> Request<String> {
    Request::builder().uri(path).body(String::new()).unwrap()
}

/// Runs `body` on smol, failing the test after 30 s.
fn run<F: std::future::Future<Output = ()>>(body: F) {
    smol::block_on(async {
        let timeout = async {
            smol::Timer::after(Duration::from_secs(30)).await;
            panic!("the test took more than 30 s");
        };
        smol::future::or(body, timeout).await;
    });
}

#[test]
fn blocks_denies_meters_and_fails_open_in_a_service_builder_stack() {
    run(async {
        let server = server();
        let counters = server.counters();
        let config = Config::builder(server.url(), KEY)
            .pool_size(1)
            .request_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let client = Client::connect(config.clone()).await.unwrap();
        let layer: UsageFlowLayer<Smol> = UsageFlowLayer::new(client.clone(), &config).meter(meter);
        assert_eq!(layer.refresh_blocked().await.unwrap(), 1);

        let calls = Arc::new(AtomicUsize::new(0));
        let handler_calls = Arc::clone(&calls);
        let service = ServiceBuilder::new().layer(layer.clone()).service(service_fn(
            move |request: Request<String>| {
                handler_calls.fetch_add(1, Ordering::SeqCst);
                let body = format!("served {}", request.uri().path());
                async move { Ok::<_, Infallible>(Response::new(body)) }
            },
        ));

        // Metered and served: one allocation, one use_allocation after the response.
        let response = service.clone().oneshot(get("/api/orders")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "served /api/orders");
        assert_eq!(counters.requests(REQUEST_FOR_ALLOCATION), 1);

        // Unmetered: no allocation.
        let response = service.clone().oneshot(get("/health")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(counters.requests(REQUEST_FOR_ALLOCATION), 1);

        // Blocked: 403 without calling the service or UsageFlow.
        let response = service.clone().oneshot(get("/blocked/x")).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[REASON_HEADER], "blocked by UsageFlow");
        assert!(response.body().is_empty());

        // Denied: 429 with the server's reason, the service never called.
        let response = service.clone().oneshot(get("/deny")).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(!response.headers()[REASON_HEADER].is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(counters.requests(REQUEST_FOR_ALLOCATION), 2);

        client.flush(Duration::from_secs(5)).await.unwrap();
        assert_eq!(counters.fire_and_forget(USE_ALLOCATION), 1);

        // Fail open: with the server gone, metered requests are served, unmetered.
        server.kill();
        for _ in 0..5 {
            let response = service.clone().oneshot(get("/api/orders")).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        let response = service.clone().oneshot(get("/deny")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "nobody is there to deny");
        // The blocked list stays in force.
        let response = service.clone().oneshot(get("/blocked/x")).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(calls.load(Ordering::SeqCst), 8);
        assert_eq!(
            client.stats().sends.sends,
            1,
            "no use_allocation without an allocation"
        );
        client.close().await;
    });
}

#[test]
fn the_background_refresh_runs_on_the_clients_runtime_and_stops() {
    run(async {
        let server = server();
        let config = Config::builder(server.url(), KEY).pool_size(1).build().unwrap();
        let client = Client::connect(config.clone()).await.unwrap();
        let layer = UsageFlowLayer::new(client.clone(), &config);
        assert!(layer.blocked_endpoints().is_empty());
        let refresh = layer.spawn_blocked_refresh(Duration::from_millis(20)).unwrap();
        let mut waited = 0;
        while layer.blocked_endpoints().len() != 1 {
            assert!(waited < 250, "the background refresh never fetched the list");
            smol::Timer::after(Duration::from_millis(20)).await;
            waited += 1;
        }
        assert!(!refresh.is_finished());
        refresh.stop();
        let mut waited = 0;
        while !refresh.is_finished() {
            assert!(waited < 250, "the refresh task did not stop");
            smol::Timer::after(Duration::from_millis(20)).await;
            waited += 1;
        }
        client.close().await;
        server.kill();
    });
}
