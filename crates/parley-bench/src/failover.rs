//! Failover: how long clients wait when parleyd's worker dies. Kills the
//! serving worker with SIGKILL again and again and times each kill to the
//! first send the replacement accepts (connect, SCRAM login and one stored
//! send, retried until one succeeds), as a client that reconnects at once
//! sees it.
//!
//! Between kills the new worker serves for `--settle` seconds, longer than
//! the master's crash-loop window (a worker that dies within a second of
//! starting waits for a doubling pause), so every kill measures the
//! restart of a worker that served.

use std::time::{Duration, Instant};

use anyhow::Context;
use parley_client::Client;

use crate::cli::FailoverArgs;
use crate::common;
use crate::report::{Metrics, RunReport};
use crate::stats::Latency;

/// Longest one connect, login or send may take before it is tried again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between failed attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(2);
/// Longest a replacement may take before the run fails.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

pub async fn run(server: &str, args: &FailoverArgs) -> anyhow::Result<RunReport> {
    anyhow::ensure!(args.kills >= 1, "--kills must be at least 1");
    let settle = common::secs(args.settle, "--settle")?;
    let prefix = common::run_prefix();
    let password = common::password(&prefix);
    let (sender, recipient) = (format!("{prefix}-s"), format!("{prefix}-r"));
    common::register_all(server, &[sender.clone(), recipient.clone()], &password).await?;
    send_once(server, &sender, &password, &recipient, 0)
        .await
        .context("the first send, before any kill")?;

    let mut recovery = Latency::new()?;
    let mut worst = Duration::ZERO;
    for kill in 1..=args.kills {
        tokio::time::sleep(settle).await;
        let worker = serving_worker(args.master_pid)?;
        let killed_at = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-KILL", &worker.to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -KILL {worker} failed");
        loop {
            if send_once(server, &sender, &password, &recipient, kill).await.is_ok() {
                break;
            }
            anyhow::ensure!(
                killed_at.elapsed() < RECOVERY_LIMIT,
                "no send accepted within {RECOVERY_LIMIT:?} of killing worker {worker}"
            );
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        let took = killed_at.elapsed();
        worst = worst.max(took);
        recovery.record(took);
        let replacement = serving_worker(args.master_pid)?;
        anyhow::ensure!(replacement != worker, "worker {worker} is still serving after SIGKILL");
        eprintln!(
            "kill {kill}/{}: worker {worker} -> {replacement}, first send after {:.1} ms",
            args.kills,
            took.as_secs_f64() * 1e3
        );
    }
    let mut metrics = Metrics::default();
    metrics.push("kills", "kills (SIGKILL to the worker)", "", recovery.count() as f64);
    metrics.push(
        "recovery_p50_ms",
        "kill → first accepted send, p50",
        "ms",
        recovery.quantile_ms(0.5),
    );
    metrics.push(
        "recovery_p99_ms",
        "kill → first accepted send, p99",
        "ms",
        recovery.quantile_ms(0.99),
    );
    metrics.push(
        "recovery_max_ms",
        "kill → first accepted send, max",
        "ms",
        worst.as_secs_f64() * 1e3,
    );
    Ok(RunReport {
        metrics,
        notes: vec![format!(
            "each kill after the worker served {:.1} s; each try: connect, SCRAM login, one send",
            settle.as_secs_f64()
        )],
        ..RunReport::default()
    })
}

/// One fresh connection: log in and store one message.
async fn send_once(server: &str, name: &str, password: &str, to: &str, n: usize) -> anyhow::Result<()> {
    let client = tokio::time::timeout(ATTEMPT_TIMEOUT, Client::connect(server)).await??;
    tokio::time::timeout(ATTEMPT_TIMEOUT, client.login(name, password)).await??;
    tokio::time::timeout(ATTEMPT_TIMEOUT, client.send(to, &format!("failover {n}"))).await??;
    Ok(())
}

/// The master's one child process (its worker), from /proc.
fn serving_worker(master: u32) -> anyhow::Result<u32> {
    let tasks = format!("/proc/{master}/task");
    let mut children = Vec::new();
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks} (is --master-pid right?)"))? {
        let path = task?.path().join("children");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        children.extend(text.split_whitespace().filter_map(|pid| pid.parse::<u32>().ok()));
    }
    match children.as_slice() {
        [one] => Ok(*one),
        [] => anyhow::bail!("parleyd {master} has no worker right now"),
        more => anyhow::bail!(
            "parleyd {master} has {} workers (a reload draining?): {more:?}",
            more.len()
        ),
    }
}
