//! The master process: binds every listener, keeps one worker serving,
//! restarts it when it dies, replaces it on reload, and serves the control
//! socket.
//!
//! The listening sockets belong to the master for its whole life and are
//! handed to each worker as inherited descriptors, so while a worker
//! restarts, new connections wait in the kernel's accept queue instead of
//! being refused. A reload starts the new worker first, waits until it is
//! ready (store open), and only then sends SIGTERM to the old one, which
//! stops accepting and drains: each of its clients sees one reconnect, and
//! nothing a client was told "ok" is lost because "ok" means stored. Both
//! workers may write the SQLite database meanwhile; SQLite serialises the
//! writers (`BEGIN IMMEDIATE` with a busy timeout) and mailbox seqs are
//! read inside each transaction. On PostgreSQL the account rows' locks do
//! the same (`parley_store::postgres`).
//!
//! A worker that dies after serving for a while is restarted at once; only
//! one that dies soon after it started waits, with a pause that doubles
//! (a crash loop). A worker that cannot start says why on the control
//! channel before it exits, and the master logs that reason with each
//! failed attempt and gives up after [`MAX_START_FAILURES`] in a row. A
//! worker that stops sending its heartbeat for `worker_heartbeat_timeout_secs`
//! (stopped, or wedged) is killed and replaced.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use command_fds::{CommandFdExt, FdMapping};
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, LinesCodec};

use crate::config::{SettingArgs, Settings, StoreKind};
use crate::ctl::{MAX_LINE_BYTES, Reloaded, Reply, Request, Status, WorkerStatus};
use crate::worker::{self, FromWorker, ToWorker};

/// Longest wait for a new worker to report ready (it opens and migrates the store).
pub const WORKER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// First pause before restarting a worker in a crash loop (one that died
/// soon after it started, or did not start); doubles per failure.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between restarts.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A worker that served at least this long before it died is restarted at
/// once, and the pause starts again from [`RESTART_BACKOFF_MIN`]. One that
/// died sooner is in a crash loop (the next one would likely die the same
/// way) and waits. A second is far longer than a worker takes to start
/// (tens of milliseconds) and short enough that a crash on one poisonous
/// request, minutes apart, never waits.
pub const SERVED_WELL_AFTER: Duration = Duration::from_secs(1);
/// Consecutive failed starts of a replacement worker after which the master
/// gives up and exits with status 1, like systemd's `StartLimitBurst=5`: a
/// database that cannot be opened does not heal by itself, and an exit
/// tells the operator (or the service manager) where waiting would not.
/// With the doubling pause the attempts span about three seconds. The first
/// worker gets one attempt: its operator is watching.
pub const MAX_START_FAILURES: u32 = 5;
/// How long a worker that will not serve gets to exit by itself (after
/// reporting why) before it is killed.
pub const FAILED_EXIT_WAIT: Duration = Duration::from_secs(5);
/// Time a worker gets beyond `shutdown_grace` to exit after SIGTERM before SIGKILL.
pub const EXIT_MARGIN: Duration = Duration::from_secs(5);
/// Longest wait for a worker's answer to a control request (a broadcast
/// to many users takes a while).
pub const WORKER_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a control client to send its request line.
const CTL_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Control connections handled at once; more wait to be accepted.
const CTL_MAX_CLIENTS: usize = 16;

/// How the master was started, to start workers the same way and to
/// re-read the configuration on reload.
pub struct Launch {
    /// The command-line arguments after the program name.
    pub args: Vec<OsString>,
    /// The parsed flags and environment (the file is read again on reload).
    pub setting_args: SettingArgs,
}

/// The HTTP listener's socket: TCP, or a unix-domain socket with its path.
enum HttpSocket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

impl HttpSocket {
    /// Binds what `settings` asks for, if anything.
    fn bind(settings: &Settings) -> anyhow::Result<Option<HttpSocket>> {
        if let Some(path) = &settings.http_socket {
            let listener = bind_unix(path, "HTTP socket", "http_listen", 0o660)?;
            return Ok(Some(HttpSocket::Unix(listener, path.clone())));
        }
        match settings.http_listen {
            Some(addr) => Ok(Some(HttpSocket::Tcp(
                std::net::TcpListener::bind(addr).with_context(|| format!("binding the HTTP listener {addr}"))?,
            ))),
            None => Ok(None),
        }
    }

    /// Another handle on the same socket.
    fn try_clone(&self) -> std::io::Result<HttpSocket> {
        Ok(match self {
            HttpSocket::Tcp(l) => HttpSocket::Tcp(l.try_clone()?),
            HttpSocket::Unix(l, path) => HttpSocket::Unix(l.try_clone()?, path.clone()),
        })
    }

