//! Worker mode: the process that serves.
//!
//! The master starts this same binary with the listening sockets and one
//! end of a control channel as inherited descriptors, named by environment
//! variables. The worker opens the store, reports `ready` on the channel,
//! and serves until SIGTERM or until the channel closes (the master is
//! gone); both end in the graceful shutdown of [`Server::run_with_http`].
//! SIGINT is the master's to handle: a Ctrl-C reaches the whole process
//! group, and the master answers it by sending SIGTERM.
//!
//! The channel carries JSON lines: the worker's `ready`, then requests from
//! the master (`{"id":N,"request":{...}}`) and their replies.

use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LinesCodec};

use crate::admin::Admin;
use crate::ctl::{MAX_LINE_BYTES, Reply, Request};
use crate::{Server, Settings, open_store};

/// Environment variable naming the inherited native listener's descriptor.
pub const ENV_NATIVE_FD: &str = "PARLEYD_NATIVE_FD";
/// Environment variable naming the inherited HTTP listener's descriptor (absent: HTTP off).
pub const ENV_HTTP_FD: &str = "PARLEYD_HTTP_FD";
/// Environment variable naming the control channel's descriptor; its
/// presence is what makes a process a worker.
pub const ENV_CONTROL_FD: &str = "PARLEYD_CONTROL_FD";
/// Environment variable with the master's run id (shared by its workers).
pub const ENV_RUN: &str = crate::perf::RUN_ENV;
/// Environment variable with the number of workers the master restarted
/// after they died, before this one.
pub const ENV_WORKER_RESTARTS: &str = crate::metrics::WORKER_RESTARTS_ENV;
/// Environment variable with this worker's generation (1 for the first).
pub const ENV_GENERATION: &str = "PARLEYD_GENERATION";

/// Descriptor numbers the master maps the inherited sockets to.
pub const NATIVE_FD: RawFd = 3;
pub const HTTP_FD: RawFd = 4;
pub const CONTROL_FD: RawFd = 5;

/// A line from the master to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub struct ToWorker {
    pub id: u64,
    pub request: Request,
}

/// A line from a worker to the master.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FromWorker {
    /// Serving: the store is open and the listeners are handed to the server.
    Ready { pid: u32 },
    /// The answer to the request with this id.
    Reply { id: u64, reply: Reply },
}

/// Whether this process was started by a master as its worker.
pub fn is_worker() -> bool {
    std::env::var_os(ENV_CONTROL_FD).is_some()
}

/// Takes ownership of one inherited descriptor named by `var`.
fn inherited(var: &str) -> anyhow::Result<Option<OwnedFd>> {
    let Some(raw) = std::env::var_os(var) else {
        return Ok(None);
    };
    let fd: RawFd = raw
        .to_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{var}={raw:?} is not a descriptor number"))?;
    let owned = command_fds::inherited::take_fd_ownership(fd)
        .with_context(|| format!("{var}: descriptor {fd} not inherited"))?;
    Ok(Some(owned))
}

/// Serves as a worker; returns after the graceful shutdown.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let native = inherited(ENV_NATIVE_FD)?.context("no native listener inherited")?;
    let native = std::net::TcpListener::from(native);
    native.set_nonblocking(true)?;
    let native = tokio::net::TcpListener::from_std(native).context("adopting the native listener")?;
    let http = match inherited(ENV_HTTP_FD)? {
        Some(fd) => {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)?;
            Some(tokio::net::TcpListener::from_std(l).context("adopting the HTTP listener")?)
        }
        None => None,
    };
    let control = inherited(ENV_CONTROL_FD)?.context("no control channel inherited")?;
    let control = std::os::unix::net::UnixStream::from(control);
    control.set_nonblocking(true)?;
    let control = tokio::net::UnixStream::from_std(control).context("adopting the control channel")?;

    let (store, secret) = open_store(&settings)?;
    let addr: SocketAddr = native.local_addr()?;
    let server = Server::new(settings, store, secret);
    let admin = Admin {
        service: server.service(),
        stats: server.stats_handle(),
        started,
    };
    let (reader, mut writer) = control.into_split();
    let ready = line(&FromWorker::Ready {
        pid: std::process::id(),
    });
    writer.write_all(ready.as_bytes()).await.context("reporting ready")?;
    tracing::info!(pid = std::process::id(), %addr, "worker serving");

    // Replies from concurrently answered requests go through one writer.
    let (replies, mut outgoing) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        while let Some(text) = outgoing.recv().await {
            if writer.write_all(text.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        read_requests(reader, admin, replies).await;
        let _ = lost_tx.send(());
    });

    let shutdown = async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                None
            }
        };
        // Installed so that Ctrl-C does not kill the worker under the master.
        let mut int = signal(SignalKind::interrupt()).ok();
        tokio::pin!(lost_rx);
        loop {
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {
                    tracing::info!("SIGTERM: draining");
                    break;
                }
                _ = async { match int.as_mut() { Some(i) => { i.recv().await; } None => std::future::pending().await } } => {
                    tracing::debug!("SIGINT ignored; the master decides");
                }
                _ = &mut lost_rx => {
                    tracing::warn!("the master is gone: shutting down");
                    break;
                }
            }
        }
    };
    server.run_with_http(native, http, shutdown).await
}

/// Answers the master's requests until the channel closes.
async fn read_requests(reader: tokio::net::unix::OwnedReadHalf, admin: Admin, replies: mpsc::Sender<String>) {
    let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
    while let Some(Ok(text)) = lines.next().await {
        let Ok(ToWorker { id, request }) = serde_json::from_str::<ToWorker>(&text) else {
            tracing::warn!(line = %text, "unreadable control request");
            continue;
        };
        let admin = admin.clone();
        let replies = replies.clone();
        tokio::spawn(async move {
            let reply = admin.handle(request).await;
            let _ = replies.send(line(&FromWorker::Reply { id, reply })).await;
        });
    }
}

/// One JSON line.
pub fn line(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}
