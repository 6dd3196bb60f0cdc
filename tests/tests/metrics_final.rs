//! Issue 21, item 3: the final metrics are published when a client's state goes away, however
//! it ends — here the `#[tokio::main]` shape: the client dropped, then at once its runtime, so
//! the driver task never reaches its own final publish.
//!
//! One test in its own binary: the recorder is process-global.

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use usageflow_socket_tests::{
    config, options, report, server_with, ClientOf, Delivery, SendOptions, TokioAdapter,
};

/// The value of the `usageflow_messages_total` series of `report_call_chain` in `state`.
fn messages(text: &str, state: &str) -> Option<f64> {
    let series = format!("usageflow_messages_total{{type=\"report_call_chain\",state=\"{state}\"}}");
    let alternative = format!("usageflow_messages_total{{state=\"{state}\",type=\"report_call_chain\"}}");
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series || name == alternative).then(|| value.parse().expect("a number"))
    })
}

#[test]
fn final_counters_are_published_when_the_state_goes_away() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    // A server that never answers pings: every message stays written until the client ends.
    let server = server_with(|o| o.faults.no_pongs = true);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async {
        let client = ClientOf::<TokioAdapter>::connect(options(
            config(&server.url())
                .pool_size(1)
                .pong_wait(Duration::from_secs(20))
                .close_drain(Duration::from_secs(2)),
        ))
        .await
        .unwrap();
        for n in 0..20 {
            client
                .send_with(
                    report(n, 10),
                    SendOptions::default().with_delivery(Delivery::AtLeastOnce),
                )
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        // `stats` publishes: the recorder sees them written.
        while client.stats().sends.written < 20 {
            assert!(Instant::now() < deadline, "written within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client
    });
    assert_eq!(messages(&handle.render(), "closed"), Some(0.0));
    // The drain (2 s) is cut short by the runtime's end.
    drop(client);
    drop(runtime);
    let text = handle.render();
    assert_eq!(messages(&text, "closed"), Some(20.0), "{text}");
}
