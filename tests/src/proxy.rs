//! Through an HTTP `CONNECT` proxy (the server crate's [`ProxyThread`]): tunnels for `ws://`
//! and `wss://` (TLS end to end), and the proxy's refusals as their own typed error, never a
//! rejected key.

use std::time::Duration;

use usageflow_socket_server::{ProxyOptions, ProxyThread, TlsOptions};

use crate::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn proxy_with(tweak: impl FnOnce(&mut ProxyOptions)) -> ProxyThread {
    let mut options = ProxyOptions {
        head_timeout: SECS(2),
        connect_timeout: SECS(2),
        ..Default::default()
    };
    tweak(&mut options);
    ProxyThread::spawn(options).expect("the test proxy starts")
}

fn through(url: &str, proxy_url: &str) -> ClientOptions {
    ClientOptions::builder(config(url).build().unwrap())
        .proxy(proxy_url)
        .build()
}

async fn close_within<A: Adapter>(client: &ClientOf<A>) {
    assert!(
        timeout::<A, _>(SECS(3), client.close()).await.is_some(),
        "{}: close() did not return within 3 s",
        A::NAME
    );
}

/// The dial error of the next `ConnectFailed` event.
async fn next_dial_error<A: Adapter>(sub: &mut Subscription) -> DialError {
    let event = wait_event::<A>(sub, SECS(5), |e| {
        matches!(e, ClientEvent::Pool(Event::ConnectFailed { .. }))
    })
    .await
    .expect("a ConnectFailed event");
    let ClientEvent::Pool(Event::ConnectFailed { error, .. }) = event else {
        unreachable!()
    };
    error
}

/// Waits until every slot failed a few dials, then checks the pool reports no key rejection
/// (requests name the proxy's refusal `status`, or the outage when `None`).
async fn not_a_rejection<A: Adapter>(client: &ClientOf<A>, status: Option<u16>) {
    must_wait::<A>(SECS(5), "four failed dials", || client.stats().dial_failures >= 4).await;
    let err = client.request(policies()).await.unwrap_err();
    match status {
        Some(status) => assert_eq!(err, ClientError::ProxyRefused { status }, "{}", A::NAME),
        None => assert_eq!(err, ClientError::NotConnected, "{}", A::NAME),
    }
    assert!(!err.is_rejected());
    let s = client.stats();
    assert_eq!(s.rejections, 0, "{s:?}");
    assert_eq!(s.rejected_status, None, "{s:?}");
}

/// `ws://` through the proxy: requests work, one tunnel per connection, and the server saw
/// exactly the tunnelled connections.
pub async fn proxy_tunnels_ws<A: Adapter>() {
    let server = server();
    let proxy = proxy_with(|_| {});
    let client = ClientOf::<A>::connect(through(&server.url(), &proxy.url()))
        .await
        .unwrap();
    wait_open::<A>(&client, 2, SECS(5)).await;
    for _ in 0..5 {
        assert_eq!(client.get_application_policies().await.unwrap().total, 2);
    }
    let c = proxy.counters();
    let s = server.counters().snapshot();
    assert_eq!(c.tunnels_opened(), 2, "a tunnel per connection");
    assert_eq!(s.connections_accepted, c.tunnels_opened(), "{s:?}");
    assert_eq!((c.tunnels_refused(), c.tls_tunnels()), (0, 0));
    assert_eq!(c.last_target(), Some(server.addr().to_string()));
    assert!(s.last_key_present);
    close_within::<A>(&client).await;
}

/// `wss://` through the proxy: TLS runs end to end with the server (the client checks the
/// server's certificate for `localhost`; the proxy only sees TLS records).
pub async fn proxy_tunnels_wss<A: Adapter>() {
    let (tls, cert) = TlsOptions::self_signed().unwrap();
    let server = server_with(|o| o.tls = Some(tls));
    let url = server.url_for_host("localhost");
    assert!(url.starts_with("wss://"));
    let proxy = proxy_with(|_| {});
    let options = ClientOptions::builder(config(&url).build().unwrap())
        .add_root_certificate(cert)
        .webpki_roots(false)
        .proxy(proxy.url())
        .build();
    let client = ClientOf::<A>::connect(options).await.unwrap();
    wait_open::<A>(&client, 2, SECS(5)).await;
    assert_eq!(client.get_application_policies().await.unwrap().total, 2);
    let c = proxy.counters();
    assert_eq!(c.tunnels_opened(), 2);
    assert_eq!(c.tls_tunnels(), 2, "TLS end to end through every tunnel");
    assert_eq!(
        c.last_target(),
        Some(format!("localhost:{}", server.addr().port()))
    );
    assert!(server.counters().snapshot().last_key_present);
    close_within::<A>(&client).await;
}