    /// A descriptor of the same socket, for a worker.
    fn share(&self) -> std::io::Result<OwnedFd> {
        Ok(match self.try_clone()? {
            HttpSocket::Tcp(l) => OwnedFd::from(l),
            HttpSocket::Unix(l, _) => OwnedFd::from(l),
        })
    }

    /// The path of a unix socket.
    fn path(&self) -> Option<&Path> {
        match self {
            HttpSocket::Unix(_, path) => Some(path),
            HttpSocket::Tcp(_) => None,
        }
    }

    /// As the start line and `ctl status` show it.
    fn describe(&self) -> String {
        match self {
            HttpSocket::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            HttpSocket::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// Removes the socket file of a unix socket (at stop, or when a reload
    /// moved it away from `kept`, the path still in use if any).
    fn remove_file_unless(&self, kept: Option<&Path>) {
        if let Some(path) = self.path()
            && Some(path) != kept
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The sockets the master holds for its workers.
struct Listeners {
    native: std::net::TcpListener,
    http: Option<HttpSocket>,
    /// The QUIC listener's UDP socket.
    quic: Option<std::net::UdpSocket>,
}

impl Listeners {
    fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
        Listeners::bind_reusing(None, settings)
    }

    /// The listeners `settings` asks for. With `running` (the listeners and
    /// the settings they were bound for), each one whose setting did not
    /// change is another handle on the running socket, so that a reload
    /// refuses no connection; the others are bound anew.
    fn bind_reusing(running: Option<(&Listeners, &Settings)>, settings: &Settings) -> anyhow::Result<Listeners> {
        let native = match running {
            Some((current, before)) if before.listen == settings.listen => {
                current.native.try_clone().context("sharing the native listener")?
            }
            _ => std::net::TcpListener::bind(settings.listen)
                .with_context(|| format!("binding the native listener {}", settings.listen))?,
        };
        let http = match running {
            Some((current, before))
                if (&before.http_listen, &before.http_socket) == (&settings.http_listen, &settings.http_socket) =>
            {
                current
                    .http
                    .as_ref()
                    .map(HttpSocket::try_clone)
                    .transpose()
                    .context("sharing the HTTP listener")?
            }
            _ => HttpSocket::bind(settings)?,
        };
        let quic = match (running, settings.quic_listen) {
            (Some((current, before)), _) if before.quic_listen == settings.quic_listen => current
                .quic
                .as_ref()
                .map(std::net::UdpSocket::try_clone)
                .transpose()
                .context("sharing the QUIC socket")?,
            (_, Some(addr)) => Some(
                std::net::UdpSocket::bind(addr).with_context(|| format!("binding the QUIC listener {addr} (UDP)"))?,
            ),
            (_, None) => None,
        };
        Ok(Listeners { native, http, quic })
    }

    fn quic_addr(&self) -> Option<String> {
        self.quic
            .as_ref()
            .map(|s| s.local_addr().map(|a| a.to_string()).unwrap_or_default())
    }

    fn native_addr(&self) -> String {
        self.native.local_addr().map(|a| a.to_string()).unwrap_or_default()
    }

    fn http_addr(&self) -> Option<String> {
        self.http.as_ref().map(HttpSocket::describe)
    }
}

/// A control request and where its reply goes.
type Call = (Request, oneshot::Sender<Reply>);

/// A running worker, as the master sees it.
struct Worker {
    pid: u32,
    generation: u64,
    started: Instant,
    child: Child,
    /// Requests for it; its channel task answers them.
    calls: mpsc::Sender<Call>,
    /// When its channel last carried a line (a heartbeat, a reply).
    heard: watch::Receiver<Instant>,
    /// Killed for its silence: not watched any more, only waited for.
    silenced: bool,
}

impl Worker {
    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// One worker's place: the worker in it and when to start the next.
struct Slot {
    current: Option<Worker>,
    /// The pause before the next start in a crash loop.
    backoff: Duration,
    /// Starts that failed in a row.
    start_failures: u32,
    /// When to start a worker in it again (after a death).
    restart_at: Option<tokio::time::Instant>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            current: None,
            backoff: RESTART_BACKOFF_MIN,
            start_failures: 0,
            restart_at: None,
        }
    }
}

/// The master's state.
struct Master {
    launch: Launch,
    exe: PathBuf,
    settings: Settings,
    listeners: Listeners,
    run_id: String,
    started: Instant,
    generation: u64,
    restarts: u64,
    /// One place per worker (`workers` of them), each with the worker
    /// serving in it now, if any, and its restart state.
    slots: Vec<Slot>,
    /// Old workers draining after a reload: pid and the task that reaps them.
    draining: Vec<(u32, JoinHandle<()>)>,
    ctl_path: Option<PathBuf>,
}

/// Runs the master until SIGTERM, SIGINT or `parleyd ctl stop`.
pub async fn run(launch: Launch, settings: Settings) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;

    if settings.store == StoreKind::Sqlite {
        crate::private_files::create_private_dir(&settings.data_dir)
            .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
        crate::private_files::warn_if_open_to_others(&settings.data_dir, "data directory");
    }
    let listeners = Listeners::bind(&settings)?;
    crate::tls::warn_plaintext_exposure(&settings);
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Call>(CTL_MAX_CLIENTS);
    let ctl_path = match &settings.ctl_socket {
        Some(path) => {
            let listener = bind_ctl(path)?;
            tokio::spawn(serve_ctl(listener, path.clone(), ctl_tx));
            Some(path.clone())
        }
        None => None,
    };
    let run_id = std::env::var(worker::ENV_RUN).unwrap_or_else(|_| crate::perf::new_run_id());
    let mut master = Master {
        exe: own_executable()?,
        launch,
        slots: (0..settings.workers.max(1)).map(|_| Slot::new()).collect(),
        settings,
        listeners,
        run_id,
        started: Instant::now(),
        generation: 0,
        restarts: 0,
        draining: Vec::new(),
        ctl_path,
    };
    for index in 0..master.slots.len() {
        match master.start_worker().await {
            Ok(w) => master.slots[index].current = Some(w),
            Err(e) => {
                master.remove_ctl_socket();
                let started: Vec<Worker> = master.slots.iter_mut().filter_map(|s| s.current.take()).collect();
                for mut w in started {
                    w.signal(Signal::SIGTERM);
                    let _ = tokio::time::timeout(FAILED_EXIT_WAIT, w.child.wait()).await;
                    let _ = w.child.start_kill();
                }
                return Err(e.context(if index == 0 {
                    "the first worker did not start".to_owned()
                } else {
                    format!("worker {} of {} did not start", index + 1, master.slots.len())
                }));
            }
        }
    }
    let pids: Vec<u32> = master
        .slots
        .iter()
        .filter_map(|s| s.current.as_ref().map(|w| w.pid))
        .collect();
    let first = pids.first().copied().unwrap_or(0);
    // One machine-readable line on stdout: scripts and tests read the ports
    // (and pids) from it when listening on port 0. `http=` is absent when
    // it is off, `tls=` when no listener speaks TLS, `workers=` with one
    // worker.
    let tls = master.tls_listeners();
    let mut line = format!("parleyd listening native={}", master.listeners.native_addr());
    if let Some(http) = master.listeners.http_addr() {
        line.push_str(&format!(" http={http}"));
    }
    if let Some(quic) = master.listeners.quic_addr() {
        line.push_str(&format!(" quic={quic}"));
    }
    if let Some(tls) = &tls {
        line.push_str(&format!(" tls={tls}"));
    }
    line.push_str(&format!(" master={} worker={first}", std::process::id()));
    let all = pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    if pids.len() > 1 {
        line.push_str(&format!(" workers={all}"));
    }
    println!("{line}");
    // Absent settings (`None`) leave their field out.
    tracing::info!(
        native = %master.listeners.native_addr(),
        http = master.listeners.http_addr().map(tracing::field::display),
        quic = master.listeners.quic_addr().map(tracing::field::display),
        tls = tls.map(tracing::field::display),
        store = %crate::server::describe_store(&master.settings),
        ctl = master.ctl_path.as_ref().map(|p| tracing::field::display(p.display())),
        worker = %all,
        "parleyd listening"
    );

    loop {
        let heard: Vec<(usize, u32, watch::Receiver<Instant>)> = master
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.current
                    .as_ref()
                    .filter(|w| !w.silenced)
                    .map(|w| (i, w.pid, w.heard.clone()))
            })
            .collect();
        let restart_at = master
            .slots
            .iter()
            .filter(|s| s.current.is_none())
            .filter_map(|s| s.restart_at)
            .min();
        tokio::select! {
            (index, status) = wait_any(&mut master.slots) => {
                let slot = &mut master.slots[index];
                let (pid, lived) = slot.current.as_ref().map(|w| (w.pid, w.started.elapsed())).unwrap_or((0, Duration::ZERO));
                slot.current = None;
                let delay = if lived >= SERVED_WELL_AFTER {
                    slot.backoff = RESTART_BACKOFF_MIN;
                    tracing::error!(worker = pid, status = %describe(&status), served = ?lived, "worker died; restarting it now");
                    Duration::ZERO
                } else {
                    let delay = slot.backoff;
                    slot.backoff = (slot.backoff * 2).min(RESTART_BACKOFF_MAX);
                    tracing::error!(worker = pid, status = %describe(&status), served = ?lived, restart_in = ?delay, "worker died soon after it started; restarting it after a pause");
                    delay
                };
                slot.restart_at = Some(tokio::time::Instant::now() + delay);
            }
            () = sleep_until(restart_at) => {
                let now = tokio::time::Instant::now();
                for index in 0..master.slots.len() {
                    let slot = &master.slots[index];
                    // A reload meanwhile may have started a worker already.
                    if slot.current.is_some() || slot.restart_at.is_none_or(|at| at > now) {
                        continue;
                    }
                    master.slots[index].restart_at = None;
                    master.restarts += 1;
                    if master.settings.store == StoreKind::Memory {
                        tracing::warn!("the memory store died with the worker: the new worker starts empty");
                    }
                    let started = master.start_worker().await;
                    let slot = &mut master.slots[index];
                    match started {
                        Ok(w) => {
                            tracing::info!(worker = w.pid, restarts = master.restarts, "worker restarted");
                            slot.start_failures = 0;
                            slot.current = Some(w);
                        }
                        Err(e) => {
                            slot.start_failures += 1;
                            if slot.start_failures >= MAX_START_FAILURES {
                                let failures = slot.start_failures;
                                tracing::error!(error = %format!("{e:#}"), attempts = failures, "worker restart failed; giving up");
                                master.stop().await;
                                return Err(e.context(format!(
                                    "no worker could be started ({failures} attempts in a row failed)"
                                )));
                            }
                            tracing::error!(error = %format!("{e:#}"), attempt = slot.start_failures, of = MAX_START_FAILURES, retry_in = ?slot.backoff, "worker restart failed");
                            slot.restart_at = Some(tokio::time::Instant::now() + slot.backoff);
                            slot.backoff = (slot.backoff * 2).min(RESTART_BACKOFF_MAX);
                        }
                    }
                }
            }
            (index, pid, silent) = silence(heard, master.settings.worker_heartbeat_timeout) => {
                tracing::error!(worker = pid, silent = ?silent, "worker sent no heartbeat in time (stopped or stuck): killing it to start another");
                if let Some(w) = master.slots[index].current.as_mut() {
                    w.silenced = true;
                    w.signal(Signal::SIGKILL);
                }
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = master.reload().await;
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
            Some((request, reply)) = ctl_rx.recv() => {
                match request {
                    Request::Reload => {
                        let _ = reply.send(master.reload().await);
                    }
                    Request::Stop => {
                        tracing::info!("stop requested on the control socket");
                        let _ = reply.send(Reply::ok("stopping"));
                        break;
                    }
                    Request::Status => master.status(reply),
                    other => master.forward(other, reply),
                }
            }
        }
    }
    master.stop().await;
    Ok(())
}

