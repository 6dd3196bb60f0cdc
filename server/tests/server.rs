//! The local server, driven by a raw async-tungstenite client over loopback.

use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tokio::{client_async, TokioAdapter};
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use usageflow_socket_server::{
    FaultConfig, ReplyStyle, Server, ServerHandle, ServerOptions, ServerThread, TlsOptions,
};

const KEY: &str = "test-key";
const LIMIT: Duration = Duration::from_secs(20);
const SHORT: Duration = Duration::from_millis(300);

type Client<S = TcpStream> = WebSocketStream<TokioAdapter<S>>;

fn options() -> ServerOptions {
    ServerOptions {
        key: Some(KEY.into()),
        ..ServerOptions::default()
    }
}

async fn start(options: ServerOptions) -> ServerHandle {
    Server::start(options).await.expect("server starts")
}

async fn handshake<S>(url: &str, key: Option<&str>, stream: S) -> Result<Client<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("user-agent", "ufsock-test/1.0".parse().unwrap());
    if let Some(k) = key {
        req.headers_mut().insert("x-usage-key", k.parse().unwrap());
    }
    let (ws, _) = timeout(Duration::from_secs(5), client_async(req, stream))
        .await
        .map_err(|_| WsError::Io(std::io::ErrorKind::TimedOut.into()))??;
    Ok(ws)
}

async fn connect(server: &ServerHandle, key: Option<&str>) -> Result<Client, WsError> {
    let tcp = TcpStream::connect(server.addr()).await?;
    handshake(&server.url(), key, tcp).await
}

