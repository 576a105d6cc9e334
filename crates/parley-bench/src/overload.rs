//! The overload scenario: learn the server's capacity (or take it from
//! `--capacity`), then offer a multiple of it open loop — each send is due
//! at a fixed time whatever happened to earlier ones — and see what the
//! server admits, what it refuses with BUSY, how long admitted work takes,
//! and whether its memory stays flat.
//!
//! Sends go out as raw requests so that a BUSY reply is counted as such:
//! the client library's `send` would retry it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parley_client::{Client, ErrorCode};
use parley_proto::v1::{self, client_frame, server_frame};
use serde_json::json;
use tokio::sync::watch;

use crate::cli::OverloadArgs;
use crate::common::{self, PerSecond};
use crate::procmon::{self, Monitor};
use crate::progress::Progress;
use crate::relay::{self, Counters, Pacer, ParleyPairs, RelayParams, Schedule};
use crate::report::{Metrics, RunReport};
use crate::stats::{self, Latency};

/// Sends in flight per connection during the capacity probe: parleyd's
/// default pipeline window; more would only wait in the socket.
const PROBE_WINDOW: usize = 256;
/// Wait for stored messages to arrive after the probe.
const PROBE_DRAIN: Duration = Duration::from_secs(2);
/// Longest wait for replies still outstanding when the offering stops.
const OUTSTANDING_GRACE: Duration = Duration::from_secs(10);
/// Longest wait for admitted messages to reach their receivers.
const DELIVERY_GRACE: Duration = Duration::from_secs(5);

/// Counts of one overload phase.
#[derive(Default)]
struct Tallies {
    issued: AtomicU64,
    admitted: AtomicU64,
    busy: AtomicU64,
    other_errors: AtomicU64,
    /// Sends the generator dropped because too many were outstanding.
    shed: AtomicU64,
    /// Requests still unanswered after the grace period.
    unanswered: AtomicU64,
}

/// Latencies one sender saw.
struct SenderLatency {
    admitted: Latency,
    busy: Latency,
}

struct SenderPlan {
    schedule: Schedule,
    size: usize,
    deadline: Instant,
    max_outstanding: usize,
}

