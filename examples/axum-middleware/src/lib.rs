//! An axum middleware that meters every HTTP request the way the UsageFlow middlewares do,
//! over one shared [`Client`] of `usageflow-socket-tokio`. Copy it into your service.
//!
//! For each request:
//!
//! 1. **Blocked endpoints**: a request matching an entry of `get_blocked_endpoints` (method,
//!    URL pattern, and identity when the entry names one) is answered `403 Forbidden`. The
//!    list is fetched at start ([`UsageFlow::refresh_blocked`]) and refreshed in the
//!    background ([`UsageFlow::spawn_blocked_refresh`]); a failed fetch keeps the last list.
//! 2. **Allocation**: on a metered route (your [`UsageFlow::meter`] rule says which, and with
//!    which ledger alias and amount) a `request_for_allocation` carrying a client-made
//!    `allocationId` (a UUID v4) is sent before the handler runs. A denial is answered
//!    `429 Too Many Requests`; when UsageFlow cannot answer (not connected, timeout,
//!    backpressure: [`ClientError::is_unavailable`]) the request is **served anyway** (fail
//!    open), unmetered.
//! 3. **Usage**: once the handler has answered, a fire-and-forget `use_allocation` with the
//!    allocation id: at least once ([`Delivery::AtLeastOnce`]) when the server deduplicates
//!    allocation ids ([`Config::server_deduplicates_allocation_ids`]), else at most once.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{middleware, routing::get, Router};
//! use usageflow_axum_example::{Meter, UsageFlow};
//! use usageflow_socket_tokio::{Client, Config};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::builder("wss://usageflow.example/ws", "my-api-key").build()?;
//! let client = Client::connect(config.clone()).await?;
//! let usageflow = UsageFlow::new(client, &config)
//!     .meter(|_method, path| path.starts_with("/api/").then(|| Meter::new("ledger-1", 1.0)))
//!     .identity_header("x-user-id");
//! if let Err(e) = usageflow.refresh_blocked().await {
//!     eprintln!("blocked endpoints not fetched yet: {e}"); // retried every 30 s below
//! }
//! usageflow.spawn_blocked_refresh(Duration::from_secs(30));
//!
//! let app: Router = Router::new()
//!     .route("/api/orders", get(|| async { "orders" }))
//!     .layer(middleware::from_fn_with_state(usageflow.clone(), UsageFlow::middleware));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Why `axum::middleware::from_fn_with_state` and not a hand-written tower `Layer` +
//! `Service`: the whole policy is one `async fn` read top to bottom, with no `poll_ready`,
//! no boxed future type and no cloning dance of the inner service; axum clones the state (a
//! few `Arc`s and a client handle) per request. A tower `Service` buys nothing more here,
//! since the middleware needs axum's `Request`/`Response` anyway.
#![forbid(unsafe_code)]

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use usageflow_socket_tokio::messages::{BlockedEndpoint, RequestForAllocation, UseAllocation};
use usageflow_socket_tokio::{Client, ClientError, Config, Delivery, SendOptions, UsageFlowApi};

/// What a metered request costs: the ledger it is charged to and the amount.
#[derive(Debug, Clone, PartialEq)]
pub struct Meter {
    /// The ledger identifier (`alias` of `request_for_allocation` and `use_allocation`).
    pub alias: String,
    /// The amount allocated, then used.
    pub amount: f64,
}

impl Meter {
    /// A meter on ledger `alias` for `amount`.
    pub fn new(alias: impl Into<String>, amount: f64) -> Self {
        Self {
            alias: alias.into(),
            amount,
        }
    }
}

/// Which requests are metered, and how: `None` serves the request unmetered.
type MeterRule = dyn Fn(&Method, &str) -> Option<Meter> + Send + Sync;
/// Who is calling, matched against the `identity` of blocked endpoints.
type IdentityRule = dyn Fn(&HeaderMap) -> Option<String> + Send + Sync;

/// The middleware's state: the shared client, the metering rule and the blocked endpoints.
///
/// Cheap to clone (a client handle and a few `Arc`s): axum clones it for every request.
#[derive(Clone)]
pub struct UsageFlow {
    client: Client,
    delivery: Delivery,
    meter: Arc<MeterRule>,
    identity: Arc<IdentityRule>,
    blocked: Arc<RwLock<Arc<[BlockedEndpoint]>>>,
}

