//! The relay scenario against NATS JetStream, the durable peer: the same
//! pairs, payloads, pacing and window as against parleyd, but each message
//! is stored in a stream before it is delivered.
//!
//! Each run creates its own stream (file storage, one replica, a unique name
//! covering the run's unique subjects) and deletes it at the end, also when
//! the run fails. Senders publish with acknowledgement: a message counts as
//! stored when its PubAck arrives, and at most `window` PubAcks are awaited
//! at once per sender, like the Parley relay's window of unanswered sends.
//! Each receiver reads its subject through a pull consumer of its own with
//! explicit acks and acks every message as it arrives.
//!
//! The bench cannot see how often the server syncs the stream to disk, so
//! the run reports what `--jetstream-sync` says about it.

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::common::{self, PerSecond};
use crate::procmon::{self, Monitor};
use crate::relay::{self, BySeq, Counters, Outcome, RelayParams, Schedule};
use crate::report::RunReport;
use crate::stats::Latency;

/// The scheme that names a JetStream target (`jetstream://HOST:PORT`).
pub const SCHEME: &str = "jetstream://";
/// The first token of every subject the bench publishes to JetStream; the
/// run's prefix follows, so runs never share subjects.
const SUBJECT_ROOT: &str = "benchjs";
/// The start of every stream name the bench creates (the run's prefix
/// follows); stream names may not contain dots.
pub const STREAM_PREFIX: &str = "PARLEY_BENCH_";

/// Messages a receiver's pull consumer asks for at a time. async-nats asks
/// for 200; at full speed its consumers then fall behind the publishers
/// and JetStream's p99 grows to about a second (948 ms in a 6 s run),
/// while 1,000 keeps it near 100 ms at the same rate (4,000 gives no more):
/// the peer is measured at its better setting.
const CONSUMER_BATCH: usize = 1000;

