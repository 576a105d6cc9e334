//! Whole nodes killed under load: three nodes on one PostgreSQL schema and
//! NATS, a sender and a receiver per pair on different nodes, and one node
//! after another killed with SIGKILL (master and workers: no goodbye, no
//! flush) and started again. Clients on the killed node move to another
//! one (resume token, then the same client id resent, or a subscription
//! after the last seq seen). Afterwards every acknowledged message has been
//! delivered, exactly once, in each sender's order.
//!
//! `PARLEY_NODE_KILLS` sets the number of kills (3 by default; the figures
//! in docs/SCALING.md come from 20). The test prints kills, messages
//! acknowledged, lost and duplicated, and the time clients took to move.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parley_client::{Client, ErrorCode, Event};
use parley_testkit::cluster::Cluster;
use tokio::sync::Mutex;

const NODES: usize = 3;
const PAIRS: usize = 3;
/// Longest a request may take before the client counts its node as gone.
const REQUEST_LIMIT: Duration = Duration::from_secs(3);
/// Longest anything may take to come back.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// The nodes' addresses (stable across restarts) and when each kill was.
struct Shared {
    addrs: Vec<String>,
    kills: Mutex<Vec<Instant>>,
    stop: AtomicBool,
    /// Set once every sender has returned: what is acknowledged is final.
    senders_done: AtomicBool,
    /// Times clients took to move, from the kill before it to the first
    /// request answered on another node.
    moves: Mutex<Vec<Duration>>,
}

