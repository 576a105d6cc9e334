//! Parley's HTTP front door: the `/v1` JSON API, the WebSocket transport
//! (`/v1/ws`), the web pager, health probes, the OpenAPI document and the
//! embedded web UI, all on one listener.
//!
//! It owns HTTP sessions (bearer tokens), logins between their two SCRAM
//! steps and the pager's rate limiter. Like every front door it translates
//! its wire format into calls on the core's `Service` and `Session`; it
//! never decides a rule of the chat service, never reads files or the
//! environment (its settings come from the server crate), and never
//! depends on the server crate: the native connection handler that serves
//! WebSockets is handed to it as a [`ws::NativeHandler`].
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod client_addr;
pub mod listener;
pub mod openapi;
pub mod pager;
pub mod problem;
pub mod sessions;
pub mod ui;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use parley_core::Service;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use crate::client_addr::{ClientAddr, TrustedProxies};
use crate::listener::Peer;
use crate::problem::Problem;
use crate::sessions::{HttpSessions, PendingLogins};

/// Default HTTP listen address (loopback; a port no common service uses).
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7880";
/// Whether the pager is on by default.
pub const DEFAULT_PAGER: bool = true;
/// Pager posts per source address per minute.
pub const DEFAULT_PAGER_PER_IP_PER_MINUTE: u32 = 10;
/// Seconds an HTTP session may go unused before it expires.
pub const DEFAULT_HTTP_SESSION_IDLE_SECS: u64 = 1800;
/// Most HTTP sessions at once.
pub const DEFAULT_HTTP_MAX_SESSIONS: usize = 10_000;
/// Most HTTP sessions logged in from one address (IPv6: one /64); past it
/// the address's least recently used session ends.
pub const DEFAULT_HTTP_MAX_SESSIONS_PER_IP: usize = 256;
/// Most logins waiting between their two SCRAM steps.
pub const DEFAULT_HTTP_MAX_PENDING_LOGINS: usize = 10_000;
/// Most HTTP requests served at once; more are answered BUSY.
pub const DEFAULT_HTTP_MAX_IN_FLIGHT: usize = 1024;
/// Largest HTTP request body, in bytes.
pub const DEFAULT_HTTP_MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Most HTTP connections open at once (WebSockets included).
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 4096;
/// Seconds a request's headers may take to arrive, from their first byte
/// (from the accept, for a connection's first request). nginx's
/// `client_header_timeout` defaults to 60 s; a browser sends its headers in
/// one go, so parleyd is stricter, like its 10 s TLS handshake deadline.
pub const DEFAULT_HTTP_HEADER_TIMEOUT_SECS: u64 = 10;
/// Seconds a request's whole body may take to arrive (it is at most
/// `http_max_request_bytes`). nginx's `client_body_timeout` (60 s by
/// default) bounds the gap between two reads instead; a deadline on the
/// whole body also stops a client that trickles one byte at a time.
pub const DEFAULT_HTTP_BODY_TIMEOUT_SECS: u64 = 10;
/// Seconds a connection may stay idle between requests: nginx's
/// `keepalive_timeout` default.
pub const DEFAULT_HTTP_KEEPALIVE_SECS: u64 = 75;
/// Most HTTP connections from one address (an IPv6 /64), WebSockets
/// included; trusted proxies are exempt. Browsers open at most 6 per host
/// (plus WebSockets), so 64 leaves room for a household or an office behind
/// one address; nginx has no default (its `limit_conn` is off until set).
pub const DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP: usize = 64;
/// Proxies whose `Forwarded` / `X-Forwarded-For` are believed: none.
pub const DEFAULT_TRUSTED_PROXIES: &str = "";
/// `Strict-Transport-Security` when the HTTP listener speaks TLS: one year.
/// `includeSubDomains` is left off: parleyd answers for its own host only
/// and cannot know whether every other host under the domain speaks HTTPS.
const HSTS: &str = "max-age=31536000";
/// How often expired sessions and logins are dropped.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Retry hint when the in-flight limit is reached.
const IN_FLIGHT_RETRY_MS: u32 = 100;