async fn send(ws: &mut Client<impl AsyncRead + AsyncWrite + Unpin>, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text frame as JSON (skipping pings/pongs), within [`SHORT`]·10.
async fn next_json(ws: &mut Client<impl AsyncRead + AsyncWrite + Unpin>) -> Value {
    loop {
        let m = timeout(SHORT * 10, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next frame of any kind, or `None` when none arrives within `wait`.
async fn next_frame(ws: &mut Client, wait: Duration) -> Option<Option<Result<Message, WsError>>> {
    timeout(wait, ws.next()).await.ok()
}

fn alloc(id: &str) -> Value {
    json!({"type": "request_for_allocation", "payload": {"alias": "ledger-1", "amount": 1.0}, "id": id})
}

#[tokio::test]
async fn rejects_missing_and_wrong_keys_with_401() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        for key in [None, Some("wrong"), Some("")] {
            match connect(&server, key).await {
                Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
                other => panic!("expected 401, got {:?}", other.map(|_| ())),
            }
        }
        let c = server.counters();
        assert_eq!(c.handshakes_rejected(), 3);
        assert_eq!(c.connections_accepted(), 0);
        let _ws = connect(&server, Some(KEY)).await.unwrap();
        let s = c.snapshot();
        assert_eq!(s.connections_accepted, 1);
        assert!(s.last_key_present);
        assert_eq!(s.last_user_agent.as_deref(), Some("ufsock-test/1.0"));
        assert!(c.wait_until(SHORT, |s| s.open_connections == 1).await);

        // Runtime toggle: reject everything, then accept again.
        server.faults().set_reject_handshakes(true);
        assert!(matches!(connect(&server, Some(KEY)).await, Err(WsError::Http(r)) if r.status() == 401));
        server.faults().set_reject_handshakes(false);
        connect(&server, Some(KEY)).await.unwrap();
        assert_eq!(c.handshakes_rejected(), 4);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn any_nonempty_key_is_accepted_without_a_configured_key() {
    timeout(LIMIT, async {
        let server = start(ServerOptions::default()).await;
        connect(&server, Some("whatever")).await.unwrap();
        assert!(matches!(connect(&server, None).await, Err(WsError::Http(r)) if r.status() == 401));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn each_reply_style_correlates_as_documented() {
    timeout(LIMIT, async {
        for style in [ReplyStyle::ReplyTo, ReplyStyle::Both, ReplyStyle::IdOnly] {
            let server = start(ServerOptions {
                reply_style: style,
                ..options()
            })
            .await;
            let mut ws = connect(&server, Some(KEY)).await.unwrap();
            send(&mut ws, alloc("req-1")).await;
            let r = next_json(&mut ws).await;
            assert_eq!(r["type"], "success", "{style:?}");
            assert_eq!(r["payload"]["allocationId"].as_str().unwrap().len(), 36);
            match style {
                ReplyStyle::ReplyTo => {
                    assert_eq!(r["replyTo"], "req-1");
                    assert!(r["id"].is_string());
                    assert_ne!(r["id"], "req-1");
                }
                ReplyStyle::Both => {
                    assert_eq!(r["replyTo"], "req-1");
                    assert_eq!(r["id"], "req-1");
                }
                ReplyStyle::IdOnly => {
                    assert!(r.get("replyTo").is_none());
                    assert_eq!(r["id"], "req-1");
                }
                _ => unreachable!("not in this loop"),
            }
            // The core's decoder agrees on the correlation.
            let f = usageflow_socket_core::frame::decode(&r.to_string(), 1 << 20).unwrap();
            assert_eq!(f.correlation_id(), Some("req-1"));
        }
        // And it can change at run time.
        let server = start(options()).await;
        server.faults().set_reply_style(ReplyStyle::IdOnly);
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        send(&mut ws, alloc("x")).await;
        assert!(next_json(&mut ws).await.get("replyTo").is_none());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn answers_every_message_type_and_denies_on_trigger() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        let requests = [
            json!({"type": "request_for_allocation", "payload": {"alias": "a", "amount": 2.0, "allocationId": "client-made"}, "id": "1"}),
            json!({"type": "use_allocation", "payload": {"alias": "a", "amount": 2.0, "allocationId": "client-made", "waitForConfirmation": true}, "id": "2"}),
            json!({"type": "get_application_policies", "payload": null, "id": "3"}),
            json!({"type": "get_application_config", "payload": null, "id": "4"}),
            json!({"type": "get_blocked_endpoints", "payload": null, "id": "5"}),
            json!({"type": "request_for_allocation", "payload": {"alias": "deny", "amount": 1.0}, "id": "6"}),
            json!({"type": "request_for_allocation", "payload": {"alias": "a", "amount": -1.0}, "id": "7"}),
            json!({"type": "no_such_type", "payload": null, "id": "8"}),
        ];
        for r in &requests {
            send(&mut ws, r.clone()).await;
        }
        let mut replies = std::collections::BTreeMap::new();
        for _ in 0..requests.len() {
            let r = next_json(&mut ws).await;
            replies.insert(r["replyTo"].as_str().unwrap().to_owned(), r);
        }
        assert_eq!(replies["1"]["payload"], json!({"allocationId": "client-made"}));
        assert_eq!(replies["2"]["payload"]["eventId"].as_str().unwrap().len(), 36);
        let p: usageflow_socket_core::messages::PoliciesReply = serde_json::from_value(replies["3"]["payload"].clone()).unwrap();
        assert_eq!(p.total as usize, p.policies.len());
        assert!(p.total > 0);
        let c: usageflow_socket_core::messages::ApplicationConfigReply = serde_json::from_value(replies["4"]["payload"].clone()).unwrap();
        assert!(!c.account_reach_limit);
        assert!(!c.monitoring_paths.is_empty());
        let b: usageflow_socket_core::messages::BlockedEndpointsReply = serde_json::from_value(replies["5"]["payload"].clone()).unwrap();
        assert_eq!(b.total, 1);
        assert!(!b.endpoints[0].url.is_empty());
        for id in ["6", "7", "8"] {
            assert_eq!(replies[id]["type"], "error");
            assert!(!replies[id]["error"].as_str().unwrap().is_empty());
        }
        let s = server.counters().snapshot();
        assert_eq!(s.requests["request_for_allocation"], 3);
        assert_eq!(s.requests["no_such_type"], 1);
        assert_eq!(s.denials_sent, 3);
        assert_eq!(s.replies_sent, 8);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn fire_and_forget_is_counted_never_answered() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        for _ in 0..3 {
            send(&mut ws, json!({"type": "use_allocation", "payload": {"alias": "a", "amount": 1.0, "allocationId": "k"}})).await;
        }
        send(&mut ws, json!({"type": "request_for_allocation", "payload": {"alias": "a", "amount": 1.0, "allocationId": "k2"}})).await;
        send(&mut ws, json!({"type": "report_call_chain", "payload": {"method": "GET", "url": "/x", "callChain": [], "timestamp": 1}, "id": "cc"})).await;
        send(&mut ws, json!({"type": "use_allocation", "payload": null, "id": ""})).await;
        ws.send(Message::text("not json")).await.unwrap();
        ws.send(Message::text("[1]")).await.unwrap();
        ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        send(&mut ws, alloc("last")).await;
        // The only reply is the last request's.
        assert_eq!(next_json(&mut ws).await["replyTo"], "last");
        assert!(next_frame(&mut ws, SHORT).await.is_none());
        let s = server.counters().snapshot();
        assert_eq!(s.fire_and_forget["use_allocation"], 4);
        assert_eq!(s.fire_and_forget["request_for_allocation"], 1);
        assert_eq!(s.fire_and_forget["report_call_chain"], 1);
        assert_eq!(server.counters().fire_and_forget_total(), 6);
        assert_eq!(s.invalid_frames_received, 2);
        assert_eq!(s.binary_frames_received, 1);
        assert_eq!(s.requests.values().sum::<u64>(), 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn records_pings_and_the_clients_close_code() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        ws.send(Message::Ping(vec![7].into())).await.unwrap();
        match next_frame(&mut ws, SHORT * 10).await {
            Some(Some(Ok(Message::Pong(p)))) => assert_eq!(&p[..], &[7]),
            other => panic!("expected a pong, got {other:?}"),
        }
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        // The server answers the close; the stream then ends.
        while let Some(Ok(_)) = timeout(SHORT * 10, ws.next()).await.unwrap() {}
        let c = server.counters();
        assert!(c.wait_until(SHORT * 10, |s| s.open_connections == 0).await);
        assert_eq!(c.close_codes(), vec![Some(1000)]);
        assert_eq!(c.pings_received(), 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn kill_drops_everything_and_restart_reuses_the_port() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let addr = server.addr();
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        send(&mut ws, alloc("a")).await;
        next_json(&mut ws).await;
        server.kill().await;
        assert!(!server.is_running());
        // No close frame: the stream fails or ends.
        match next_frame(&mut ws, SHORT * 10).await {
            Some(None) | Some(Some(Err(_))) => {}
            other => panic!("expected an abrupt end, got {other:?}"),
        }
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "nothing listens after kill"
        );
        assert_eq!(server.counters().open_connections(), 0);

        server.restart().await.unwrap();
        assert!(server.is_running());
        assert_eq!(server.addr(), addr);
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        send(&mut ws, alloc("b")).await;
        assert_eq!(next_json(&mut ws).await["replyTo"], "b");
        let s = server.counters().snapshot();
        assert_eq!(s.connections_accepted, 2, "counters survive a restart");
        assert_eq!(s.requests["request_for_allocation"], 2);
        // Restart while running is kill + listen.
        server.restart().await.unwrap();
        connect(&server, Some(KEY)).await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn shutdown_closes_with_1001() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        let (_, closed) = tokio::join!(server.shutdown(), async {
            loop {
                match timeout(SHORT * 10, ws.next()).await.unwrap() {
                    Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        });
        assert_eq!(closed, Some(1001));
        assert_eq!(server.counters().snapshot().closes_sent, 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn drop_duplicate_garbage_binary_and_stray_faults() {
    timeout(LIMIT, async {
        let server = start(ServerOptions {
            faults: FaultConfig {
                drop_every: 2,
                ..FaultConfig::default()
            },
            ..options()
        })
        .await;
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        for i in 1..=4 {
            send(&mut ws, alloc(&i.to_string())).await;
        }
        assert_eq!(next_json(&mut ws).await["replyTo"], "1");
        assert_eq!(next_json(&mut ws).await["replyTo"], "3");
        assert!(next_frame(&mut ws, SHORT).await.is_none());
        assert_eq!(server.counters().snapshot().replies_dropped, 2);

        let faults = server.faults();
        faults.set(&FaultConfig {
            duplicate_replies: true,
            garbage_every: 1,
            binary_every: 1,
            stray_every: 1,
            ..FaultConfig::default()
        });
        send(&mut ws, alloc("dup")).await;
        assert_eq!(next_json(&mut ws).await["replyTo"], "dup");
        assert_eq!(next_json(&mut ws).await["replyTo"], "dup");
        match next_frame(&mut ws, SHORT * 10).await {
            Some(Some(Ok(Message::Text(t)))) => assert!(serde_json::from_str::<Value>(t.as_str()).is_err()),
            other => panic!("expected garbage, got {other:?}"),
        }
        assert!(matches!(
            next_frame(&mut ws, SHORT * 10).await,
            Some(Some(Ok(Message::Binary(_))))
        ));
        let stray = next_json(&mut ws).await;
        assert_eq!(stray["replyTo"].as_str().unwrap().len(), 36);
        let s = server.counters().snapshot();
        assert_eq!(
            (s.duplicates_sent, s.garbage_sent, s.binary_sent, s.stray_sent),
            (1, 1, 1, 1)
        );
        faults.clear();
        assert_eq!(faults.get(), FaultConfig::default());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn push_frames_fault_pushes_a_burst_once() {
    timeout(LIMIT, async {
        // Armed at start: the first connection pushes as soon as it opens.
        let server = start(ServerOptions {
            faults: FaultConfig {
                push_frames: 2,
                push_size: 12,
                ..FaultConfig::default()
            },
            ..options()
        })
        .await;
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        for n in 0..2 {
            let v = next_json(&mut ws).await;
            assert_eq!(
                v,
                json!({"type": "push", "payload": "x".repeat(10), "id": format!("push-{n}")})
            );
        }
        let faults = server.faults();
        assert_eq!(faults.push_frames(), 0, "one-shot");
        assert!(next_frame(&mut ws, SHORT).await.is_none());

        // Armed at run time: an open connection pushes at once, without a message.
        faults.set_push_size(1000);
        faults.set_push_frames(3);
        for n in 0..3 {
            let v = next_json(&mut ws).await;
            assert_eq!(
                (v["id"].as_str(), v["payload"].as_str().map(str::len)),
                (Some(&*format!("push-{n}")), Some(998))
            );
        }
        assert!(next_frame(&mut ws, SHORT).await.is_none());
        assert_eq!(server.counters().snapshot().pushes_sent, 5);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn delayed_replies_do_not_block_reading() {
    timeout(LIMIT, async {
        let server = start(ServerOptions {
            faults: FaultConfig {
                reply_delay_ms: 200,
                reply_jitter_ms: 20,
                ..FaultConfig::default()
            },
            ..options()
        })
        .await;
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        let t0 = std::time::Instant::now();
        for i in 0..50 {
            send(&mut ws, alloc(&i.to_string())).await;
        }
        for _ in 0..50 {
            next_json(&mut ws).await;
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert!(took < Duration::from_millis(1500), "delays overlap: {took:?}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn no_pongs_freeze_and_stop_reading() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let faults = server.faults();
        let mut ws = connect(&server, Some(KEY)).await.unwrap();

        faults.set_no_pongs(true);
        ws.send(Message::Ping(vec![1].into())).await.unwrap();
        send(&mut ws, alloc("after-ping")).await;
        // The reply comes, the pong does not.
        assert_eq!(next_frame_json(&mut ws).await["replyTo"], "after-ping");
        assert!(next_frame(&mut ws, SHORT).await.is_none());
        assert!(server.counters().snapshot().pongs_suppressed >= 1);
        faults.set_no_pongs(false);
        ws.send(Message::Ping(vec![2].into())).await.unwrap();
        assert!(matches!(
            next_frame(&mut ws, SHORT * 10).await,
            Some(Some(Ok(Message::Pong(_))))
        ));

        // stop_reading is reversible: requests wait, then are answered.
        faults.set_stop_reading(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        send(&mut ws, alloc("while-stopped")).await;
        assert!(next_frame(&mut ws, SHORT).await.is_none());
        faults.set_stop_reading(false);
        assert_eq!(next_json(&mut ws).await["replyTo"], "while-stopped");

        // freeze: nothing comes back, the socket stays open.
        faults.set_freeze(true);
        send(&mut ws, alloc("frozen")).await;
        ws.send(Message::Ping(vec![3].into())).await.unwrap();
        assert!(next_frame(&mut ws, SHORT).await.is_none());
        assert!(
            server
                .counters()
                .wait_until(SHORT, |s| s.connections_frozen == 1)
                .await
        );
        assert_eq!(server.counters().open_connections(), 1);
        server.kill().await;
    })
    .await
    .unwrap();
}

/// Like `next_json`, but fails if a pong arrives first.
async fn next_frame_json(ws: &mut Client) -> Value {
    match next_frame(ws, SHORT * 10).await {
        Some(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test]
async fn close_drop_and_freeze_after_n_messages() {
    timeout(LIMIT, async {
        let server = start(ServerOptions {
            faults: FaultConfig {
                close_after_messages: 2,
                close_code: 1011,
                ..FaultConfig::default()
            },
            ..options()
        })
        .await;
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        send(&mut ws, alloc("1")).await;
        send(&mut ws, alloc("2")).await;
        assert_eq!(next_json(&mut ws).await["replyTo"], "1");
        assert_eq!(next_json(&mut ws).await["replyTo"], "2");
        match next_frame(&mut ws, SHORT * 10).await {
            Some(Some(Ok(Message::Close(Some(f))))) => assert_eq!(u16::from(f.code), 1011),
            other => panic!("expected close 1011, got {other:?}"),
        }

        let faults = server.faults();
        faults.set(&FaultConfig {
            drop_after_messages: 1,
            ..FaultConfig::default()
        });
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        send(&mut ws, alloc("x")).await;
        match next_frame(&mut ws, SHORT * 10).await {
            Some(None) | Some(Some(Err(_))) => {}
            other => panic!("expected an abrupt end, got {other:?}"),
        }

        faults.set(&FaultConfig {
            freeze_after_messages: 1,
            ..FaultConfig::default()
        });
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        send(&mut ws, alloc("answered")).await;
        send(&mut ws, alloc("ignored")).await;
        assert_eq!(next_json(&mut ws).await["replyTo"], "answered");
        assert!(next_frame(&mut ws, SHORT).await.is_none());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn drop_once_on_drops_one_connection_then_disarms() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let faults = server.faults();
        faults.set_drop_once_on(Some("key-7".into()));
        assert_eq!(faults.get().drop_once_on.as_deref(), Some("key-7"));
        let mut a = connect(&server, Some(KEY)).await.unwrap();
        let mut b = connect(&server, Some(KEY)).await.unwrap();
        send(&mut a, alloc("key-1")).await;
        assert_eq!(next_json(&mut a).await["replyTo"], "key-1");
        send(&mut a, alloc("key-7")).await;
        match next_frame(&mut a, SHORT * 10).await {
            Some(None) | Some(Some(Err(_))) => {}
            other => panic!("expected an abrupt end, got {other:?}"),
        }
        // Disarmed: the same frame on another connection is answered.
        assert_eq!(faults.drop_once_on(), None);
        send(&mut b, alloc("key-7")).await;
        assert_eq!(next_json(&mut b).await["replyTo"], "key-7");
        let snap = server.counters().snapshot();
        assert_eq!(
            snap.requests["request_for_allocation"], 3,
            "the dropped frame is counted"
        );
        assert_eq!(snap.connections_dropped, 1);
        faults.set_drop_once_on(Some(String::new()));
        assert_eq!(faults.drop_once_on(), None, "an empty text is off");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn hanging_handshakes_never_complete() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        server.faults().set_hang_handshakes(true);
        let tcp = TcpStream::connect(server.addr()).await.unwrap();
        let r = timeout(SHORT, handshake(&server.url(), Some(KEY), tcp)).await;
        assert!(r.is_err(), "the handshake must hang");
        assert_eq!(server.counters().snapshot().handshakes_hung, 1);
        server.faults().set_hang_handshakes(false);
        connect(&server, Some(KEY)).await.unwrap();
        server.kill().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pipelined_burst_is_fully_answered() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let ws = connect(&server, Some(KEY)).await.unwrap();
        let (mut tx, mut rx) = ws.split();
        const N: usize = 5000;
        let writer = tokio::spawn(async move {
            for i in 0..N {
                tx.feed(Message::text(alloc(&i.to_string()).to_string()))
                    .await
                    .unwrap();
            }
            tx.flush().await.unwrap();
            tx
        });
        let mut seen = 0;
        while seen < N {
            match timeout(Duration::from_secs(5), rx.next()).await.unwrap() {
                Some(Ok(Message::Text(_))) => seen += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        writer.await.unwrap();
        assert_eq!(server.counters().requests("request_for_allocation"), N as u64);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn serves_wss_with_a_self_signed_certificate() {
    timeout(LIMIT, async {
        let (tls, cert) = TlsOptions::self_signed().unwrap();
        let server = start(ServerOptions {
            tls: Some(tls),
            ..options()
        })
        .await;
        assert!(server.url().starts_with("wss://"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(server.addr()).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let mut ws = handshake(&server.url_for_host("localhost"), Some(KEY), tls)
            .await
            .unwrap();
        send(&mut ws, alloc("tls")).await;
        assert_eq!(next_json(&mut ws).await["replyTo"], "tls");

        // A plain-TCP client fails the TLS handshake; the server counts it and carries on.
        let tcp = TcpStream::connect(server.addr()).await.unwrap();
        assert!(handshake(&server.url(), Some(KEY), tcp).await.is_err());
        assert!(
            server
                .counters()
                .wait_until(SHORT * 10, |s| s.handshakes_failed == 1)
                .await
        );
    })
    .await
    .unwrap();
}

#[test]
fn server_thread_serves_blocking_callers() {
    let server = ServerThread::spawn(options()).unwrap();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = server.addr();
    let url = server.url();
    let roundtrip = |id: &'static str| {
        let url = url.clone();
        client_rt.block_on(async move {
            timeout(LIMIT, async {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let mut ws = handshake(&url, Some(KEY), tcp).await.unwrap();
                send(&mut ws, alloc(id)).await;
                next_json(&mut ws).await
            })
            .await
            .unwrap()
        })
    };
    assert_eq!(roundtrip("t1")["replyTo"], "t1");
    server.kill();
    assert!(!server.is_running());
    assert!(std::net::TcpStream::connect(addr).is_err());
    server.restart().unwrap();
    assert_eq!(roundtrip("t2")["replyTo"], "t2");
    assert!(server
        .counters()
        .wait_until_blocking(LIMIT, |s| s.connections_accepted == 2));
    server.shutdown();
    assert!(!server.is_running());
}

fn report(n: usize) -> Value {
    json!({"type": "report_call_chain", "payload": {"n": n}})
}

/// Asserts that the connection was reset by the server: no close frame, no clean end.
async fn expect_reset(ws: &mut Client) {
    match next_frame(ws, SHORT * 10).await {
        Some(Some(Err(WsError::Io(e)))) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a connection reset, got {other:?}"),
    }
}

#[tokio::test]
async fn abort_connections_resets_every_connection_and_keeps_listening() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let faults = server.faults();
        let c = server.counters();

        // One connection blocked writing a push to a client that does not read, one answered,
        // one whose unread messages wait in the socket buffers, one in its handshake.
        let mut blocked = connect(&server, Some(KEY)).await.unwrap();
        assert!(c.wait_until(SHORT * 10, |s| s.open_connections == 1).await);
        faults.set_push_size(60_000);
        faults.set_push_frames(200);
        assert!(c.wait_until(SHORT * 10, |s| s.pushes_sent > 0).await);

        let mut answered = connect(&server, Some(KEY)).await.unwrap();
        send(&mut answered, alloc("before")).await;
        assert_eq!(next_json(&mut answered).await["replyTo"], "before");
        send(&mut answered, report(0)).await;
        assert!(c.wait_until(SHORT * 10, |s| s.fire_and_forget.len() == 1).await);

        let mut unread = connect(&server, Some(KEY)).await.unwrap();
        assert!(c.wait_until(SHORT * 10, |s| s.open_connections == 3).await);
        faults.set_stop_reading(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        for n in 1..=5 {
            send(&mut unread, report(n)).await;
        }

        faults.set_hang_handshakes(true);
        let mut hung = TcpStream::connect(server.addr()).await.unwrap();
        assert!(c.wait_until(SHORT * 10, |s| s.handshakes_hung == 1).await);
        faults.set_hang_handshakes(false);

        timeout(Duration::from_secs(5), server.abort_connections())
            .await
            .expect("abort_connections returns");
        let s = c.snapshot();
        assert_eq!(s.connections_aborted, 4, "{s:?}");
        assert_eq!(s.open_connections, 0);
        assert_eq!(s.closes_sent, 0, "no close frames");
        assert!(server.is_running(), "the listener keeps accepting");

        expect_reset(&mut answered).await;
        expect_reset(&mut unread).await;
        // The blocked one had frames to read: they come first, then the reset.
        loop {
            match timeout(SHORT * 10, blocked.next())
                .await
                .expect("the reset in time")
            {
                Some(Ok(Message::Text(_))) => continue,
                Some(Err(WsError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                other => panic!("expected a connection reset, got {other:?}"),
            }
        }
        let mut buf = [0u8; 16];
        match timeout(SHORT * 10, tokio::io::AsyncReadExt::read(&mut hung, &mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            other => panic!("expected the hung connection to end, got {other:?}"),
        }

        // The unread messages are lost, even once reading resumes.
        faults.set_stop_reading(false);
        tokio::time::sleep(SHORT).await;
        assert_eq!(c.fire_and_forget("report_call_chain"), 1);

        // New connections are served.
        let mut again = connect(&server, Some(KEY)).await.unwrap();
        send(&mut again, alloc("after")).await;
        assert_eq!(next_json(&mut again).await["replyTo"], "after");
        assert_eq!(c.connections_aborted(), 4);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn abort_after_messages_aborts_every_connection_once() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let faults = server.faults();
        let c = server.counters();
        let mut a = connect(&server, Some(KEY)).await.unwrap();
        let mut b = connect(&server, Some(KEY)).await.unwrap();
        // Messages before the switch is set do not count toward it.
        for n in 0..3 {
            send(&mut a, report(n)).await;
        }
        assert!(
            c.wait_until(SHORT * 10, |s| s.fire_and_forget.values().sum::<u64>() == 3)
                .await
        );

        faults.set_abort_after_messages(4);
        assert_eq!(faults.get().abort_after_messages, 4);
        // Invalid frames do not count either.
        a.send(Message::text("not json")).await.unwrap();
        send(&mut a, report(3)).await;
        send(&mut b, alloc("b1")).await;
        assert_eq!(next_json(&mut b).await["replyTo"], "b1");
        send(&mut a, report(4)).await;
        assert!(
            c.wait_until(SHORT * 10, |s| s.fire_and_forget.values().sum::<u64>() == 5)
                .await
        );
        assert_eq!(c.connections_aborted(), 0);
        // The 4th: counted, not answered, and every connection is aborted.
        send(&mut b, alloc("b2")).await;
        expect_reset(&mut b).await;
        expect_reset(&mut a).await;
        let s = c.snapshot();
        assert_eq!(s.connections_aborted, 2, "{s:?}");
        assert_eq!(s.requests["request_for_allocation"], 2, "the 4th is counted");
        assert_eq!(s.replies_sent, 1);
        assert_eq!(faults.abort_after_messages(), 0, "one-shot");
        assert!(server.is_running());

        // Disarmed: a new connection is not aborted again.
        let mut d = connect(&server, Some(KEY)).await.unwrap();
        for i in 0..10 {
            send(&mut d, alloc(&format!("d{i}"))).await;
            assert_eq!(next_json(&mut d).await["replyTo"], format!("d{i}"));
        }
        assert_eq!(c.connections_aborted(), 2);

        // Armed from the start, through ServerOptions.
        let server = start(ServerOptions {
            faults: FaultConfig {
                abort_after_messages: 1,
                ..FaultConfig::default()
            },
            ..options()
        })
        .await;
        let mut e = connect(&server, Some(KEY)).await.unwrap();
        send(&mut e, report(0)).await;
        expect_reset(&mut e).await;
        assert_eq!(server.counters().connections_aborted(), 1);
        assert_eq!(server.counters().fire_and_forget("report_call_chain"), 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn abort_every_ms_aborts_periodically_while_set() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let faults = server.faults();
        let c = server.counters();
        faults.set_abort_every_ms(50);
        for _ in 0..3 {
            let mut ws = connect(&server, Some(KEY)).await.unwrap();
            expect_reset(&mut ws).await;
        }
        assert!(c.connections_aborted() >= 3);
        assert!(server.is_running());

        faults.set_abort_every_ms(0);
        // Let a tick that was already due pass.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let aborted = c.connections_aborted();
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        tokio::time::sleep(SHORT).await;
        send(&mut ws, alloc("still-here")).await;
        assert_eq!(next_json(&mut ws).await["replyTo"], "still-here");
        assert_eq!(c.connections_aborted(), aborted);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn read_delay_us_paces_reading() {
    timeout(LIMIT, async {
        let server = start(ServerOptions {
            faults: FaultConfig {
                read_delay_us: 20_000,
                ..FaultConfig::default()
            },
            ..options()
        })
        .await;
        let faults = server.faults();
        let c = server.counters();
        let mut ws = connect(&server, Some(KEY)).await.unwrap();

        // Ten messages at once, then a ping: read one every 20 ms, the ping last.
        let t0 = std::time::Instant::now();
        for n in 0..10 {
            ws.feed(Message::text(report(n).to_string())).await.unwrap();
        }
        ws.feed(Message::Ping(vec![1, 2, 3, 4, 5, 6, 7, 8].into()))
            .await
            .unwrap();
        ws.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let early = c.fire_and_forget("report_call_chain");
        assert!(early < 10, "all read at once: {early}");
        match next_frame(&mut ws, Duration::from_secs(5)).await {
            Some(Some(Ok(Message::Pong(p)))) => assert_eq!(&p[..], &[1, 2, 3, 4, 5, 6, 7, 8]),
            other => panic!("expected a pong, got {other:?}"),
        }
        let took = t0.elapsed();
        assert_eq!(c.fire_and_forget("report_call_chain"), 10);
        assert!(took >= Duration::from_millis(180), "{took:?}");

        // Switched off while paused: reading resumes at once.
        faults.set_read_delay_us(2_000_000);
        for n in 10..15 {
            send(&mut ws, report(n)).await;
        }
        assert!(
            c.wait_until(SHORT * 10, |s| s.fire_and_forget["report_call_chain"] == 11)
                .await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(c.fire_and_forget("report_call_chain"), 11, "paused");
        faults.set_read_delay_us(0);
        assert!(
            c.wait_until(SHORT, |s| s.fire_and_forget["report_call_chain"] == 15)
                .await
        );
        send(&mut ws, alloc("unpaced")).await;
        assert_eq!(next_json(&mut ws).await["replyTo"], "unpaced");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pongs_echo_the_ping_payload() {
    timeout(LIMIT, async {
        let server = start(options()).await;
        let mut ws = connect(&server, Some(KEY)).await.unwrap();
        let payload = [1u8, 2, 3, 4, 5, 6, 7, 8];
        ws.send(Message::Ping(payload.to_vec().into())).await.unwrap();
        match next_frame(&mut ws, SHORT * 10).await {
            Some(Some(Ok(Message::Pong(p)))) => assert_eq!(&p[..], &payload),
            other => panic!("expected a pong, got {other:?}"),
        }

        // Pings among requests, in one write: each is answered with its own payload, in order.
        let pings: Vec<[u8; 8]> = (0..4u64).map(|n| (n * 0x0101_0101 + 9).to_be_bytes()).collect();
        for (n, p) in pings.iter().enumerate() {
            ws.feed(Message::Ping(p.to_vec().into())).await.unwrap();
            ws.feed(Message::text(alloc(&format!("r{n}")).to_string()))
                .await
                .unwrap();
        }
        ws.feed(Message::Ping(payload.to_vec().into())).await.unwrap();
        ws.flush().await.unwrap();
        let mut pongs = Vec::new();
        let mut replies = 0;
        while pongs.len() < pings.len() + 1 || replies < pings.len() {
            match next_frame(&mut ws, SHORT * 10).await {
                Some(Some(Ok(Message::Pong(p)))) => pongs.push(p.to_vec()),
                Some(Some(Ok(Message::Text(_)))) => replies += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut expected: Vec<Vec<u8>> = pings.iter().map(|p| p.to_vec()).collect();
        expected.push(payload.to_vec());
        assert_eq!(pongs, expected);

        // After no_pongs was on and off again, the payload still comes back unchanged.
        server.faults().set_no_pongs(true);
        ws.send(Message::Ping(vec![0xAA; 8].into())).await.unwrap();
        assert!(next_frame(&mut ws, SHORT).await.is_none());
        server.faults().set_no_pongs(false);
        ws.send(Message::Ping(payload.to_vec().into())).await.unwrap();
        match next_frame(&mut ws, SHORT * 10).await {
            Some(Some(Ok(Message::Pong(p)))) => assert_eq!(&p[..], &payload),
            other => panic!("expected a pong, got {other:?}"),
        }
        assert_eq!(server.counters().pings_received(), 8);
    })
    .await
    .unwrap();
}

#[test]
fn server_thread_aborts_connections_blocking() {
    let server = ServerThread::spawn(options()).unwrap();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (addr, url) = (server.addr(), server.url());
    let mut ws = client_rt.block_on(async {
        timeout(LIMIT, async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut ws = handshake(&url, Some(KEY), tcp).await.unwrap();
            send(&mut ws, alloc("t1")).await;
            assert_eq!(next_json(&mut ws).await["replyTo"], "t1");
            ws
        })
        .await
        .unwrap()
    });
    server.abort_connections();
    assert_eq!(server.counters().connections_aborted(), 1);
    assert!(server.is_running());
    client_rt.block_on(async {
        timeout(LIMIT, async {
            expect_reset(&mut ws).await;
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut ws = handshake(&url, Some(KEY), tcp).await.unwrap();
            send(&mut ws, alloc("t2")).await;
            assert_eq!(next_json(&mut ws).await["replyTo"], "t2");
        })
        .await
        .unwrap()
    });
}