async fn overload_sender(
    client: Client,
    to: String,
    plan: SenderPlan,
    tallies: Arc<Tallies>,
    admitted_per_second: Arc<PerSecond>,
) -> anyhow::Result<SenderLatency> {
    let client = &client;
    let mut latency = SenderLatency {
        admitted: Latency::new()?,
        busy: Latency::new()?,
    };
    let mut record = |scheduled: Instant, reply: parley_client::Result<parley_proto::ServerFrame>| {
        // Measured from when the send was due, so time spent queued in the
        // generator or the client library counts, as open-loop load needs.
        let now = Instant::now();
        let waited = now.saturating_duration_since(scheduled);
        match reply.map(|frame| frame.body) {
            Ok(Some(server_frame::Body::Sent(_))) => {
                tallies.admitted.fetch_add(1, Ordering::Relaxed);
                admitted_per_second.add(now, 1);
                latency.admitted.record(waited);
            }
            Ok(Some(server_frame::Body::Error(e))) if e.code == ErrorCode::Busy as i32 => {
                tallies.busy.fetch_add(1, Ordering::Relaxed);
                latency.busy.record(waited);
            }
            _ => {
                tallies.other_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let schedule = plan.schedule;
    let mut outstanding = FuturesUnordered::new();
    let mut seq = 0u64;
    let mut pacer = Pacer::new(schedule, plan.deadline);
    loop {
        let now = Instant::now();
        if now >= plan.deadline {
            break;
        }
        let due = pacer.release(now).unwrap_or(seq);
        while seq < due {
            let scheduled = schedule.at(seq);
            if outstanding.len() >= plan.max_outstanding {
                tallies.shed.fetch_add(1, Ordering::Relaxed);
                seq += 1;
                continue;
            }
            let body = client_frame::Body::Send(v1::SendMessage {
                to: to.clone(),
                client_msg_id: seq.to_string(),
                body: common::payload(seq, common::instant_ns(scheduled), plan.size),
            });
            outstanding.push(async move { (scheduled, client.request(body).await) });
            tallies.issued.fetch_add(1, Ordering::Relaxed);
            seq += 1;
        }
        // Sheds instead of holding back, so only the timer releases.
        pacer.released(seq, seq);
        tokio::select! {
            Some((scheduled, reply)) = outstanding.next(), if !outstanding.is_empty() => {
                record(scheduled, reply);
                pacer.on_reply();
            }
            _ = tokio::time::sleep_until(pacer.wake().into()) => pacer.on_timer(),
        }
    }
    let give_up = Instant::now() + OUTSTANDING_GRACE;
    loop {
        tokio::select! {
            next = outstanding.next() => match next {
                Some((scheduled, reply)) => record(scheduled, reply),
                None => break,
            },
            _ = tokio::time::sleep_until(give_up.into()) => {
                tallies.unanswered.fetch_add(outstanding.len() as u64, Ordering::Relaxed);
                break;
            }
        }
    }
    Ok(latency)
}

/// One overload run.
pub async fn run(
    server: &str,
    duration: Duration,
    server_pid: Option<u32>,
    args: &OverloadArgs,
) -> anyhow::Result<RunReport> {
    anyhow::ensure!(args.pairs > 0, "--pairs must be at least 1");
    anyhow::ensure!(
        args.multiple.is_finite() && args.multiple > 0.0,
        "--multiple must be positive"
    );
    let mut notes = Vec::new();
    let capacity = match args.capacity {
        Some(capacity) => {
            anyhow::ensure!(capacity.is_finite() && capacity > 0.0, "--capacity must be positive");
            notes.push("capacity given with --capacity".to_owned());
            capacity
        }
        None => {
            let probe_secs = common::secs(args.probe, "--probe")?;
            let probe = relay::run_parley(
                server,
                &RelayParams {
                    pairs: args.pairs,
                    size: args.size,
                    rate: None,
                    window: PROBE_WINDOW,
                    duration: probe_secs,
                    drain: PROBE_DRAIN,
                },
                None,
            )
            .await
            .context("measuring capacity")?;
            let capacity = probe.metrics.get("stored_per_sec").unwrap_or(0.0);
            notes.push(format!(
                "capacity measured by a {probe_secs:?} relay as fast as possible ({} pairs, window {PROBE_WINDOW}): stored msg/s",
                args.pairs
            ));
            capacity
        }
    };
    anyhow::ensure!(capacity > 0.0, "capacity probe stored nothing");
    let offered = capacity * args.multiple;

    let pairs = ParleyPairs::setup(server, args.pairs).await?;
    relay::subscribe_all(&pairs.receivers).await?;
    let monitor = server_pid.map(Monitor::start).transpose()?;
    let cpu_before = procmon::own_cpu_secs();
    let start = Instant::now();
    let span = duration + OUTSTANDING_GRACE + DELIVERY_GRACE;
    let delivered_per_second = Arc::new(PerSecond::new(start, span));
    let admitted_per_second = Arc::new(PerSecond::new(start, span));
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers = relay::spawn_parley_receivers(&pairs.receivers, &counters, &delivered_per_second, &stop_rx);
    let tallies = Arc::new(Tallies::default());
    let schedule = Schedule {
        start,
        rate: Some(offered / args.pairs as f64),
    };
    let deadline = start + duration;
    let progress = {
        let tallies = Arc::clone(&tallies);
        Progress::start("overload", duration, move || {
            format!(
                "admitted {} busy {}",
                tallies.admitted.load(Ordering::Relaxed),
                tallies.busy.load(Ordering::Relaxed)
            )
        })
    };
    let senders: Vec<tokio::task::JoinHandle<anyhow::Result<SenderLatency>>> = pairs
        .senders
        .into_iter()
        .map(|(client, to)| {
            tokio::spawn(overload_sender(
                client,
                to,
                SenderPlan {
                    schedule,
                    size: args.size,
                    deadline,
                    max_outstanding: args.max_outstanding.max(1),
                },
                Arc::clone(&tallies),
                Arc::clone(&admitted_per_second),
            ))
        })
        .collect();
    let mut admitted_latency = Latency::new()?;
    let mut busy_latency = Latency::new()?;
    for sender in senders {
        let latency = sender.await.context("sender task")??;
        admitted_latency.merge(&latency.admitted)?;
        busy_latency.merge(&latency.busy)?;
    }
    let offer_elapsed = duration;
    // Replies to sends made in the window may arrive after it; admissions
    // are counted over the time until the last reply, not the window alone.
    let replies_elapsed = start.elapsed().max(offer_elapsed);
    drop(progress);
    let admitted = tallies.admitted.load(Ordering::Relaxed);
    let delivery_deadline = Instant::now() + DELIVERY_GRACE;
    while Instant::now() < delivery_deadline && counters.delivered.load(Ordering::Relaxed) < admitted {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let usage = monitor.zip(server_pid).map(|(m, pid)| m.finish(pid));
    let _ = stop_tx.send(true);
    relay::join_receivers(receivers).await?;

    let issued = tallies.issued.load(Ordering::Relaxed);
    let shed = tallies.shed.load(Ordering::Relaxed);
    let busy = tallies.busy.load(Ordering::Relaxed);
    let admitted_rate = stats::rate(admitted, replies_elapsed);
    let mut m = Metrics::default();
    m.push("pairs", "pairs", "", args.pairs as f64);
    m.push("capacity_per_sec", "capacity", "msg/s", capacity);
    m.push("multiple", "offered multiple", "×", args.multiple);
    m.push("offered_per_sec", "offered", "msg/s", offered);
    m.push(
        "issued_per_sec",
        "actually issued",
        "msg/s",
        stats::rate(issued, offer_elapsed),
    );
    m.push("issued", "requests issued", "", issued as f64);
    m.push("admitted", "admitted (Sent)", "", admitted as f64);
    m.push("admitted_per_sec", "admitted", "msg/s", admitted_rate);
    m.push(
        "admitted_of_capacity",
        "admitted / capacity",
        "",
        if capacity > 0.0 { admitted_rate / capacity } else { 0.0 },
    );
    m.push(
        "admitted_of_offered",
        "admitted / offered",
        "",
        if offered > 0.0 { admitted_rate / offered } else { 0.0 },
    );
    m.push("busy", "BUSY replies", "", busy as f64);
    m.push("busy_per_sec", "BUSY", "1/s", stats::rate(busy, replies_elapsed));
    m.push(
        "replies_secs",
        "time until the last reply",
        "s",
        replies_elapsed.as_secs_f64(),
    );
    m.push(
        "other_errors",
        "other errors",
        "",
        tallies.other_errors.load(Ordering::Relaxed) as f64,
    );
    m.push("shed_by_generator", "shed by the generator", "", shed as f64);
    m.push(
        "unanswered",
        "unanswered after grace",
        "",
        tallies.unanswered.load(Ordering::Relaxed) as f64,
    );
    m.push(
        "admitted_p50_ms",
        "admitted latency p50",
        "ms",
        admitted_latency.quantile_ms(0.50),
    );
    m.push(
        "admitted_p99_ms",
        "admitted latency p99",
        "ms",
        admitted_latency.quantile_ms(0.99),
    );
    m.push(
        "admitted_max_ms",
        "admitted latency max",
        "ms",
        admitted_latency.max_ms(),
    );
    m.push("busy_p50_ms", "BUSY latency p50", "ms", busy_latency.quantile_ms(0.50));
    m.push("busy_p99_ms", "BUSY latency p99", "ms", busy_latency.quantile_ms(0.99));
    m.push(
        "delivered",
        "delivered to receivers",
        "",
        counters.delivered.load(Ordering::Relaxed) as f64,
    );
    let mut extra = serde_json::Map::new();
    if let Some(usage) = &usage {
        usage.add_to(&mut m, "server");
        m.push(
            "rss_slope_kib_per_sec",
            "server RSS trend (2nd half)",
            "KiB/s",
            usage.rss_slope_kib_per_sec(),
        );
        extra.insert("server_rss_timeline_kib".into(), json!(usage.rss_timeline));
    }
    m.push(
        "bench_cpu_secs",
        "bench CPU time",
        "s",
        procmon::own_cpu_secs() - cpu_before,
    );
    notes.push(
        "open loop: each send is due at a fixed time; latency counts from that time, so generator and client queueing is included"
            .into(),
    );
    if busy == 0 && admitted_rate < offered * 0.95 {
        notes.push(
            "no BUSY replies: the server held the excess back through its per-connection pipeline window (TCP backpressure) instead of refusing it; more --pairs make its backlog limit engage"
                .into(),
        );
    }
    if shed > 0 {
        notes.push(format!(
            "the generator shed {shed} sends: more than {} were outstanding on a connection",
            args.max_outstanding
        ));
    }
    if let Some(error) = counters.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        notes.push(format!("receiver: {error}"));
    }
    let end = start + replies_elapsed;
    Ok(RunReport {
        metrics: m,
        notes,
        latency_curve: admitted_latency.percentile_curve(),
        per_second: admitted_per_second.rates(end),
        extra,
    })
}