/// The HTTP front door's settings (parsed by the server crate).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Whether `POST /v1/pager/{user}` takes messages.
    pub pager_enabled: bool,
    /// Pager posts per source address per minute.
    pub pager_per_ip_per_minute: u32,
    /// Idle lifetime of a bearer token's session.
    pub session_idle: Duration,
    /// Most bearer sessions at once.
    pub max_sessions: usize,
    /// Most bearer sessions from one address group.
    pub max_sessions_per_ip: usize,
    /// Most logins between their two steps.
    pub max_pending_logins: usize,
    /// Longest time between the two login steps (the native auth timeout).
    pub login_timeout: Duration,
    /// Most requests served at once.
    pub max_in_flight: usize,
    /// Largest request body.
    pub max_request_bytes: usize,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Largest native frame, which bounds a WebSocket message.
    pub max_frame_bytes: usize,
    /// Most connections open at once from one address group.
    pub max_connections_per_ip: usize,
    /// Longest a request's headers may take, from their first byte.
    pub header_timeout: Duration,
    /// Longest a request's whole body may take, after its headers.
    pub body_timeout: Duration,
    /// Longest a connection may stay idle between requests.
    pub keepalive: Duration,
    /// Peers whose forwarding headers name the client.
    pub trusted_proxies: TrustedProxies,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            pager_enabled: DEFAULT_PAGER,
            pager_per_ip_per_minute: DEFAULT_PAGER_PER_IP_PER_MINUTE,
            session_idle: Duration::from_secs(DEFAULT_HTTP_SESSION_IDLE_SECS),
            max_sessions: DEFAULT_HTTP_MAX_SESSIONS,
            max_sessions_per_ip: DEFAULT_HTTP_MAX_SESSIONS_PER_IP,
            max_pending_logins: DEFAULT_HTTP_MAX_PENDING_LOGINS,
            login_timeout: Duration::from_secs(30),
            max_in_flight: DEFAULT_HTTP_MAX_IN_FLIGHT,
            max_request_bytes: DEFAULT_HTTP_MAX_REQUEST_BYTES,
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            max_frame_bytes: parley_proto::DEFAULT_MAX_FRAME_BYTES as usize,
            max_connections_per_ip: DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP,
            header_timeout: Duration::from_secs(DEFAULT_HTTP_HEADER_TIMEOUT_SECS),
            body_timeout: Duration::from_secs(DEFAULT_HTTP_BODY_TIMEOUT_SECS),
            keepalive: Duration::from_secs(DEFAULT_HTTP_KEEPALIVE_SECS),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// Renders the Prometheus exposition for `GET /metrics`.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;
/// Told about every request answered: (operation, time taken, outcome),
/// where the operation is `http METHOD ROUTE` and the outcome `ok` or the
/// problem's code.
pub type RequestRecorder = Arc<dyn Fn(&str, Duration, &str) + Send + Sync>;

/// What the server hands the HTTP front door besides its settings, the
/// way it hands it the native handler: this crate knows no metrics or
/// perf-log format.
#[derive(Clone, Default)]
pub struct HttpHooks {
    /// When set, `GET /metrics` answers with what it renders; otherwise
    /// `/metrics` does not exist (404).
    pub metrics: Option<MetricsRenderer>,
    /// When set, called once per answered request (the perf log).
    pub requests: Option<RequestRecorder>,
}

