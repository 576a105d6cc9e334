//! The overload scenario: learn the server's capacity (or take it from
//! `--capacity`), then offer a multiple of it open loop — each send is due
//! at a fixed time whatever happened to earlier ones — and see what the
//! server admits, what it refuses with BUSY, how long admitted work takes,
//! and whether its memory stays flat.
//!
//! The senders speak the protocol on their own sockets ([`lean_sender`]),
//! in the probe and in the offer alike: a request is one encoded frame in a
//! write that carries every send due at that tick, and a reply is matched
//! to its send by request id alone (request id = sequence + 1). Through
//! the client library — two tasks, a channel, a map entry and a oneshot per
//! request — the generator could not offer twice the capacity of parleyd on
//! the two cores they share: it shed a third of the sends itself and its
//! own queues held admitted work and BUSY replies for seconds. The
//! receivers, which only see admitted messages, still use the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use parley_client::{Client, ErrorCode};
use parley_proto::v1::{self, client_frame, server_frame};
use parley_proto::{ClientFrame, ServerFrame, decode_frame, encode_frame};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::cli::OverloadArgs;
use crate::common::{self, PerSecond};
use crate::procmon::{self, Monitor};
use crate::progress::Progress;
use crate::relay::{self, Counters, Schedule};
use crate::report::{Metrics, RunReport};
use crate::stats::{self, Latency};
use crate::wire;

/// Sends in flight per connection during the capacity probe: parleyd's
/// default pipeline window; more would only wait in the socket.
const PROBE_WINDOW: usize = 256;
/// Longest wait for replies still outstanding when the offering stops.
const OUTSTANDING_GRACE: Duration = Duration::from_secs(10);
/// Longest wait for admitted messages to reach their receivers.
const DELIVERY_GRACE: Duration = Duration::from_secs(5);
/// Read reservation of a lean sender's socket.
const READ_CHUNK: usize = 64 * 1024;

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
    /// Paced: sends past this many outstanding are shed. Unpaced (the
    /// probe): the window of a closed loop.
    max_outstanding: usize,
}

/// A sender logged in on its own socket.
struct LeanConnection {
    stream: TcpStream,
    /// Bytes read past the login.
    input: BytesMut,
    /// The server's frame limit.
    max_frame: usize,
}

