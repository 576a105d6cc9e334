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
//! The channel carries JSON lines: the worker's `ready` (or `failed`, with
//! the reason it cannot serve, before it exits), then requests from the
//! master (`{"id":N,"request":{...}}`) and their replies, and a heartbeat
//! (`alive`) the worker sends every half of the master's heartbeat
//! timeout, so that the master notices a worker that stopped running.

use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
/// Environment variable naming the inherited QUIC socket's descriptor (absent: QUIC off).
pub const ENV_QUIC_FD: &str = "PARLEYD_QUIC_FD";
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
/// Environment variable with the interval between heartbeats, in
/// milliseconds (absent or 0: no heartbeat). The master sets it from its
/// own `worker_heartbeat_timeout_secs`, so that the two never disagree.
pub const ENV_HEARTBEAT_MS: &str = "PARLEYD_HEARTBEAT_MS";

/// Descriptor numbers the master maps the inherited sockets to.
pub const NATIVE_FD: RawFd = 3;
pub const HTTP_FD: RawFd = 4;
pub const CONTROL_FD: RawFd = 5;
pub const QUIC_FD: RawFd = 6;

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
    /// Cannot serve, and exiting: why (the store would not open, say).
    Failed { pid: u32, error: String },
    /// Still running: sent every heartbeat interval while serving.
    Alive,
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

/// Runs worker mode to the end and says how the process exits. A reason
/// not to serve that reached the master over the channel is the master's
/// to report; any other is printed here.
pub fn run(settings: Settings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("parleyd worker {}: starting the runtime: {e}", std::process::id());
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(WorkerError { reported: true, .. }) => ExitCode::FAILURE,
        Err(WorkerError { error, .. }) => {
            eprintln!("parleyd worker {}: {error:#}", std::process::id());
            ExitCode::FAILURE
        }
    }
}

/// Why a worker stopped, and whether the master was told.
struct WorkerError {
    error: anyhow::Error,
    /// The master read it on the control channel (as `failed`).
    reported: bool,
}

impl From<anyhow::Error> for WorkerError {
    fn from(error: anyhow::Error) -> WorkerError {
        WorkerError { error, reported: false }
    }
}

/// What a worker needs to serve, made before it says `ready`.
struct Prepared {
    native: tokio::net::TcpListener,
    http: Option<parley_http::listener::HttpListener>,
    quic: Option<std::net::UdpSocket>,
    server: Server,
    admin: Admin,
}

/// Serves as a worker; returns after the graceful shutdown.
async fn serve(settings: Settings) -> Result<(), WorkerError> {
    let started = Instant::now();
    let control = inherited(ENV_CONTROL_FD)?.context("no control channel inherited")?;
    let control = std::os::unix::net::UnixStream::from(control);
    control.set_nonblocking(true).context("adopting the control channel")?;
    let control = tokio::net::UnixStream::from_std(control).context("adopting the control channel")?;
    let (reader, mut writer) = control.into_split();

    let Prepared {
        native,
        http,
        quic,
        server,
        admin,
    } = match prepare(settings, started) {
        Ok(prepared) => prepared,
        Err(error) => {
            // The master waits for this line and reports it: without it, the
            // operator would see only that the worker exited.
            let failed = line(&FromWorker::Failed {
                pid: std::process::id(),
                error: format!("{error:#}"),
            });
            let reported = writer.write_all(failed.as_bytes()).await.is_ok();
            return Err(WorkerError { error, reported });
        }
    };
    let addr: Option<SocketAddr> = native.local_addr().ok();
    let ready = line(&FromWorker::Ready {
        pid: std::process::id(),
    });
    writer.write_all(ready.as_bytes()).await.context("reporting ready")?;
    tracing::info!(pid = std::process::id(), addr = ?addr, "worker serving");

    // Replies from concurrently answered requests, and heartbeats, go
    // through one writer.
    let (replies, mut outgoing) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        while let Some(text) = outgoing.recv().await {
            if writer.write_all(text.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    if let Some(interval) = heartbeat_interval() {
        tokio::spawn(heartbeat(interval, replies.clone()));
    }
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
    Ok(server.run_listeners(native, http, quic, shutdown).await?)
}

/// Adopts the inherited listeners and opens the store: everything that can
/// keep a worker from serving.
fn prepare(settings: Settings, started: Instant) -> anyhow::Result<Prepared> {
    let native = inherited(ENV_NATIVE_FD)?.context("no native listener inherited")?;
    let native = std::net::TcpListener::from(native);
    native.set_nonblocking(true)?;
    let native = tokio::net::TcpListener::from_std(native).context("adopting the native listener")?;
    // The settings say which kind the master bound (they are the same
    // file and flags the master read).
    let http = match inherited(ENV_HTTP_FD)? {
        Some(fd) if settings.http_socket.is_some() => {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)?;
            Some(
                tokio::net::UnixListener::from_std(l)
                    .context("adopting the HTTP socket")?
                    .into(),
            )
        }
        Some(fd) => {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)?;
            Some(
                tokio::net::TcpListener::from_std(l)
                    .context("adopting the HTTP listener")?
                    .into(),
            )
        }
        None => None,
    };
    let quic = inherited(ENV_QUIC_FD)?.map(std::net::UdpSocket::from);
    // The settings were checked when read; a model file changed since
    // stops the worker with the reason, rather than serving unfiltered.
    crate::config::load_model(&settings.filter.model).map_err(|e| anyhow::anyhow!("filter_model: {e}"))?;
    let (store, secret) = open_store(&settings)?;
    let server = Server::new(settings, store, secret);
    let admin = Admin {
        service: server.service(),
        stats: server.stats_handle(),
        started,
    };
    Ok(Prepared {
        native,
        http,
        quic,
        server,
        admin,
    })
}

/// The interval the master asked for, if any.
fn heartbeat_interval() -> Option<Duration> {
    std::env::var(ENV_HEARTBEAT_MS)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

/// Tells the master this worker still runs, every `interval`, until the
/// channel's writer is gone. It runs on the same runtime as every
/// connection, so a worker whose runtime is stopped or wedged goes silent.
async fn heartbeat(interval: Duration, out: mpsc::Sender<String>) {
    let alive = line(&FromWorker::Alive);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // A full queue means lines are waiting already; they count as
        // signs of life too.
        if let Err(mpsc::error::TrySendError::Closed(_)) = out.try_send(alive.clone()) {
            return;
        }
    }
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