/// The Prometheus text format's content type.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What every HTTP request shares.
pub struct HttpContext {
    /// The chat service, shared with the other front doors.
    pub service: Arc<Service>,
    /// Settings.
    pub settings: HttpSettings,
    /// Sessions by bearer token.
    pub sessions: HttpSessions,
    /// Logins between their two steps.
    pub logins: PendingLogins,
    /// The pager's per-address limiter.
    pub pager: pager::PagerLimiter,
    /// Requests being served; at zero permits, new ones are answered BUSY.
    in_flight: Arc<Semaphore>,
    /// Serves a WebSocket as a native connection.
    native: ws::NativeHandler,
    /// Bridged WebSockets, so that shutdown can wait for them.
    websockets: TaskTracker,
    /// Counters for metrics.
    pub counters: HttpCounters,
    /// Metrics rendering and request timing, from the server.
    hooks: HttpHooks,
}

/// The HTTP front door's counters.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Requests refused BUSY by the in-flight limit.
    pub busy_replies: AtomicU64,
    /// Messages left with the pager.
    pub pager_messages: AtomicU64,
    /// Pager posts refused RATE_LIMITED.
    pub pager_rate_limited: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshakes_failed: AtomicU64,
    /// Connections refused by `max_connections_per_ip`.
    pub refused_per_address: AtomicU64,
    /// Connections closed because a request's headers were late.
    pub header_timeouts: AtomicU64,
    /// Requests answered 408 because their body was late.
    pub body_timeouts: AtomicU64,
}

impl HttpContext {
    pub fn new(service: Arc<Service>, settings: HttpSettings, native: ws::NativeHandler) -> Arc<HttpContext> {
        HttpContext::with_hooks(service, settings, native, HttpHooks::default())
    }

    /// Like [`HttpContext::new`], with metrics and request timing.
    pub fn with_hooks(
        service: Arc<Service>,
        settings: HttpSettings,
        native: ws::NativeHandler,
        hooks: HttpHooks,
    ) -> Arc<HttpContext> {
        let forgetter = Arc::clone(&service);
        Arc::new(HttpContext {
            service,
            sessions: HttpSessions::new(
                settings.session_idle,
                settings.max_sessions,
                settings.max_sessions_per_ip,
            )
            // The store's answer does not matter: a key it keeps expires.
            .forgetting(Box::new(move |user, key| {
                drop(tokio::spawn(forgetter.forget_session_key(user, key)));
            })),
            logins: PendingLogins::new(settings.login_timeout, settings.max_pending_logins),
            pager: pager::PagerLimiter::new(settings.pager_per_ip_per_minute),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings,
            native,
            websockets: TaskTracker::new(),
            counters: HttpCounters::default(),
            hooks,
        })
    }

    /// The bridged WebSockets (the server waits for them on shutdown).
    pub fn websockets(&self) -> &TaskTracker {
        &self.websockets
    }

    /// WebSockets open now.
    pub fn websockets_open(&self) -> usize {
        self.websockets.len()
    }
}

