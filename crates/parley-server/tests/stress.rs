//! Time-boxed proofs under stress: SIGKILL while sending, a stalled
//! recipient, a flood past capacity.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use parley_client::{Client, ErrorCode};
use parley_proto::v1::{self, client_frame, server_frame};
use parley_testkit::{Store, TestServer};
use tokio::time::Instant;

const SENDERS: usize = 4;
const KILLS: usize = 5;

/// Every message the server acknowledged survives repeated SIGKILLs, is
/// stored exactly once, and keeps its sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_sigkill() {
    let mut server = TestServer::start(Store::Sqlite);
    let addr = server.addr.clone();
    server.user("sink").await;
    for i in 0..SENDERS {
        server.user(&format!("s{i}")).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            let (addr, stop) = (addr.clone(), Arc::clone(&stop));
            tokio::spawn(async move { send_until_stopped(&addr, i, &stop).await })
        })
        .collect();
    for round in 0..KILLS {
        // deliberate: the load runs a while between kills.
        tokio::time::sleep(Duration::from_millis(300 + 100 * round as u64)).await;
        server.kill();
        server.restart();
    }
    // deliberate: a last stretch of load after the last restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked: Vec<Vec<u64>> = Vec::new();
    for s in senders {
        acked.push(s.await.unwrap());
    }
    // Read the sink's whole mailbox.
    let sink = server.user("sink").await;
    let mut per_sender: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = sink.fetch(after, 1000, true).await.unwrap();
        for m in &page.messages {
            let (s, n) = m.body.split_once(':').unwrap();
            per_sender
                .entry(s[1..].parse().unwrap())
                .or_default()
                .push(n.parse().unwrap());
        }
        match page.messages.last() {
            Some(m) if page.more => after = m.seq,
            _ => break,
        }
    }
    let mut total = 0;
    for (i, acked) in acked.iter().enumerate() {
        let stored = per_sender.remove(&i).unwrap_or_default();
        assert!(
            stored.windows(2).all(|w| w[0] < w[1]),
            "sender {i}: order kept, no duplicates"
        );
        let stored: HashSet<u64> = stored.into_iter().collect();
        for n in acked {
            assert!(stored.contains(n), "sender {i}: acked message {n} lost");
        }
        total += acked.len();
    }
    assert!(total > 0);
    eprintln!(
        "crash safety: {KILLS} SIGKILLs, {total} acked messages from {SENDERS} senders, all stored exactly once in order"
    );
}

/// Sends "s{i}:{n}" to sink with idempotency key "s{i}-{n}", reconnecting
/// after every failure and resending the same n until it is acknowledged.
async fn send_until_stopped(addr: &str, i: usize, stop: &AtomicBool) -> Vec<u64> {
    let name = format!("s{i}");
    let password = format!("pw-{name}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Ok(client) = Client::connect(addr).await else {
            // deliberate: a moment before reconnecting to a restarting server.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if client.login(&name, &password).await.is_err() {
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            match client
                .send_with_id("sink", &format!("{name}-{n}"), &format!("{name}:{n}"))
                .await
            {
                Ok(_) => {
                    acked.push(n);
                    n += 1;
                }
                Err(_) => break,
            }
        }
    }
    acked
}