impl Shared {
    /// Connects to the first node after `from` that answers and resumes the
    /// session there (a resume hands out the token for the next one);
    /// records how long after the last kill that was.
    async fn move_on(&self, from: usize, token: &mut Vec<u8>) -> (usize, Client) {
        let deadline = Instant::now() + RECOVERY_LIMIT;
        let mut k = 1;
        loop {
            assert!(Instant::now() < deadline, "no node took the session back");
            let node = (from + k) % NODES;
            k += 1;
            let Ok(Ok(client)) = tokio::time::timeout(REQUEST_LIMIT, Client::connect(&self.addrs[node])).await else {
                continue;
            };
            match tokio::time::timeout(REQUEST_LIMIT, client.resume(token)).await {
                Ok(Ok(info)) => {
                    if !info.resume_token.is_empty() {
                        *token = info.resume_token;
                    }
                    let killed = self.kills.lock().await.last().copied();
                    if let Some(killed) = killed {
                        self.moves.lock().await.push(killed.elapsed());
                    }
                    return (node, client);
                }
                Ok(Err(e)) if e.code() == Some(ErrorCode::AuthFailed) => panic!("the resume token was refused"),
                _ => {
                    // deliberate: a node that is starting or overloaded gets a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Sends "i:n" for n = 0, 1, ... to `to`, each with client id n, until
/// stopped; returns how many were acknowledged.
async fn sender(shared: Arc<Shared>, i: usize, mut node: usize, mut token: Vec<u8>, acked: Arc<AtomicU64>) {
    let to = format!("r{i}");
    let (mut at, mut client) = shared.move_on(node + NODES - 1, &mut token).await;
    node = at;
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let sent = tokio::time::timeout(
            REQUEST_LIMIT,
            client.send_with_id(&to, &n.to_string(), &format!("{i}:{n}")),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                n += 1;
                acked.store(n, Ordering::Relaxed);
            }
            Ok(Err(e)) if e.code().is_some() => {
                // BUSY, STORAGE_UNAVAILABLE while a node starts: the same
                // client id again after a moment.
                // deliberate: the server asked to wait.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                (at, client) = shared.move_on(node, &mut token).await;
                node = at;
            }
        }
    }
}

/// Receives pair `i`'s messages, acknowledging them; returns the sender's
/// numbers in the order shown (each message id once).
async fn receiver(
    shared: Arc<Shared>,
    i: usize,
    node: usize,
    mut token: Vec<u8>,
    acked: Arc<AtomicU64>,
) -> (Vec<u64>, u64) {
    let (mut node, mut client) = shared.move_on(node + NODES - 1, &mut token).await;
    let mut last_seq = 0;
    let mut shown = Vec::new();
    let mut seen_ids = std::collections::HashSet::new();
    let mut repeats = 0u64;
    client.subscribe(0).await.expect("subscribe");
    let deadline = Instant::now() + RECOVERY_LIMIT * 3;
    loop {
        let done = shared.senders_done.load(Ordering::Acquire) && shown.len() as u64 >= acked.load(Ordering::Relaxed);
        if done {
            return (shown, repeats);
        }
        assert!(Instant::now() < deadline, "pair {i}: not everything arrived");
        let event = tokio::time::timeout(Duration::from_millis(500), client.next_event()).await;
        let lost = match event {
            Err(_) => false,
            Ok(Some(Event::Messages(batch))) => {
                for m in &batch {
                    last_seq = last_seq.max(m.seq);
                    if seen_ids.insert(m.message_id) {
                        let (_, n) = m.body.split_once(':').expect("i:n");
                        shown.push(n.parse::<u64>().expect("n"));
                    } else {
                        repeats += 1;
                    }
                }
                let answered = tokio::time::timeout(REQUEST_LIMIT, client.ack(last_seq, Vec::new())).await;
                !matches!(answered, Ok(Ok(_)))
            }
            Ok(Some(Event::Goodbye { .. } | Event::Disconnected) | None) => true,
            Ok(Some(_)) => false,
        };
        if lost {
            (node, client) = shared.move_on(node, &mut token).await;
            let subscribed = tokio::time::timeout(REQUEST_LIMIT, client.subscribe(last_seq)).await;
            if !matches!(subscribed, Ok(Ok(_))) {
                // The next turn finds the connection gone and moves again.
                continue;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_nodes_lose_nothing_acknowledged_and_clients_move() {
    let Some(cluster) = Cluster::create() else { return };
    let kills: usize = std::env::var("PARLEY_NODE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut nodes: Vec<_> = (0..NODES).map(|_| cluster.node(&["--http-listen", "off"])).collect();
    let shared = Arc::new(Shared {
        addrs: nodes.iter().map(|n| n.addr.clone()).collect(),
        kills: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        senders_done: AtomicBool::new(false),
        moves: Mutex::new(Vec::new()),
    });

    // Pair i: sender s{i} on node i, receiver r{i} on the next node.
    let mut tasks = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..PAIRS {
        let acked = Arc::new(AtomicU64::new(0));
        let mut tokens = Vec::new();
        for name in [format!("s{i}"), format!("r{i}")] {
            let client = nodes[0].client().await;
            client.register(&name, "pw").await.expect("register");
            tokens.push(client.login(&name, "pw").await.expect("login").resume_token);
        }
        let (send_token, receive_token) = (tokens.remove(0), tokens.remove(0));
        tasks.push(tokio::spawn(sender(
            Arc::clone(&shared),
            i,
            i % NODES,
            send_token,
            Arc::clone(&acked),
        )));
        receivers.push((
            tokio::spawn(receiver(
                Arc::clone(&shared),
                i,
                (i + 1) % NODES,
                receive_token,
                Arc::clone(&acked),
            )),
            acked,
        ));
    }

    for k in 0..kills {
        // deliberate: load runs between kills.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let victim = k % NODES;
        shared.kills.lock().await.push(Instant::now());
        let node = &mut nodes[victim];
        tokio::task::block_in_place(|| {
            node.kill();
            node.restart();
        });
    }
    // deliberate: a last stretch of load after the last restart.
    tokio::time::sleep(Duration::from_millis(700)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("sender");
    }
    shared.senders_done.store(true, Ordering::Release);

    let (mut acked_total, mut lost, mut duplicated, mut repeats) = (0, 0, 0, 0);
    for (i, (task, acked)) in receivers.into_iter().enumerate() {
        let (shown, pushed_again) = task.await.expect("receiver");
        let acked = acked.load(Ordering::Relaxed);
        acked_total += acked;
        repeats += pushed_again;
        // Each number once, in order, and every acknowledged one there (a
        // last one sent but not acknowledged may be there too).
        let expected: Vec<u64> = (0..shown.len() as u64).collect();
        duplicated += shown.len() as u64 - shown.iter().collect::<std::collections::HashSet<_>>().len() as u64;
        lost += acked.saturating_sub(shown.len() as u64);
        assert_eq!(shown, expected, "pair {i}: out of order, missing or twice");
        assert!(
            shown.len() as u64 >= acked,
            "pair {i}: {acked} acknowledged, {} shown",
            shown.len()
        );
    }
    let mut moves = shared.moves.lock().await.clone();
    moves.sort();
    println!(
        "kills {kills}, acknowledged {acked_total}, lost {lost}, duplicated {duplicated}, pushed again and dropped by id {repeats}; \
         moves {}: median {:?}, p99 {:?}, max {:?}",
        moves.len(),
        percentile(&moves, 0.5),
        percentile(&moves, 0.99),
        moves.last().copied().unwrap_or_default()
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert!(acked_total > 0);
}
