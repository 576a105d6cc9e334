//! The relay scenario: N sender connections each send to one receiver
//! connection that is subscribed and acknowledges what it is pushed. The
//! payload carries the send time, so the receiver measures end to end
//! latency. The same generator runs against NATS core pub/sub (one subject
//! per receiver) so both are measured by the same code on the same machine;
//! `jetstream.rs` runs it against NATS JetStream with what is shared here.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parley_client::{Client, Event};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cli::ClientIds;
use crate::common::{self, PerSecond};
use crate::lean::{self, LeanConnection, Overflow, SenderLatency, SenderPlan, Tallies};
use crate::procmon::{self, Monitor};
use crate::progress::Progress;
use crate::report::{Metrics, RunReport};
use crate::stats::{self, Latency};
use parley_core::sync::lock;

/// How often the drain checks whether everything has arrived.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// Messages a NATS subscription buffers in the client before it drops them.
const NATS_SUBSCRIPTION_CAPACITY: usize = 65_536;
/// Longest wait for NATS to echo the probe that proves a subscription is live.
const NATS_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a relay run does.
#[derive(Clone, Debug)]
pub struct RelayParams {
    pub pairs: usize,
    pub size: usize,
    /// Total messages per second over all pairs; None: as fast as possible.
    pub rate: Option<f64>,
    pub window: usize,
    pub duration: Duration,
    pub drain: Duration,
    /// The idempotency keys of parleyd's senders.
    pub client_ids: ClientIds,
}

impl RelayParams {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.pairs > 0, "--pairs must be at least 1");
        anyhow::ensure!(self.window > 0, "--window must be at least 1");
        if let Some(rate) = self.rate {
            anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be positive");
        }
        Ok(())
    }
}

/// Counts shared by the senders and receivers of one run.
#[derive(Default)]
pub struct Counters {
    /// Sends issued.
    pub sent: AtomicU64,
    /// Sends the server confirmed (Sent reply; for NATS: flushed).
    pub stored: AtomicU64,
    pub send_errors: AtomicU64,
    /// Sends refused with BUSY and sent again (Parley only).
    pub busy_resent: AtomicU64,
    /// Distinct messages received.
    pub delivered: AtomicU64,
    /// Messages received a second time.
    pub duplicates: AtomicU64,
    /// Payloads the receiver could not read.
    pub malformed: AtomicU64,
    /// Time of the latest delivery, ns since the common origin.
    pub last_delivery_ns: AtomicU64,
    /// The first error seen, for the notes.
    pub first_error: Mutex<Option<String>>,
}

impl Counters {
    pub fn error(&self, error: impl std::fmt::Display) {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(error.to_string());
        }
    }

    fn first_error(&self) -> Option<String> {
        lock(&self.first_error).clone()
    }

    fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// When each message of one sender is due.
#[derive(Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    /// Messages per second for this sender; None: no pacing.
    pub rate: Option<f64>,
}

impl Schedule {
    /// How many messages should have been issued by `now`.
    pub fn due(&self, now: Instant) -> u64 {
        match self.rate {
            Some(rate) => (now.saturating_duration_since(self.start).as_secs_f64() * rate) as u64 + 1,
            None => u64::MAX,
        }
    }

    /// When message `seq` is due (far in the future without pacing).
    pub fn at(&self, seq: u64) -> Instant {
        match self.rate {
            Some(rate) => self.start + Duration::from_secs_f64(seq as f64 / rate),
            None => self.start + Duration::from_secs(86_400),
        }
    }

    /// The send time to stamp: the scheduled time when paced, so that a
    /// generator or server falling behind shows up as latency instead of
    /// silently lowering the rate (coordinated omission); the actual time
    /// otherwise.
    pub fn stamp(&self, seq: u64) -> u64 {
        match self.rate {
            Some(_) => common::instant_ns(self.at(seq)),
            None => common::now_ns(),
        }
    }
}

/// Logged-in sender and receiver connections of one Parley run.
pub struct ParleyPairs {
    /// (sender connection, receiver's account name). The senders speak the
    /// protocol on their own sockets (see [`lean`]).
    pub senders: Vec<(LeanConnection, String)>,
    pub receivers: Vec<Arc<Client>>,
}

