//! Several parleyd processes on one PostgreSQL database, and a database
//! that goes away under a running parleyd. Each test works in a scratch
//! schema of its own and skips (saying why) when the test database does not
//! answer, unless PARLEY_REQUIRE_SERVICES=1.
//!
//! The servers do not deliver to each other's sessions (that is the message
//! bus's job): these tests read mailboxes with fetch, which is what the
//! store guarantees.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parley_client::ErrorCode;
use parley_testkit::postgres::Scratch;
use parley_testkit::proxy::TcpProxy;
use parley_testkit::{Store, TestServer};

/// Processes sharing the database.
const SERVERS: usize = 3;

/// Every sender sends this many messages to every recipient.
const PER_RECIPIENT: usize = 10;

/// Senders connect to the servers in turn, all sending at once to the same
/// recipients: each recipient's mailbox holds seqs 1..=k, each once, with
/// every sender's messages in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_sharing_a_database_keep_every_mailbox_gap_free() {
    if !Store::Postgres.available() {
        return;
    }
    let Some(scratch) = Scratch::create() else { return };
    let servers: Vec<Arc<TestServer>> = (0..SERVERS)
        .map(|_| Arc::new(TestServer::start_on_postgres(scratch.url(), &[])))
        .collect();
    let recipients = ["r0", "r1", "r2"];
    for name in recipients {
        servers[0].user(name).await;
    }
    let senders: Vec<String> = (0..3 * SERVERS).map(|s| format!("s{s}")).collect();
    let mut tasks = Vec::new();
    for (s, name) in senders.iter().enumerate() {
        let server = Arc::clone(&servers[s % SERVERS]);
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let client = server.user(&name).await;
            for n in 0..PER_RECIPIENT {
                // The three sends of a round go out together.
                let ids = recipients.map(|r| format!("{r}-{n}"));
                let body = format!("{name}:{n}");
                let receipts = tokio::join!(
                    client.send_with_id(recipients[0], &ids[0], &body),
                    client.send_with_id(recipients[1], &ids[1], &body),
                    client.send_with_id(recipients[2], &ids[2], &body),
                );
                for receipt in [receipts.0, receipts.1, receipts.2] {
                    assert!(!receipt.expect("send").duplicate);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = senders.len() * PER_RECIPIENT;
    let mut ids = HashSet::new();
    for (r, name) in recipients.iter().enumerate() {
        let reader = servers[r % SERVERS].user(name).await;
        let batch = reader.fetch(0, 1000, true).await.unwrap();
        let seqs: Vec<u64> = batch.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "mailbox of {name}");
        for sender in &senders {
            let numbers: Vec<usize> = batch
                .messages
                .iter()
                .filter_map(|m| m.body.strip_prefix(&format!("{sender}:")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..PER_RECIPIENT).collect::<Vec<_>>(), "{sender} to {name}");
        }
        ids.extend(batch.messages.iter().map(|m| m.message_id));
    }
    assert_eq!(ids.len(), total * recipients.len(), "message ids are unique");
}

/// A client that resends through another server (its own died, say) gets
/// the same message id as the first send, even when both arrive at once,
/// and the message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_through_another_server_gets_the_same_id() {
    const ROUNDS: usize = 20;
    if !Store::Postgres.available() {
        return;
    }
    let Some(scratch) = Scratch::create() else { return };
    let a = TestServer::start_on_postgres(scratch.url(), &[]);
    let b = TestServer::start_on_postgres(scratch.url(), &[]);
    a.user("bob").await;
    let on_a = a.user("alice").await;
    let on_b = b.user("alice").await;
    for n in 0..ROUNDS {
        let id = format!("resend-{n}");
        let body = format!("body {n}");
        let (first, second) = tokio::join!(
            on_a.send_with_id("bob", &id, &body),
            on_b.send_with_id("bob", &id, &body)
        );
        let (first, second) = (first.expect("first"), second.expect("second"));
        assert_eq!(
            (first.message_id, first.seq),
            (second.message_id, second.seq),
            "round {n}"
        );
        assert!(
            first.duplicate != second.duplicate,
            "round {n}: one stored it, one found it"
        );
    }
    let bob = b.user("bob").await;
    let stored = bob.fetch(0, 1000, true).await.unwrap().messages;
    assert_eq!(stored.len(), ROUNDS, "each resent message is stored once");
}

/// A parleyd whose database is reached through a proxy the test can cut
/// (in the order the bindings should drop: the server first), or None
/// when PostgreSQL does not answer.
fn behind_a_proxy() -> Option<(Scratch, TcpProxy, TestServer)> {
    if !Store::Postgres.available() {
        return None;
    }
    let scratch = Scratch::create()?;
    let proxy = TcpProxy::start(scratch.server_addr());
    let url = scratch.url_via(proxy.addr);
    let server = TestServer::start_on_postgres(&url, &["--postgres-connect-timeout-secs", "2"]);
    Some((scratch, proxy, server))
}

