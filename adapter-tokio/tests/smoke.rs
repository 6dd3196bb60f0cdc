//! Smoke tests of the Tokio client against a tiny in-test server (plain and TLS).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::StatusCode;
use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use usageflow_socket_tokio::messages::{RequestForAllocation, UseAllocation};
use usageflow_socket_tokio::{
    Client, ClientError, ClientEvent, ClientOptions, Config, Event, Outgoing, RequestOptions, UsageFlowApi,
};

const KEY: &str = "test-key-123";

#[derive(Default)]
struct Server {
    /// Fire-and-forget messages received.
    sends: AtomicUsize,
    /// Connections accepted (after the key check).
    accepted: AtomicUsize,
    /// User-Agent headers seen.
    agents: Mutex<Vec<String>>,
}

/// Answers requests: `deny` with an error, `silent` never, `get_application_policies` with a
/// policy list, anything else with `success` and its own payload echoed.
#[allow(clippy::result_large_err, reason = "tungstenite's callback type")]
async fn serve_socket<S>(stream: S, server: Arc<Server>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let agents = Arc::clone(&server);
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let agent = req
            .headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        agents.agents.lock().unwrap().push(agent);
        if req.headers().get("x-usage-key").and_then(|v| v.to_str().ok()) == Some(KEY) {
            Ok(resp)
        } else {
            let mut err = ErrorResponse::new(Some("bad key".into()));
            *err.status_mut() = StatusCode::UNAUTHORIZED;
            Err(err)
        }
    };
    let Ok(mut ws) = async_tungstenite::tokio::accept_hdr_async(stream, callback).await else {
        return;
    };
    server.accepted.fetch_add(1, Ordering::SeqCst);
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        let Some(id) = v.get("id").and_then(Value::as_str) else {
            server.sends.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        let reply = match v["type"].as_str().unwrap() {
            "silent" => continue,
            "close_me" => {
                let _ = ws.close(None).await;
                return;
            }
            "deny" => json!({"type": "error", "error": "limit reached", "replyTo": id}),
            "get_application_policies" => {
                json!({"type": "success", "payload": {"policies": [{"a": 1}], "total": 1}, "replyTo": id})
            }
            "request_for_allocation" => {
                json!({"type": "success", "payload": {"allocationId": "al-1"}, "replyTo": id})
            }
            "use_allocation" => json!({"type": "success", "payload": {"eventId": "ev-1"}, "id": id}),
            _ => json!({"type": "success", "payload": v["payload"], "replyTo": id}),
        };
        if ws.send(Message::text(reply.to_string())).await.is_err() {
            return;
        }
    }
}

async fn start_plain() -> (String, Arc<Server>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = Arc::new(Server::default());
    let s = Arc::clone(&server);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_socket(tcp, Arc::clone(&s)));
        }
    });
    (url, server)
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()))
        .try_init();
}

fn config(url: &str, key: &str) -> Config {
    init_tracing();
    Config::builder(url, key)
        .pool_size(2)
        .handshake_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_send_and_close() {
    let (url, server) = start_plain().await;
    let client = Client::connect(config(&url, KEY)).await.unwrap();
    assert!(client.is_connected());
    assert_eq!(client.stats().open_connections, 2);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    assert!(server
        .agents
        .lock()
        .unwrap()
        .iter()
        .all(|a| a.starts_with("usageflow-socket-tokio/")));

    let reply = client
        .request(Outgoing::new("echo", json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(reply.payload, json!({"n": 1}));

    let policies = client.get_application_policies().await.unwrap();
    assert_eq!(policies.total, 1);
    let alloc = client
        .request_for_allocation(&RequestForAllocation {
            alias: "l".into(),
            amount: 1.0,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alloc.allocation_id, "al-1");
    let usage = UseAllocation {
        alias: "l".into(),
        amount: 1.0,
        allocation_id: "al-1".into(),
        wait_for_confirmation: Some(true),
        metadata: None,
    };
    assert_eq!(
        client.use_allocation(&usage).await.unwrap().unwrap().event_id,
        "ev-1"
    );

    let denied = client
        .request(Outgoing::new("deny", Value::Null))
        .await
        .unwrap_err();
    assert!(denied.is_denied(), "{denied:?}");
    assert_eq!(denied.denial_text(), Some("limit reached"));

    // Many concurrent requests over the pool.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.request(Outgoing::new("echo", json!({"i": i})))
                .await
                .unwrap()
                .payload
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), json!({"i": i}));
    }

    for _ in 0..10 {
        client
            .send(Outgoing::new("report_call_chain", json!({"x": 1})))
            .unwrap();
    }
    let fire = UseAllocation {
        alias: "l".into(),
        amount: 1.0,
        allocation_id: "al-1".into(),
        ..Default::default()
    };
    assert_eq!(client.use_allocation(&fire).await.unwrap(), None);
    for _ in 0..100 {
        if server.sends.load(Ordering::SeqCst) == 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.sends.load(Ordering::SeqCst), 11);

    let stats = client.stats();
    assert!(stats.requests_conserved());
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.denials, 1);
    assert_eq!(stats.sends.sent, 11);

    let mut events = client.subscribe();
    tokio::time::timeout(Duration::from_secs(5), client.close())
        .await
        .expect("close is bounded");
    client.close().await; // idempotent
    assert!(client.is_closed());
    assert!(!client.is_connected());
    assert_eq!(
        client.request(Outgoing::new("echo", Value::Null)).await,
        Err(ClientError::Closed)
    );
    assert_eq!(
        client.send(Outgoing::new("x", Value::Null)),
        Err(ClientError::Closed)
    );
    let mut stopped = false;
    while let Ok(ev) = events.try_recv() {
        stopped |= ev == ClientEvent::Stopped;
    }
    assert!(stopped);
}

