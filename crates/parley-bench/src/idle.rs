//! The idle scenario: open, log in and hold many connections, then report
//! how much server memory each one costs and how long connect+login took.
//!
//! One process may hold at most 20,000 open files here, so above
//! [`MAX_CONNECTIONS_PER_PROCESS`] the bench re-executes itself as worker
//! processes (hidden `--worker` flag). A worker reads its job as one JSON
//! line on stdin, opens its share, prints an [`OpenReport`] line, holds until
//! it reads a line (or end of file) on stdin, then prints an [`EndReport`]
//! line and exits. Client sockets are bound round robin to 127.0.0.1 …
//! 127.0.0.K, because one source address runs out of ephemeral ports near
//! 28,000 connections.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::cli::{AuthMode, IdleArgs, MAX_CONNECTIONS_PER_PROCESS};
use crate::common;
use crate::procmon::{self, Monitor};
use crate::progress::Progress;
use crate::report::{Metrics, RunReport};
use crate::stats::{self, Latency};
use crate::wire::{self, Handshake};

/// Keep-alive ping interval while holding: a third of parleyd's default
/// 60 s keep-alive, as the protocol asks of clients.
const PING_EVERY: Duration = Duration::from_secs(20);
/// Longest wait for a worker to report or to exit.
const WORKER_TIMEOUT: Duration = Duration::from_secs(600);
/// Time given to the server after the last login before memory counts as
/// settled (buffers freed after the handshakes, allocator caches).
const SETTLE: Duration = Duration::from_millis(500);

/// One process's share of the connections.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub server: SocketAddr,
    /// Over QUIC: the server as given (`quic://HOST:PORT`). Each process
    /// holds its connections on one UDP socket.
    #[serde(default)]
    pub quic: Option<String>,
    pub prefix: String,
    pub password: String,
    /// Global index of this share's first connection (source address and
    /// account follow from it).
    pub first_index: usize,
    pub count: usize,
    pub per_account: usize,
    pub source_addrs: u8,
    pub concurrency: usize,
    pub auth: AuthMode,
    /// Hex resume tokens by connection index, for `AuthMode::Resume` (a
    /// resume replaces the token it used, so each connection has its own).
    pub tokens: Vec<String>,
}

/// What a share's opening achieved.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OpenReport {
    pub opened: usize,
    pub failed: usize,
    /// Connect+login latency of each opened connection, µs.
    pub latencies_us: Vec<u64>,
    pub first_error: Option<String>,
}

/// What a share saw at the end of the hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndReport {
    /// Connections the server had not closed.
    pub alive: usize,
    /// CPU seconds this process used.
    pub cpu_secs: f64,
}

fn source_for(index: usize, source_addrs: u8) -> Option<IpAddr> {
    // With one address the kernel's own choice (127.0.0.1 towards a loopback
    // server) is the same, and an unbound socket keeps the whole port range.
    (source_addrs > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % source_addrs as usize) as u8)))
}

fn account_name(prefix: &str, account: usize) -> String {
    format!("{prefix}-{account}")
}

/// One held connection.
pub enum Held {
    Tcp(TcpStream),
    Quic {
        connection: quinn::Connection,
        stream: tokio::io::Join<quinn::RecvStream, quinn::SendStream>,
        /// Shared by the process's connections; kept while any is held.
        _endpoint: quinn::Endpoint,
    },
}

/// A process's QUIC endpoint and the server's address, for `quic://`.
type QuicTarget = (quinn::Endpoint, parley_client::ServerAddress);

async fn open_one(job: &Job, index: usize, quic: Option<&QuicTarget>) -> anyhow::Result<(Held, Duration)> {
    let started = Instant::now();
    match quic {
        Some((endpoint, address)) => {
            let trust = parley_client::Trust::Pinned(None);
            let quic = parley_client::quic::connect_on(endpoint, job.server, address, &trust).await?;
            let mut handshake = Handshake::start(tokio::io::join(quic.reader, quic.writer)).await?;
            log_in(job, index, &mut handshake).await?;
            let held = Held::Quic {
                connection: quic.connection,
                stream: handshake.into_stream(),
                _endpoint: quic.endpoint,
            };
            Ok((held, started.elapsed()))
        }
        None => {
            let stream = wire::connect_from(job.server, source_for(index, job.source_addrs)).await?;
            let mut handshake = Handshake::start(stream).await?;
            log_in(job, index, &mut handshake).await?;
            Ok((Held::Tcp(handshake.into_stream()), started.elapsed()))
        }
    }
}

