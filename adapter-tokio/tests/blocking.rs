//! The blocking client: the same client on a private runtime thread, called from plain
//! threads; refused inside an async runtime. Against the local server on 127.0.0.1.

use std::time::{Duration, Instant};

use usageflow_socket_server::{ServerOptions, ServerThread};
use usageflow_socket_tokio::blocking::Client;
use usageflow_socket_tokio::messages::{self, UseAllocation, USE_ALLOCATION};
use usageflow_socket_tokio::{ClientError, Config, UsageFlowApi};

const KEY: &str = "blocking-key";

fn server() -> ServerThread {
    ServerThread::spawn(ServerOptions {
        key: Some(KEY.into()),
        ..Default::default()
    })
    .unwrap()
}

fn config(server: &ServerThread) -> Config {
    Config::builder(server.url(), KEY)
        .pool_size(2)
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

#[test]
fn requests_sends_flushes_and_closes_from_plain_threads() {
    let server = server();
    let counters = server.counters();
    let client = Client::connect(config(&server)).unwrap();
    assert!(client.is_connected());

    // Requests from several plain threads at once, each on its own clone.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let reply = client.request(messages::get_application_policies()).unwrap();
                    assert!(reply.payload_as::<serde_json::Value>().is_ok());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counters.requests(messages::GET_APPLICATION_POLICIES), 100);

    // A typed helper through `call`.
    let policies = client
        .call(|c| async move { c.get_application_policies().await })
        .unwrap()
        .unwrap();
    assert_eq!(policies.total, 2);

    // Sends, then a flush that waits until they are confirmed.
    for i in 0..10 {
        let usage = UseAllocation {
            alias: "ledger-1".into(),
            amount: 1.0,
            allocation_id: format!("a-{i}"),
            ..Default::default()
        };
        client.send(usage.to_message()).unwrap();
    }
    client.flush(Duration::from_secs(5)).unwrap();
    assert_eq!(client.stats().sends.confirmed, 10);
    assert_eq!(counters.fire_and_forget(USE_ALLOCATION), 10);

    let report = client.close().unwrap();
    assert_eq!(report.stats.sends.confirmed, 10);
    assert!(report.undelivered.is_empty());
    assert_eq!(
        client.request(messages::get_application_policies()).unwrap_err(),
        ClientError::Closed
    );
    drop(client);
    server.kill();
}

#[test]
fn a_request_blocks_no_longer_than_its_timeout() {
    let server = server();
    let client = Client::connect(config(&server)).unwrap();
    server.faults().set_reply_delay_ms(5_000);
    let started = Instant::now();
    let error = client.request(messages::get_application_policies()).unwrap_err();
    assert_eq!(error, ClientError::Timeout);
    // The request timeout (300 ms) ended it, not the 5 s reply delay.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(client);
    server.kill();
}

#[test]
fn blocking_calls_are_refused_inside_an_async_runtime() {
    let server = server();
    let client = Client::connect(config(&server)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let refused = client.request(messages::get_application_policies()).unwrap_err();
        assert_eq!(refused, ClientError::BlockingInAsyncContext);
        assert!(!refused.is_unavailable(), "a misuse, not an outage");
        assert_eq!(
            client.flush(Duration::from_secs(1)).unwrap_err(),
            ClientError::BlockingInAsyncContext
        );
        assert_eq!(client.close().unwrap_err(), ClientError::BlockingInAsyncContext);
        assert_eq!(
            Client::connect(config(&server)).unwrap_err(),
            ClientError::BlockingInAsyncContext
        );
        // Sends never block: they work anywhere.
        client.send(messages::get_application_policies()).unwrap();
        // The async client underneath is there for async code.
        assert!(client.as_async().get_application_policies().await.is_ok());
    });
    // Outside the runtime it works again.
    assert!(client.request(messages::get_application_policies()).is_ok());
    drop(client);
    server.kill();
}

#[test]
fn a_refused_key_fails_connect_and_ends_the_runtime_thread() {
    let server = server();
    let config = Config::builder(server.url(), "wrong-key")
        .pool_size(1)
        .build()
        .unwrap();
    let error = Client::connect(config).unwrap_err();
    assert!(error.is_rejected(), "{error:?}");
    server.kill();
}