impl std::fmt::Debug for UsageFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageFlow")
            .field("client", &self.client)
            .field("delivery", &self.delivery)
            .field("blocked_endpoints", &self.blocked_endpoints().len())
            .finish_non_exhaustive()
    }
}

impl UsageFlow {
    /// Middleware state over `client`, started with `config`: `use_allocation` goes at least
    /// once when `config` says the server deduplicates allocation ids, else at most once.
    /// Meters every request on ledger `"default"` for 1.0 until [`UsageFlow::meter`] says
    /// otherwise; no identity until [`UsageFlow::identity`] says how to find it.
    pub fn new(client: Client, config: &Config) -> Self {
        let delivery = if config.server_deduplicates_allocation_ids() {
            Delivery::AtLeastOnce
        } else {
            Delivery::AtMostOnce
        };
        Self {
            client,
            delivery,
            meter: Arc::new(|_: &Method, _: &str| Some(Meter::new("default", 1.0))),
            identity: Arc::new(|_: &HeaderMap| None),
            blocked: Arc::new(RwLock::new(Arc::from(Vec::new()))),
        }
    }

    /// Which requests are metered: `rule(method, path)` gives the ledger and amount, or
    /// `None` to serve the request unmetered (health checks, static files...).
    #[must_use]
    pub fn meter(mut self, rule: impl Fn(&Method, &str) -> Option<Meter> + Send + Sync + 'static) -> Self {
        self.meter = Arc::new(rule);
        self
    }

    /// How to find the caller's identity, matched against the `identity` of blocked endpoints.
    #[must_use]
    pub fn identity(mut self, rule: impl Fn(&HeaderMap) -> Option<String> + Send + Sync + 'static) -> Self {
        self.identity = Arc::new(rule);
        self
    }

    /// The caller's identity is the value of header `name`.
    #[must_use]
    pub fn identity_header(self, name: &'static str) -> Self {
        self.identity(move |headers| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned))
    }

    /// The shared client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The guarantee `use_allocation` is sent with.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// The blocked endpoints in force (the last list fetched successfully).
    pub fn blocked_endpoints(&self) -> Arc<[BlockedEndpoint]> {
        Arc::clone(&self.blocked.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fetches `get_blocked_endpoints` once and puts the list in force; on failure the last
    /// list stays. Returns the number of endpoints now blocked.
    pub async fn refresh_blocked(&self) -> Result<usize, ClientError> {
        let reply = self.client.get_blocked_endpoints().await?;
        let list: Arc<[BlockedEndpoint]> = Arc::from(reply.endpoints);
        let n = list.len();
        *self.blocked.write().unwrap_or_else(|e| e.into_inner()) = list;
        Ok(n)
    }

    /// Refreshes the blocked endpoints every `every` (30 s is a good period), the first time
    /// `every` from now, in a task on the current Tokio runtime, until the client is closed
    /// or the task aborted. A failed fetch keeps the last list and is retried at the next
    /// tick. Call [`UsageFlow::refresh_blocked`] once at start-up, before serving, so the
    /// first requests already see the list.
    pub fn spawn_blocked_refresh(&self, every: Duration) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if this.client.is_closed() {
                    break;
                }
                match this.refresh_blocked().await {
                    Ok(n) => tracing::debug!(blocked = n, "UsageFlow blocked endpoints refreshed"),
                    Err(e) => {
                        tracing::warn!(error = %e, "UsageFlow blocked endpoints not refreshed; keeping the last list")
                    }
                }
            }
        })
    }

    /// Whether a request of `method` on `path` from `identity` matches a blocked endpoint.
    pub fn is_blocked(&self, method: &Method, path: &str, identity: Option<&str>) -> bool {
        let blocked = self.blocked.read().unwrap_or_else(|e| e.into_inner());
        blocked
            .iter()
            .any(|e| endpoint_matches(e, method, path, identity))
    }

    /// The middleware, for `axum::middleware::from_fn_with_state(usageflow, UsageFlow::middleware)`:
    /// 403 on a blocked endpoint; on a metered route an allocation first (429 when denied,
    /// served anyway when UsageFlow is unavailable), then the handler, then `use_allocation`.
    pub async fn middleware(State(uf): State<UsageFlow>, request: Request, next: Next) -> Response {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let identity = (uf.identity)(request.headers());

        if uf.is_blocked(&method, &path, identity.as_deref()) {
            return (StatusCode::FORBIDDEN, "blocked by UsageFlow\n").into_response();
        }
        let Some(meter) = (uf.meter)(&method, &path) else {
            return next.run(request).await;
        };

        let allocation = RequestForAllocation {
            alias: meter.alias.clone(),
            amount: meter.amount,
            metadata: Some(metadata(&method, &path, identity.as_deref())),
            allocation_id: Some(uuid::Uuid::new_v4().to_string()),
        };
        let allocation_id = match uf.client.request_for_allocation(&allocation).await {
            Ok(reply) => reply.allocation_id,
            Err(e) if e.is_denied() => {
                let why = e.denial_text().unwrap_or("denied").to_owned();
                return (StatusCode::TOO_MANY_REQUESTS, format!("{why}\n")).into_response();
            }
            Err(e) => {
                // Unavailable (or a reply of the wrong shape): fail open, serve unmetered.
                tracing::debug!(error = %e, unavailable = e.is_unavailable(), "UsageFlow allocation failed; serving the request");
                return next.run(request).await;
            }
        };

        let response = next.run(request).await;

        let usage = UseAllocation {
            alias: meter.alias,
            amount: meter.amount,
            allocation_id,
            ..Default::default()
        };
        let options = SendOptions::default().with_delivery(uf.delivery);
        if let Err(e) = uf.client.send_with(usage.to_message(), options) {
            tracing::warn!(error = %e, "UsageFlow use_allocation not sent");
        }
        response
    }
}

