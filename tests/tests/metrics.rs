//! The `metrics` feature against a Prometheus recorder: a known workload on the local server,
//! then the rendered exposition text must agree with `Client::stats`.
//!
//! One test in its own binary: the recorder is process-global, and no other client may
//! publish into it.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use usageflow_socket_tests::{
    config, connect, must_wait, policies, report, run, server, wait_open, Outgoing, Stats, TokioAdapter,
};

/// The value of the series `name` whose labels include every one of `labels`, or `None`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let matches = series_name == name
            && labels
                .iter()
                .all(|(k, v)| series_labels.split(',').any(|l| l == format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().expect("a number"))
    })
}

/// Like [`value`], panicking (with the rendered text) when the series is missing.
fn must(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(text, name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?} in:\n{text}"))
}

fn recorder() -> PrometheusHandle {
    PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0])
        .expect("buckets")
        .install_recorder()
        .expect("the only recorder of this test binary")
}

#[test]
fn prometheus_matches_stats() {
    let handle = recorder();
    run::<TokioAdapter, _>("prometheus_matches_stats", body(handle));
}

async fn body(handle: PrometheusHandle) {
    let server = server();
    let client = connect::<TokioAdapter>(config(&server.url())).await;
    wait_open::<TokioAdapter>(&client, 2, Duration::from_secs(5)).await;

    // 18 replies and 2 denials.
    for _ in 0..18 {
        client.request(policies()).await.expect("a reply");
    }
    for _ in 0..2 {
        let denied = client
            .request(Outgoing::new(
                "request_for_allocation",
                json!({"alias": "deny", "amount": 1.0}),
            ))
            .await
            .unwrap_err();
        assert!(denied.is_denied(), "{denied:?}");
    }
    // 30 sends, all confirmed.
    for n in 0..30 {
        client.send(report(n, 16)).expect("room in the outbox");
    }
    client.flush(Duration::from_secs(10)).await.expect("flushed");

    // `stats` publishes the snapshot it returns.
    let stats: Stats = client.stats();
    let text = handle.render();
    assert_eq!((stats.replies, stats.denials), (18, 2), "{stats:?}");
    let sends = &stats.sends_by_type["report_call_chain"];
    assert_eq!((sends.sends, sends.confirmed), (30, 30), "{sends:?}");

    let requests = |outcome| must(&text, "usageflow_requests_total", &[("outcome", outcome)]);
    assert_eq!(requests("reply"), stats.replies as f64);
    assert_eq!(requests("denied"), stats.denials as f64);
    assert_eq!(requests("timeout"), stats.timeouts as f64);
    assert_eq!(requests("not_connected"), stats.refused_not_connected as f64);
    assert_eq!(requests("backpressure"), stats.refused_backpressure as f64);
    // Every request was timed, by outcome.
    let timed = |outcome| {
        must(
            &text,
            "usageflow_request_duration_seconds_count",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(timed("reply"), 18.0);
    assert_eq!(timed("denied"), 2.0);

    let messages = |state| {
        must(
            &text,
            "usageflow_messages_total",
            &[("type", "report_call_chain"), ("state", state)],
        )
    };
    assert_eq!(messages("confirmed"), sends.confirmed as f64);
    assert_eq!(messages("dropped"), sends.dropped as f64);
    assert_eq!(messages("unconfirmed"), sends.unconfirmed as f64);
    let live = |state| {
        must(
            &text,
            "usageflow_messages",
            &[("type", "report_call_chain"), ("state", state)],
        )
    };
    assert_eq!(live("queued"), sends.queued as f64);
    assert_eq!(live("written"), sends.written as f64);
    // The confirmation latency is a real histogram (the facade's), not a hand-made counter
    // and gauge: the exporter renders it with its buckets, count and exact sum.
    assert!(
        text.contains("# TYPE usageflow_message_confirm_seconds histogram"),
        "not a histogram:\n{text}"
    );
    assert_eq!(
        must(&text, "usageflow_message_confirm_seconds_count", &[]),
        stats.confirm_latency.count as f64
    );
    assert_eq!(
        must(
            &text,
            "usageflow_message_confirm_seconds_bucket",
            &[("le", "+Inf")]
        ),
        stats.confirm_latency.count as f64
    );
    let sum = must(&text, "usageflow_message_confirm_seconds_sum", &[]);
    let expected = stats.confirm_latency.total_micros as f64 / 1e6;
    assert!((sum - expected).abs() < 1e-6, "{sum} vs {expected}");

    assert_eq!(
        must(&text, "usageflow_open_connections", &[]),
        f64::from(stats.open_connections)
    );
    assert_eq!(stats.open_connections, 2);
    assert_eq!(must(&text, "usageflow_dials_total", &[]), stats.dials as f64);
    assert_eq!(must(&text, "usageflow_availability", &[]), 2.0);
    assert_eq!(
        must(&text, "usageflow_disconnects_total", &[]),
        stats.disconnects as f64
    );

    // Without a `stats` call, the driver task publishes within a second or so.
    client.send(report(30, 16)).expect("room in the outbox");
    client.flush(Duration::from_secs(10)).await.expect("flushed");
    must_wait::<TokioAdapter>(Duration::from_secs(5), "the periodic publication", || {
        value(
            &handle.render(),
            "usageflow_messages_total",
            &[("type", "report_call_chain"), ("state", "confirmed")],
        ) == Some(31.0)
    })
    .await;

    // Closing publishes the final counters: no connection is left open.
    let closed = client.close().await;
    assert!(closed.is_clean(), "{closed:?}");
    let text = handle.render();
    assert_eq!(must(&text, "usageflow_open_connections", &[]), 0.0);
    assert_eq!(
        must(&text, "usageflow_disconnects_total", &[]),
        closed.stats.disconnects as f64
    );
    assert_eq!(must(&text, "usageflow_availability", &[]), 0.0);

    // With confirmation off, messages end as written once flushed: the gauge of messages
    // written *now* goes back to 0, and the final state is a counter.
    let client = connect::<TokioAdapter>(config(&server.url()).confirm_delivery(false)).await;
    for n in 0..10 {
        client.send(report(100 + n, 16)).expect("room in the outbox");
    }
    client.flush(Duration::from_secs(10)).await.expect("flushed");
    let stats = client.stats();
    let sends = &stats.sends_by_type["report_call_chain"];
    assert_eq!((sends.written, sends.written_final), (10, 10), "{sends:?}");
    let text = handle.render();
    let written = |name| {
        must(
            &text,
            name,
            &[("type", "report_call_chain"), ("state", "written")],
        )
    };
    assert_eq!(written("usageflow_messages"), 0.0, "none is in flight now");
    assert_eq!(written("usageflow_messages_total"), 10.0);
    client.close().await;
}
