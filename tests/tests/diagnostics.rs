//! Traces and dial errors a host can follow: a span per connection (slot, generation, peer)
//! around what the connection's tasks log, a span per request (type, id) at debug level, and
//! dial errors that keep their `io::ErrorKind` and `source()` chain.
//!
//! Its own test binary: it installs a global subscriber that captures spans and events.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use usageflow_socket_server::{ServerOptions, ServerThread};
use usageflow_socket_tokio::{Client, ClientEvent, Config, DialError, DialStage, UsageFlowApi};

type Fields = BTreeMap<String, String>;

/// A span as seen: its name and fields.
#[derive(Debug, Clone)]
struct SpanSeen {
    name: &'static str,
    fields: Fields,
}

/// Captured: every event with its message and the spans around it (innermost first), and
/// every closed span.
#[derive(Debug, Default)]
struct Captured {
    events: Vec<(String, Vec<SpanSeen>)>,
    closed: Vec<SpanSeen>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Captured>>);

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(&mut Visitor(fields));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|span| SpanSeen {
                        name: span.name(),
                        fields: span.extensions().get::<Fields>().cloned().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.0.lock().unwrap().events.push((message, scope));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let seen = SpanSeen {
                name: span.name(),
                fields: span.extensions().get::<Fields>().cloned().unwrap_or_default(),
            };
            self.0.lock().unwrap().closed.push(seen);
        }
    }
}

/// The process's capture, installed once as the global subscriber (every level).
fn capture() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            let subscriber = tracing_subscriber::registry().with(capture.clone());
            tracing::subscriber::set_global_default(subscriber).unwrap();
            capture
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_requests_have_spans() {
    let capture = capture();
    let server = ServerThread::spawn(ServerOptions::default()).unwrap();
    let peer = server.addr().to_string();
    let config = Config::builder(server.url(), "k").pool_size(2).build().unwrap();
    let client = Client::connect(config).await.unwrap();
    client.get_application_policies().await.unwrap();
    client.close().await;
    server.kill();

    let captured = capture.0.lock().unwrap();
    // The connected log of each slot is inside its connection's span, with the peer reached.
    for slot in ["0", "1"] {
        let found = captured.events.iter().any(|(message, scope)| {
            message.contains("connected")
                && scope.iter().any(|s| {
                    s.name == "usageflow_connection"
                        && s.fields.get("slot").map(String::as_str) == Some(slot)
                        && s.fields.contains_key("generation")
                        && s.fields.get("peer") == Some(&peer)
                })
        });
        assert!(
            found,
            "no 'connected' event in slot {slot}'s span: {:#?}",
            captured.events
        );
    }
    // The request's span: its type and the id the core gave it.
    let request = captured
        .closed
        .iter()
        .find(|s| {
            s.name == "usageflow_request"
                && s.fields.get("type").map(String::as_str) == Some("get_application_policies")
        })
        .unwrap_or_else(|| panic!("no request span: {:#?}", captured.closed));
    let id = &request.fields["id"];
    assert_eq!(id.len(), 36, "a UUID: {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dial_keeps_its_io_error_kind_and_source() {
    capture();
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = Config::builder(format!("ws://127.0.0.1:{port}/ws"), "k")
        .pool_size(1)
        .build()
        .unwrap();
    let client = Client::start(config).unwrap();
    let mut events = client.subscribe();
    let error = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(ClientEvent::Pool(usageflow_socket_tokio::Event::ConnectFailed { error, .. })) =
                events.recv().await
            {
                return error;
            }
        }
    })
    .await
    .expect("no ConnectFailed within 5 s");
    let DialError::Io(io_failure) = &error else {
        panic!("not an I/O dial error: {error:?}")
    };
    assert_eq!(io_failure.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(io_failure.stage(), DialStage::Connect);
    assert_eq!(io_failure.target(), format!("127.0.0.1:{port}"));
    // The chain: DialError -> io::Error (the refusal).
    let source = error.source().expect("a source");
    let io_error = source.downcast_ref::<io::Error>().expect("an io::Error source");
    assert_eq!(io_error.kind(), io::ErrorKind::ConnectionRefused);
    assert!(
        error
            .to_string()
            .starts_with(&format!("TCP connect to 127.0.0.1:{port} failed")),
        "{error}"
    );
    client.close().await;
}
