//! The offline scenario: store M messages for U users who are not logged
//! in, as fast as pipelined senders manage, then log each user in,
//! subscribe, take every pushed message and acknowledge it. Reports how
//! fast messages are stored and how fast mailboxes drain.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use parley_client::Event;
use tokio::sync::watch;

use crate::cli::OfflineArgs;
use crate::common;
use crate::procmon::{self, Monitor};
use crate::progress::Progress;
use crate::relay;
use crate::report::{Metrics, RunReport};
use crate::stats;
use parley_core::sync::lock;

/// What draining one mailbox found.
#[derive(Default)]
struct Drained {
    messages: u64,
    duplicates: u64,
    /// Unread count the server reported after the final ack.
    unread_after: u64,
    error: Option<String>,
}

async fn drain_user(server: &str, name: &str, password: &str, expected: u64, deadline: Instant) -> Drained {
    let mut drained = Drained::default();
    if let Err(e) = drain_into(server, name, password, expected, deadline, &mut drained).await {
        drained.error = Some(format!("{name}: {e:#}"));
    }
    drained
}

async fn drain_into(
    server: &str,
    name: &str,
    password: &str,
    expected: u64,
    deadline: Instant,
    drained: &mut Drained,
) -> anyhow::Result<()> {
    let client = Arc::new(common::login_client(server, name, password).await?);
    client.subscribe(0).await.context("subscribing")?;
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let acker = tokio::spawn(relay::ack_loop(Arc::clone(&client), ack_rx));
    let mut seen = HashSet::new();
    let mut last_seq = 0;
    while drained.messages < expected {
        let event = tokio::time::timeout_at(deadline.into(), client.next_event())
            .await
            .context("drain timed out")?;
        match event {
            Some(Event::Messages(messages)) => {
                for message in messages {
                    last_seq = last_seq.max(message.seq);
                    if seen.insert(message.message_id) {
                        drained.messages += 1;
                    } else {
                        drained.duplicates += 1;
                    }
                }
                let _ = ack_tx.send(last_seq);
            }
            Some(Event::Presence { .. } | Event::PresenceRequest { .. } | Event::PresenceApproved { .. }) => {}
            Some(Event::Goodbye { message, .. }) => anyhow::bail!("server said goodbye: {message}"),
            Some(Event::Disconnected) | None => anyhow::bail!("disconnected"),
        }
    }
    drop(ack_tx);
    let _ = acker.await;
    // The final ack is awaited so the unread count reflects everything.
    let acked = client.ack(last_seq, Vec::new()).await.context("final ack")?;
    drained.unread_after = acked.unread;
    Ok(())
}