/// The `metadata` of an allocation: what the request was.
fn metadata(method: &Method, path: &str, identity: Option<&str>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("method".into(), Value::String(method.as_str().to_owned()));
    m.insert("url".into(), Value::String(path.to_owned()));
    if let Some(id) = identity {
        m.insert("identity".into(), Value::String(id.to_owned()));
    }
    m
}

/// Whether a blocked endpoint entry matches: method (empty or `*` for any,
/// case-insensitive), URL pattern ([`path_matches`]), and identity when the entry names one.
pub fn endpoint_matches(
    endpoint: &BlockedEndpoint,
    method: &Method,
    path: &str,
    identity: Option<&str>,
) -> bool {
    let method_ok = endpoint.method.is_empty()
        || endpoint.method == "*"
        || endpoint.method.eq_ignore_ascii_case(method.as_str());
    let identity_ok = endpoint.identity.is_empty() || identity == Some(endpoint.identity.as_str());
    method_ok && identity_ok && path_matches(&endpoint.url, path)
}

/// Whether `path` matches a UsageFlow URL pattern: segments compared one by one, `:name` or
/// `*` matches any one segment, and a final `*` matches any rest (one segment or more).
/// Trailing slashes are ignored.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let mut pat = pattern.trim_end_matches('/').split('/');
    let mut segs = path.trim_end_matches('/').split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return true,
            (Some("*"), Some(_)) if pat.clone().next().is_none() => return true,
            (Some(p), Some(s)) if p == "*" || p.starts_with(':') || p == s => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(path_matches("/api/v1/admin/*", "/api/v1/admin/users/7"));
        assert!(path_matches("/api/v1/admin/*", "/api/v1/admin/x"));
        assert!(!path_matches("/api/v1/admin/*", "/api/v1/admin"));
        assert!(path_matches("/api/v1/reports/:id", "/api/v1/reports/42"));
        assert!(!path_matches("/api/v1/reports/:id", "/api/v1/reports/42/pdf"));
        assert!(path_matches("/health", "/health/"));
        assert!(!path_matches("/health", "/healthz"));
        assert!(path_matches("/", "/"));
    }

    #[test]
    fn endpoints() {
        // Reply payloads are non-exhaustive (the server may add fields): built from Default.
        let mut e = BlockedEndpoint::default();
        e.url = "/api/orders".into();
        e.method = "delete".into();
        e.identity = "user-9".into();
        assert!(endpoint_matches(
            &e,
            &Method::DELETE,
            "/api/orders",
            Some("user-9")
        ));
        assert!(!endpoint_matches(
            &e,
            &Method::DELETE,
            "/api/orders",
            Some("user-1")
        ));
        assert!(!endpoint_matches(&e, &Method::DELETE, "/api/orders", None));
        assert!(!endpoint_matches(&e, &Method::GET, "/api/orders", Some("user-9")));
        let mut any = BlockedEndpoint::default();
        any.url = "/blocked/*".into();
        assert!(endpoint_matches(&any, &Method::POST, "/blocked/a", None));
    }
}