#[tokio::test]
async fn timeout_and_cancel_on_drop() {
    let (url, _server) = start_plain().await;
    let client = Client::connect(config(&url, KEY)).await.unwrap();
    let err = client
        .request_with(
            Outgoing::new("silent", Value::Null),
            RequestOptions::timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ClientError::Timeout);
    assert!(err.is_unavailable());

    // A dropped request future cancels its request: nothing stays pending.
    let pending = client.request(Outgoing::new("silent", Value::Null));
    let r = tokio::time::timeout(Duration::from_millis(50), pending).await;
    assert!(r.is_err());
    let stats = client.stats();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.cancelled, 1);
    assert_eq!(stats.timeouts, 1);
    assert!(stats.requests_conserved());
    client.close().await;
}

#[tokio::test]
async fn rejected_key_and_no_server() {
    let (url, _server) = start_plain().await;
    let client = Client::connect(config(&url, "wrong-key")).await.unwrap();
    assert!(!client.is_connected());
    let stats = client.stats();
    assert_eq!(stats.rejections, 2, "{stats:?}");
    assert_eq!(
        client.request(Outgoing::new("echo", Value::Null)).await,
        Err(ClientError::NotConnected)
    );
    tokio::time::timeout(Duration::from_secs(5), client.close())
        .await
        .unwrap();

    // Nobody listens: connect still returns (dials fail fast), requests fail fast.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    drop(listener);
    let client = tokio::time::timeout(Duration::from_secs(5), Client::connect(config(&url, KEY)))
        .await
        .unwrap()
        .unwrap();
    let mut events = client.subscribe();
    assert!(!client.is_connected());
    let err = client
        .request(Outgoing::new("echo", Value::Null))
        .await
        .unwrap_err();
    assert!(err.is_unavailable());
    tokio::time::timeout(Duration::from_secs(5), client.close())
        .await
        .unwrap();
    let mut saw_stop = false;
    while let Ok(ev) = events.try_recv() {
        saw_stop |= matches!(ev, ClientEvent::Stopped);
        if let ClientEvent::Pool(Event::ConnectFailed { error, .. }) = &ev {
            assert!(!error.to_string().contains(KEY));
        }
    }
    assert!(saw_stop);
}

#[tokio::test]
async fn server_going_away_fails_requests_and_reconnects() {
    let (url, _server) = start_plain().await;
    let cfg = Config::builder(&url, KEY)
        .pool_size(1)
        .backoff_base(Duration::from_millis(50))
        .backoff_cap(Duration::from_millis(200))
        .build()
        .unwrap();
    let client = Client::connect(cfg).await.unwrap();
    assert!(client.is_connected());
    let mut events = client.subscribe();
    let err = client
        .request(Outgoing::new("close_me", Value::Null))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost(_)), "{err:?}");
    assert!(err.is_unavailable());
    // The slot reconnects after its backoff.
    let reconnected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await.unwrap() {
                ClientEvent::Pool(Event::Connected { .. }) => break,
                _ => continue,
            }
        }
    })
    .await;
    assert!(reconnected.is_ok());
    client.request(Outgoing::new("echo", Value::Null)).await.unwrap();
    let stats = client.stats();
    assert_eq!(stats.connection_lost, 1);
    assert!(stats.reconnects >= 1);
    client.close().await;
}

#[tokio::test]
async fn wss_with_a_self_signed_root() {
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_der = certified.cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = Arc::new(Server::default());
    let s = Arc::clone(&server);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    serve_socket(stream, s).await;
                }
            });
        }
    });
    let url = format!("wss://localhost:{port}/ws");

    // Without the root, the dial fails (and connect still returns).
    let client = Client::connect(config(&url, KEY)).await.unwrap();
    assert!(!client.is_connected());
    client.close().await;

    let options = ClientOptions::builder(config(&url, KEY))
        .add_root_certificate(cert_der)
        .webpki_roots(false)
        .seed(7)
        .build();
    let client = Client::connect(options).await.unwrap();
    assert!(client.is_connected());
    let reply = client.request(Outgoing::new("echo", json!("tls"))).await.unwrap();
    assert_eq!(reply.payload, json!("tls"));
    client.close().await;
}