/// One offline run.
pub async fn run(server: &str, server_pid: Option<u32>, args: &OfflineArgs) -> anyhow::Result<RunReport> {
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(args.senders > 0, "--senders must be at least 1");
    anyhow::ensure!(args.window > 0, "--window must be at least 1");
    let drain_timeout = common::secs(args.drain_timeout, "--drain-timeout")?;
    let prefix = common::run_prefix();
    let password = common::password(&prefix);
    let users: Vec<String> = (0..args.users).map(|i| format!("{prefix}-u{i}")).collect();
    let sender_name = format!("{prefix}-s");
    let mut all = users.clone();
    all.push(sender_name.clone());
    common::register_all(server, &all, &password).await?;
    let mut senders = Vec::with_capacity(args.senders);
    for _ in 0..args.senders {
        senders.push(common::login_client(server, &sender_name, &password).await?);
    }
    let monitor = server_pid.map(Monitor::start).transpose()?;

    // Store phase: message k goes to user k mod U through sender k mod S.
    let stored_per_user: Arc<Vec<AtomicU64>> = Arc::new((0..args.users).map(|_| AtomicU64::new(0)).collect());
    let store_errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let cpu_before = procmon::own_cpu_secs();
    let store_started = Instant::now();
    let stored_so_far = Arc::clone(&stored_per_user);
    let store_progress = Progress::start("storing", Duration::from_secs(30), move || {
        let stored: u64 = stored_so_far.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        format!("stored {stored}")
    });
    let tasks: Vec<tokio::task::JoinHandle<()>> = senders
        .into_iter()
        .enumerate()
        .map(|(s, client)| {
            let users = users.clone();
            let stored_per_user = Arc::clone(&stored_per_user);
            let store_errors = Arc::clone(&store_errors);
            let first_error = Arc::clone(&first_error);
            let (messages, senders, window, size) = (args.messages, args.senders, args.window, args.size);
            tokio::spawn(async move {
                let client = &client;
                let users = &users;
                let results: Vec<(usize, parley_client::Result<parley_client::SendReceipt>)> =
                    futures::stream::iter((s..messages).step_by(senders))
                        .map(|k| async move {
                            let to = k % users.len();
                            let body = common::payload(k as u64, common::now_ns(), size);
                            (to, client.send_with_id(&users[to], &k.to_string(), &body).await)
                        })
                        .buffer_unordered(window)
                        .collect()
                        .await;
                for (to, result) in results {
                    match result {
                        Ok(_) => {
                            stored_per_user[to].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            store_errors.fetch_add(1, Ordering::Relaxed);
                            let mut first = lock(&first_error);
                            if first.is_none() {
                                *first = Some(format!("send: {e}"));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.context("sender task")?;
    }
    let store_elapsed = store_started.elapsed();
    drop(store_progress);
    let expected: Vec<u64> = stored_per_user.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let stored: u64 = expected.iter().sum();

    // Drain phase: log in, subscribe, take and ack everything.
    let drained_so_far = Arc::new(AtomicU64::new(0));
    let drain_progress = {
        let drained_so_far = Arc::clone(&drained_so_far);
        Progress::start("draining", drain_timeout, move || {
            format!("users drained {}", drained_so_far.load(Ordering::Relaxed))
        })
    };
    let drain_started = Instant::now();
    let deadline = drain_started + drain_timeout;
    let results: Vec<Drained> = futures::stream::iter(users.iter().zip(&expected))
        .map(|(name, &expected)| {
            let password = &password;
            let drained_so_far = &drained_so_far;
            async move {
                let drained = drain_user(server, name, password, expected, deadline).await;
                drained_so_far.fetch_add(1, Ordering::Relaxed);
                drained
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let drain_elapsed = drain_started.elapsed();
    drop(drain_progress);
    let usage = monitor.zip(server_pid).map(|(m, pid)| m.finish(pid));
    let drained: u64 = results.iter().map(|d| d.messages).sum();
    let duplicates: u64 = results.iter().map(|d| d.duplicates).sum();
    let unread_after: u64 = results.iter().map(|d| d.unread_after).sum();
    let drain_failures = results.iter().filter(|d| d.error.is_some()).count();

    let mut m = Metrics::default();
    m.push("users", "offline users", "", args.users as f64);
    m.push("messages", "messages requested", "", args.messages as f64);
    m.push("senders", "sender connections", "", args.senders as f64);
    m.push("stored", "stored", "", stored as f64);
    m.push(
        "store_errors",
        "store errors",
        "",
        store_errors.load(Ordering::Relaxed) as f64,
    );
    m.push("store_secs", "store time", "s", store_elapsed.as_secs_f64());
    m.push(
        "store_per_sec",
        "store rate",
        "msg/s",
        stats::rate(stored, store_elapsed),
    );
    m.push("drained", "drained", "", drained as f64);
    m.push("drain_secs", "drain time", "s", drain_elapsed.as_secs_f64());
    m.push(
        "drain_per_sec",
        "drain rate",
        "msg/s",
        stats::rate(drained, drain_elapsed),
    );
    m.push("duplicates", "duplicates", "", duplicates as f64);
    m.push("unread_after", "unread after drain", "", unread_after as f64);
    m.push("drain_failures", "users not drained", "", drain_failures as f64);
    if let Some(usage) = &usage {
        usage.add_to(&mut m, "server");
    }
    m.push(
        "bench_cpu_secs",
        "bench CPU time",
        "s",
        procmon::own_cpu_secs() - cpu_before,
    );
    let mut notes = vec![format!(
        "drain time includes each user's SCRAM login and subscribe; {} users drain at once",
        args.concurrency
    )];
    if let Some(error) = lock(&first_error).clone() {
        notes.push(format!("first store error: {error}"));
    }
    if let Some(error) = results.iter().find_map(|d| d.error.clone()) {
        notes.push(format!("first drain error: {error}"));
    }
    Ok(RunReport {
        metrics: m,
        notes,
        latency_curve: Vec::new(),
        per_second: Vec::new(),
        extra: serde_json::Map::new(),
    })
}