/// Sends to `to` as `plan` says and reads the replies, on one socket in
/// one task. Paced, what fell due goes out when the pacing timer fires
/// (like relay's paced senders), one write for all of it.
/// Unpaced, it keeps `max_outstanding` sends in flight and, like the client
/// library, waits the retry-after of a BUSY answer before sending more.
async fn lean_sender(
    connection: LeanConnection,
    to: String,
    plan: SenderPlan,
    tallies: Arc<Tallies>,
    admitted_per_second: Arc<PerSecond>,
) -> anyhow::Result<SenderLatency> {
    let LeanConnection {
        stream,
        mut input,
        max_frame,
    } = connection;
    let (mut reader, mut writer) = stream.into_split();
    let schedule = plan.schedule;
    let paced = schedule.rate.is_some();
    // Shared by the writing and the reading halves of this one task
    // (atomics only because the task must be Send).
    let issued = AtomicU64::new(0);
    let answered = AtomicU64::new(0);
    let writing_done = AtomicBool::new(false);
    // Closed loop after BUSY: no sends before this, in ns after `start`.
    let paused_until_ns = AtomicU64::new(0);
    let start = Instant::now();
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let bump = |counter: &AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
    // A reply came (the closed loop may send again) / the writer finished.
    let replied = Notify::new();
    let finished = Notify::new();
    let mut latency = SenderLatency {
        admitted: Latency::new()?,
        busy: Latency::new()?,
    };

    let write = async {
        let mut out = BytesMut::new();
        let mut seq = 0u64;
        loop {
            let now = Instant::now();
            if now >= plan.deadline {
                break;
            }
            let until = start + Duration::from_nanos(get(&paused_until_ns));
            if until > now {
                tokio::time::sleep_until(until.min(plan.deadline).into()).await;
                continue;
            }
            let due = schedule.due(now);
            while seq < due {
                if get(&issued) - get(&answered) >= plan.max_outstanding as u64 {
                    if !paced {
                        break;
                    }
                    tallies.shed.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                    continue;
                }
                let frame = ClientFrame {
                    request_id: seq + 1,
                    body: Some(client_frame::Body::Send(v1::SendMessage {
                        to: to.clone(),
                        client_msg_id: seq.to_string(),
                        body: common::payload(seq, schedule.stamp(seq), plan.size),
                    })),
                };
                encode_frame(&frame, &mut out, max_frame)?;
                bump(&issued);
                tallies.issued.fetch_add(1, Ordering::Relaxed);
                seq += 1;
            }
            if !out.is_empty() {
                writer.write_all(&out).await.context("sending")?;
                out.clear();
            }
            if paced {
                tokio::time::sleep_until(schedule.at(seq).min(plan.deadline).into()).await;
            } else {
                tokio::select! {
                    () = replied.notified() => {}
                    () = tokio::time::sleep_until(plan.deadline.into()) => {}
                }
            }
        }
        writing_done.store(true, Ordering::Relaxed);
        finished.notify_one();
        anyhow::Ok(())
    };

    let read = async {
        let give_up = plan.deadline + OUTSTANDING_GRACE;
        loop {
            while let Some(frame) = decode_frame::<ServerFrame>(&mut input, max_frame)? {
                if frame.request_id == 0 {
                    if let Some(server_frame::Body::Goodbye(g)) = frame.body {
                        anyhow::bail!("server said goodbye: {}", g.message);
                    }
                    continue;
                }
                let now = Instant::now();
                // Measured from when the send was due, so time spent queued
                // in the generator counts, as open-loop load needs.
                let waited = now.saturating_duration_since(schedule.at(frame.request_id - 1));
                match frame.body {
                    Some(server_frame::Body::Sent(_)) => {
                        tallies.admitted.fetch_add(1, Ordering::Relaxed);
                        admitted_per_second.add(now, 1);
                        if paced {
                            latency.admitted.record(waited);
                        }
                    }
                    Some(server_frame::Body::Error(e)) if e.code == ErrorCode::Busy as i32 => {
                        tallies.busy.fetch_add(1, Ordering::Relaxed);
                        if paced {
                            latency.busy.record(waited);
                        } else {
                            let wait = Duration::from_millis(u64::from(e.retry_after_ms.max(1)));
                            let until = (now + wait).saturating_duration_since(start).as_nanos();
                            paused_until_ns.store(u64::try_from(until).unwrap_or(u64::MAX), Ordering::Relaxed);
                        }
                    }
                    _ => {
                        tallies.other_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                bump(&answered);
                replied.notify_one();
            }
            if writing_done.load(Ordering::Relaxed) && get(&answered) >= get(&issued) {
                break;
            }
            input.reserve(READ_CHUNK);
            tokio::select! {
                read = reader.read_buf(&mut input) => {
                    if read.context("reading replies")? == 0 {
                        anyhow::bail!("server closed the connection");
                    }
                }
                () = finished.notified() => {}
                () = tokio::time::sleep_until(give_up.into()) => {
                    tallies
                        .unanswered
                        .fetch_add(get(&issued) - get(&answered), Ordering::Relaxed);
                    break;
                }
            }
        }
        anyhow::Ok(())
    };
    let (written, read) = tokio::join!(write, read);
    written?;
    read?;
    Ok(latency)
}

/// Registers 2×`pairs` fresh accounts; logs the senders in on their own
/// sockets and the receivers through the client library, subscribed.
async fn setup_pairs(server: &str, pairs: usize) -> anyhow::Result<(Vec<(LeanConnection, String)>, Vec<Arc<Client>>)> {
    use futures::StreamExt;
    let common::PairAccounts {
        password,
        senders,
        receivers,
    } = common::register_pairs(server, pairs).await?;
    let address: SocketAddr = tokio::net::lookup_host(server)
        .await
        .with_context(|| format!("resolving {server}"))?
        .next()
        .with_context(|| format!("{server} has no address"))?;
    let lean: Vec<anyhow::Result<LeanConnection>> = futures::stream::iter(&senders)
        .map(|name| {
            let password = &password;
            async move {
                let stream = wire::connect_from(address, None).await?;
                let mut handshake = wire::Handshake::start(stream).await?;
                handshake.login(name, password).await?;
                let (stream, input, max_frame) = handshake.into_parts();
                Ok(LeanConnection {
                    stream,
                    input,
                    max_frame,
                })
            }
        })
        .buffered(common::LOGIN_CONCURRENCY)
        .collect()
        .await;
    let lean = lean.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let clients: Vec<Arc<Client>> = common::login_all(server, &receivers, &password)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    relay::subscribe_all(&clients).await?;
    Ok((lean.into_iter().zip(receivers).collect(), clients))
}

/// What one phase (the probe or the offer) asks for.
struct PhasePlan {
    /// Total sends per second over all pairs; None: a closed loop.
    rate: Option<f64>,
    duration: Duration,
    max_outstanding: usize,
}

/// What one phase measured.
struct PhaseOutcome {
    tallies: Arc<Tallies>,
    counters: Arc<Counters>,
    admitted_latency: Latency,
    busy_latency: Latency,
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
    let (senders, receivers) = setup_pairs(server, args.pairs).await?;
    let monitor = server_pid.map(Monitor::start).transpose()?;
    let cpu_before = procmon::own_cpu_secs();
    let start = Instant::now();
    let span = plan.duration + OUTSTANDING_GRACE + DELIVERY_GRACE;
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
            tokio::spawn(lean_sender(
                connection,
                to,
                SenderPlan {
                    schedule,
                    size: args.size,
                    deadline,
                    max_outstanding: plan.max_outstanding.max(1),
                },
                Arc::clone(&tallies),
                Arc::clone(&admitted_per_second),
            ))
        })
        .collect();
    let mut admitted_latency = Latency::new()?;
    let mut busy_latency = Latency::new()?;
    for sender in sender_tasks {
        let latency = sender.await.context("sender task")??;
        admitted_latency.merge(&latency.admitted)?;
        busy_latency.merge(&latency.busy)?;
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
                    max_outstanding: PROBE_WINDOW,
                },
                None,
                "probe",
            )
            .await
            .context("measuring capacity")?;
            notes.push(format!(
                "capacity measured by a {probe_secs:?} closed loop of the same senders ({} pairs, window {PROBE_WINDOW}, waiting out BUSY's retry-after): admitted msg/s",
                args.pairs
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