/// Waits until `/readyz` answers 200 again.
async fn ready_again(http: &reqwest::Client, ready: &str) {
    parley_testkit::wait_until("/readyz to answer 200 again", Duration::from_secs(20), async || {
        http.get(ready).send().await.unwrap().status() == 200
    })
    .await;
}

/// PostgreSQL becomes unreachable under a running parleyd (a proxy in front
/// of it is cut): requests get STORAGE_UNAVAILABLE with a retry hint at
/// once, /readyz answers 503, and when the database is back both recover by
/// themselves; nothing acknowledged before was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_storage_unavailable_and_heals() {
    let Some((_scratch, mut proxy, server)) = behind_a_proxy() else {
        return;
    };
    let ready = format!("{}/readyz", server.http_url());
    let http = reqwest::Client::new();
    assert_eq!(http.get(&ready).send().await.unwrap().status(), 200);
    server.user("bob").await;
    let alice = server.user("alice").await;
    for n in 0..5 {
        alice.send_with_id("bob", &format!("before-{n}"), "x").await.unwrap();
    }

    proxy.cut();
    let error = alice.send_with_id("bob", "during", "x").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::StorageUnavailable), "{error}");
    match error {
        parley_client::ClientError::Server { retry_after_ms, .. } => assert!(retry_after_ms > 0),
        other => panic!("expected a server error, got {other}"),
    }
    assert_eq!(http.get(&ready).send().await.unwrap().status(), 503);

    proxy.restore();
    ready_again(&http, &ready).await;
    alice
        .send_with_id("bob", "during", "x")
        .await
        .expect("the resend is stored");
    let bob = server.user("bob").await;
    let stored: Vec<String> = bob
        .fetch(0, 100, true)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.client_msg_id)
        .collect();
    assert_eq!(
        stored,
        ["before-0", "before-1", "before-2", "before-3", "before-4", "during"]
    );
}

/// The same outage under load: senders keep sending through it, each
/// resending the same client id after the hint it was given. Every refusal
/// during the outage is STORAGE_UNAVAILABLE or BUSY with a retry hint; once
/// the database is back, sending resumes by itself; every acknowledged
/// message is stored once, in each sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_load_loses_nothing_acknowledged() {
    let Some((_scratch, mut proxy, server)) = behind_a_proxy() else {
        return;
    };
    server.user("sink").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for i in 0..4 {
        let client = server.user(&format!("s{i}")).await;
        let stop = Arc::clone(&stop);
        senders.push(tokio::spawn(async move {
            let (mut acked, mut refused) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client
                    .send_with_id("sink", &acked.to_string(), &format!("{i}:{acked}"))
                    .await
                {
                    Ok(_) => acked += 1,
                    Err(parley_client::ClientError::Server {
                        code, retry_after_ms, ..
                    }) => {
                        assert!(
                            matches!(code, ErrorCode::StorageUnavailable | ErrorCode::Busy),
                            "{code:?}"
                        );
                        assert!(retry_after_ms > 0, "a refusal without a retry hint");
                        refused += 1;
                        // deliberate: the server said when to try again (capped for the test).
                        tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms).min(200))).await;
                    }
                    Err(other) => panic!("sender {i}: {other}"),
                }
            }
            (acked, refused)
        }));
    }
    let ready = format!("{}/readyz", server.http_url());
    let http = reqwest::Client::new();
    // deliberate: load before, during and after the outage.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    // deliberate: the outage lasts three seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();
    ready_again(&http, &ready).await;
    // deliberate: load after the recovery.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut results = Vec::new();
    for sender in senders {
        results.push(sender.await.expect("sender"));
    }
    assert!(
        results.iter().any(|&(_, refused)| refused > 0),
        "no refusal during the outage"
    );

    let sink = server.user("sink").await;
    let mut stored: Vec<Vec<u64>> = vec![Vec::new(); results.len()];
    let mut after = 0;
    loop {
        let page = sink.fetch(after, 1000, true).await.unwrap().messages;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for m in &page {
            let (i, n) = m.body.split_once(':').unwrap();
            stored[i.parse::<usize>().unwrap()].push(n.parse().unwrap());
        }
    }
    for (i, (acked, _)) in results.iter().enumerate() {
        let expected: Vec<u64> = (0..stored[i].len() as u64).collect();
        assert_eq!(stored[i], expected, "sender {i}: out of order, missing or twice");
        assert!(
            stored[i].len() as u64 >= *acked,
            "sender {i}: acknowledged {acked}, stored {}",
            stored[i].len()
        );
        assert!(
            stored[i].len() as u64 <= acked + 1,
            "sender {i}: stored more than it sent"
        );
    }
}