impl ParleyPairs {
    /// Registers 2×`pairs` fresh accounts and logs each in on its own
    /// connection: the senders on lean sockets, the receivers through the
    /// client library. The receivers log in at `receivers_on`, which may
    /// be another node of the same service.
    pub async fn setup(server: &str, receivers_on: &str, pairs: usize) -> anyhow::Result<ParleyPairs> {
        let accounts = common::register_pairs(server, pairs).await?;
        let senders = lean::login_all(server, &accounts.senders, &accounts.password).await?;
        let receivers = common::login_all(receivers_on, &accounts.receivers, &accounts.password).await?;
        Ok(ParleyPairs {
            senders: senders.into_iter().zip(accounts.receivers).collect(),
            receivers: receivers.into_iter().map(Arc::new).collect(),
        })
    }
}

/// Subscribes every receiver; pushes that arrive before the receiver loops
/// start simply wait in each client's event queue.
pub async fn subscribe_all(receivers: &[Arc<Client>]) -> anyhow::Result<()> {
    for client in receivers {
        client.subscribe(0).await.context("subscribing")?;
    }
    Ok(())
}

/// Starts one receiver loop per client; each ends when `stop` turns true or
/// its connection ends, returning its latency histogram.
pub fn spawn_parley_receivers(
    receivers: &[Arc<Client>],
    counters: &Arc<Counters>,
    per_second: &Arc<PerSecond>,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<anyhow::Result<Latency>>> {
    receivers
        .iter()
        .map(|client| {
            tokio::spawn(parley_receiver(
                Arc::clone(client),
                Arc::clone(counters),
                Arc::clone(per_second),
                stop.clone(),
            ))
        })
        .collect()
}

async fn parley_receiver(
    client: Arc<Client>,
    counters: Arc<Counters>,
    per_second: Arc<PerSecond>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Latency> {
    let mut latency = Latency::new()?;
    let mut seen: HashSet<u64> = HashSet::new();
    // Acks go out from their own task so the receiver never waits for a
    // reply; while [`ACKS_IN_FLIGHT`] are in flight, newer positions replace
    // older ones, so push batches are acknowledged cumulatively without
    // piling up acks.
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let acker = tokio::spawn(ack_loop(Arc::clone(&client), ack_rx));
    loop {
        tokio::select! {
            event = client.next_event() => match event {
                Some(Event::Messages(messages)) => {
                    let now = Instant::now();
                    let now_ns = common::instant_ns(now);
                    let mut fresh = 0;
                    let mut last_seq = 0;
                    for message in messages {
                        last_seq = last_seq.max(message.seq);
                        if !seen.insert(message.message_id) {
                            counters.duplicates.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        fresh += 1;
                        match common::parse_payload(message.body.as_bytes()) {
                            Some((_, sent_ns)) => latency.record_us(now_ns.saturating_sub(sent_ns) / 1000),
                            None => {
                                counters.malformed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    counters.delivered.fetch_add(fresh, Ordering::Relaxed);
                    counters.last_delivery_ns.fetch_max(now_ns, Ordering::Relaxed);
                    per_second.add(now, fresh);
                    let _ = ack_tx.send(last_seq);
                }
                Some(Event::Presence { .. } | Event::PresenceRequest { .. } | Event::PresenceApproved { .. }) => {}
                Some(Event::Goodbye { message, .. }) => {
                    counters.error(format!("receiver got Goodbye: {message}"));
                    break;
                }
                Some(Event::Disconnected) | None => break,
            },
            _ = stop.changed() => break,
        }
    }
    drop(ack_tx);
    let _ = acker.await;
    Ok(latency)
}

pub async fn ack_loop(client: Arc<Client>, mut positions: watch::Receiver<u64>) {
    let client = &client;
    let mut acked = 0;
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            changed = positions.changed(), if open && in_flight.len() < ACKS_IN_FLIGHT => {
                if changed.is_err() {
                    open = false;
                    continue;
                }
                let up_to = *positions.borrow_and_update();
                if up_to > acked {
                    in_flight.push(client.ack(up_to, Vec::new()));
                    acked = up_to;
                }
            }
            Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                if result.is_err() {
                    return;
                }
            }
        }
    }
}

/// Cumulative acks a receiver sends without waiting for their replies: a
/// client that waited for each reply would let its pushes pile up behind a
/// slow store's queue (the server stops pushing at its unacked limit).
const ACKS_IN_FLIGHT: usize = 4;

/// Waits until every confirmed message was delivered or `grace` passed.
pub async fn drain(counters: &Counters, grace: Duration) {
    let until = Instant::now() + grace;
    while Instant::now() < until && counters.get(&counters.delivered) < counters.get(&counters.stored) {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Waits for receiver tasks and merges their histograms.
pub async fn join_receivers(receivers: Vec<JoinHandle<anyhow::Result<Latency>>>) -> anyhow::Result<Latency> {
    let mut latency = Latency::new()?;
    for receiver in receivers {
        latency.merge(&receiver.await.context("receiver task")??)?;
    }
    Ok(latency)
}

/// A progress bar showing the live counters.
pub fn progress_for(phase: &str, length: Duration, counters: &Arc<Counters>) -> Progress {
    let counters = Arc::clone(counters);
    Progress::start(phase, length, move || {
        format!(
            "stored {} delivered {}",
            counters.stored.load(Ordering::Relaxed),
            counters.delivered.load(Ordering::Relaxed)
        )
    })
}

/// What one run measured, before it becomes a report.
pub struct Outcome<'a> {
    pub params: &'a RelayParams,
    pub counters: &'a Counters,
    pub latency: &'a Latency,
    pub start: Instant,
    pub send_elapsed: Duration,
    pub per_second: &'a PerSecond,
    pub usage: Option<procmon::Usage>,
    /// How the server's CPU and memory rows are named ("server", "nats").
    pub usage_prefix: &'static str,
    pub bench_cpu_secs: f64,
}

/// One relay run against parleyd: senders at `server`, receivers at
/// `receivers_on` (the same address, or another node of the service).
pub async fn run_parley(
    server: &str,
    receivers_on: &str,
    params: &RelayParams,
    server_pid: Option<u32>,
) -> anyhow::Result<RunReport> {
    params.check()?;
    let pairs = ParleyPairs::setup(server, receivers_on, params.pairs).await?;
    subscribe_all(&pairs.receivers).await?;
    let counters = Arc::new(Counters::default());
    let monitor = server_pid.map(Monitor::start).transpose()?;
    let cpu_before = procmon::own_cpu_secs();
    let start = Instant::now();
    let per_second = Arc::new(PerSecond::new(start, params.duration + params.drain));
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers = spawn_parley_receivers(&pairs.receivers, &counters, &per_second, &stop_rx);
    let deadline = start + params.duration;
    let schedule = Schedule {
        start,
        rate: params.rate.map(|r| r / params.pairs as f64),
    };
    let tallies = Arc::new(Tallies::default());
    let progress = {
        let (tallies, counters) = (Arc::clone(&tallies), Arc::clone(&counters));
        Progress::start("parley", params.duration, move || {
            format!(
                "stored {} delivered {}",
                tallies.admitted.load(Ordering::Relaxed),
                counters.delivered.load(Ordering::Relaxed)
            )
        })
    };
    let senders: Vec<JoinHandle<anyhow::Result<SenderLatency>>> = pairs
        .senders
        .into_iter()
        .map(|(connection, to)| {
            tokio::spawn(lean::sender(
                connection,
                to,
                SenderPlan {
                    schedule,
                    size: params.size,
                    deadline,
                    max_outstanding: params.window,
                    overflow: Overflow::HoldBack,
                    resend_busy: true,
                    write_tick: Duration::ZERO,
                    lateness: true,
                    client_ids: params.client_ids,
                },
                Arc::clone(&tallies),
                // Relay counts deliveries per second, not Sent replies.
                None,
            ))
        })
        .collect();
    let mut stored_latency = Latency::new()?;
    let mut late = Latency::new()?;
    for sender in senders {
        match sender.await.context("sender task")? {
            Ok(latency) => {
                stored_latency.merge(&latency.admitted)?;
                late.merge(&latency.late)?;
            }
            Err(e) => counters.error(format!("sender: {e:#}")),
        }
    }
    counters
        .sent
        .store(tallies.sent.load(Ordering::Relaxed), Ordering::Relaxed);
    counters
        .stored
        .store(tallies.admitted.load(Ordering::Relaxed), Ordering::Relaxed);
    counters
        .busy_resent
        .store(tallies.busy.load(Ordering::Relaxed), Ordering::Relaxed);
    let errors = tallies.other_errors.load(Ordering::Relaxed);
    if let Some(first) = tallies.first_error() {
        counters.error(first);
        counters.send_errors.store(errors, Ordering::Relaxed);
    }
    let send_elapsed = start.elapsed();
    drain(&counters, params.drain).await;
    drop(progress);
    let _ = stop_tx.send(true);
    let latency = join_receivers(receivers).await?;
    let usage = monitor.zip(server_pid).map(|(m, pid)| m.finish(pid));
    let mut run = report(Outcome {
        params,
        counters: &counters,
        latency: &latency,
        start,
        send_elapsed,
        per_second: &per_second,
        usage,
        usage_prefix: "server",
        bench_cpu_secs: procmon::own_cpu_secs() - cpu_before,
    });
    match params.client_ids {
        ClientIds::Counter => {}
        ClientIds::Library => run
            .notes
            .push("client ids as the library makes them: the time, then random bits".into()),
        ClientIds::Random => run
            .notes
            .push("client ids of 128 random bits: each lands anywhere in the server's per-sender index".into()),
    }
    if params.rate.is_some() {
        // Where a late delivery lost its time: leaving the generator, or
        // before the server's Sent reply (stored), or after it.
        let m = &mut run.metrics;
        m.push("late_p99_ms", "sender lateness p99", "ms", late.quantile_ms(0.99));
        m.push("late_max_ms", "sender lateness max", "ms", late.max_ms());
        m.push(
            "stored_p50_ms",
            "due → Sent reply p50",
            "ms",
            stored_latency.quantile_ms(0.50),
        );
        m.push(
            "stored_p99_ms",
            "due → Sent reply p99",
            "ms",
            stored_latency.quantile_ms(0.99),
        );
    }
    Ok(run)
}

/// One relay run against NATS core pub/sub: the same pairs, one subject per
/// receiver, the same window of unconfirmed sends (see [`confirm`]).
pub async fn run_nats(url: &str, params: &RelayParams, nats_pid: Option<u32>) -> anyhow::Result<RunReport> {
    params.check()?;
    let prefix = common::run_prefix();
    let subjects: Vec<String> = (0..params.pairs).map(|i| format!("bench.{prefix}.{i}")).collect();
    let connect = || async {
        async_nats::ConnectOptions::new()
            .subscription_capacity(NATS_SUBSCRIPTION_CAPACITY)
            .connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))
    };
    let mut publishers = Vec::with_capacity(params.pairs);
    let mut subscriptions = Vec::with_capacity(params.pairs);
    for subject in &subjects {
        let subscriber_client = connect().await?;
        let mut subscription = subscriber_client
            .subscribe(subject.clone())
            .await
            .context("subscribing on NATS")?;
        // A probe published on the subscriber's own connection comes back
        // only once the server has registered the subscription, so nothing
        // the senders publish afterwards can miss it.
        subscriber_client
            .publish(subject.clone(), Bytes::from_static(b"probe"))
            .await
            .context("publishing the NATS probe")?;
        subscriber_client.flush().await.context("flushing the NATS probe")?;
        tokio::time::timeout(NATS_PROBE_TIMEOUT, subscription.next())
            .await
            .context("NATS did not echo the subscription probe")?
            .context("NATS subscription closed")?;
        subscriptions.push((subscriber_client, subscription));
        publishers.push((connect().await?, subject.clone()));
    }
    let counters = Arc::new(Counters::default());
    let monitor = nats_pid.map(Monitor::start).transpose()?;
    let cpu_before = procmon::own_cpu_secs();
    let start = Instant::now();
    let per_second = Arc::new(PerSecond::new(start, params.duration + params.drain));
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers: Vec<JoinHandle<anyhow::Result<Latency>>> = subscriptions
        .into_iter()
        .map(|(client, subscription)| {
            tokio::spawn(nats_receiver(
                client,
                subscription,
                Arc::clone(&counters),
                Arc::clone(&per_second),
                stop_rx.clone(),
            ))
        })
        .collect();
    let deadline = start + params.duration;
    let schedule = Schedule {
        start,
        rate: params.rate.map(|r| r / params.pairs as f64),
    };
    let progress = progress_for("nats", params.duration, &counters);
    let senders: Vec<JoinHandle<()>> = publishers
        .into_iter()
        .map(|(client, subject)| {
            tokio::spawn(nats_sender(
                client,
                subject,
                format!("_bench.{prefix}.confirm"),
                schedule,
                params.window,
                params.size,
                deadline,
                Arc::clone(&counters),
            ))
        })
        .collect();
    for sender in senders {
        sender.await.context("publisher task")?;
    }
    let send_elapsed = start.elapsed();
    drain(&counters, params.drain).await;
    drop(progress);
    let _ = stop_tx.send(true);
    let latency = join_receivers(receivers).await?;
    let usage = monitor.zip(nats_pid).map(|(m, pid)| m.finish(pid));
    let mut run = report(Outcome {
        params,
        counters: &counters,
        latency: &latency,
        start,
        send_elapsed,
        per_second: &per_second,
        usage,
        usage_prefix: "nats",
        bench_cpu_secs: procmon::own_cpu_secs() - cpu_before,
    });
    run.notes.push(
        "NATS core has no acknowledgement: \"stored\" counts messages the server confirmed by a round trip (a request answered \"no responders\") sent after every half window".into(),
    );
    Ok(run)
}

async fn nats_receiver(
    // Kept so the connection lives as long as its subscription is read.
    _client: async_nats::Client,
    mut subscription: async_nats::Subscriber,
    counters: Arc<Counters>,
    per_second: Arc<PerSecond>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Latency> {
    let mut received = BySeq::new(counters, per_second)?;
    loop {
        tokio::select! {
            message = subscription.next() => {
                let Some(message) = message else { break };
                received.take(&message.payload, Instant::now());
            }
            _ = stop.changed() => break,
        }
    }
    Ok(received.latency)
}

/// What a receiver of NATS (core or JetStream) has taken: with one sender
/// per subject and no message ids, the sender's sequence number in the
/// payload identifies a message, and a second copy is a duplicate.
pub struct BySeq {
    pub latency: Latency,
    seen: HashSet<u64>,
    counters: Arc<Counters>,
    per_second: Arc<PerSecond>,
}

impl BySeq {
    pub fn new(counters: Arc<Counters>, per_second: Arc<PerSecond>) -> anyhow::Result<BySeq> {
        Ok(BySeq {
            latency: Latency::new()?,
            seen: HashSet::new(),
            counters,
            per_second,
        })
    }

    /// The run's counters, for errors.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts a message whose payload arrived at `now`.
    pub fn take(&mut self, payload: &[u8], now: Instant) {
        let now_ns = common::instant_ns(now);
        match common::parse_payload(payload) {
            Some((seq, sent_ns)) => {
                if !self.seen.insert(seq) {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.latency.record_us(now_ns.saturating_sub(sent_ns) / 1000);
            }
            None => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        self.counters.last_delivery_ns.fetch_max(now_ns, Ordering::Relaxed);
        self.per_second.add(now, 1);
    }
}

/// Confirms that NATS has processed everything published before on this
/// connection: a request to a subject nobody serves comes back as "no
/// responders" only after the server has routed the earlier messages, since
/// it handles one connection's commands in order. Core NATS has no
/// acknowledgement, so this round trip is what stands in for Parley's Sent.
async fn confirm(client: &async_nats::Client, subject: &str, count: u64) -> (u64, Result<(), String>) {
    match client.request(subject.to_owned(), Bytes::new()).await {
        Ok(_) => (count, Ok(())),
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => (count, Ok(())),
        Err(e) => (count, Err(format!("confirmation round trip: {e}"))),
    }
}

/// Publishes paced by `schedule`; at most `window` messages are published
/// but not yet confirmed, with a confirmation every half window so the
/// window slides instead of stopping and waiting.
#[allow(clippy::too_many_arguments)] // Mirrors parley_sender; a struct would only rename them.
async fn nats_sender(
    client: async_nats::Client,
    subject: String,
    confirm_subject: String,
    schedule: Schedule,
    window: usize,
    size: usize,
    deadline: Instant,
    counters: Arc<Counters>,
) {
    let client = &client;
    let confirm_subject = confirm_subject.as_str();
    let window = window as u64;
    let batch = (window / 2).max(1);
    let mut confirmations = futures::stream::FuturesOrdered::new();
    let mut seq = 0u64;
    // Published and not yet covered by a confirmation request.
    let mut pending = 0u64;
    // Published and not yet confirmed.
    let mut unconfirmed = 0u64;
    let settle = |(count, result): (u64, Result<(), String>), unconfirmed: &mut u64| {
        *unconfirmed -= count;
        match result {
            Ok(()) => {
                counters.stored.fetch_add(count, Ordering::Relaxed);
            }
            Err(e) => {
                for _ in 0..count {
                    counters.error(&e);
                }
            }
        }
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let due = schedule.due(now);
        while seq < due && unconfirmed < window {
            let body = common::payload(seq, schedule.stamp(seq), size);
            counters.sent.fetch_add(1, Ordering::Relaxed);
            seq += 1;
            match client.publish(subject.clone(), Bytes::from(body)).await {
                Ok(()) => {
                    pending += 1;
                    unconfirmed += 1;
                }
                Err(e) => counters.error(format!("publish: {e}")),
            }
            if pending >= batch {
                confirmations.push_back(confirm(client, confirm_subject, pending));
                pending = 0;
            }
        }
        let wake = if seq < due {
            deadline
        } else {
            schedule.at(seq).min(deadline)
        };
        tokio::select! {
            Some(done) = confirmations.next(), if !confirmations.is_empty() => settle(done, &mut unconfirmed),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    if pending > 0 {
        confirmations.push_back(confirm(client, confirm_subject, pending));
    }
    while let Some(done) = confirmations.next().await {
        settle(done, &mut unconfirmed);
    }
}

pub fn report(outcome: Outcome<'_>) -> RunReport {
    let Outcome {
        params,
        counters,
        latency,
        start,
        send_elapsed,
        per_second,
        usage,
        usage_prefix,
        bench_cpu_secs,
    } = outcome;
    let sent = counters.get(&counters.sent);
    let stored = counters.get(&counters.stored);
    let delivered = counters.get(&counters.delivered);
    let last_ns = counters.get(&counters.last_delivery_ns);
    let start_ns = common::instant_ns(start);
    let delivery_span = Duration::from_nanos(last_ns.saturating_sub(start_ns));
    let mut m = Metrics::default();
    m.push("pairs", "pairs", "", params.pairs as f64);
    m.push(
        "size_bytes",
        "message size",
        "B",
        params.size.max(common::PAYLOAD_HEADER) as f64,
    );
    if let Some(rate) = params.rate {
        m.push("target_rate", "target rate", "msg/s", rate);
    }
    m.push("duration_secs", "send phase", "s", send_elapsed.as_secs_f64());
    m.push("sent", "sent", "", sent as f64);
    m.push("stored", "stored (acked by server)", "", stored as f64);
    m.push(
        "send_errors",
        "send errors",
        "",
        counters.get(&counters.send_errors) as f64,
    );
    m.push(
        "busy_resent",
        "BUSY replies (sent again)",
        "",
        counters.get(&counters.busy_resent) as f64,
    );
    m.push("delivered", "delivered", "", delivered as f64);
    m.push("lost", "lost", "", stored.saturating_sub(delivered) as f64);
    m.push(
        "duplicates",
        "duplicates",
        "",
        counters.get(&counters.duplicates) as f64,
    );
    m.push("stored_per_sec", "stored", "msg/s", stats::rate(stored, send_elapsed));
    // Deliveries over the time until the last one arrived: messages still
    // in flight when sending stopped count, and so does the time they took.
    m.push(
        "delivered_per_sec",
        "delivered",
        "msg/s",
        stats::rate(delivered, delivery_span.max(Duration::from_millis(1))),
    );
    m.push("latency_p50_ms", "latency p50", "ms", latency.quantile_ms(0.50));
    m.push("latency_p99_ms", "latency p99", "ms", latency.quantile_ms(0.99));
    m.push("latency_p999_ms", "latency p99.9", "ms", latency.quantile_ms(0.999));
    m.push("latency_max_ms", "latency max", "ms", latency.max_ms());
    m.push("latency_mean_ms", "latency mean", "ms", latency.mean_ms());
    if let Some(usage) = &usage {
        usage.add_to(&mut m, usage_prefix);
    }
    m.push("bench_cpu_secs", "bench CPU time", "s", bench_cpu_secs);
    let mut notes = Vec::new();
    if let Some(error) = counters.first_error() {
        notes.push(format!("first error: {error}"));
    }
    let malformed = counters.get(&counters.malformed);
    if malformed > 0 {
        notes.push(format!("{malformed} payloads could not be read"));
    }
    if params.size < common::PAYLOAD_HEADER {
        notes.push(format!(
            "bodies are at least {} bytes (sequence and timestamp)",
            common::PAYLOAD_HEADER
        ));
    }
    let mut extra = serde_json::Map::new();
    if let Some(usage) = &usage {
        extra.insert(format!("{usage_prefix}_rss_timeline_kib"), json!(usage.rss_timeline));
    }
    let end = if last_ns > start_ns {
        start + delivery_span
    } else {
        start + send_elapsed
    };
    RunReport {
        metrics: m,
        notes,
        latency_curve: latency.percentile_curve(),
        per_second: per_second.rates(end.max(start + send_elapsed)),
        extra,
    }
}
