//! Many clients sending to each other at once: every acknowledged message is
//! delivered exactly once, and each sender's order is kept.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use parley_client::Client;
use parley_testkit::{Store, TestServer};

const USERS: usize = 12;
const PER_PAIR: usize = 15;

async fn everyone_to_everyone(store: Store) {
    let server = Arc::new(TestServer::start(store));
    let mut clients = Vec::new();
    for i in 0..USERS {
        let c = server.user(&format!("u{i}")).await;
        c.subscribe(0).await.unwrap();
        clients.push(Arc::new(c));
    }
    // Every user sends PER_PAIR messages to every other user, all at once.
    let mut senders = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let c = Arc::clone(c);
        senders.push(tokio::spawn(async move {
            let mut acked = 0;
            for n in 0..PER_PAIR {
                for j in 0..USERS {
                    if j != i {
                        c.send(&format!("u{j}"), &format!("u{i}:{n}")).await.unwrap();
                        acked += 1;
                    }
                }
            }
            acked
        }));
    }
    let receivers: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = Arc::clone(c);
            tokio::spawn(async move { receive(&c, (USERS - 1) * PER_PAIR).await })
        })
        .collect();
    let mut total_acked = 0;
    for s in senders {
        total_acked += s.await.unwrap();
    }
    assert_eq!(total_acked, USERS * (USERS - 1) * PER_PAIR);
    for r in receivers {
        let per_sender = r.await.unwrap();
        assert_eq!(per_sender.len(), USERS - 1);
        for (sender, numbers) in per_sender {
            assert_eq!(numbers, (0..PER_PAIR).collect::<Vec<_>>(), "order from {sender}");
        }
    }
}
every_store!(everyone_to_everyone, everyone_to_everyone);

/// Takes `n` pushes, acking each batch; checks seqs are gap-free and no
/// message id repeats; returns the numbers received from each sender.
async fn receive(client: &Client, n: usize) -> HashMap<String, Vec<usize>> {
    let mut per_sender: HashMap<String, Vec<usize>> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    let mut last_seq = 0;
    let mut got = 0;
    while got < n {
        let batch = next_messages(client).await;
        for m in &batch {
            assert!(ids.insert(m.message_id), "message {} delivered twice", m.message_id);
            assert_eq!(m.seq, last_seq + 1, "seqs are gap-free");
            last_seq = m.seq;
            let (sender, number) = m.body.split_once(':').unwrap();
            per_sender
                .entry(sender.to_owned())
                .or_default()
                .push(number.parse().unwrap());
        }
        got += batch.len();
        client.ack(last_seq, vec![]).await.unwrap();
    }
    assert_eq!(got, n);
    assert_no_push(client).await;
    per_sender
}
