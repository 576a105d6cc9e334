//! Startup, the accept loop and shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::Context;
use bytes::BytesMut;
use parley_core::service::{AuthSettings, ResumeSettings, ServiceConfig};
use parley_core::throttle::ThrottleSettings;
use parley_core::{Limits, Service, Store};
use parley_proto::{ErrorCode, encode_frame};
use parley_store::memory::MemoryStore;
use parley_store::sqlite::{SqliteOptions, SqliteStore};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Settings, StoreKind};
use crate::convert::error_frame;
use crate::native::{self, NativeContext, NativeCounters};

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
            std::fs::create_dir_all(&settings.data_dir)
                .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
            let secret = load_or_create_secret(&settings.data_dir.join(SECRET_FILE))?;
            let options = SqliteOptions {
                synchronous: settings.sqlite_synchronous,
                queue_capacity: settings.write_queue,
                max_batch: settings.max_batch,
            };
            let path = settings.data_dir.join(DATABASE_FILE);
            let store = SqliteStore::open(&path, options).with_context(|| format!("opening {}", path.display()))?;
            Ok((Arc::new(store), secret))
        }
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
        let mut open = table.open.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then shuts down
/// gracefully: stop accepting, tell every connection, let in-flight requests
/// finish within the grace period, close the store.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    store: Arc<dyn Store>,
    secret: [u8; 32],
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let service = Service::new(
        Arc::clone(&store),
        ServiceConfig {
            limits: Limits {
                max_body_bytes: settings.max_body_bytes,
                session_queue: settings.session_queue,
                max_contacts: settings.max_contacts,
                max_unacked: settings.max_unacked,
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
                window: parley_core::throttle::DEFAULT_WINDOW,
            },
        },
    );
    let keepalive_secs = u32::try_from(settings.keepalive.as_secs()).unwrap_or(u32::MAX);
    let ctx = Arc::new(NativeContext {
        welcome: NativeContext::welcome_frame(&service, settings.max_frame_bytes, keepalive_secs),
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
        counters: NativeCounters::default(),
    });
    let counters = ServerCounters::default();
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let per_ip = Arc::new(PerIp {
        max: settings.max_connections_per_ip,
        open: Mutex::new(HashMap::new()),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
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
                            let ctx = Arc::clone(&ctx);
                            let shutdown = shutdown_rx.clone();
                            tasks.spawn(async move {
                                let _permit = (permit, slot);
                                serve_tcp(stream, ctx, shutdown, peer).await;
                            });
                        }
                        _ => {
                            counters.connections_refused_busy.fetch_add(1, Ordering::Relaxed);
                            tasks.spawn(refuse_busy(stream, settings.max_frame_bytes as usize));
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
    let drained = tokio::time::timeout(settings.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            "grace period over; closing remaining connections"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    store.close().await.context("closing the store")?;
    let c = service.counters();
    tracing::info!(
        connections = counters.connections_accepted.load(Ordering::Relaxed),
        refused_busy = counters.connections_refused_busy.load(Ordering::Relaxed),
        logins_ok = c.logins_ok.load(Ordering::Relaxed),
        logins_failed = c.logins_failed.load(Ordering::Relaxed),
        stored = c.messages_stored.load(Ordering::Relaxed),
        duplicates = c.messages_duplicate.load(Ordering::Relaxed),
        pushed = c.messages_pushed.load(Ordering::Relaxed),
        acked = c.messages_acked.load(Ordering::Relaxed),
        resent = c.messages_resent.load(Ordering::Relaxed),
        resumes = c.resumes_ok.load(Ordering::Relaxed),
        rate_limited = c.logins_rate_limited.load(Ordering::Relaxed),
        busy = ctx.counters.busy_replies.load(Ordering::Relaxed),
        slow_consumer_pauses = ctx.counters.slow_consumer_pauses.load(Ordering::Relaxed),
        keepalive_timeouts = ctx.counters.keepalive_timeouts.load(Ordering::Relaxed),
        lagged_notifications = service.hub().lag_events(),
        "stopped"
    );
    Ok(())
}

async fn serve_tcp(mut stream: TcpStream, ctx: Arc<NativeContext>, shutdown: watch::Receiver<bool>, peer: SocketAddr) {
    let (reader, writer) = stream.split();
    native::serve(reader, writer, ctx, shutdown, peer).await;
}

/// Answers a connection over the limit with BUSY and closes it.
async fn refuse_busy(mut stream: TcpStream, max_frame_bytes: usize) {
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
