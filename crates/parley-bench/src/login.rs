//! The login storm: how many password (SCRAM) logins and how many
//! resume-token logins the server completes per second, each phase for the
//! run's duration with C concurrent clients.
//!
//! SCRAM logins reuse each connection (login → logout → login …): a fresh
//! connection per login would run one source address out of ephemeral
//! ports within seconds. Resume logins cannot do that, because a logout
//! revokes the token it used, so each resume opens a fresh connection and
//! ends it without logging out. By default it aborts the connection
//! (`SO_LINGER` 0: a reset, as from a client that vanished) rather than
//! closing it: the side that closes first keeps each port in TIME_WAIT,
//! and with tens of thousands of those every connect searches the port
//! space past them (the kernel's `__inet_check_established`,
//! `__inet_hash_connect` and `tcp_twsk_unique` took 8% of the generator's
//! CPU), which made the generator, not parleyd, the limit of the phase.
//! `--resume-close fin` closes gracefully instead (on loopback the kernel
//! reuses ports in TIME_WAIT, `net.ipv4.tcp_tw_reuse = 2`, the default).
//! Each phase also reports the server's CPU time during it, so that the
//! server's cost per login is known whoever limits the rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use parley_client::Client;

use crate::cli::{LoginArgs, ResumeClose};
use crate::common;
use crate::procmon::{self, Monitor};
use crate::progress::Progress;
use crate::report::{Metrics, RunReport};
use crate::stats::{self, Latency};
use crate::wire;

/// Results of one phase.
struct Phase {
    /// Request → AuthOk latency.
    latency: Latency,
    /// Connect → AuthOk latency (resume phase only).
    with_connect: Latency,
    logins: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    bench_cpu_secs: f64,
    /// The server's CPU time during the phase, when its pid is known.
    server_cpu_secs: Option<f64>,
}

/// Per-task tallies of a phase.
struct Tally {
    latency: Latency,
    with_connect: Latency,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency: Latency::new()?,
            with_connect: Latency::new()?,
            errors: 0,
            first_error: None,
        })
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

/// When a phase began: the clock, the bench's CPU time and the server's.
struct PhaseStart {
    at: Instant,
    bench_cpu: f64,
    server_pid: Option<u32>,
    server_cpu: Option<f64>,
}

impl PhaseStart {
    fn now(server_pid: Option<u32>) -> PhaseStart {
        PhaseStart {
            bench_cpu: procmon::own_cpu_secs(),
            server_cpu: server_pid.and_then(|pid| procmon::cpu_secs(Some(pid))),
            server_pid,
            at: Instant::now(),
        }
    }
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Tally>>>,
    start: PhaseStart,
) -> anyhow::Result<Phase> {
    let mut phase = Phase {
        latency: Latency::new()?,
        with_connect: Latency::new()?,
        logins: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        bench_cpu_secs: 0.0,
        server_cpu_secs: None,
    };
    for task in tasks {
        let tally = task.await.context("login task")??;
        phase.latency.merge(&tally.latency)?;
        phase.with_connect.merge(&tally.with_connect)?;
        phase.errors += tally.errors;
        if phase.first_error.is_none() {
            phase.first_error = tally.first_error;
        }
    }
    phase.logins = phase.latency.count();
    phase.elapsed = start.at.elapsed();
    phase.bench_cpu_secs = procmon::own_cpu_secs() - start.bench_cpu;
    phase.server_cpu_secs = start
        .server_pid
        .and_then(|pid| procmon::cpu_secs(Some(pid)))
        .zip(start.server_cpu)
        .map(|(after, before)| after - before);
    Ok(phase)
}

fn progress(phase: &str, length: Duration, done: &Arc<AtomicU64>) -> Progress {
    let done = Arc::clone(done);
    Progress::start(phase, length, move || {
        format!("logins {}", done.load(Ordering::Relaxed))
    })
}