/// Every API route: method, path (as in the OpenAPI document) and handler.
/// The router is built from this list, and a test checks it against the
/// OpenAPI document in both directions.
pub fn api_routes() -> Vec<(Method, &'static str, MethodRouter<Arc<HttpContext>>)> {
    vec![
        (Method::GET, "/healthz", get(api::healthz)),
        (Method::GET, "/readyz", get(api::readyz)),
        (Method::GET, "/v1/openapi.json", get(openapi::document)),
        (Method::GET, "/v1/server", get(api::server_info)),
        (Method::POST, "/v1/accounts", post(api::register)),
        (Method::GET, "/v1/accounts", get(api::list_accounts)),
        (Method::DELETE, "/v1/account", delete(api::delete_account)),
        (Method::POST, "/v1/account/reauth", post(api::reauth)),
        (Method::POST, "/v1/account/password", post(api::change_password)),
        (Method::POST, "/v1/login/start", post(api::login_start)),
        (Method::POST, "/v1/login/finish", post(api::login_finish)),
        (Method::POST, "/v1/login/resume", post(api::login_resume)),
        (Method::POST, "/v1/logout", post(api::logout)),
        (Method::POST, "/v1/logout/all", post(api::logout_all)),
        (Method::GET, "/v1/mailbox", get(api::mailbox)),
        (Method::GET, "/v1/messages", get(api::fetch)),
        (Method::POST, "/v1/messages", post(api::send)),
        (Method::POST, "/v1/messages/ack", post(api::ack)),
        (Method::POST, "/v1/messages/delete", post(api::delete_messages)),
        (Method::POST, "/v1/messages/report-spam", post(api::report_spam)),
        (Method::GET, "/v1/spam", get(api::list_held)),
        (Method::POST, "/v1/spam/release", post(api::release_held)),
        (Method::POST, "/v1/spam/delete", post(api::drop_held)),
        (Method::GET, "/v1/contacts", get(api::list_contacts)),
        (Method::PUT, "/v1/contacts/{name}", put(api::add_contact)),
        (Method::DELETE, "/v1/contacts/{name}", delete(api::remove_contact)),
        (
            Method::DELETE,
            "/v1/contacts/{name}/presence",
            delete(api::cancel_presence),
        ),
        (Method::GET, "/v1/presence/requests", get(api::list_presence_requests)),
        (
            Method::POST,
            "/v1/presence/requests/{name}/approve",
            post(api::approve_presence),
        ),
        (
            Method::POST,
            "/v1/presence/requests/{name}/deny",
            post(api::deny_presence),
        ),
        (Method::GET, "/v1/blocks", get(api::list_blocked)),
        (Method::PUT, "/v1/blocks/{name}", put(api::block)),
        (Method::DELETE, "/v1/blocks/{name}", delete(api::unblock)),
        (Method::GET, "/v1/account/pager", get(api::pager_setting)),
        (Method::PUT, "/v1/account/pager", put(api::set_pager_setting)),
        (Method::POST, "/v1/pager/{user}", post(api::pager)),
        (Method::GET, "/v1/ws", get(websocket)),
    ]
}

/// The whole application: API, WebSocket, UI, problem fallbacks.
pub fn router(ctx: Arc<HttpContext>) -> Router {
    let mut router: Router<Arc<HttpContext>> = Router::new();
    for (_, path, handler) in api_routes() {
        // Several methods on one path merge into one route.
        router = router.route(path, handler);
    }
    // Outside `api_routes` and the OpenAPI document, like the UI: it is
    // for operators, answers text, and exists only when switched on.
    if ctx.hooks.metrics.is_some() {
        router = router.route("/metrics", get(metrics));
    }
    let router = ui::routes(router)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(ctx.settings.max_request_bytes))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&ctx), admission))
        .layer(axum::middleware::from_fn(common_headers));
    router.with_state(ctx)
}

async fn not_found() -> Problem {
    Problem::not_found("no such resource")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed on this resource",
    )
}

/// Admission control. The body is read first, whole, under its deadline
/// and size limit, so that a slow client holds only its own connection;
/// then, past `max_in_flight` requests, BUSY at once.
async fn admission(State(ctx): State<Arc<HttpContext>>, request: Request, next: Next) -> Response {
    ctx.counters.requests.fetch_add(1, Ordering::Relaxed);
    let request = match read_body(&ctx, request).await {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    let Ok(permit) = Arc::clone(&ctx.in_flight).try_acquire_owned() else {
        ctx.counters.busy_replies.fetch_add(1, Ordering::Relaxed);
        return Problem::busy("too many requests in progress", IN_FLIGHT_RETRY_MS).into_response();
    };
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    // Who the client is, once per request, for the log and every handler.
    let mut request = request;
    let peer = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.client(request.headers(), &ctx.settings.trusted_proxies).0);
    if let Some(peer) = peer {
        request.extensions_mut().insert(ClientAddr(peer));
    }
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    drop(permit);
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let outcome = if status < 400 {
        "ok"
    } else {
        response
            .extensions()
            .get::<problem::ProblemCode>()
            .map_or("HTTP_ERROR", |c| c.0)
    };
    // The path, never the query or a header: tokens travel in headers.
    tracing::info!(
        target: access::ACCESS_TARGET,
        transport = "http",
        peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
        %method,
        path = ?path,
        status,
        micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "http request"
    );
    if let Some(record) = &ctx.hooks.requests {
        let op = format!("http {method} {}", route.as_deref().unwrap_or("(unrouted)"));
        record(&op, elapsed, outcome);
    }
    response
}

