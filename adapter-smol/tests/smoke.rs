//! Smoke tests of the smol client against the local UsageFlow server (`ufsock::server`, on a
//! thread of its own), plain and TLS: the scenarios of the Tokio adapter's smoke tests.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use smol::future;
use smol::Timer;
use ufsock::server::{ServerOptions, ServerThread, TlsOptions};
use usageflow_socket_smol::messages::{RequestForAllocation, UseAllocation};
use usageflow_socket_smol::{
    Client, ClientError, ClientEvent, ClientOptions, Config, Event, Outgoing, RequestOptions, UsageFlowApi,
};

const KEY: &str = "test-key-123";

/// Runs a test body on smol, failing it after 30 s.
fn run<T>(body: impl Future<Output = T>) -> T {
    init_tracing();
    smol::block_on(future::or(body, async {
        Timer::after(Duration::from_secs(30)).await;
        panic!("test timed out");
    }))
}

/// Fails `fut` after `limit`.
async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(fut.await) }, async {
        Timer::after(limit).await;
        None
    })
    .await
}

fn server() -> ServerThread {
    ServerThread::spawn(ServerOptions {
        key: Some(KEY.into()),
        ..Default::default()
    })
    .unwrap()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()))
        .try_init();
}

fn config(url: &str, key: &str) -> Config {
    Config::builder(url, key)
        .pool_size(2)
        .handshake_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn allocation(id: Option<String>) -> RequestForAllocation {
    RequestForAllocation {
        alias: "l".into(),
        amount: 1.0,
        allocation_id: id,
        ..Default::default()
    }
}

#[test]
fn user_agent_names_this_crate() {
    assert_eq!(
        usageflow_socket_smol::default_user_agent(),
        format!("usageflow-socket-smol/{}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn request_reply_send_and_close() {
    let server = server();
    run(async {
        let client = Client::connect(config(&server.url(), KEY)).await.unwrap();
        assert!(client.is_connected());
        assert_eq!(client.stats().open_connections, 2);
        let counters = server.counters();
        assert_eq!(counters.connections_accepted(), 2);
        let agent = counters.snapshot().last_user_agent.unwrap_or_default();
        assert!(agent.starts_with("usageflow-socket-smol/"), "{agent}");

        let policies = client.get_application_policies().await.unwrap();
        assert_eq!(policies.total, 2);
        let alloc = client
            .request_for_allocation(&allocation(Some("al-1".into())))
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
        assert!(!client
            .use_allocation(&usage)
            .await
            .unwrap()
            .unwrap()
            .event_id
            .is_empty());

        let mut deny = allocation(None);
        deny.alias = "deny".into();
        let denied = client.request_for_allocation(&deny).await.unwrap_err();
        assert!(denied.is_denied(), "{denied:?}");
        assert!(denied.denial_text().unwrap().contains("denied"), "{denied:?}");

        // Many concurrent requests over the pool.
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let c = client.clone();
                smol::spawn(async move {
                    c.request_for_allocation(&allocation(Some(format!("a-{i}"))))
                        .await
                        .unwrap()
                        .allocation_id
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await, format!("a-{i}"));
        }

        for _ in 0..10 {
            client
                .send(Outgoing::new("report_call_chain", serde_json::json!({"x": 1})))
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
            if counters.fire_and_forget_total() == 11 {
                break;
            }
            Timer::after(Duration::from_millis(10)).await;
        }
        assert_eq!(counters.fire_and_forget_total(), 11);

        let stats = client.stats();
        assert!(stats.requests_conserved());
        assert_eq!(stats.pending, 0);
        assert_eq!(stats.denials, 1);
        assert_eq!(stats.sends.sent, 11);

        let mut events = client.subscribe();
        within(Duration::from_secs(5), client.close())
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
        // Every connection was closed with a normal close frame.
        assert!(counters.wait_until_blocking(Duration::from_secs(2), |s| s.open_connections == 0));
        assert_eq!(counters.close_codes(), vec![Some(1000), Some(1000)]);
    });
}

#[test]
fn timeout_and_cancel_on_drop() {
    let server = server();
    // Every reply is dropped: requests go unanswered.
    server.faults().set_drop_every(1);
    run(async {
        let client = Client::connect(config(&server.url(), KEY)).await.unwrap();
        let err = client
            .request_with(
                Outgoing::new("get_application_policies", Value::Null),
                RequestOptions::timeout(Duration::from_millis(100)),
            )
            .await
            .unwrap_err();
        assert_eq!(err, ClientError::Timeout);
        assert!(err.is_unavailable());

        // A dropped request future cancels its request: nothing stays pending.
        let pending = client.request(Outgoing::new("get_application_policies", Value::Null));
        assert!(within(Duration::from_millis(50), pending).await.is_none());
        let stats = client.stats();
        assert_eq!(stats.pending, 0);
        assert_eq!(stats.cancelled, 1);
        assert_eq!(stats.timeouts, 1);
        assert!(stats.requests_conserved());
        client.close().await;
    });
}

#[test]
fn rejected_key_and_no_server() {
    let server = server();
    run(async {
        let client = Client::connect(config(&server.url(), "wrong-key")).await.unwrap();
        assert!(!client.is_connected());
        let stats = client.stats();
        assert_eq!(stats.rejections, 2, "{stats:?}");
        assert_eq!(
            client.request(Outgoing::new("echo", Value::Null)).await,
            Err(ClientError::NotConnected)
        );
        within(Duration::from_secs(5), client.close()).await.unwrap();

        // Nobody listens: connect still returns (dials fail fast), requests fail fast.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        drop(listener);
        let client = within(Duration::from_secs(5), Client::connect(config(&url, KEY)))
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
        within(Duration::from_secs(5), client.close()).await.unwrap();
        let mut saw_stop = false;
        while let Ok(ev) = events.try_recv() {
            saw_stop |= matches!(ev, ClientEvent::Stopped);
            if let ClientEvent::Pool(Event::ConnectFailed { error, .. }) = &ev {
                assert!(!error.to_string().contains(KEY));
            }
        }
        assert!(saw_stop);
    });
}

#[test]
fn server_going_away_fails_requests_and_reconnects() {
    let server = server();
    run(async {
        let cfg = Config::builder(server.url(), KEY)
            .pool_size(1)
            .backoff_base(Duration::from_millis(50))
            .backoff_cap(Duration::from_millis(200))
            .build()
            .unwrap();
        let client = Client::connect(cfg).await.unwrap();
        assert!(client.is_connected());
        let mut events = client.subscribe();
        // The server drops the reply and closes the connection after the first message.
        server.faults().set_drop_every(1);
        server.faults().set_close_after_messages(1);
        let err = client
            .request(Outgoing::new("get_application_policies", Value::Null))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::ConnectionLost(_)), "{err:?}");
        assert!(err.is_unavailable());
        server.faults().clear();
        // The slot reconnects after its backoff.
        let reconnected = within(Duration::from_secs(5), async {
            loop {
                if let ClientEvent::Pool(Event::Connected { .. }) = events.recv().await.unwrap() {
                    break;
                }
            }
        })
        .await;
        assert!(reconnected.is_some());
        client.get_application_policies().await.unwrap();
        let stats = client.stats();
        assert_eq!(stats.connection_lost, 1);
        assert!(stats.reconnects >= 1);
        client.close().await;
    });
}

#[test]
fn wss_with_a_self_signed_root() {
    let (tls, cert) = TlsOptions::self_signed().unwrap();
    let server = ServerThread::spawn(ServerOptions {
        key: Some(KEY.into()),
        tls: Some(tls),
        ..Default::default()
    })
    .unwrap();
    let url = server.url_for_host("localhost");
    assert!(url.starts_with("wss://"));
    run(async {
        // Without the root, the dial fails (and connect still returns).
        let client = Client::connect(config(&url, KEY)).await.unwrap();
        assert!(!client.is_connected());
        client.close().await;

        let options = ClientOptions::builder(config(&url, KEY))
            .add_root_certificate(cert)
            .webpki_roots(false)
            .seed(7)
            .build();
        let client = Client::connect(options).await.unwrap();
        assert!(client.is_connected());
        let policies = client.get_application_policies().await.unwrap();
        assert_eq!(policies.total, 2);
        client.close().await;
    });
}

#[test]
fn invalid_root_certificate_is_refused() {
    let options = ClientOptions::builder(config("wss://localhost:1/ws", KEY))
        .add_root_certificate(vec![1u8, 2, 3])
        .build();
    assert!(matches!(
        Client::start(options),
        Err(ClientError::InvalidOptions(_))
    ));
}
