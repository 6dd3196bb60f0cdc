//! The server records the frames it received, for a test to assert on what its client sent.

use std::time::Duration;

use async_tungstenite::tokio::connect_async;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use tokio::time::timeout;
use usageflow_socket_server::{Server, ServerHandle, ServerOptions};

const KEY: &str = "test-key";
const LIMIT: Duration = Duration::from_secs(10);

/// Sends `frames` on one connection, then waits until the server read all of them: it answers
/// a ping after the frames before it (it reads in order).
async fn send_all(server: &ServerHandle, frames: &[&str]) {
    let mut request = server.url().into_client_request().unwrap();
    request.headers_mut().insert("x-usage-key", KEY.parse().unwrap());
    let (mut ws, _) = timeout(LIMIT, connect_async(request)).await.unwrap().unwrap();
    for frame in frames {
        ws.send(Message::text(*frame)).await.unwrap();
    }
    ws.send(Message::Ping(b"barrier".to_vec().into())).await.unwrap();
    timeout(LIMIT, async {
        while let Some(message) = ws.next().await {
            if matches!(message.unwrap(), Message::Pong(data) if data.as_ref() == b"barrier") {
                return;
            }
        }
        panic!("the server closed before answering the ping");
    })
    .await
    .expect("a pong in time");
    ws.close(None).await.ok();
}

async fn start() -> ServerHandle {
    Server::start(ServerOptions {
        key: Some(KEY.into()),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn records_what_the_client_sent_in_order() {
    let server = start().await;
    server.counters().record_frames(100);
    let request =
        r#"{"type":"request_for_allocation","payload":{"alias":"ledger-1","amount":2.5},"id":"r-1"}"#;
    let send =
        r#"{"type":"use_allocation","payload":{"alias":"ledger-1","amount":1.0,"allocationId":"a-1"}}"#;
    send_all(&server, &[request, send, "not json"]).await;

    let frames = server.counters().received_frames();
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[0].text, request);
    assert_eq!(frames[0].kind.as_deref(), Some("request_for_allocation"));
    assert_eq!(frames[0].id.as_deref(), Some("r-1"));
    assert_eq!(frames[0].payload["amount"], 2.5);
    assert_eq!(frames[1].kind.as_deref(), Some("use_allocation"));
    assert_eq!(frames[1].id, None, "a fire-and-forget message has no id");
    assert_eq!(frames[1].payload["allocationId"], "a-1");
    // Not JSON: recorded as text all the same, without a type.
    assert_eq!(
        (frames[2].text.as_str(), frames[2].kind.as_deref()),
        ("not json", None)
    );
    assert!(frames[0].received_at <= frames[2].received_at);

    // Taking empties the record; recording goes on.
    assert_eq!(server.counters().take_received_frames().len(), 3);
    send_all(&server, &[send]).await;
    assert_eq!(server.counters().received_frames().len(), 1);
}

#[tokio::test]
async fn records_nothing_unless_asked_and_at_most_the_limit() {
    let server = start().await;
    let send = r#"{"type":"report_call_chain","payload":null}"#;
    send_all(&server, &[send, send]).await;
    assert!(server.counters().received_frames().is_empty(), "off by default");
    assert_eq!(server.counters().snapshot().text_frames_received, 2);

    server.counters().record_frames(2);
    send_all(&server, &[send, send, send, send, send]).await;
    assert_eq!(server.counters().received_frames().len(), 2);
    assert_eq!(server.counters().frames_not_recorded(), 3);
}
