//! Startup, the accept loop and shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use bytes::BytesMut;
use parley_core::service::{AuthSettings, ResumeSettings, ServiceConfig};
use parley_core::throttle::ThrottleSettings;
use parley_core::{Limits, Service, Store};
use parley_proto::{ErrorCode, encode_frame};
use parley_store::memory::MemoryStore;
use parley_store::postgres::{PgOptions, PgStore};
use parley_store::sqlite::{SqliteOptions, SqliteStore};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Settings, StoreKind};
use crate::convert::error_frame;
use crate::native::{self, NativeContext, NativeCounters};
use parley_core::sync::lock;

/// File name of the SQLite database inside the data directory.
pub const DATABASE_FILE: &str = "parley.db";
/// File name of the server secret (decoy salts) inside the data directory.
pub const SECRET_FILE: &str = "server.secret";
/// Retry hint sent with the BUSY refusal of a connection over the limit.
const CONNECTION_BUSY_RETRY_MS: u32 = 1000;
/// Pause after a failed accept (for example, out of file descriptors).
const ACCEPT_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Opens the configured store and the server secret.
pub fn open_store(settings: &Settings) -> anyhow::Result<(Arc<dyn Store>, [u8; 32])> {
    match settings.store {
        StoreKind::Memory => Ok((Arc::new(MemoryStore::new()), random_secret())),
        StoreKind::Sqlite => {
            crate::private_files::create_private_dir(&settings.data_dir)
                .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
            let secret = load_or_create_secret(&settings.data_dir.join(SECRET_FILE))?;
            let options = SqliteOptions {
                synchronous: settings.sqlite_synchronous,
                queue_capacity: settings.write_queue,
                max_batch: settings.max_batch,
                max_db_bytes: settings.sqlite_max_db_mb.saturating_mul(1 << 20),
            };
            let path = settings.data_dir.join(DATABASE_FILE);
            let store = SqliteStore::open(&path, options).with_context(|| format!("opening {}", path.display()))?;
            Ok((Arc::new(store), secret))
        }
        StoreKind::Postgres => {
            let url = settings
                .postgres_url
                .clone()
                .context("store is postgres but postgres_url is not set")?;
            if !url.is_local() {
                tracing::warn!(
                    postgres = %url.redacted(),
                    "the PostgreSQL connection is not encrypted and its host is not this machine: \
                     logins' stored keys and every message cross the network in the clear"
                );
            }
            let options = PgOptions {
                pool_size: settings.postgres_pool_size,
                writers: settings.postgres_writers,
                ack_linger: settings.postgres_ack_linger,
                connect_timeout: settings.postgres_connect_timeout,
                batch_timeout: settings.postgres_batch_timeout,
                queue_capacity: settings.write_queue,
                max_batch: settings.max_batch,
                ..PgOptions::new(url)
            };
            let store = PgStore::open(options)?;
            // Every process sharing the database shares its secret, so a
            // login for an unknown name gets the same decoy from each.
            let secret = store.server_secret();
            Ok((Arc::new(store), secret))
        }
    }
}

/// The store as the start-up line names it: `memory`, `sqlite` and its
/// database file, or `postgres` and its connection string without password.
pub fn describe_store(settings: &Settings) -> String {
    match settings.store {
        StoreKind::Memory => StoreKind::Memory.name().to_owned(),
        StoreKind::Sqlite => format!(
            "{} {}",
            StoreKind::Sqlite.name(),
            settings.data_dir.join(DATABASE_FILE).display()
        ),
        StoreKind::Postgres => match &settings.postgres_url {
            Some(url) => format!("{} {}", StoreKind::Postgres.name(), url.redacted()),
            None => StoreKind::Postgres.name().to_owned(),
        },
    }
}

fn random_secret() -> [u8; 32] {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    secret
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    if let Ok(bytes) = std::fs::read(path) {
        if let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(secret);
        }
        anyhow::bail!(
            "{} is not a 32-byte secret; delete it to make a new one",
            path.display()
        );
    }
    let secret = random_secret();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options
        .open(path)
        .and_then(|mut f| f.write_all(&secret))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

/// Counts for the shutdown log line.
#[derive(Debug, Default)]
pub struct ServerCounters {
    pub connections_accepted: AtomicU64,
    pub connections_refused_busy: AtomicU64,
    /// Native-listener TLS handshakes that failed or timed out.
    pub tls_handshakes_failed: AtomicU64,
    /// Native connections (TCP and WebSocket) being served now.
    pub connections_open: AtomicU64,
}

