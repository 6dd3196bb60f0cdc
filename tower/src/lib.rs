//! A [`tower`](https://docs.rs/tower) middleware that meters every HTTP request through the
//! UsageFlow WebSocket client, the way the UsageFlow middlewares do. A [`Layer`] and a
//! [`Service`] over [`http::Request`], so it fits any tower-based server: axum, tonic, hyper
//! (with `hyper-util`'s tower adapter), and generic over the client's runtime (Tokio, smol,
//! your own [`Runtime`]).
//!
//! For each request:
//!
//! 1. **Blocked endpoints**: a request matching an entry of `get_blocked_endpoints` (method,
//!    URL pattern, and identity when the entry names one) is answered `403 Forbidden`. The
//!    list is fetched at start ([`UsageFlowLayer::refresh_blocked`]) and refreshed in the
//!    background ([`UsageFlowLayer::spawn_blocked_refresh`]); a failed fetch keeps the last list.
//! 2. **Allocation**: on a metered route (your [`UsageFlowLayer::meter`] rule says which, and
//!    with which ledger alias and amount) a `request_for_allocation` carrying a client-made
//!    `allocationId` (a UUID v4) is sent before the inner service runs. A denial is answered
//!    `429 Too Many Requests`; when UsageFlow cannot answer (not connected, timeout,
//!    backpressure: [`ClientError::is_unavailable`]) the request is **served anyway** (fail
//!    open), unmetered.
//! 3. **Usage**: once the inner service has answered, a fire-and-forget `use_allocation` with
//!    the allocation id (it never delays the response): at least once
//!    ([`Delivery::AtLeastOnce`]) when the server deduplicates allocation ids
//!    ([`Config::server_deduplicates_allocation_ids`]), else at most once.
//!
//! The 403 and 429 answers have an empty body (`ResBody: Default`, which every server
//! framework's body type is, tonic's included) and say why in the
//! [`REASON_HEADER`] header; gRPC clients read 403 as `PERMISSION_DENIED` and 429 as
//! `UNAVAILABLE`.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use usageflow_tower::{Meter, UsageFlowLayer};
//! use usageflow_socket_tokio::{Client, Config};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::builder("wss://usageflow.example/ws", "my-api-key").build()?;
//! let client = Client::connect(config.clone()).await?;
//! let usageflow = UsageFlowLayer::new(client, &config)
//!     .meter(|_method, path| path.starts_with("/api/").then(|| Meter::new("ledger-1", 1.0)))
//!     .identity_header("x-user-id");
//! if let Err(e) = usageflow.refresh_blocked().await {
//!     eprintln!("blocked endpoints not fetched yet: {e}"); // retried every 30 s below
//! }
//! let _refresh = usageflow.spawn_blocked_refresh(Duration::from_secs(30))?;
//!
//! let app: Router = Router::new()
//!     .route("/api/orders", get(|| async { "orders" }))
//!     .layer(usageflow);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! With tonic: `Server::builder().layer(usageflow).add_service(...)`; with hyper: wrap the
//! service made by `ServiceBuilder::new().layer(usageflow).service(svc)` in `hyper-util`'s
//! `TowerToHyperService`.
#![forbid(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{Map, Value};
use tower_layer::Layer;
use tower_service::Service;
use usageflow_socket_client::messages::{
    AllocationReply, BlockedEndpoint, RequestForAllocation, UseAllocation, REQUEST_FOR_ALLOCATION,
};
use usageflow_socket_client::{
    decode_reply, Client, ClientError, Config, Delivery, RequestOptions, Runtime, SendOptions, UsageFlowApi,
};

/// The response header that says why the middleware answered 403 or 429 itself.
pub const REASON_HEADER: &str = "x-usageflow-reason";

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

/// What the layer and every service it made share.
struct Policy<R: Runtime> {
    client: Client<R>,
    delivery: Delivery,
    meter: Box<MeterRule>,
    identity: Box<IdentityRule>,
    blocked: RwLock<Arc<[BlockedEndpoint]>>,
}

/// The UsageFlow [`Layer`]: wraps a service in a [`UsageFlowService`]. Cheap to clone (one
/// `Arc`); every service it makes shares the client, the rules and the blocked endpoints.
pub struct UsageFlowLayer<R: Runtime> {
    policy: Arc<Policy<R>>,
}