/// A recipient that stops reading never makes the server buffer without
/// bound or slow others down, and gets everything once it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_recipient_costs_bounded_memory() {
    const MESSAGES: usize = 6000;
    const BODY: usize = 8 * 1024;
    // Bob acks nothing while he is stalled, and on a loaded machine the
    // stall can outlast the default ack timeout. His unacked window (4 MiB)
    // may sit whole in the kernel's socket buffers, where the server cannot
    // see it unread and would push it again; re-pushes are reliability.rs's
    // subject. A long timeout keeps this test about memory and order.
    let server = TestServer::start_with(
        Store::Sqlite,
        &[
            "--session-queue",
            "256",
            "--max-unacked",
            "512",
            "--ack-timeout-ms",
            "120000",
        ],
    );
    let alice = Arc::new(server.user("alice").await);
    server.user("bob").await;
    let carol = server.user("carol").await;
    let dave = server.user("dave").await;
    dave.subscribe(0).await.unwrap();
    let mut bob = RawSession::login(&server.addr, "bob", "pw-bob").await;
    bob.send(client_frame::Body::Subscribe(v1::Subscribe { after_seq: 0 }))
        .await;
    // Bob now stops reading his socket.
    let rss_before = rss_kib(server.pid());
    let body = "x".repeat(BODY);
    let sender = {
        let alice = Arc::clone(&alice);
        tokio::spawn(async move {
            for chunk in 0..MESSAGES / 100 {
                let sends = (0..100).map(|k| {
                    let (alice, body) = (&alice, &body);
                    async move { alice.send_with_id("bob", &format!("{chunk}-{k}"), body).await.unwrap() }
                });
                for f in sends.collect::<Vec<_>>() {
                    f.await;
                }
            }
        })
    };
    // Meanwhile carol and dave chat, and are not held up.
    for i in 0..50 {
        carol.send("dave", &format!("{i}")).await.unwrap();
        let got = next_messages(&dave).await;
        dave.ack(got.last().unwrap().seq, vec![]).await.unwrap();
    }
    sender.await.unwrap();
    let rss_after = rss_kib(server.pid());
    let growth = rss_after.saturating_sub(rss_before);
    let offered_kib = (MESSAGES * BODY / 1024) as u64;
    eprintln!(
        "slow consumer: RSS {rss_before} KiB -> {rss_after} KiB (+{growth} KiB) while {offered_kib} KiB were sent to the stalled recipient"
    );
    assert!(
        growth < offered_kib / 3,
        "server buffered the stalled recipient's traffic: +{growth} KiB"
    );
    // Bob reads again: every message arrives once, in order.
    bob.take_all_in_order(MESSAGES as u64).await;
}

/// Offered load far past capacity: BUSY replies appear at once, every
/// admitted message is stored and delivered, and a login still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_gets_busy_and_loses_nothing_admitted() {
    let server = TestServer::start_with(Store::Sqlite, &["--write-queue", "64", "--max-backlog", "128"]);
    let sink = server.user("sink").await;
    let mut flooders = Vec::new();
    for i in 0..6 {
        let client = Arc::new(server.user(&format!("f{i}")).await);
        flooders.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            let mut busy = 0;
            for round in 0..4 {
                // 256 sends at once, raw: no automatic retry.
                let futures: Vec<_> = (0..256)
                    .map(|k| {
                        let client = Arc::clone(&client);
                        tokio::spawn(async move {
                            let body = client_frame::Body::Send(v1::SendMessage {
                                to: "sink".into(),
                                client_msg_id: format!("f{i}-{round}-{k}"),
                                body: format!("f{i}:{round}:{k}"),
                            });
                            client.request(body).await.unwrap()
                        })
                    })
                    .collect();
                for f in futures {
                    match f.await.unwrap().body {
                        Some(server_frame::Body::Sent(s)) => admitted.push(s.message_id),
                        Some(server_frame::Body::Error(e)) => {
                            assert_eq!(e.code, ErrorCode::Busy as i32, "{e:?}");
                            assert!(e.retry_after_ms > 0);
                            busy += 1;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            (admitted, busy)
        }));
    }
    // The server stays responsive: a full login completes during the flood.
    let started = Instant::now();
    let late = server.client().await;
    late.register("late", "pw").await.unwrap();
    late.login("late", "pw").await.unwrap();
    eprintln!("flood: a login completed in {:?} during the flood", started.elapsed());
    let (mut admitted, mut busy) = (HashSet::new(), 0);
    for f in flooders {
        let (a, b) = f.await.unwrap();
        admitted.extend(a);
        busy += b;
    }
    eprintln!(
        "flood: {} admitted, {busy} BUSY of {} offered",
        admitted.len(),
        6 * 4 * 256
    );
    assert!(busy > 0, "overload produced BUSY replies");
    assert!(!admitted.is_empty());
    let mut stored = HashSet::new();
    let mut after = 0;
    loop {
        let page = sink.fetch(after, 1000, true).await.unwrap();
        stored.extend(page.messages.iter().map(|m| m.message_id));
        match page.messages.last() {
            Some(m) if page.more => after = m.seq,
            _ => break,
        }
    }
    assert_eq!(stored, admitted, "exactly the admitted messages are stored");
}