/// Counts a connection as open while it lives, and writes its access-log
/// lines: one when it is admitted, one when it ends.
struct OpenConnection {
    /// Where the gauge lives.
    counters: Arc<ServerCounters>,
    /// For the closing line.
    peer: SocketAddr,
    /// `native` or `ws`.
    transport: &'static str,
    /// When it was admitted.
    opened: std::time::Instant,
}

impl OpenConnection {
    fn new(counters: &Arc<ServerCounters>, peer: SocketAddr, transport: &'static str) -> OpenConnection {
        counters.connections_open.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: crate::logging::ACCESS_TARGET, transport, %peer, "connection opened");
        OpenConnection {
            counters: Arc::clone(counters),
            peer,
            transport,
            opened: std::time::Instant::now(),
        }
    }

    fn closed(self, summary: native::ConnectionSummary) {
        tracing::info!(
            target: crate::logging::ACCESS_TARGET,
            transport = self.transport,
            peer = %self.peer,
            duration_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes_in = summary.bytes_in,
            bytes_out = summary.bytes_out,
            "connection closed"
        );
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The access-log line of a connection refused for the connection caps.
fn log_refused(peer: SocketAddr, transport: &'static str) {
    tracing::info!(target: crate::logging::ACCESS_TARGET, transport, %peer, reason = "BUSY", "connection refused");
}

/// Open connections per source address, for `max_connections_per_ip`.
/// A slot is released when its guard drops, however the connection ends.
struct PerIp {
    /// The limit.
    max: usize,
    /// Open connections by address; entries at zero are removed.
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct IpSlot {
    /// The table to release the slot in.
    table: Arc<PerIp>,
    /// Whose slot.
    ip: IpAddr,
}

impl PerIp {
    fn acquire(table: &Arc<PerIp>, ip: IpAddr) -> Option<IpSlot> {
        // IPv6 by its /64: one client holds a whole one.
        let ip = parley_core::addr::address_group(ip);
        let mut open = lock(&table.open);
        let count = open.entry(ip).or_insert(0);
        if *count >= table.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: Arc::clone(table),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.table.open);
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A configured server, ready to run; [`Server::stats`] reads its counters
/// at any time, also while it runs.
pub struct Server {
    /// The validated configuration.
    settings: Settings,
    /// The store, closed at the end of `run`.
    store: Arc<dyn Store>,
    /// The chat service.
    service: Arc<Service>,
    /// What every native connection shares.
    ctx: Arc<NativeContext>,
    /// Accept-loop counters.
    counters: Arc<ServerCounters>,
    /// The HTTP front door, once `run_with_http` has started it.
    http: Arc<OnceLock<Arc<parley_http::HttpContext>>>,
    /// The bus, once `run_with_http` has joined it (None: no bus).
    bus: Arc<OnceLock<Option<Arc<parley_bus::NatsBus>>>>,
    /// The QUIC listener's counters (zero while it is off).
    quic_counters: Arc<crate::quic::QuicCounters>,
}

/// A snapshot of every counter, for metrics, status and the shutdown log.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub connections_accepted: u64,
    pub connections_refused_busy: u64,
    pub sessions_online: u64,
    pub registrations: u64,
    pub logins_ok: u64,
    pub logins_failed: u64,
    pub logins_rate_limited: u64,
    pub resumes_ok: u64,
    pub resumes_failed: u64,
    pub messages_stored: u64,
    pub messages_duplicate: u64,
    pub messages_pushed: u64,
    pub messages_acked: u64,
    pub messages_resent: u64,
    /// Reads from storage sessions made to catch up: one after each
    /// subscribe, and one per page after a notification was missed.
    #[serde(default)]
    pub catch_up_reads: u64,
    pub busy_replies: u64,
    pub slow_consumer_pauses: u64,
    pub keepalive_timeouts: u64,
    /// Connections refused because `max_unauthenticated` were open.
    pub unauthenticated_refused: u64,
    pub lagged_notifications: u64,
    pub presence_events: u64,
    pub http_requests: u64,
    pub http_busy_replies: u64,
    pub http_sessions: u64,
    pub websockets_open: u64,
    pub pager_messages: u64,
    pub pager_rate_limited: u64,
    /// HTTP connections refused by `http_max_connections_per_ip`.
    pub http_refused_per_address: u64,
    /// HTTP connections closed because a request's headers were late.
    pub http_header_timeouts: u64,
    /// HTTP requests answered 408 because their body was late.
    pub http_body_timeouts: u64,
    /// TLS handshakes that failed or timed out, native and HTTP listeners together.
    pub tls_handshakes_failed: u64,
    pub connections_open: u64,
    pub worker_restarts: u64,
    pub perf_lines_dropped: u64,
    pub log_lines_dropped: u64,
    /// Log lines suppressed as repeats (`log_limit`).
    pub log_lines_suppressed: u64,
    /// Bus frames published, received, dropped and malformed, and other
    /// processes heard from (all 0 without a bus).
    pub bus_frames_sent: u64,
    pub bus_frames_received: u64,
    pub bus_frames_dropped: u64,
    pub bus_frames_malformed: u64,
    pub bus_nodes: u64,
    /// QUIC connection attempts, Retries sent, attempts refused before the
    /// handshake, and handshakes that failed (all 0 while QUIC is off).
    #[serde(default)]
    pub quic_attempts: u64,
    #[serde(default)]
    pub quic_retries: u64,
    #[serde(default)]
    pub quic_refused: u64,
    #[serde(default)]
    pub quic_handshakes_failed: u64,
    /// File transfers that started (both sides met), that completed, the
    /// bytes relayed through this process, and rendezvous open now.
    #[serde(default)]
    pub file_transfers_started: u64,
    #[serde(default)]
    pub file_transfers_completed: u64,
    #[serde(default)]
    pub file_relayed_bytes: u64,
    #[serde(default)]
    pub file_rendezvous_open: u64,
    /// The spam classifier's model version ("" when it is off).
    #[serde(default)]
    pub filter_model: String,
    /// Messages the classifier scored, held and rejected; rejected by the
    /// blocked phrases; let through unscored (fail_open); refused BUSY by
    /// fail_closed or a full inference queue.
    #[serde(default)]
    pub filter_scored: u64,
    #[serde(default)]
    pub filter_held: u64,
    #[serde(default)]
    pub filter_rejected: u64,
    #[serde(default)]
    pub filter_words_rejected: u64,
    #[serde(default)]
    pub filter_fail_open: u64,
    #[serde(default)]
    pub filter_fail_closed: u64,
    /// With an inference server: requests sent, messages in them, and
    /// requests that timed out or failed otherwise.
    #[serde(default)]
    pub filter_remote_batches: u64,
    #[serde(default)]
    pub filter_remote_texts: u64,
    #[serde(default)]
    pub filter_remote_timeouts: u64,
    #[serde(default)]
    pub filter_remote_failures: u64,
}

impl Server {
    pub fn new(settings: Settings, store: Arc<dyn Store>, secret: [u8; 32]) -> Server {
        let service = Service::new(
            Arc::clone(&store),
            ServiceConfig {
                limits: Limits {
                    max_body_bytes: settings.max_body_bytes,
                    session_queue: settings.session_queue,
                    max_contacts: settings.max_contacts,
                    max_unacked: settings.max_unacked,
                    max_sessions_per_user: settings.max_sessions_per_user,
                    max_reply_bytes: settings.max_frame_bytes as usize,
                    registrations_per_ip_per_hour: settings.registrations_per_ip_per_hour,
                    send_rate_per_account: settings.send_rate_per_account,
                    mailbox_max_messages: settings.mailbox_max_messages,
                    mailbox_max_bytes: settings.mailbox_max_bytes,
                    max_file_bytes: settings.max_file_bytes,
                    relay_max_file_bytes: settings.relay_max_file_bytes,
                    relay_bytes_per_sec_per_user: settings.relay_bytes_per_sec_per_user,
                },
                auth: AuthSettings {
                    mechanisms: settings.scram_mechanisms.clone(),
                    iterations: settings.scram_iterations,
                    secret,
                },
                resume: ResumeSettings {
                    ttl: settings.resume_ttl,
                    max_per_user: parley_core::service::DEFAULT_RESUME_TOKENS_PER_USER,
                },
                throttle: ThrottleSettings {
                    failures_per_account: settings.login_failures_per_account,
                    failures_per_ip: settings.login_failures_per_ip,
                    pending_per_account: settings.login_pending_per_account,
                    pending_per_ip: settings.login_pending_per_ip,
                    window: parley_core::throttle::DEFAULT_WINDOW,
                    max_tracked: parley_core::throttle::MAX_TRACKED,
                },
                registration: settings.registration,
                filters: crate::filter::pipeline(&settings.filter).unwrap_or_else(|e| {
                    // The settings were checked when read; a model file
                    // changed since is the one way here.
                    tracing::error!(error = %e, "the spam filter cannot start; messages go unfiltered");
                    parley_core::filter::FilterSettings::default()
                }),
            },
        );
        let ctx = Arc::new(NativeContext {
            welcome: NativeContext::welcome_frame(&service, &settings),
            service: Arc::clone(&service),
            max_frame_bytes: settings.max_frame_bytes as usize,
            auth_timeout: settings.auth_timeout,
            pipeline_window: settings.pipeline_window,
            outbound_buffer_bytes: settings.outbound_buffer_bytes,
            keepalive: settings.keepalive,
            ack_timeout: settings.ack_timeout,
            max_ack_backoff: settings.max_ack_backoff,
            max_backlog: settings.max_backlog,
            backlog: AtomicUsize::new(0),
            max_unauthenticated: settings.max_unauthenticated,
            unauthenticated: AtomicUsize::new(0),
            counters: NativeCounters::default(),
            perf: OnceLock::new(),
        });
        // Pins the start time and reads the worker-restart count once.
        crate::metrics::process();
        Server {
            settings,
            store,
            service,
            ctx,
            counters: Arc::new(ServerCounters::default()),
            http: Arc::new(OnceLock::new()),
            bus: Arc::new(OnceLock::new()),
            quic_counters: Arc::new(crate::quic::QuicCounters::default()),
        }
    }

    /// What the native front door's connections share; lets a harness (the
    /// fuzz target) serve a connection without a listener.
    pub fn native_context(&self) -> Arc<NativeContext> {
        Arc::clone(&self.ctx)
    }

    /// The chat service, for the control socket's commands.
    pub fn service(&self) -> Arc<Service> {
        Arc::clone(&self.service)
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        self.stats_handle().snapshot()
    }

    /// A handle that reads the counters, also while [`Server::run`] owns the server.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            service: Arc::clone(&self.service),
            ctx: Arc::clone(&self.ctx),
            counters: Arc::clone(&self.counters),
            http: Arc::clone(&self.http),
            bus: Arc::clone(&self.bus),
            quic: Arc::clone(&self.quic_counters),
        }
    }
}