/// Where a `jetstream://HOST:PORT` target is reached: the same server
/// speaks plain NATS.
pub fn nats_url(target: &str) -> anyhow::Result<String> {
    let address = target
        .strip_prefix(SCHEME)
        .with_context(|| format!("a JetStream target starts with {SCHEME}, not {target:?}"))?;
    anyhow::ensure!(!address.is_empty(), "{target:?} names no server");
    Ok(format!("nats://{address}"))
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// One relay run against JetStream at `target` (a `jetstream://` URL).
/// `sync` is how the server syncs to disk, as the operator said it; it is
/// only reported.
pub async fn run(target: &str, params: &RelayParams, nats_pid: Option<u32>, sync: &str) -> anyhow::Result<RunReport> {
    params.check()?;
    let url = nats_url(target)?;
    let prefix = common::run_prefix();
    let stream_name = format!("{STREAM_PREFIX}{prefix}");
    let admin = jetstream::new(connect(&url).await?);
    admin
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{SUBJECT_ROOT}.{prefix}.>")],
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .with_context(|| {
            format!("creating the JetStream stream {stream_name} at {url} (does the server run with JetStream, `nats-server -js`?)")
        })?;
    let measured = measure(&url, &stream_name, &prefix, params, nats_pid).await;
    let deleted = admin
        .delete_stream(&stream_name)
        .await
        .with_context(|| format!("deleting the JetStream stream {stream_name}"));
    let mut run = match (measured, deleted) {
        (Ok(run), Ok(_)) => run,
        (Err(e), Ok(_)) => return Err(e),
        (Ok(_), Err(e)) => return Err(e),
        (Err(e), Err(not_deleted)) => return Err(e.context(format!("and then {not_deleted:#}"))),
    };
    run.notes.push(
        "\"stored\" counts PubAcks: the message is in the stream (file storage, 1 replica), synced to disk or not as the server's sync setting says".into(),
    );
    run.extra.insert("jetstream_stream".into(), json!(stream_name));
    run.extra.insert("jetstream_sync".into(), json!(sync));
    Ok(run)
}

/// The measured part of a run, on a stream that exists.
async fn measure(
    url: &str,
    stream_name: &str,
    prefix: &str,
    params: &RelayParams,
    nats_pid: Option<u32>,
) -> anyhow::Result<RunReport> {
    let subjects: Vec<String> = (0..params.pairs)
        .map(|i| format!("{SUBJECT_ROOT}.{prefix}.{i}"))
        .collect();
    let mut publishers = Vec::with_capacity(params.pairs);
    let mut consumers = Vec::with_capacity(params.pairs);
    for subject in &subjects {
        // The consumer starts at the stream's beginning, so it sees every
        // message however late its pulls begin: no probe is needed.
        let context = jetstream::new(connect(url).await?);
        let consumer: consumer::PullConsumer = context
            .create_consumer_on_stream(
                consumer::pull::Config {
                    filter_subject: subject.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
                stream_name,
            )
            .await
            .with_context(|| format!("creating a JetStream consumer for {subject}"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(CONSUMER_BATCH)
            .messages()
            .await
            .with_context(|| format!("pulling from the JetStream consumer for {subject}"))?;
        consumers.push(messages);
        publishers.push((jetstream::new(connect(url).await?), subject.clone()));
    }
    let counters = Arc::new(Counters::default());
    let monitor = nats_pid.map(Monitor::start).transpose()?;
    let cpu_before = procmon::own_cpu_secs();
    let start = Instant::now();
    let per_second = Arc::new(PerSecond::new(start, params.duration + params.drain));
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers: Vec<JoinHandle<anyhow::Result<Latency>>> = consumers
        .into_iter()
        .map(|messages| {
            tokio::spawn(receiver(
                messages,
                Arc::clone(&counters),
                Arc::clone(&per_second),
                stop_rx.clone(),
            ))
        })
        .collect();
    let schedule = Schedule {
        start,
        rate: params.rate.map(|r| r / params.pairs as f64),
    };
    let plan = SenderPlan {
        schedule,
        window: params.window,
        size: params.size,
        deadline: start + params.duration,
    };
    let progress = relay::progress_for("jetstream", params.duration, &counters);
    let senders: Vec<JoinHandle<()>> = publishers
        .into_iter()
        .map(|(context, subject)| tokio::spawn(sender(context, subject, plan, Arc::clone(&counters))))
        .collect();
    for sender in senders {
        sender.await.context("JetStream publisher task")?;
    }
    let send_elapsed = start.elapsed();
    relay::drain(&counters, params.drain).await;
    drop(progress);
    let _ = stop_tx.send(true);
    let latency = relay::join_receivers(receivers).await?;
    let usage = monitor.zip(nats_pid).map(|(m, pid)| m.finish(pid));
    Ok(relay::report(Outcome {
        params,
        counters: &counters,
        latency: &latency,
        start,
        send_elapsed,
        per_second: &per_second,
        usage,
        usage_prefix: "nats",
        bench_cpu_secs: procmon::own_cpu_secs() - cpu_before,
    }))
}

/// What one publisher does.
#[derive(Clone, Copy)]
struct SenderPlan {
    schedule: Schedule,
    /// Most PubAcks awaited at once.
    window: usize,
    size: usize,
    deadline: Instant,
}

/// Publishes paced by the plan's schedule until its deadline, with at most
/// `window` publishes whose PubAck has not arrived, then waits for the
/// PubAcks still outstanding (each bounded by the client's ack timeout).
async fn sender(context: jetstream::Context, subject: String, plan: SenderPlan, counters: Arc<Counters>) {
    let SenderPlan {
        schedule,
        window,
        size,
        deadline,
    } = plan;
    let mut acks = FuturesUnordered::new();
    let settle = |acked: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>| match acked {
        Ok(_) => {
            counters.stored.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => counters.error(format!("JetStream PubAck: {e}")),
    };
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let due = schedule.due(now);
        while seq < due && acks.len() < window {
            let body = common::payload(seq, schedule.stamp(seq), size);
            counters.sent.fetch_add(1, Ordering::Relaxed);
            seq += 1;
            match context.publish(subject.clone(), Bytes::from(body)).await {
                Ok(ack) => acks.push(ack.into_future()),
                Err(e) => counters.error(format!("JetStream publish: {e}")),
            }
        }
        let wake = if seq < due {
            deadline
        } else {
            schedule.at(seq).min(deadline)
        };
        tokio::select! {
            Some(acked) = acks.next(), if !acks.is_empty() => settle(acked),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    while let Some(acked) = acks.next().await {
        settle(acked);
    }
}

/// Reads one consumer until `stop`, acking each message as it arrives. A
/// consumer error ends the receiver: what it would have delivered then
/// counts as lost, and the error is in the notes.
async fn receiver(
    mut messages: consumer::pull::Stream,
    counters: Arc<Counters>,
    per_second: Arc<PerSecond>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Latency> {
    let mut received = BySeq::new(counters, per_second)?;
    loop {
        tokio::select! {
            message = messages.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        received.counters().error(format!("JetStream consumer: {e}"));
                        break;
                    }
                    None => break,
                };
                let now = Instant::now();
                if let Err(e) = message.ack().await {
                    received.counters().error(format!("JetStream ack: {e}"));
                }
                // A redelivery repeats the sender's sequence number.
                received.take(&message.payload, now);
            }
            _ = stop.changed() => break,
        }
    }
    Ok(received.latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jetstream_target_is_reached_over_nats() {
        assert_eq!(
            nats_url("jetstream://127.0.0.1:4222").expect("valid"),
            "nats://127.0.0.1:4222"
        );
        assert!(nats_url("jetstream://").is_err());
        assert!(nats_url("nats://127.0.0.1:4222").is_err());
    }
}