impl<R: Runtime> Clone for UsageFlowLayer<R> {
    fn clone(&self) -> Self {
        Self {
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<R: Runtime> fmt::Debug for UsageFlowLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageFlowLayer")
            .field("client", &self.policy.client)
            .field("delivery", &self.policy.delivery)
            .field("blocked_endpoints", &self.blocked_endpoints().len())
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> UsageFlowLayer<R> {
    /// A layer over `client`, started with `config`: `use_allocation` goes at least once when
    /// `config` says the server deduplicates allocation ids, else at most once. Meters every
    /// request on ledger `"default"` for 1.0 until [`UsageFlowLayer::meter`] says otherwise;
    /// no identity until [`UsageFlowLayer::identity`] says how to find it.
    pub fn new(client: Client<R>, config: &Config) -> Self {
        let delivery = if config.server_deduplicates_allocation_ids() {
            Delivery::AtLeastOnce
        } else {
            Delivery::AtMostOnce
        };
        Self {
            policy: Arc::new(Policy {
                client,
                delivery,
                meter: Box::new(|_: &Method, _: &str| Some(Meter::new("default", 1.0))),
                identity: Box::new(|_: &HeaderMap| None),
                blocked: RwLock::new(Arc::from(Vec::new())),
            }),
        }
    }

    /// Changes the policy before the layer is shared. Panics if it was already cloned: set
    /// the rules first, as the builder methods are meant to be used.
    fn with_policy(mut self, change: impl FnOnce(&mut Policy<R>)) -> Self {
        let policy = Arc::get_mut(&mut self.policy)
            .expect("set the UsageFlowLayer's rules before cloning it or making services");
        change(policy);
        self
    }

    /// Which requests are metered: `rule(method, path)` gives the ledger and amount, or
    /// `None` to serve the request unmetered (health checks, static files...).
    ///
    /// # Panics
    ///
    /// When the layer was already cloned (set the rules first).
    #[must_use]
    pub fn meter(self, rule: impl Fn(&Method, &str) -> Option<Meter> + Send + Sync + 'static) -> Self {
        self.with_policy(|p| p.meter = Box::new(rule))
    }

    /// How to find the caller's identity, matched against the `identity` of blocked endpoints.
    ///
    /// # Panics
    ///
    /// When the layer was already cloned (set the rules first).
    #[must_use]
    pub fn identity(self, rule: impl Fn(&HeaderMap) -> Option<String> + Send + Sync + 'static) -> Self {
        self.with_policy(|p| p.identity = Box::new(rule))
    }

    /// The caller's identity is the value of header `name`.
    ///
    /// # Panics
    ///
    /// When the layer was already cloned (set the rules first).
    #[must_use]
    pub fn identity_header(self, name: &'static str) -> Self {
        self.identity(move |headers| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned))
    }

    /// The shared client.
    pub fn client(&self) -> &Client<R> {
        &self.policy.client
    }

    /// The guarantee `use_allocation` is sent with.
    pub fn delivery(&self) -> Delivery {
        self.policy.delivery
    }

    /// The blocked endpoints in force (the last list fetched successfully).
    pub fn blocked_endpoints(&self) -> Arc<[BlockedEndpoint]> {
        self.policy.blocked_endpoints()
    }

    /// Fetches `get_blocked_endpoints` once and puts the list in force; on failure the last
    /// list stays. Returns the number of endpoints now blocked.
    pub async fn refresh_blocked(&self) -> Result<usize, ClientError> {
        self.policy.refresh_blocked().await
    }

    /// Refreshes the blocked endpoints every `every` (30 s is a good period), the first time
    /// `every` from now, in a task on the client's runtime as seen from the caller
    /// ([`Runtime::current`]; fails as it does, such as Tokio outside a runtime), until the
    /// client is closed or [`BlockedRefresh::stop`] is called. A failed fetch keeps the last
    /// list and is retried at the next tick. Call [`UsageFlowLayer::refresh_blocked`] once at
    /// start-up, before serving, so the first requests already see the list.
    pub fn spawn_blocked_refresh(&self, every: Duration) -> Result<BlockedRefresh, ClientError> {
        let runtime = R::current()?;
        let state = Arc::new(RefreshState::default());
        let handle = BlockedRefresh {
            state: Arc::clone(&state),
        };
        let policy = Arc::clone(&self.policy);
        let sleeper = R::current()?;
        runtime.spawn(async move {
            let mut next = Instant::now() + every;
            loop {
                sleeper.sleep_until(next).await;
                next += every;
                if state.stop.load(Ordering::Relaxed) || policy.client.is_closed() {
                    break;
                }
                match policy.refresh_blocked().await {
                    Ok(n) => tracing::debug!(blocked = n, "UsageFlow blocked endpoints refreshed"),
                    Err(e) => {
                        tracing::warn!(error = %e, "UsageFlow blocked endpoints not refreshed; keeping the last list")
                    }
                }
                // A refresh slower than the period does not make the next ones pile up.
                next = next.max(Instant::now());
            }
            state.finished.store(true, Ordering::Relaxed);
        });
        Ok(handle)
    }

    /// Whether a request of `method` on `path` from `identity` matches a blocked endpoint.
    pub fn is_blocked(&self, method: &Method, path: &str, identity: Option<&str>) -> bool {
        self.policy.is_blocked(method, path, identity)
    }
}

impl<R: Runtime> Policy<R> {
    fn blocked_endpoints(&self) -> Arc<[BlockedEndpoint]> {
        Arc::clone(&self.blocked.read().unwrap_or_else(|e| e.into_inner()))
    }

    async fn refresh_blocked(&self) -> Result<usize, ClientError> {
        let reply = self.client.get_blocked_endpoints().await?;
        let list: Arc<[BlockedEndpoint]> = Arc::from(reply.endpoints);
        let n = list.len();
        *self.blocked.write().unwrap_or_else(|e| e.into_inner()) = list;
        Ok(n)
    }

    fn is_blocked(&self, method: &Method, path: &str, identity: Option<&str>) -> bool {
        let blocked = self.blocked.read().unwrap_or_else(|e| e.into_inner());
        blocked
            .iter()
            .any(|e| endpoint_matches(e, method, path, identity))
    }

    /// The allocation for a metered request: `Ok(Some(id))` when granted, `Ok(None)` when
    /// UsageFlow is unavailable (fail open), `Err(text)` when denied.
    async fn allocate(&self, allocation: RequestForAllocation) -> Result<Option<String>, String> {
        let result = self
            .client
            .request_with(allocation.to_message(), RequestOptions::default())
            .await
            .and_then(|reply| decode_reply::<AllocationReply>(REQUEST_FOR_ALLOCATION, &reply));
        match result {
            Ok(reply) => Ok(Some(reply.allocation_id)),
            Err(e) if e.is_denied() => Err(e.denial_text().unwrap_or("denied").to_owned()),
            Err(e) => {
                // Unavailable (or a reply of the wrong shape): fail open, serve unmetered.
                tracing::debug!(error = %e, unavailable = e.is_unavailable(), "UsageFlow allocation failed; serving the request");
                Ok(None)
            }
        }
    }

    /// `use_allocation`, fire-and-forget (never waits).
    fn record_usage(&self, meter: Meter, allocation_id: String) {
        let usage = UseAllocation {
            alias: meter.alias,
            amount: meter.amount,
            allocation_id,
            ..Default::default()
        };
        let options = SendOptions::default().with_delivery(self.delivery);
        if let Err(e) = self.client.send_with(usage.to_message(), options) {
            tracing::warn!(error = %e, "UsageFlow use_allocation not sent");
        }
    }
}

#[derive(Debug, Default)]
struct RefreshState {
    stop: AtomicBool,
    finished: AtomicBool,
}

/// The background refresh of the blocked endpoints ([`UsageFlowLayer::spawn_blocked_refresh`]).
/// Dropping it leaves the task running until the client is closed.
#[derive(Debug, Clone)]
pub struct BlockedRefresh {
    state: Arc<RefreshState>,
}

impl BlockedRefresh {
    /// Asks the task to end: it does at its next tick, without fetching again.
    pub fn stop(&self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the task has ended (stopped, or the client closed).
    pub fn is_finished(&self) -> bool {
        self.state.finished.load(Ordering::Relaxed)
    }
}

impl<S, R: Runtime> Layer<S> for UsageFlowLayer<R> {
    type Service = UsageFlowService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        UsageFlowService {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The UsageFlow middleware around the service `S` (made by [`UsageFlowLayer`]).
pub struct UsageFlowService<S, R: Runtime> {
    inner: S,
    policy: Arc<Policy<R>>,
}

impl<S: Clone, R: Runtime> Clone for UsageFlowService<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<S: fmt::Debug, R: Runtime> fmt::Debug for UsageFlowService<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageFlowService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The future of [`UsageFlowService`]: the inner service's response, or the middleware's own
/// 403 or 429.
pub type ResponseFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for UsageFlowService<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Runtime,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let policy = &self.policy;
        let method = request.method();
        let path = request.uri().path();
        let identity = (policy.identity)(request.headers());
        if policy.is_blocked(method, path, identity.as_deref()) {
            return Box::pin(std::future::ready(Ok(rejection(
                StatusCode::FORBIDDEN,
                "blocked by UsageFlow",
            ))));
        }
        let Some(meter) = (policy.meter)(method, path) else {
            return Box::pin(self.inner.call(request));
        };
        let allocation = RequestForAllocation {
            alias: meter.alias.clone(),
            amount: meter.amount,
            metadata: Some(metadata(method, path, identity.as_deref())),
            allocation_id: Some(uuid::Uuid::new_v4().to_string()),
        };
        // The service polled ready is the one to call; a clone takes its place here.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = Arc::clone(policy);
        Box::pin(async move {
            let allocation_id = match policy.allocate(allocation).await {
                Ok(Some(id)) => id,
                Ok(None) => return inner.call(request).await,
                Err(why) => return Ok(rejection(StatusCode::TOO_MANY_REQUESTS, &why)),
            };
            let response = inner.call(request).await;
            if response.is_ok() {
                policy.record_usage(meter, allocation_id);
            }
            response
        })
    }
}

/// The middleware's own answer: `status`, an empty body, and why in [`REASON_HEADER`]
/// (characters a header cannot carry become `?`).
fn rejection<B: Default>(status: StatusCode, why: &str) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    let text: String = why
        .chars()
        .take(200)
        .map(|c| {
            if c == '\t' || (' '..='~').contains(&c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().insert(REASON_HEADER, value);
    }
    response
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

    #[test]
    fn rejection_says_why_in_a_header() {
        let r: Response<String> = rejection(StatusCode::TOO_MANY_REQUESTS, "quota\nexceeded é");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[REASON_HEADER], "quota?exceeded ?");
        assert!(r.body().is_empty());
    }
}