async fn scram_phase(
    clients: &[Arc<Client>],
    names: &[String],
    password: &str,
    duration: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<Phase> {
    let done = Arc::new(AtomicU64::new(0));
    let _progress = progress("scram", duration, &done);
    let start = PhaseStart::now(server_pid);
    let deadline = start.at + duration;
    let tasks = clients
        .iter()
        .zip(names)
        .map(|(client, name)| {
            let client = Arc::clone(client);
            let name = name.clone();
            let password = password.to_owned();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut tally = Tally::new()?;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    match client.login(&name, &password).await {
                        Ok(_) => {
                            tally.latency.record(begun.elapsed());
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tally.error(format!("login: {e}"));
                            continue;
                        }
                    }
                    if let Err(e) = client.logout().await {
                        tally.error(format!("logout: {e}"));
                        break;
                    }
                }
                Ok(tally)
            })
        })
        .collect();
    collect(tasks, start).await
}

/// What a resume phase is given.
struct ResumePlan<'a> {
    server: &'a str,
    tokens: &'a [Vec<u8>],
    duration: Duration,
    close: ResumeClose,
    server_pid: Option<u32>,
}

async fn resume_phase(plan: ResumePlan<'_>) -> anyhow::Result<Phase> {
    let ResumePlan {
        server,
        tokens,
        duration,
        close,
        server_pid,
    } = plan;
    let address = wire::resolve(server).await?;
    let done = Arc::new(AtomicU64::new(0));
    let _progress = progress("resume", duration, &done);
    let start = PhaseStart::now(server_pid);
    let deadline = start.at + duration;
    let tasks = tokens
        .iter()
        .map(|token| {
            let mut token = token.clone();
            let done = Arc::clone(&done);
            // On the bench's own socket (`wire.rs`), one task per client:
            // the client library spends two more tasks and a channel on
            // each connection, and here every login is a new connection.
            tokio::spawn(async move {
                let mut tally = Tally::new()?;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    let connected = async { wire::Handshake::start(wire::connect_from(address, None).await?).await };
                    let mut handshake = match connected.await {
                        Ok(handshake) => handshake,
                        Err(e) => {
                            tally.error(format!("connect: {e:#}"));
                            // A refused connection comes back at once; pause
                            // so a failing server is not spun against.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let requested = Instant::now();
                    match handshake.resume(&token).await {
                        Ok(next) => {
                            // The token used is revoked; the next resume
                            // uses the one that replaced it.
                            token = next;
                            tally.latency.record(requested.elapsed());
                            tally.with_connect.record(begun.elapsed());
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tally.error(format!("resume: {e:#}")),
                    }
                    // Dropping the socket ends the connection without a
                    // logout, so the token stays valid.
                    if close == ResumeClose::Reset
                        && let Err(e) = wire::abort_on_close(&handshake.stream)
                    {
                        tally.error(format!("SO_LINGER: {e:#}"));
                    }
                    drop(handshake);
                }
                Ok(tally)
            })
        })
        .collect();
    collect(tasks, start).await
}

/// CPU microseconds per login.
fn per_login_us(secs: f64, logins: u64) -> f64 {
    if logins == 0 {
        f64::NAN
    } else {
        secs * 1e6 / logins as f64
    }
}

/// One login-storm run.
pub async fn run(
    server: &str,
    duration: Duration,
    server_pid: Option<u32>,
    args: &LoginArgs,
) -> anyhow::Result<RunReport> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    let prefix = common::run_prefix();
    let password = common::password(&prefix);
    let names: Vec<String> = (0..args.clients).map(|i| format!("{prefix}-{i}")).collect();
    common::register_all(server, &names, &password).await?;
    let clients: Vec<anyhow::Result<Client>> = futures::stream::iter(0..args.clients)
        .map(|_| async { Client::connect(server).await.context("connecting") })
        .buffered(common::LOGIN_CONCURRENCY)
        .collect()
        .await;
    let clients: Vec<Arc<Client>> = clients
        .into_iter()
        .collect::<anyhow::Result<Vec<Client>>>()?
        .into_iter()
        .map(Arc::new)
        .collect();
    let iterations = clients.first().map(|c| c.welcome().scram_iterations).unwrap_or(0);
    let monitor = server_pid.map(Monitor::start).transpose()?;
    let scram = scram_phase(&clients, &names, &password, duration, server_pid).await?;
    // One SCRAM login per client makes its resume token; that session stays
    // logged in so the token stays valid.
    let mut tokens = Vec::with_capacity(clients.len());
    for (client, name) in clients.iter().zip(&names) {
        let info = client
            .login(name, &password)
            .await
            .with_context(|| format!("logging in as {name}"))?;
        tokens.push(info.resume_token);
    }
    let resume = resume_phase(ResumePlan {
        server,
        tokens: &tokens,
        duration,
        close: args.resume_close,
        server_pid,
    })
    .await?;
    let usage = monitor.zip(server_pid).map(|(m, pid)| m.finish(pid));
    drop(clients);

    let mut m = Metrics::default();
    m.push("clients", "clients", "", args.clients as f64);
    m.push(
        "scram_iterations",
        "SCRAM iterations (server's Welcome)",
        "",
        f64::from(iterations),
    );
    m.push("scram_logins", "SCRAM logins", "", scram.logins as f64);
    m.push(
        "scram_logins_per_sec",
        "SCRAM logins",
        "1/s",
        stats::rate(scram.logins, scram.elapsed),
    );
    m.push("scram_p50_ms", "SCRAM login p50", "ms", scram.latency.quantile_ms(0.50));
    m.push("scram_p99_ms", "SCRAM login p99", "ms", scram.latency.quantile_ms(0.99));
    m.push("scram_errors", "SCRAM errors", "", scram.errors as f64);
    m.push(
        "scram_bench_cpu_secs",
        "bench CPU during SCRAM",
        "s",
        scram.bench_cpu_secs,
    );
    m.push("resume_logins", "resume logins", "", resume.logins as f64);
    m.push(
        "resume_logins_per_sec",
        "resume logins",
        "1/s",
        stats::rate(resume.logins, resume.elapsed),
    );
    m.push("resume_p50_ms", "resume p50", "ms", resume.latency.quantile_ms(0.50));
    m.push("resume_p99_ms", "resume p99", "ms", resume.latency.quantile_ms(0.99));
    m.push(
        "resume_connect_p99_ms",
        "connect+resume p99",
        "ms",
        resume.with_connect.quantile_ms(0.99),
    );
    m.push("resume_errors", "resume errors", "", resume.errors as f64);
    m.push(
        "resume_bench_cpu_secs",
        "bench CPU during resume",
        "s",
        resume.bench_cpu_secs,
    );
    m.push(
        "resume_bench_cpu_us_per_login",
        "bench CPU per resume login",
        "µs",
        per_login_us(resume.bench_cpu_secs, resume.logins),
    );
    for (key, label, phase) in [
        ("scram_server_cpu_secs", "server CPU during SCRAM", &scram),
        ("resume_server_cpu_secs", "server CPU during resume", &resume),
    ] {
        if let Some(secs) = phase.server_cpu_secs {
            m.push(key, label, "s", secs);
        }
    }
    if let Some(secs) = resume.server_cpu_secs {
        m.push(
            "resume_server_cpu_us_per_login",
            "server CPU per resume login",
            "µs",
            per_login_us(secs, resume.logins),
        );
    }
    if let Some(usage) = &usage {
        usage.add_to(&mut m, "server");
    }
    let mut notes = vec![
        format!(
            "SCRAM: each client reuses its connection, login → logout → login; the rate includes the logouts, the latency does not; the bench computes PBKDF2 ({iterations} iterations) for every login on the same cores as the server"
        ),
        format!(
            "resume: each login on a fresh connection, ended without logout (a logout revokes the token) {}; latency is Resume → AuthOk, connect+resume adds TCP connect and Welcome",
            match args.resume_close {
                ResumeClose::Reset => "by a reset (--resume-close reset: no TIME_WAIT on the generator's ports)",
                ResumeClose::Fin => "by an orderly close (--resume-close fin)",
            }
        ),
    ];
    for (phase, error) in [("SCRAM", &scram.first_error), ("resume", &resume.first_error)] {
        if let Some(error) = error {
            notes.push(format!("first {phase} error: {error}"));
        }
    }
    Ok(RunReport {
        metrics: m,
        notes,
        latency_curve: resume.latency.percentile_curve(),
        per_second: Vec::new(),
        extra: serde_json::Map::new(),
    })
}