/// A proxy that wants credentials: without them or with wrong ones, dials fail with
/// `DialError::Proxy { status: 407 }` (not a rejected key; the server is never reached);
/// with the right ones, the client connects.
pub async fn proxy_requires_credentials<A: Adapter>() {
    let server = server();
    let proxy = proxy_with(|o| o.credentials = Some(("proxy-user".into(), "proxy-Secr3t".into())));
    for proxy_url in [proxy.url(), proxy.url_with_credentials("proxy-user", "wrong")] {
        let client = ClientOf::<A>::start(through(&server.url(), &proxy_url)).unwrap();
        let mut sub = client.subscribe();
        let error = next_dial_error::<A>(&mut sub).await;
        assert_eq!(error, DialError::Proxy { status: 407 }, "{}", A::NAME);
        assert!(!error.is_auth_rejection());
        assert_eq!(error.to_string(), "the proxy requires credentials (HTTP 407)");
        not_a_rejection::<A>(&client, Some(407)).await;
        close_within::<A>(&client).await;
    }
    let c = proxy.counters();
    assert!(c.auth_required() >= 8, "{}", c.auth_required());
    assert_eq!(c.tunnels_opened(), 0);
    assert_eq!(
        server.counters().snapshot().tcp_accepted,
        0,
        "the server was never reached"
    );

    let url = proxy.url_with_credentials("proxy-user", "proxy-Secr3t");
    let options = through(&server.url(), &url);
    assert!(!format!("{options:?}").contains("proxy-Secr3t"));
    let client = ClientOf::<A>::connect(options).await.unwrap();
    wait_open::<A>(&client, 2, SECS(5)).await;
    client.get_application_policies().await.unwrap();
    assert_eq!(c.tunnels_opened(), 2);
    close_within::<A>(&client).await;
}

/// A proxy that refuses the tunnel (403), then is unavailable (502): typed proxy errors,
/// backed off like network errors, never a rejected key.
pub async fn proxy_refuses_the_tunnel<A: Adapter>() {
    let server = server();
    let proxy = proxy_with(|o| o.status = Some(403));
    let client = ClientOf::<A>::start(through(&server.url(), &proxy.url())).unwrap();
    let mut sub = client.subscribe();
    let error = next_dial_error::<A>(&mut sub).await;
    assert_eq!(error, DialError::Proxy { status: 403 }, "{}", A::NAME);
    assert_eq!(error.to_string(), "the proxy refused the tunnel (HTTP 403)");
    not_a_rejection::<A>(&client, Some(403)).await;

    proxy.set_status(Some(502));
    let error = loop {
        let error = next_dial_error::<A>(&mut sub).await;
        if error != (DialError::Proxy { status: 403 }) {
            break error;
        }
    };
    assert_eq!(error, DialError::Proxy { status: 502 });
    assert_eq!(error.to_string(), "the proxy is unavailable (HTTP 502)");
    // A proxy's 5xx is an outage, not a refusal.
    not_a_rejection::<A>(&client, None).await;
    assert_eq!(server.counters().snapshot().tcp_accepted, 0);

    // The proxy lets tunnels through again: the slots recover.
    proxy.set_status(None);
    wait_open::<A>(&client, 2, SECS(5)).await;
    client.get_application_policies().await.unwrap();
    close_within::<A>(&client).await;
}

/// Item 17: a proxy that refuses (407 without or with wrong credentials, 403 for the host) on
/// every first dial makes `connect` fail with a typed proxy error (the client is shut down);
/// `start` keeps retrying, requests name the cause while it lasts, and the slots recover
/// once the proxy lets tunnels through. A proxy's 5xx stays "unavailable".
pub async fn proxy_refusal_fails_connect_and_names_the_cause<A: Adapter>() {
    let server = server();
    let proxy = proxy_with(|o| o.credentials = Some(("proxy-user".into(), "proxy-Secr3t".into())));
    let wrong = proxy.url_with_credentials("proxy-user", "wrong");
    let started = std::time::Instant::now();
    let error = ClientOf::<A>::connect(through(&server.url(), &wrong))
        .await
        .unwrap_err();
    assert_eq!(error, ClientError::ProxyRefused { status: 407 }, "{}", A::NAME);
    assert!(error.is_proxy_refused() && error.is_unavailable() && !error.is_rejected());
    assert!(error.to_string().contains("HTTP proxy refused"), "{error}");
    assert!(
        started.elapsed() < SECS(3),
        "connect returns once the first dials settled"
    );
    let dials = proxy.counters().auth_required();
    A::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        proxy.counters().auth_required(),
        dials,
        "a refused connect leaves nothing retrying"
    );

    proxy.set_status(Some(403));
    let right = proxy.url_with_credentials("proxy-user", "proxy-Secr3t");
    let error = ClientOf::<A>::connect(through(&server.url(), &right))
        .await
        .unwrap_err();
    assert_eq!(error, ClientError::ProxyRefused { status: 403 }, "{}", A::NAME);

    // `start` keeps retrying with the cause visible; a 502 is an outage; then it recovers.
    let client = ClientOf::<A>::start(through(&server.url(), &right)).unwrap();
    not_a_rejection::<A>(&client, Some(403)).await;
    proxy.set_status(Some(502));
    let deadline = std::time::Instant::now() + SECS(5);
    while client.request(policies()).await != Err(ClientError::NotConnected) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: a 502 never read as an outage",
            A::NAME
        );
        A::sleep(Duration::from_millis(20)).await;
    }
    proxy.set_status(None);
    wait_open::<A>(&client, 2, SECS(5)).await;
    client.get_application_policies().await.unwrap();
    close_within::<A>(&client).await;
}