/// Reads a server's counters from anywhere.
#[derive(Clone)]
pub struct StatsHandle {
    /// Service counters and the hub.
    service: Arc<Service>,
    /// Front-door counters.
    ctx: Arc<NativeContext>,
    /// Accept-loop counters.
    counters: Arc<ServerCounters>,
    /// HTTP front-door counters, when it runs.
    http: Arc<OnceLock<Arc<parley_http::HttpContext>>>,
    /// Bus counters, when there is a bus.
    bus: Arc<OnceLock<Option<Arc<parley_bus::NatsBus>>>>,
    /// QUIC listener counters.
    quic: Arc<crate::quic::QuicCounters>,
}

impl StatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> Stats {
        let c = self.service.counters();
        let n = &self.ctx.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let http = self.http.get();
        let bus = self.bus.get().and_then(Option::as_ref).map(|b| b.counters());
        let transfers = self.service.transfers();
        let filters = self.service.filters();
        let remote = filters.remote_report().unwrap_or_default();
        Stats {
            connections_accepted: get(&self.counters.connections_accepted),
            connections_refused_busy: get(&self.counters.connections_refused_busy),
            sessions_online: self.service.hub().online_sessions(),
            registrations: get(&c.registrations),
            logins_ok: get(&c.logins_ok),
            logins_failed: get(&c.logins_failed),
            logins_rate_limited: get(&c.logins_rate_limited),
            resumes_ok: get(&c.resumes_ok),
            resumes_failed: get(&c.resumes_failed),
            messages_stored: get(&c.messages_stored),
            messages_duplicate: get(&c.messages_duplicate),
            messages_pushed: get(&c.messages_pushed),
            messages_acked: get(&c.messages_acked),
            messages_resent: get(&c.messages_resent),
            catch_up_reads: get(&c.catch_up_reads),
            busy_replies: get(&n.busy_replies),
            slow_consumer_pauses: get(&n.slow_consumer_pauses),
            keepalive_timeouts: get(&n.keepalive_timeouts),
            unauthenticated_refused: get(&n.unauthenticated_refused),
            lagged_notifications: self.service.hub().lag_events(),
            presence_events: self.service.hub().presence_events(),
            http_requests: http.map_or(0, |h| get(&h.counters.requests)),
            http_busy_replies: http.map_or(0, |h| get(&h.counters.busy_replies)),
            http_sessions: http.map_or(0, |h| h.sessions.len() as u64),
            websockets_open: http.map_or(0, |h| h.websockets_open() as u64),
            pager_messages: http.map_or(0, |h| get(&h.counters.pager_messages)),
            pager_rate_limited: http.map_or(0, |h| get(&h.counters.pager_rate_limited)),
            http_refused_per_address: http.map_or(0, |h| get(&h.counters.refused_per_address)),
            http_header_timeouts: http.map_or(0, |h| get(&h.counters.header_timeouts)),
            http_body_timeouts: http.map_or(0, |h| get(&h.counters.body_timeouts)),
            tls_handshakes_failed: get(&self.counters.tls_handshakes_failed)
                + http.map_or(0, |h| get(&h.counters.tls_handshakes_failed)),
            connections_open: get(&self.counters.connections_open),
            worker_restarts: crate::metrics::process().worker_restarts,
            perf_lines_dropped: self.ctx.perf.get().map_or(0, |p| p.dropped()),
            log_lines_dropped: crate::logging::dropped_lines(),
            log_lines_suppressed: crate::log_limit::suppressed_lines(),
            bus_frames_sent: bus.map_or(0, |b| get(&b.sent)),
            bus_frames_received: bus.map_or(0, |b| get(&b.received)),
            bus_frames_dropped: bus.map_or(0, |b| get(&b.dropped)),
            bus_frames_malformed: bus.map_or(0, |b| get(&b.malformed)),
            bus_nodes: bus.map_or(0, |b| get(&b.nodes)),
            quic_attempts: get(&self.quic.attempts),
            quic_retries: get(&self.quic.retries),
            quic_refused: get(&self.quic.refused),
            quic_handshakes_failed: get(&self.quic.handshakes_failed),
            file_transfers_started: get(&transfers.started),
            file_transfers_completed: get(&transfers.completed),
            file_relayed_bytes: get(&transfers.relayed_bytes),
            file_rendezvous_open: transfers.pending() as u64,
            filter_model: filters.model_version().unwrap_or_default(),
            filter_scored: get(&filters.spam.judged),
            filter_held: get(&filters.spam.held),
            filter_rejected: get(&filters.spam.rejected),
            filter_words_rejected: get(&filters.words.rejected),
            filter_fail_open: get(&filters.spam.fail_open),
            filter_fail_closed: get(&filters.spam.fail_closed) + get(&filters.spam.overloaded),
            filter_remote_batches: remote.batches,
            filter_remote_texts: remote.texts,
            filter_remote_timeouts: remote.timeouts,
            filter_remote_failures: remote.failures,
        }
    }

    /// The store's own counters and histograms, if it has any.
    pub fn store_stats(&self) -> Option<parley_core::store::StoreStats> {
        self.service.store().stats()
    }

    /// The Prometheus exposition of everything now (`GET /metrics`).
    pub fn metrics_text(&self) -> String {
        let mut text = crate::metrics::render(
            &self.snapshot(),
            self.store_stats().as_ref(),
            crate::metrics::process(),
            &crate::metrics::Resources::read(),
        );
        let filters = self.service.filters();
        crate::metrics::render_filter_latency(
            &mut text,
            &[
                (filters.spam.name, filters.spam.latency_us.snapshot()),
                (filters.words.name, filters.words.latency_us.snapshot()),
            ],
        );
        text
    }
}