/// Waits for any worker to exit: its slot and its status; never resolves
/// without a worker.
async fn wait_any(slots: &mut [Slot]) -> (usize, std::io::Result<std::process::ExitStatus>) {
    let waits: Vec<_> = slots
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| {
            s.current
                .as_mut()
                .map(|w| Box::pin(async move { (i, w.child.wait().await) }))
        })
        .collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    futures::future::select_all(waits).await.0
}

/// Resolves when one of the watched workers has sent nothing for
/// `timeout`, with its slot, its pid and how long it has been silent; never
/// without a worker or a timeout.
async fn silence(
    heard: Vec<(usize, u32, watch::Receiver<Instant>)>,
    timeout: Option<Duration>,
) -> (usize, u32, Duration) {
    let Some(timeout) = timeout.filter(|_| !heard.is_empty()) else {
        return std::future::pending().await;
    };
    loop {
        let mut next = None;
        for (index, pid, heard) in &heard {
            let last = *heard.borrow();
            if last.elapsed() >= timeout {
                return (*index, *pid, last.elapsed());
            }
            next = Some(next.map_or(last + timeout, |n: Instant| n.min(last + timeout)));
        }
        if let Some(next) = next {
            tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn describe(status: &std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// What a starting worker said first on its control channel.
enum FirstWord {
    Ready,
    Failed(String),
    Closed,
    Other(String),
    TimedOut,
}

impl Master {
    /// Which listeners speak TLS ("native", "http", "native,http"); None
    /// when neither does.
    fn tls_listeners(&self) -> Option<String> {
        let mut tls = Vec::new();
        if self.settings.native_tls {
            tls.push("native");
        }
        if self.settings.http_tls && matches!(self.listeners.http, Some(HttpSocket::Tcp(_))) {
            tls.push("http");
        }
        (!tls.is_empty()).then(|| tls.join(","))
    }

    /// Starts a worker on the current listeners and waits until it is ready.
    async fn start_worker(&mut self) -> anyhow::Result<Worker> {
        self.generation += 1;
        let generation = self.generation;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().context("creating a control channel")?;
        let mut mappings = vec![
            FdMapping {
                parent_fd: OwnedFd::from(self.listeners.native.try_clone()?),
                child_fd: worker::NATIVE_FD,
            },
            FdMapping {
                parent_fd: OwnedFd::from(theirs),
                child_fd: worker::CONTROL_FD,
            },
        ];
        let mut command = Command::new(&self.exe);
        command
            .args(&self.launch.args)
            .env(worker::ENV_NATIVE_FD, worker::NATIVE_FD.to_string())
            .env(worker::ENV_CONTROL_FD, worker::CONTROL_FD.to_string())
            .env(worker::ENV_RUN, &self.run_id)
            .env(worker::ENV_WORKER_RESTARTS, self.restarts.to_string())
            .env(worker::ENV_GENERATION, generation.to_string())
            .env(
                worker::ENV_HEARTBEAT_MS,
                self.settings
                    .worker_heartbeat_timeout
                    .map_or(0, |t| (t / 2).as_millis())
                    .to_string(),
            )
            .env_remove(worker::ENV_HTTP_FD)
            .env_remove(worker::ENV_QUIC_FD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(false);
        if let Some(http) = &self.listeners.http {
            mappings.push(FdMapping {
                parent_fd: http.share()?,
                child_fd: worker::HTTP_FD,
            });
            command.env(worker::ENV_HTTP_FD, worker::HTTP_FD.to_string());
        }
        if let Some(quic) = &self.listeners.quic {
            mappings.push(FdMapping {
                parent_fd: OwnedFd::from(quic.try_clone()?),
                child_fd: worker::QUIC_FD,
            });
            command.env(worker::ENV_QUIC_FD, worker::QUIC_FD.to_string());
        }
        command
            .fd_mappings(mappings)
            .map_err(|e| anyhow::anyhow!("mapping descriptors: {e}"))?;
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        // Our copies of the child's descriptors close here, so that the
        // channel reports end-of-file when the worker is gone.
        drop(command);
        let pid = child.id().unwrap_or(0);
        ours.set_nonblocking(true)?;
        let channel = UnixStream::from_std(ours)?;
        let (reader, writer) = channel.into_split();
        let mut reader = FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
        let first = tokio::select! {
            first = reader.next() => match first {
                Some(Ok(line)) => match serde_json::from_str::<FromWorker>(&line) {
                    Ok(FromWorker::Ready { .. }) => FirstWord::Ready,
                    Ok(FromWorker::Failed { error, .. }) => FirstWord::Failed(error),
                    _ => FirstWord::Other(line),
                },
                Some(Err(e)) => FirstWord::Other(e.to_string()),
                None => FirstWord::Closed,
            },
            _ = tokio::time::sleep(WORKER_READY_TIMEOUT) => FirstWord::TimedOut,
        };
        let cause = match first {
            FirstWord::Ready => None,
            FirstWord::Failed(error) => Some(error),
            FirstWord::Closed => {
                Some("it exited before it was ready (what it printed, if anything, is above)".to_owned())
            }
            FirstWord::Other(line) => Some(format!("it said {line:?} instead of ready")),
            FirstWord::TimedOut => Some(format!("it was not ready within {WORKER_READY_TIMEOUT:?}")),
        };
        if let Some(cause) = cause {
            // Reaped rather than killed at once: a worker that failed is
            // exiting by itself, and printing why on the way out.
            let status = match tokio::time::timeout(FAILED_EXIT_WAIT, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            bail!(
                "worker {pid} did not start: {cause} (exit status: {})",
                describe(&status)
            );
        }
        let (calls, requests) = mpsc::channel::<Call>(CTL_MAX_CLIENTS);
        let (heard_tx, heard) = watch::channel(Instant::now());
        tokio::spawn(channel_task(reader, writer, requests, heard_tx));
        tracing::info!(worker = pid, generation, "worker ready");
        Ok(Worker {
            pid,
            generation,
            started: Instant::now(),
            child,
            calls,
            heard,
            silenced: false,
        })
    }

    /// Re-reads the configuration; if it is valid, a new worker takes over
    /// and the old one drains. Otherwise the old configuration stays.
    async fn reload(&mut self) -> Reply {
        let settings = match self.launch.setting_args.resolve() {
            Ok(s) => s,
            Err(errors) => {
                tracing::error!("reload refused, the running configuration stays: {errors}");
                return Reply::error(format!("reload refused, the running configuration stays: {errors}"));
            }
        };
        if settings.ctl_socket != self.settings.ctl_socket {
            tracing::warn!("ctl_socket changed; the control socket moves only on a restart of parleyd");
        }
        let moved = settings.listen != self.settings.listen
            || (&settings.http_listen, &settings.http_socket)
                != (&self.settings.http_listen, &self.settings.http_socket)
            || settings.quic_listen != self.settings.quic_listen;
        let mut fresh = None;
        if moved {
            match Listeners::bind_reusing(Some((&self.listeners, &self.settings)), &settings) {
                Ok(listeners) => fresh = Some(listeners),
                Err(e) => return refuse(format!("{e:#}")),
            }
        }
        crate::tls::warn_plaintext_exposure(&settings);
        let previous_settings = std::mem::replace(&mut self.settings, settings);
        let previous_listeners = fresh.map(|fresh| std::mem::replace(&mut self.listeners, fresh));
        if self.settings.store == StoreKind::Memory || previous_settings.store == StoreKind::Memory {
            tracing::warn!("the memory store does not survive a reload: the new worker starts empty");
        }
        // One worker at a time: the others keep accepting on the shared
        // listeners meanwhile, so no connection is refused.
        let mut reloaded: Option<Reloaded> = None;
        let count = self.slots.len();
        for index in 0..count {
            let new = match self.start_worker().await {
                Ok(w) => w,
                Err(e) if index == 0 => {
                    self.settings = previous_settings;
                    if let Some(previous) = previous_listeners {
                        let refused = std::mem::replace(&mut self.listeners, previous);
                        if let Some(http) = &refused.http {
                            http.remove_file_unless(self.listeners.http.as_ref().and_then(HttpSocket::path));
                        }
                    }
                    return refuse(format!("{e:#}; the old workers keep serving"));
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "reload stopped part way");
                    return Reply::error(format!(
                        "{e:#}: {index} of {count} workers run the new configuration, the others the old one; reload again"
                    ));
                }
            };
            let (pid, generation) = (new.pid, new.generation);
            let old = self.slots[index].current.replace(new);
            let old_pid = old.as_ref().map(|w| w.pid);
            if let Some(old) = old {
                self.drain(old, previous_settings.shutdown_grace);
            }
            tracing::info!(worker = pid, old = ?old_pid, "reloaded");
            reloaded.get_or_insert(Reloaded {
                worker_pid: pid,
                generation,
                old_worker_pid: old_pid,
            });
        }
        if let Some(http) = previous_listeners.as_ref().and_then(|l| l.http.as_ref()) {
            http.remove_file_unless(self.listeners.http.as_ref().and_then(HttpSocket::path));
        }
        match reloaded {
            Some(reloaded) => Reply::ok(reloaded),
            None => Reply::error("no worker to reload"),
        }
    }

    /// The first worker serving now.
    fn any_worker(&self) -> Option<&Worker> {
        self.slots.iter().find_map(|s| s.current.as_ref())
    }

    /// Sends SIGTERM to `old` and reaps it in the background, with SIGKILL
    /// after its grace period.
    fn drain(&mut self, mut old: Worker, grace: Duration) {
        old.signal(Signal::SIGTERM);
        let pid = old.pid;
        let task = tokio::spawn(async move {
            match tokio::time::timeout(grace + EXIT_MARGIN, old.child.wait()).await {
                Ok(status) => tracing::info!(worker = pid, status = %describe(&status), "old worker drained"),
                Err(_) => {
                    tracing::warn!(
                        worker = pid,
                        "old worker still running after its grace period: killing it"
                    );
                    let _ = old.child.start_kill();
                    let _ = old.child.wait().await;
                }
            }
        });
        self.draining.retain(|(_, t)| !t.is_finished());
        self.draining.push((pid, task));
    }

    /// Answers `status`: the master's part now, the worker's when it answers.
    fn status(&mut self, reply: oneshot::Sender<Reply>) {
        self.draining.retain(|(_, t)| !t.is_finished());
        let mut status = Status {
            master_pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            native: self.listeners.native_addr(),
            http: self.listeners.http_addr(),
            quic: self.listeners.quic_addr(),
            store: self.settings.store.name().to_owned(),
            data_dir: self.settings.data_dir.display().to_string(),
            generation: self.generation,
            worker_restarts: self.restarts,
            draining: self.draining.iter().map(|(pid, _)| *pid).collect(),
            worker: None,
            workers: self
                .slots
                .iter()
                .filter_map(|s| s.current.as_ref().map(|w| w.pid))
                .collect(),
        };
        let Some(calls) = self.any_worker().map(|w| w.calls.clone()) else {
            let _ = reply.send(Reply::ok(status));
            return;
        };
        tokio::spawn(async move {
            if let Reply { ok: true, result, .. } = ask(&calls, Request::Status).await {
                status.worker = serde_json::from_value::<WorkerStatus>(result).ok();
            }
            let _ = reply.send(Reply::ok(status));
        });
    }

    /// Passes a request only a worker can answer to a worker (any one:
    /// with several, the bus carries what it does to the others).
    fn forward(&self, request: Request, reply: oneshot::Sender<Reply>) {
        let Some(calls) = self.any_worker().map(|w| w.calls.clone()) else {
            let _ = reply.send(Reply::error("no worker is serving right now; try again shortly"));
            return;
        };
        tokio::spawn(async move {
            let _ = reply.send(ask(&calls, request).await);
        });
    }

    /// Graceful stop: SIGTERM to every worker, SIGKILL to those still
    /// running after the grace period.
    async fn stop(mut self) {
        let grace = self.settings.shutdown_grace;
        let workers: Vec<Worker> = self.slots.iter_mut().filter_map(|s| s.current.take()).collect();
        for w in &workers {
            w.signal(Signal::SIGTERM);
        }
        let stops = workers.into_iter().map(|mut w| async move {
            match tokio::time::timeout(grace + EXIT_MARGIN, w.child.wait()).await {
                Ok(status) => tracing::info!(worker = w.pid, status = %describe(&status), "worker stopped"),
                Err(_) => {
                    tracing::warn!(
                        worker = w.pid,
                        "worker still running after the grace period: killing it"
                    );
                    let _ = w.child.start_kill();
                    let _ = w.child.wait().await;
                }
            }
        });
        futures::future::join_all(stops).await;
        for (_, task) in self.draining.drain(..) {
            let _ = task.await;
        }
        self.remove_ctl_socket();
        if let Some(http) = &self.listeners.http {
            http.remove_file_unless(None);
        }
        tracing::info!("parleyd stopped");
    }

    fn remove_ctl_socket(&self) {
        if let Some(path) = &self.ctl_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn refuse(text: String) -> Reply {
    tracing::error!("reload refused: {text}");
    Reply::error(format!("reload refused: {text}"))
}

/// Sends one request to a worker and waits for the reply.
async fn ask(calls: &mpsc::Sender<Call>, request: Request) -> Reply {
    let (tx, rx) = oneshot::channel();
    if calls.send((request, tx)).await.is_err() {
        return Reply::error("the worker is gone");
    }
    match tokio::time::timeout(WORKER_REPLY_TIMEOUT, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Reply::error("the worker went away before answering"),
        Err(_) => Reply::error("the worker did not answer in time"),
    }
}

/// Carries requests to one worker, routes its replies back by id, and
/// notes when it last heard from the worker.
async fn channel_task(
    mut reader: FramedRead<tokio::net::unix::OwnedReadHalf, LinesCodec>,
    mut writer: tokio::net::unix::OwnedWriteHalf,
    mut requests: mpsc::Receiver<Call>,
    heard: watch::Sender<Instant>,
) {
    let mut pending: std::collections::HashMap<u64, oneshot::Sender<Reply>> = std::collections::HashMap::new();
    let mut next_id = 0u64;
    let mut open = true;
    loop {
        tokio::select! {
            call = requests.recv(), if open => {
                // The master let go of this worker (it is draining): keep
                // the channel open until the worker itself closes it.
                let Some((request, reply)) = call else { open = false; continue };
                next_id += 1;
                let line = worker::line(&ToWorker { id: next_id, request });
                if writer.write_all(line.as_bytes()).await.is_err() {
                    let _ = reply.send(Reply::error("the worker is gone"));
                    continue;
                }
                pending.insert(next_id, reply);
            }
            read = reader.next() => {
                match read {
                    Some(Ok(line)) => {
                        heard.send_replace(Instant::now());
                        if let Ok(FromWorker::Reply { id, reply }) = serde_json::from_str::<FromWorker>(&line)
                            && let Some(tx) = pending.remove(&id)
                        {
                            let _ = tx.send(reply);
                        }
                    }
                    // The worker is gone: every waiting request fails (their
                    // senders drop), and new ones fail to send.
                    _ => return,
                }
            }
        }
    }
}

/// Binds the control socket with mode 0600. A socket file left by a
/// parleyd that died is replaced; one that answers belongs to a running
/// parleyd, and starting fails rather than taking it over.
fn bind_ctl(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private_files::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = bind_unix(path, "control socket", "ctl_socket", 0o600)?;
    listener.set_nonblocking(true)?;
    Ok(UnixListener::from_std(listener)?)
}

/// Binds a unix-domain socket at `path` with `mode`, removing a stale one
/// (a socket nobody answers on) but never a live one or another file.
fn bind_unix(path: &Path, what: &str, setting: &str, mode: u32) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{what} {}: exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{what} {}: another parleyd is running with it (stop it, or set {setting})",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale {what} {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding the {what} {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Accepts control clients: only the socket owner's uid and root are
/// served; each sends one request line and gets one reply line.
async fn serve_ctl(listener: UnixListener, path: PathBuf, master: mpsc::Sender<Call>) {
    let owner = std::fs::metadata(&path).map(|m| m.uid()).ok();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CTL_MAX_CLIENTS));
    loop {
        let Ok(permit) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let master = master.clone();
        tokio::spawn(async move {
            let _permit = permit;
            ctl_client(stream, owner, master).await;
        });
    }
}

async fn ctl_client(stream: UnixStream, owner: Option<u32>, master: mpsc::Sender<Call>) {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (reader, mut writer) = stream.into_split();
    let allowed = matches!((uid, owner), (Some(0), _)) || (uid.is_some() && uid == owner);
    let reply = if !allowed {
        tracing::warn!(uid = ?uid, "control socket: refused a client of another user");
        Reply::error("permission denied: the control socket serves its owner and root only")
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(reader).take(MAX_LINE_BYTES as u64);
        match tokio::time::timeout(CTL_READ_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    tracing::info!(request = ?request, "control request");
                    let (tx, rx) = oneshot::channel();
                    if master.send((request, tx)).await.is_err() {
                        Reply::error("parleyd is stopping")
                    } else {
                        rx.await.unwrap_or_else(|_| Reply::error("parleyd is stopping"))
                    }
                }
                Err(e) => Reply::error(format!("unreadable request: {e}")),
            },
            _ => Reply::error("no request line"),
        }
    };
    let _ = writer.write_all(worker::line(&reply).as_bytes()).await;
}

/// The binary to start workers from: this one. After an upgrade replaced
/// the file, the link names the deleted file; the path without the marker
/// is the new binary, which is what a reload should start.
fn own_executable() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding parleyd's own executable")?;
    let text = exe.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(live) => Ok(PathBuf::from(live)),
        None => Ok(exe),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_control_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ctl");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = bind_ctl(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let err = bind_ctl(&path).unwrap_err().to_string();
            assert!(err.contains("another parleyd"), "{err}");
            drop(first);
            // A stale socket file (nobody listening) is replaced.
            bind_ctl(&path).unwrap();
        });
    }

    #[test]
    fn a_reload_shares_the_sockets_it_keeps_and_binds_those_that_moved() {
        let dir = tempfile::tempdir().unwrap();
        let settings = |socket: &str| {
            crate::config::SettingArgs {
                listen: Some("127.0.0.1:0".into()),
                http_listen: Some(format!("unix:{}", dir.path().join(socket).display())),
                ..Default::default()
            }
            .resolve()
            .unwrap()
        };
        let (first, second) = (settings("a.sock"), settings("b.sock"));
        let running = Listeners::bind(&first).unwrap();
        let mode = std::fs::metadata(dir.path().join("a.sock"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o660);
        // The same settings: the very same sockets (port 0 is not bound again).
        let kept = Listeners::bind_reusing(Some((&running, &first)), &first).unwrap();
        assert_eq!(kept.native_addr(), running.native_addr());
        assert_eq!(kept.http_addr(), running.http_addr());
        // The HTTP socket moved: bound at its new path; the native one kept.
        let moved = Listeners::bind_reusing(Some((&running, &first)), &second).unwrap();
        assert_eq!(moved.native_addr(), running.native_addr());
        assert_eq!(
            moved.http_addr(),
            Some(format!("unix:{}", dir.path().join("b.sock").display()))
        );
        // The old file goes once the new socket serves; the one in use stays.
        let in_use = moved.http.as_ref().and_then(HttpSocket::path);
        running.http.as_ref().unwrap().remove_file_unless(in_use);
        moved.http.as_ref().unwrap().remove_file_unless(in_use);
        assert!(!dir.path().join("a.sock").exists() && dir.path().join("b.sock").exists());
    }

    #[test]
    fn a_file_in_the_way_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ctl");
        std::fs::write(&path, "precious").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(async { bind_ctl(&path).unwrap_err().to_string() });
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}
