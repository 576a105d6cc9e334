//! The overload scenario: learn the server's capacity (or take it from
//! `--capacity`), then offer a multiple of it open loop — each send is due
//! at a fixed time whatever happened to earlier ones — and see what the
//! server admits, what it refuses with BUSY, how long admitted work takes,
//! and whether its memory stays flat.
//!
//! The senders speak the protocol on their own sockets ([`lean::sender`]),
//! in the probe and in the offer alike; paced, they shed what falls due
//! while too many sends are outstanding rather than slow down. The
//! receivers, which only see admitted messages, use the client library.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::sync::watch;

use crate::cli::{ClientIds, OverloadArgs};
use crate::common::{self, PerSecond};
use crate::lean::{self, Overflow, SenderLatency, SenderPlan, Tallies};
use crate::procmon::{self, Monitor};
use crate::progress::Progress;
use crate::relay::{self, Counters, Schedule};
use crate::report::{Metrics, RunReport};
use crate::stats::{self, Latency};
use parley_core::sync::lock;

/// Longest wait for admitted messages to reach their receivers.
const DELIVERY_GRACE: Duration = Duration::from_secs(5);

/// What one phase (the probe or the offer) asks for.
struct PhasePlan {
    /// Total sends per second over all pairs; None: a closed loop.
    rate: Option<f64>,
    duration: Duration,
    max_outstanding: usize,
    /// See [`SenderPlan::write_tick`].
    write_tick: Duration,
}

/// What one phase measured.
struct PhaseOutcome {
    tallies: Arc<Tallies>,
    counters: Arc<Counters>,
    admitted_latency: Latency,
    busy_latency: Latency,
    /// How late the senders wrote what fell due (see [`SenderLatency::late`]).
    late: Latency,
    admitted_per_second: Arc<PerSecond>,
    start: Instant,
    /// Until the last reply.
    replies_elapsed: Duration,
    usage: Option<procmon::Usage>,
    bench_cpu_secs: f64,
}

impl PhaseOutcome {
    fn admitted_rate(&self) -> f64 {
        stats::rate(self.tallies.admitted.load(Ordering::Relaxed), self.replies_elapsed)
    }
}