/// Logs connection `index` in as its job says (SCRAM or a resume token).
async fn log_in<S>(job: &Job, index: usize, handshake: &mut Handshake<S>) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let account = index / job.per_account;
    match job.auth {
        AuthMode::Scram => {
            handshake
                .login(&account_name(&job.prefix, account), &job.password)
                .await?;
        }
        AuthMode::Resume => {
            let token = job
                .tokens
                .get(index)
                .and_then(|t| decode_hex(t))
                .context("no resume token for the connection")?;
            handshake.resume(&token).await?;
        }
    }
    Ok(())
}

/// The endpoint this process's QUIC connections share, and the address.
fn quic_target(server: &str, remote: SocketAddr) -> anyhow::Result<QuicTarget> {
    let address = parley_client::ServerAddress::parse(server).map_err(anyhow::Error::msg)?;
    let endpoint = parley_client::quic::endpoint_for(remote).context("opening the QUIC endpoint")?;
    Ok((endpoint, address))
}

/// Opens and logs in this share's connections.
pub async fn open_share(job: &Job) -> (Vec<Held>, OpenReport) {
    let mut report = OpenReport::default();
    let quic = match job
        .quic
        .as_deref()
        .map(|server| quic_target(server, job.server))
        .transpose()
    {
        Ok(quic) => quic,
        Err(e) => {
            report.failed = job.count;
            report.first_error = Some(format!("{e:#}"));
            return (Vec::new(), report);
        }
    };
    let quic = quic.as_ref();
    let results: Vec<anyhow::Result<(Held, Duration)>> =
        futures::stream::iter(job.first_index..job.first_index + job.count)
            .map(|index| open_one(job, index, quic))
            .buffer_unordered(job.concurrency.max(1))
            .collect()
            .await;
    let mut streams = Vec::with_capacity(job.count);
    for result in results {
        match result {
            Ok((stream, latency)) => {
                streams.push(stream);
                report.opened += 1;
                report
                    .latencies_us
                    .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
            Err(e) => {
                report.failed += 1;
                if report.first_error.is_none() {
                    report.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    (streams, report)
}

/// Holds the connections, pinging each every [`PING_EVERY`], until
/// `release`; then counts those the server has not closed.
pub async fn hold(mut streams: Vec<Held>, mut release: oneshot::Receiver<()>) -> anyhow::Result<usize> {
    let ping = wire::ping_frame()?;
    let mut ticker = tokio::time::interval(PING_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                for held in &mut streams {
                    match held {
                        // A ping is a dozen bytes; a socket too full to take
                        // it has sent something recently enough anyway.
                        Held::Tcp(stream) => {
                            let _ = stream.try_write(&ping);
                        }
                        // Buffered by quinn within the stream's window.
                        Held::Quic { stream, .. } => {
                            let _ = stream.write_all(&ping).await;
                        }
                    }
                }
            }
            _ = &mut release => break,
        }
    }
    let mut buf = vec![0u8; 4096];
    Ok(streams
        .iter()
        .filter(|held| match held {
            Held::Tcp(stream) => still_open(stream, &mut buf),
            Held::Quic { connection, .. } => connection.close_reason().is_none(),
        })
        .count())
}

/// Whether the server has left this connection open: read whatever is
/// waiting (pongs) without blocking, and look for end of stream.
fn still_open(stream: &TcpStream, buf: &mut [u8]) -> bool {
    loop {
        match stream.try_read(buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// Worker mode: job from stdin, reports to stdout.
pub async fn worker_main() -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin.next_line().await?.context("no job on stdin")?;
    let job: Job = serde_json::from_str(&line).context("reading the job")?;
    let (streams, report) = open_share(&job).await;
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("{}\n", serde_json::to_string(&report)?).as_bytes())
        .await?;
    stdout.flush().await?;
    let (release_tx, release_rx) = oneshot::channel();
    let holder = tokio::spawn(hold(streams, release_rx));
    // Any line, or the parent going away, ends the hold.
    let _ = stdin.next_line().await;
    let _ = release_tx.send(());
    let alive = holder.await.context("holding task")??;
    let end = EndReport {
        alive,
        cpu_secs: procmon::own_cpu_secs(),
    };
    stdout
        .write_all(format!("{}\n", serde_json::to_string(&end)?).as_bytes())
        .await?;
    stdout.flush().await?;
    Ok(())
}

/// A share running in a child process.
struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    async fn spawn(job: &Job) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe().context("finding the bench binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("--worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        stdin
            .write_all(format!("{}\n", serde_json::to_string(job)?).as_bytes())
            .await?;
        stdin.flush().await?;
        Ok(Worker { child, stdin, stdout })
    }

    async fn read<T: for<'de> Deserialize<'de>>(&mut self) -> anyhow::Result<T> {
        let line = tokio::time::timeout(WORKER_TIMEOUT, self.stdout.next_line())
            .await
            .context("worker did not report in time")??
            .context("worker exited without reporting")?;
        serde_json::from_str(&line).with_context(|| format!("worker report {line:?}"))
    }

    async fn finish(mut self) -> anyhow::Result<EndReport> {
        self.stdin.write_all(b"release\n").await?;
        self.stdin.flush().await?;
        let end = self.read().await;
        drop(self.stdin);
        match tokio::time::timeout(WORKER_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(status.success(), "worker failed: {status}");
            }
            Err(_) => {
                // Only this worker, which this process started, is stopped.
                let _ = self.child.kill().await;
                anyhow::bail!("worker did not exit");
            }
        }
        end
    }
}

/// How the held connections are released at the end.
enum Holders {
    InProcess(oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<usize>>),
    Workers(Vec<Worker>),
}

/// One idle run.
pub async fn run(server: &str, server_pid: Option<u32>, args: &IdleArgs) -> anyhow::Result<RunReport> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.per_account > 0, "--per-account must be at least 1");
    anyhow::ensure!(
        (1..=254).contains(&args.source_addrs),
        "--source-addrs must be 1 to 254"
    );
    let hold_for = common::secs(args.hold, "--hold")?;
    let address = parley_client::ServerAddress::parse(server).map_err(anyhow::Error::msg)?;
    let server_addr = wire::resolve(&address.authority).await?;
    let quic = address.quic.then(|| server.to_owned());
    let needed = args.connections.div_ceil(MAX_CONNECTIONS_PER_PROCESS);
    let processes = args.processes.unwrap_or(1).max(needed).min(args.connections);
    let prefix = common::run_prefix();
    let password = common::password(&prefix);
    let accounts = args.connections.div_ceil(args.per_account);
    let names: Vec<String> = (0..accounts).map(|a| account_name(&prefix, a)).collect();
    common::register_all(server, &names, &password).await?;
    // Resume mode: one SCRAM login per connection makes its token (a
    // resume replaces the token it used, so connections cannot share one);
    // each login's connection stays open (a logout would revoke it).
    let mut anchors = Vec::new();
    let mut tokens = Vec::new();
    if args.auth == AuthMode::Resume {
        for index in 0..args.connections {
            let name = &names[index / args.per_account];
            let client = common::connect(server).await?;
            let info = client.login(name, &password).await?;
            tokens.push(common::hex(&info.resume_token));
            anchors.push(client);
        }
    }
    let monitor = server_pid.map(Monitor::start).transpose()?;
    let cpu_before = procmon::own_cpu_secs();
    let share = args.connections.div_ceil(processes);
    let jobs: Vec<Job> = (0..processes)
        .map(|p| {
            let first_index = p * share;
            Job {
                server: server_addr,
                quic: quic.clone(),
                prefix: prefix.clone(),
                password: password.clone(),
                first_index,
                count: share.min(args.connections.saturating_sub(first_index)),
                per_account: args.per_account,
                source_addrs: args.source_addrs,
                concurrency: args.concurrency,
                auth: args.auth,
                tokens: tokens.clone(),
            }
        })
        .filter(|job| job.count > 0)
        .collect();
    let started = Instant::now();
    let progress = Progress::start("opening", Duration::from_secs(60), String::new);
    let (holders, reports) = if jobs.len() == 1 {
        let (streams, report) = open_share(&jobs[0]).await;
        let (release_tx, release_rx) = oneshot::channel();
        let holder = tokio::spawn(hold(streams, release_rx));
        (Holders::InProcess(release_tx, holder), vec![report])
    } else {
        let mut workers = Vec::with_capacity(jobs.len());
        for job in &jobs {
            workers.push(Worker::spawn(job).await?);
        }
        let mut reports = Vec::with_capacity(workers.len());
        for worker in &mut workers {
            reports.push(worker.read::<OpenReport>().await?);
        }
        (Holders::Workers(workers), reports)
    };
    let open_elapsed = started.elapsed();
    drop(progress);
    tokio::time::sleep(SETTLE).await;
    {
        let _progress = Progress::start("holding", hold_for, String::new);
        tokio::time::sleep(hold_for).await;
    }
    let usage = monitor.zip(server_pid).map(|(m, pid)| m.finish(pid));
    let (alive, worker_cpu) = match holders {
        Holders::InProcess(release, holder) => {
            let _ = release.send(());
            (holder.await.context("holding task")??, 0.0)
        }
        Holders::Workers(workers) => {
            let mut alive = 0;
            let mut cpu = 0.0;
            for worker in workers {
                let end = worker.finish().await?;
                alive += end.alive;
                cpu += end.cpu_secs;
            }
            (alive, cpu)
        }
    };
    drop(anchors);
    let mut latency = Latency::new()?;
    let mut opened = 0;
    let mut failed = 0;
    let mut first_error = None;
    for report in &reports {
        opened += report.opened;
        failed += report.failed;
        if first_error.is_none() {
            first_error.clone_from(&report.first_error);
        }
        for &us in &report.latencies_us {
            latency.record_us(us);
        }
    }
    let mut m = Metrics::default();
    m.push("connections", "connections requested", "", args.connections as f64);
    m.push("opened", "connections opened", "", opened as f64);
    m.push("failed", "connections failed", "", failed as f64);
    m.push("alive_at_end", "still open at the end", "", alive as f64);
    m.push("processes", "bench processes", "", jobs.len() as f64);
    m.push("source_addrs", "source addresses", "", f64::from(args.source_addrs));
    m.push("accounts", "accounts", "", accounts as f64);
    m.push("open_secs", "time to open all", "s", open_elapsed.as_secs_f64());
    m.push(
        "logins_per_sec",
        "connect+login rate",
        "1/s",
        stats::rate(opened as u64, open_elapsed),
    );
    m.push("login_p50_ms", "connect+login p50", "ms", latency.quantile_ms(0.50));
    m.push("login_p99_ms", "connect+login p99", "ms", latency.quantile_ms(0.99));
    m.push("login_max_ms", "connect+login max", "ms", latency.max_ms());
    m.push("hold_secs", "held", "s", hold_for.as_secs_f64());
    let mut extra = serde_json::Map::new();
    if let Some(usage) = &usage {
        usage.add_to(&mut m, "server");
        let grown = usage.rss_after_kib as f64 - usage.rss_before_kib as f64;
        let per_connection = if opened > 0 { grown / opened as f64 } else { 0.0 };
        m.push(
            "rss_per_connection_kib",
            "server RSS per connection",
            "KiB",
            per_connection,
        );
        extra.insert("server_rss_timeline_kib".into(), json!(usage.rss_timeline));
    }
    m.push(
        "bench_cpu_secs",
        "bench CPU time",
        "s",
        procmon::own_cpu_secs() - cpu_before + worker_cpu,
    );
    let mut notes = vec![format!(
        "{} login on the bench's own sockets; {} connections per account; RSS per connection = (RSS after hold − RSS before opening) / opened",
        match args.auth {
            AuthMode::Scram => "SCRAM",
            AuthMode::Resume => "resume-token",
        },
        args.per_account
    )];
    if let Some(error) = first_error {
        notes.push(format!("first failure: {error}"));
    }
    if failed > 0 {
        notes.push(
            "parleyd refuses connections past --max-connections (default 10,000) and --max-connections-per-ip (default 256; an IPv6 address counts as its /64) and --max-unauthenticated (default 2,000)"
                .into(),
        );
    }
    Ok(RunReport {
        metrics: m,
        notes,
        latency_curve: latency.percentile_curve(),
        per_second: Vec::new(),
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_robin() {
        assert_eq!(source_for(5, 1), None);
        assert_eq!(source_for(0, 3), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        assert_eq!(source_for(4, 3), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(decode_hex(&common::hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("zz"), None);
    }
}
