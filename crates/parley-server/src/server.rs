//! Startup, the accept loop and shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::BytesMut;
use parley_core::service::{AuthSettings, ServiceConfig};
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
use crate::native::{self, NativeContext};

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
            },
            auth: AuthSettings {
                mechanisms: settings.scram_mechanisms.clone(),
                iterations: settings.scram_iterations,
                secret,
            },
        },
    );
    let ctx = Arc::new(NativeContext {
        welcome: NativeContext::welcome_frame(&service, settings.max_frame_bytes),
        service: Arc::clone(&service),
        max_frame_bytes: settings.max_frame_bytes as usize,
        auth_timeout: settings.auth_timeout,
        pipeline_window: settings.pipeline_window,
        outbound_buffer_bytes: settings.outbound_buffer_bytes,
    });
    let counters = ServerCounters::default();
    let permits = Arc::new(Semaphore::new(settings.max_connections));
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
                    match Arc::clone(&permits).try_acquire_owned() {
                        Ok(permit) => {
                            let ctx = Arc::clone(&ctx);
                            let shutdown = shutdown_rx.clone();
                            tasks.spawn(async move {
                                let _permit = permit;
                                serve_tcp(stream, ctx, shutdown, peer).await;
                            });
                        }
                        Err(_) => {
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