async fn run_phase(
    server: &str,
    args: &OverloadArgs,
    plan: PhasePlan,
    server_pid: Option<u32>,
    label: &str,
) -> anyhow::Result<PhaseOutcome> {
    let relay::ParleyPairs { senders, receivers } = relay::ParleyPairs::setup(server, server, args.pairs).await?;
    relay::subscribe_all(&receivers).await?;
    let monitor = server_pid.map(Monitor::start).transpose()?;
    let cpu_before = procmon::own_cpu_secs();
    let start = Instant::now();
    let span = plan.duration + lean::OUTSTANDING_GRACE + DELIVERY_GRACE;
    let delivered_per_second = Arc::new(PerSecond::new(start, span));
    let admitted_per_second = Arc::new(PerSecond::new(start, span));
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let receiver_tasks = relay::spawn_parley_receivers(&receivers, &counters, &delivered_per_second, &stop_rx);
    let tallies = Arc::new(Tallies::default());
    let schedule = Schedule {
        start,
        rate: plan.rate.map(|rate| rate / args.pairs as f64),
    };
    let deadline = start + plan.duration;
    let progress = {
        let tallies = Arc::clone(&tallies);
        Progress::start(label, plan.duration, move || {
            format!(
                "admitted {} busy {}",
                tallies.admitted.load(Ordering::Relaxed),
                tallies.busy.load(Ordering::Relaxed)
            )
        })
    };
    let sender_tasks: Vec<tokio::task::JoinHandle<anyhow::Result<SenderLatency>>> = senders
        .into_iter()
        .map(|(connection, to)| {
            tokio::spawn(lean::sender(
                connection,
                to,
                SenderPlan {
                    schedule,
                    size: args.size,
                    deadline,
                    max_outstanding: plan.max_outstanding.max(1),
                    overflow: Overflow::Shed,
                    resend_busy: false,
                    write_tick: plan.write_tick,
                    lateness: true,
                    client_ids: ClientIds::Counter,
                },
                Arc::clone(&tallies),
                Some(Arc::clone(&admitted_per_second)),
            ))
        })
        .collect();
    let mut admitted_latency = Latency::new()?;
    let mut busy_latency = Latency::new()?;
    let mut late = Latency::new()?;
    for sender in sender_tasks {
        let latency = sender.await.context("sender task")??;
        admitted_latency.merge(&latency.admitted)?;
        busy_latency.merge(&latency.busy)?;
        late.merge(&latency.late)?;
    }
    // Replies to sends made in the window may arrive after it; admissions
    // are counted over the time until the last reply, not the window alone.
    let replies_elapsed = start.elapsed().max(plan.duration);
    drop(progress);
    let admitted = tallies.admitted.load(Ordering::Relaxed);
    let delivery_deadline = Instant::now() + DELIVERY_GRACE;
    while Instant::now() < delivery_deadline && counters.delivered.load(Ordering::Relaxed) < admitted {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let usage = monitor.zip(server_pid).map(|(m, pid)| m.finish(pid));
    let _ = stop_tx.send(true);
    relay::join_receivers(receiver_tasks).await?;
    Ok(PhaseOutcome {
        tallies,
        counters,
        admitted_latency,
        busy_latency,
        late,
        admitted_per_second,
        start,
        replies_elapsed,
        usage,
        bench_cpu_secs: procmon::own_cpu_secs() - cpu_before,
    })
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
    // The probe's BUSY rate: a closed loop whose window the server cannot
    // queue is refused too, and its capacity is then that of a bursty load.
    let mut probe_busy_per_sec = None;
    let capacity = match args.capacity {
        Some(capacity) => {
            anyhow::ensure!(capacity.is_finite() && capacity > 0.0, "--capacity must be positive");
            notes.push("capacity given with --capacity".to_owned());
            capacity
        }
        None => {
            let probe_secs = common::secs(args.probe, "--probe")?;
            let probe = run_phase(
                server,
                args,
                PhasePlan {
                    rate: None,
                    duration: probe_secs,
                    max_outstanding: args.probe_window,
                    write_tick: Duration::ZERO,
                },
                None,
                "probe",
            )
            .await
            .context("measuring capacity")?;
            notes.push(format!(
                "capacity measured by a {probe_secs:?} closed loop of the same senders ({} pairs, window {}, waiting out BUSY's retry-after): admitted msg/s",
                args.pairs, args.probe_window
            ));
            probe_busy_per_sec = Some(stats::rate(
                probe.tallies.busy.load(Ordering::Relaxed),
                probe.replies_elapsed,
            ));
            probe.admitted_rate()
        }
    };
    anyhow::ensure!(capacity > 0.0, "capacity probe admitted nothing");
    let offered = capacity * args.multiple;
    let outcome = run_phase(
        server,
        args,
        PhasePlan {
            rate: Some(offered),
            duration,
            max_outstanding: args.max_outstanding,
            write_tick: common::secs(args.write_tick_ms / 1000.0, "--write-tick-ms (in milliseconds)")?,
        },
        server_pid,
        "overload",
    )
    .await?;
    let PhaseOutcome {
        tallies,
        counters,
        admitted_latency,
        busy_latency,
        late,
        admitted_per_second,
        start,
        replies_elapsed,
        usage,
        bench_cpu_secs,
    } = outcome;
    let offer_elapsed = duration;
    let admitted = tallies.admitted.load(Ordering::Relaxed);

    let issued = tallies.issued.load(Ordering::Relaxed);
    let shed = tallies.shed.load(Ordering::Relaxed);
    let busy = tallies.busy.load(Ordering::Relaxed);
    let admitted_rate = stats::rate(admitted, replies_elapsed);
    let mut m = Metrics::default();
    m.push("pairs", "pairs", "", args.pairs as f64);
    m.push("capacity_per_sec", "capacity", "msg/s", capacity);
    if let Some(busy) = probe_busy_per_sec {
        m.push("probe_busy_per_sec", "BUSY during the probe", "1/s", busy);
    }
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
    m.push("late_p50_ms", "sender lateness p50", "ms", late.quantile_ms(0.50));
    m.push("late_p99_ms", "sender lateness p99", "ms", late.quantile_ms(0.99));
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
    m.push("bench_cpu_secs", "bench CPU time", "s", bench_cpu_secs);
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
    if let Some(error) = tallies.first_error() {
        notes.push(format!("sender: {error}"));
    }
    if let Some(error) = lock(&counters.first_error).clone() {
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
