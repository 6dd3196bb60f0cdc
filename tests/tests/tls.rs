//! TLS trust beyond the webpki roots, against the local server on 127.0.0.1: the platform's
//! roots and the platform verifier reading a private CA from `SSL_CERT_FILE` (as behind a
//! TLS-inspecting proxy whose root the platform trusts), and mTLS with a user-supplied rustls
//! configuration against a server that requires a client certificate.
//!
//! One test in its own binary: it sets `SSL_CERT_FILE` for the whole process.

use std::sync::Arc;
use std::time::Duration;

use usageflow_socket_server::{ServerOptions, ServerThread, TestCa, TlsOptions};
use usageflow_socket_tokio::{
    Client, ClientEvent, ClientOptions, Config, DialError, DialStage, Event, UsageFlowApi,
};

const KEY: &str = "tls-test-key";

fn serve(tls: TlsOptions) -> ServerThread {
    ServerThread::spawn(ServerOptions {
        key: Some(KEY.into()),
        tls: Some(tls),
        ..Default::default()
    })
    .unwrap()
}

fn config(server: &ServerThread) -> Config {
    Config::builder(server.url_for_host("localhost"), KEY)
        .pool_size(1)
        .handshake_timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

/// Connects with `options` and says whether a request went through; closes the client.
async fn works(options: ClientOptions) -> bool {
    let client = Client::connect(options).await.unwrap();
    let ok = client.is_connected() && client.get_application_policies().await.is_ok();
    tokio::time::timeout(Duration::from_secs(10), client.close())
        .await
        .expect("close took more than 10 s");
    ok
}

/// The first dial error of a client with `options`.
async fn first_dial_error(options: ClientOptions) -> DialError {
    let client = Client::start(options).unwrap();
    let mut events = client.subscribe();
    let error = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(ClientEvent::Pool(Event::ConnectFailed { error, .. })) = events.recv().await {
                return error;
            }
        }
    })
    .await
    .expect("no ConnectFailed within 5 s");
    client.close().await;
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_roots_platform_verifier_and_mtls() {
    let ca = TestCa::generate().unwrap();
    let server = serve(ca.server_tls().unwrap());

    // The CA in a file the platform store reads.
    let pem_file = std::env::temp_dir().join(format!("usageflow-test-ca-{}.pem", std::process::id()));
    std::fs::write(&pem_file, ca.pem()).unwrap();
    std::env::set_var("SSL_CERT_FILE", &pem_file);
    std::env::remove_var("SSL_CERT_DIR");

    // webpki roots alone do not know the private CA: the dial error says so, typed.
    assert!(!works(ClientOptions::from(config(&server))).await);
    let error = first_dial_error(ClientOptions::from(config(&server))).await;
    let DialError::Io(failure) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(failure.stage(), DialStage::Tls);
    let rustls_error = failure
        .io_error()
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("no rustls error in the chain: {error:?}"));
    assert_eq!(
        rustls_error,
        &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
    // The platform's roots (SSL_CERT_FILE) do.
    let native = ClientOptions::builder(config(&server))
        .webpki_roots(false)
        .native_roots(true)
        .build();
    assert!(works(native).await, "native roots from SSL_CERT_FILE");
    // So does the platform verifier (on Linux: the platform's roots through webpki).
    let verifier = ClientOptions::builder(config(&server))
        .platform_verifier(true)
        .build();
    assert!(works(verifier).await, "platform verifier with SSL_CERT_FILE");

    // A store that names no certificate, and nothing else trusted: a clear error at build.
    let empty = std::env::temp_dir().join(format!("usageflow-test-empty-{}.pem", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    std::env::set_var("SSL_CERT_FILE", &empty);
    let none = ClientOptions::builder(config(&server))
        .webpki_roots(false)
        .native_roots(true)
        .build();
    let error = Client::connect(none).await.unwrap_err();
    assert!(error.to_string().contains("needs trusted roots"), "{error}");
    std::env::remove_var("SSL_CERT_FILE");
    std::fs::remove_file(&pem_file).unwrap();
    std::fs::remove_file(&empty).unwrap();
    server.kill();

    // mTLS: the server requires a client certificate issued by the CA.
    let mut tls = ca.server_tls().unwrap();
    tls.client_auth_roots = vec![ca.cert()];
    let server = serve(tls);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
    };
    let (chain, key) = ca.client_certificate("tenant-7").unwrap();
    let with_cert = builder().with_client_auth_cert(chain, key).unwrap();
    let mtls = ClientOptions::builder(config(&server))
        .tls_config(Arc::new(with_cert))
        .build();
    assert!(works(mtls).await, "mTLS with a client certificate");
    // Without a client certificate the server refuses the handshake.
    let no_cert = ClientOptions::builder(config(&server))
        .tls_config(Arc::new(builder().with_no_client_auth()))
        .build();
    assert!(
        !works(no_cert).await,
        "the server must require a client certificate"
    );
    // A certificate from another CA is refused too.
    let stranger = TestCa::generate().unwrap();
    let (chain, key) = stranger.client_certificate("tenant-7").unwrap();
    let other = ClientOptions::builder(config(&server))
        .tls_config(Arc::new(builder().with_client_auth_cert(chain, key).unwrap()))
        .build();
    assert!(!works(other).await, "a client certificate from another CA");
    server.kill();
}