impl Server {
    /// Serves on `listener` until `shutdown` resolves, then shuts down
    /// gracefully: stop accepting, tell every connection, let in-flight
    /// requests finish within the grace period, close the store.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.run_with_http(listener, None, shutdown).await
    }

    /// Like [`Server::run`], with the HTTP front door (JSON API, WebSocket,
    /// pager, web UI) on `http` as well. Both share the service, the
    /// connection caps and the shutdown.
    pub async fn run_with_http(
        self,
        listener: TcpListener,
        http: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        self.run_listeners(listener, http.map(Into::into), None, shutdown).await
    }

    /// Like [`Server::run_with_http`], with the QUIC front door on `quic`
    /// (a bound UDP socket) as well, when given.
    pub async fn run_listeners(
        self,
        listener: TcpListener,
        http: Option<parley_http::listener::HttpListener>,
        quic: Option<std::net::UdpSocket>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Server {
            settings,
            store,
            service,
            ctx,
            counters,
            http: http_slot,
            bus: bus_slot,
            quic_counters,
        } = &self;
        let permits = Arc::new(Semaphore::new(settings.max_connections));
        let per_ip = Arc::new(PerIp {
            max: settings.max_connections_per_ip,
            open: Mutex::new(HashMap::new()),
        });
        if settings.perf_log {
            let run = crate::perf::run_id_from_env()?;
            let perf = crate::perf::PerfLog::open(&settings.perf_dir, &run)?;
            tracing::info!(path = %perf.path().display(), %run, "perf log on");
            let _ = ctx.perf.set(Arc::new(perf));
        }
        if settings.metrics
            && http.is_some()
            && let Some(addr) = settings.http_listen
            && !addr.ip().is_loopback()
        {
            tracing::warn!(%addr, "/metrics is served on a non-loopback HTTP listener; set metrics = false or block it in a proxy if that address is public");
        }
        // Joined before the first connection is taken, so that nothing a
        // session of this process stores misses the others.
        let bus = match &settings.bus {
            Some(bus) => Some(
                parley_bus::NatsBus::start(bus.clone(), service.shared_hub())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}; check the bus setting and that NATS runs"))?,
            ),
            None => None,
        };
        let _ = bus_slot.set(bus.clone());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // Fires when the grace period is over, for connections that are
        // not tasks of this loop (WebSockets, spawned by the HTTP server;
        // QUIC connections, spawned by the QUIC loop).
        let (cut_tx, cut_rx) = watch::channel(false);
        let gate = ConnectionGate {
            ctx: Arc::clone(ctx),
            permits: Arc::clone(&permits),
            per_ip: Arc::clone(&per_ip),
            counters: Arc::clone(counters),
            shutdown: shutdown_rx.clone(),
            cut: cut_rx.clone(),
            max_frame_bytes: settings.max_frame_bytes as usize,
        };
        let mut quic_task = match quic {
            Some(socket) => {
                let endpoint = crate::quic::endpoint(socket, settings)?;
                if let Ok(addr) = endpoint.local_addr() {
                    tracing::info!(%addr, "QUIC on");
                }
                let admission = crate::quic::Admission {
                    retry_above: settings.quic_retry_above,
                    max_handshaking: settings.max_unauthenticated,
                };
                Some(tokio::spawn(crate::quic::serve(
                    endpoint,
                    gate.clone(),
                    admission,
                    Arc::clone(quic_counters),
                    shutdown_rx.clone(),
                )))
            }
            None => None,
        };
        let http = http.map(|listener| {
            let gate = gate.clone();
            let http_ctx = parley_http::HttpContext::with_hooks(
                Arc::clone(service),
                http_settings(settings),
                gate.handler(),
                self.http_hooks(),
            );
            let _ = http_slot.set(Arc::clone(&http_ctx));
            let mut stop = shutdown_rx.clone();
            let stopped = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            let tls = settings
                .http_tls_acceptor()
                .map(|acceptor| parley_http::listener::HttpTls {
                    acceptor,
                    handshake_timeout: crate::tls::TLS_HANDSHAKE_TIMEOUT,
                });
            let task = tokio::spawn(parley_http::serve_with_tls(
                listener,
                Arc::clone(&http_ctx),
                tls,
                stopped,
            ));
            (http_ctx, task)
        });
        // Some when the native listener speaks TLS: each accepted stream is
        // wrapped in its own task, so a slow or bad handshake delays nobody.
        let tls = settings.native_tls_acceptor();
        if let Some(identity) = &settings.tls {
            tracing::info!(
                native = settings.native_tls,
                http = settings.http_tls && settings.http_listen.is_some(),
                cert = %identity.cert_path.display(),
                fingerprint = %identity.fingerprint,
                "TLS on"
            );
        }
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nodelay(true);
                        let slot = PerIp::acquire(&per_ip, peer.ip());
                        match (Arc::clone(&permits).try_acquire_owned(), slot) {
                            (Ok(permit), Some(slot)) => {
                                let ctx = Arc::clone(ctx);
                                let shutdown = shutdown_rx.clone();
                                let open = OpenConnection::new(counters, peer, "native");
                                match tls.clone() {
                                    None => {
                                        tasks.spawn(async move {
                                            let _permit = (permit, slot);
                                            let summary = serve_tcp(stream, ctx, shutdown, peer).await;
                                            open.closed(summary);
                                        });
                                    }
                                    Some(acceptor) => {
                                        let counters = Arc::clone(counters);
                                        tasks.spawn(async move {
                                            let _permit = (permit, slot);
                                            if let Some(summary) = serve_tls(acceptor, stream, ctx, shutdown, peer, counters).await {
                                                open.closed(summary);
                                            }
                                        });
                                    }
                                }
                            }
                            _ => {
                                log_refused(peer, "native");
                                counters.connections_refused_busy.fetch_add(1, Ordering::Relaxed);
                                let max_frame_bytes = settings.max_frame_bytes as usize;
                                match tls.clone() {
                                    None => {
                                        tasks.spawn(refuse_busy(stream, max_frame_bytes));
                                    }
                                    // The refusal must be readable, so it goes
                                    // through the handshake like any reply.
                                    Some(acceptor) => {
                                        let counters = Arc::clone(counters);
                                        tasks.spawn(async move {
                                            let failed = &counters.tls_handshakes_failed;
                                            if let Some(stream) = crate::tls::handshake(&acceptor, stream, peer, failed).await {
                                                refuse_busy(stream, max_frame_bytes).await;
                                            }
                                        });
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        drop(listener);
        tracing::info!(connections = tasks.len(), grace = ?settings.shutdown_grace, "shutting down");
        let _ = shutdown_tx.send(true);
        service.close_all_sessions();
        if let Some(bus) = &bus {
            // The others forget this process's sessions now rather than
            // after the node timeout.
            bus.leave().await;
        }
        let (http_ctx, mut http_task) = match http {
            Some((c, t)) => (Some(c), Some(t)),
            None => (None, None),
        };
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
            if let Some(task) = http_task.as_mut() {
                match task.await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server failed"),
                    Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
                    Ok(Ok(())) => {}
                }
                http_task = None;
            }
            if let Some(c) = &http_ctx {
                c.websockets().close();
                c.websockets().wait().await;
            }
            if let Some(task) = quic_task.as_mut() {
                if let Err(e) = task.await {
                    tracing::warn!(error = %e, "QUIC listener task failed");
                }
                quic_task = None;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = tasks.len(),
                "grace period over; closing remaining connections"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            let _ = cut_tx.send(true);
            if let Some(task) = http_task.take() {
                task.abort();
                let _ = task.await;
            }
            if let Some(c) = &http_ctx {
                let _ = tokio::time::timeout(CUT_WAIT, c.websockets().wait()).await;
            }
            if let Some(task) = quic_task.take()
                && tokio::time::timeout(CUT_WAIT, task).await.is_err()
            {
                tracing::warn!("QUIC connections did not end in time after the grace period");
            }
        }
        if let Some(c) = &http_ctx {
            c.sessions.clear();
        }
        drop(http_ctx);
        store.close().await.context("closing the store")?;
        if let Some(perf) = ctx.perf.get() {
            perf.close();
        }
        tracing::info!(stats = ?self.stats(), "stopped");
        Ok(())
    }
}

impl Server {
    /// What the HTTP front door gets besides its settings: the metrics
    /// renderer (when `metrics` is on) and the perf log's recorder (when it
    /// is open).
    fn http_hooks(&self) -> parley_http::HttpHooks {
        let metrics: Option<parley_http::MetricsRenderer> = self.settings.metrics.then(|| {
            // The callback lives inside the HTTP front door, which the stats
            // handle reaches through `http`: holding that slot weakly keeps
            // the two from keeping each other alive after the server ends.
            let (service, ctx, counters) = (
                Arc::clone(&self.service),
                Arc::clone(&self.ctx),
                Arc::clone(&self.counters),
            );
            let http = Arc::downgrade(&self.http);
            let bus = Arc::clone(&self.bus);
            let quic = Arc::clone(&self.quic_counters);
            Arc::new(move || match http.upgrade() {
                Some(http) => StatsHandle {
                    service: Arc::clone(&service),
                    ctx: Arc::clone(&ctx),
                    counters: Arc::clone(&counters),
                    http,
                    bus: Arc::clone(&bus),
                    quic: Arc::clone(&quic),
                }
                .metrics_text(),
                None => String::new(),
            }) as parley_http::MetricsRenderer
        });
        let requests: Option<parley_http::RequestRecorder> = self.ctx.perf.get().map(|perf| {
            let perf = Arc::clone(perf);
            Arc::new(move |op: &str, elapsed: std::time::Duration, outcome: &str| {
                perf.record(op.to_owned(), elapsed, outcome.to_owned());
            }) as parley_http::RequestRecorder
        });
        parley_http::HttpHooks { metrics, requests }
    }
}

/// Longest wait for WebSockets after they were cut at the end of the grace period.
const CUT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The HTTP front door's settings, from the server's.
fn http_settings(settings: &Settings) -> parley_http::HttpSettings {
    parley_http::HttpSettings {
        pager_enabled: settings.pager,
        pager_per_ip_per_minute: settings.pager_per_ip_per_minute,
        session_idle: settings.http_session_idle,
        max_sessions: settings.http_max_sessions,
        max_sessions_per_ip: settings.http_max_sessions_per_ip,
        max_pending_logins: settings.http_max_pending_logins,
        login_timeout: settings.auth_timeout,
        max_in_flight: settings.http_max_in_flight,
        max_request_bytes: settings.http_max_request_bytes,
        max_connections: settings.http_max_connections,
        max_frame_bytes: settings.max_frame_bytes as usize,
        max_connections_per_ip: settings.http_max_connections_per_ip,
        header_timeout: settings.http_header_timeout,
        body_timeout: settings.http_body_timeout,
        keepalive: settings.http_keepalive,
        trusted_proxies: settings.trusted_proxies.clone(),
    }
}

/// Admits WebSocket connections under the same caps as TCP ones and serves
/// them with the native handler.
#[derive(Clone)]
pub(crate) struct ConnectionGate {
    /// What every native connection shares.
    ctx: Arc<NativeContext>,
    /// `max_connections`, shared with the TCP listener.
    permits: Arc<Semaphore>,
    /// `max_connections_per_ip`, shared with the TCP listener.
    per_ip: Arc<PerIp>,
    /// Accept counters.
    counters: Arc<ServerCounters>,
    /// The graceful shutdown signal.
    shutdown: watch::Receiver<bool>,
    /// The end of the grace period.
    cut: watch::Receiver<bool>,
    /// For the BUSY refusal.
    max_frame_bytes: usize,
}

impl ConnectionGate {
    fn handler(self) -> parley_http::ws::NativeHandler {
        Arc::new(move |stream: tokio::io::DuplexStream, peer: SocketAddr| {
            let gate = self.clone();
            Box::pin(async move { gate.serve(stream, peer).await })
        })
    }

    async fn serve(self, stream: tokio::io::DuplexStream, peer: SocketAddr) {
        let (reader, writer) = tokio::io::split(stream);
        self.serve_stream(reader, writer, peer, "ws").await;
    }

    /// Admits a connection past the caps (or answers BUSY) and serves the
    /// native protocol on it until it ends or the grace period is over.
    pub(crate) async fn serve_stream<R, W>(self, reader: R, mut writer: W, peer: SocketAddr, transport: &'static str)
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        self.counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let slot = PerIp::acquire(&self.per_ip, peer.ip());
        let (Ok(permit), Some(slot)) = (Arc::clone(&self.permits).try_acquire_owned(), slot) else {
            log_refused(peer, transport);
            self.counters.connections_refused_busy.fetch_add(1, Ordering::Relaxed);
            refuse_busy(&mut writer, self.max_frame_bytes).await;
            return;
        };
        let _permit = (permit, slot);
        let open = OpenConnection::new(&self.counters, peer, transport);
        let mut cut = self.cut;
        tokio::select! {
            summary = native::serve(reader, writer, self.ctx, self.shutdown, peer) => open.closed(summary),
            _ = cut.wait_for(|cut| *cut) => {}
        }
    }
}

/// Builds a [`Server`] and runs it; see [`Server::run`].
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    store: Arc<dyn Store>,
    secret: [u8; 32],
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::new(settings, store, secret).run(listener, shutdown).await
}