/// Reads the whole body within `body_timeout` and `max_request_bytes`;
/// the request goes on with the bytes in memory. Too large: 413; too slow
/// or broken off: 408 and the connection is closed (what is left of the
/// body is never read).
async fn read_body(ctx: &HttpContext, request: Request) -> Result<Request, Response> {
    use http_body_util::BodyExt;
    let limit = ctx.settings.max_request_bytes;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MESSAGE_TOO_LARGE",
            format!("the request body is larger than {limit} bytes"),
        )
        .into_response()
    };
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(ctx.settings.body_timeout, read).await {
        Ok(Ok(collected)) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        outcome => {
            ctx.counters.body_timeouts.fetch_add(1, Ordering::Relaxed);
            let detail = match outcome {
                Err(_) => format!(
                    "the request body did not arrive within {} s",
                    ctx.settings.body_timeout.as_secs()
                ),
                Ok(_) => "the request body was broken off".to_owned(),
            };
            let mut response = Problem::new(StatusCode::REQUEST_TIMEOUT, "TIMEOUT", detail).into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(response)
        }
    }
}

/// `Strict-Transport-Security` on every response (the listener speaks TLS).
async fn strict_transport_security(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    response
}

/// `GET /metrics`: what the server's renderer produces.
async fn metrics(State(ctx): State<Arc<HttpContext>>) -> Response {
    let Some(render) = ctx.hooks.metrics.clone() else {
        return Problem::not_found("metrics are switched off on this server").into_response();
    };
    let mut response = render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
    response
}

/// Headers on every response: no caching of API answers, no sniffing.
async fn common_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// `GET /v1/ws`: upgrade, then serve the native protocol over the socket.
async fn websocket(
    State(ctx): State<Arc<HttpContext>>,
    ClientAddr(peer): ClientAddr,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => {
            return Problem::invalid(format!(
                "a WebSocket upgrade is required here: {}",
                rejection.body_text()
            ))
            .into_response();
        }
    };
    // A message holds one frame; a little slack lets the native handler
    // answer an oversized frame with FRAME_TOO_LARGE itself.
    let max_message = ctx.settings.max_frame_bytes.saturating_mul(2);
    let native = Arc::clone(&ctx.native);
    let tracker = ctx.websockets.clone();
    upgrade
        .protocols([ws::SUBPROTOCOL])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| tracker.track_future(ws::bridge(socket, native, peer)))
}

/// Serves HTTP on `listener` until `shutdown` resolves; then stops
/// accepting, lets requests in progress finish, and ends every HTTP
/// session. Bridged WebSockets end through the native handler's own
/// shutdown signal; wait for them with [`HttpContext::websockets`].
pub async fn serve(
    listener: impl Into<listener::HttpListener>,
    ctx: Arc<HttpContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_tls(listener, ctx, None, shutdown).await
}

/// Like [`serve`], with TLS on every accepted connection when `tls` is Some.
pub async fn serve_with_tls(
    listener: impl Into<listener::HttpListener>,
    ctx: Arc<HttpContext>,
    tls: Option<listener::HttpTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = {
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                ctx.sessions.sweep();
                ctx.logins.sweep();
            }
        })
    };
    let mut app = router(Arc::clone(&ctx));
    if tls.is_some() {
        app = app.layer(axum::middleware::from_fn(strict_transport_security));
    }
    let served = listener::run(listener.into(), Arc::clone(&ctx), app, tls, shutdown).await;
    sweeper.abort();
    ctx.sessions.clear();
    ctx.websockets.close();
    served
}