async fn serve_tcp(
    mut stream: TcpStream,
    ctx: Arc<NativeContext>,
    shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
) -> native::ConnectionSummary {
    let (reader, writer) = stream.split();
    native::serve(reader, writer, ctx, shutdown, peer).await
}

/// Completes the TLS handshake (unless shutdown comes first), then serves
/// the native protocol over it.
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    ctx: Arc<NativeContext>,
    mut shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
    counters: Arc<ServerCounters>,
) -> Option<native::ConnectionSummary> {
    let handshake = crate::tls::handshake(&acceptor, stream, peer, &counters.tls_handshakes_failed);
    let stream = tokio::select! {
        stream = handshake => stream,
        _ = shutdown.wait_for(|stop| *stop) => None,
    };
    let stream = stream?;
    let (reader, writer) = tokio::io::split(stream);
    Some(native::serve(reader, writer, ctx, shutdown, peer).await)
}

/// Answers a connection over the limit with BUSY and closes it.
async fn refuse_busy<S: tokio::io::AsyncWrite + Unpin>(mut stream: S, max_frame_bytes: usize) {
    let mut refusal = error_frame(0, ErrorCode::Busy, "too many connections; retry later");
    if let Some(parley_proto::v1::server_frame::Body::Error(e)) = refusal.body.as_mut() {
        e.retry_after_ms = CONNECTION_BUSY_RETRY_MS;
    }
    let mut buf = BytesMut::new();
    if encode_frame(&refusal, &mut buf, max_frame_bytes).is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            let _ = stream.write_all(&buf).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}
