//! Several parleyd processes as one service, on one PostgreSQL schema and
//! the NATS server on 127.0.0.1:4222: nodes (each its own master) and
//! workers (several under one master). Users reach each other wherever
//! their sessions are; presence, kicks and broadcasts cross too.

mod common;

use std::time::{Duration, Instant};

use common::WAIT;
use parley_client::{Client, Event};
use parley_testkit::cluster::Cluster;

async fn next_event(client: &Client) -> Event {
    match tokio::time::timeout(WAIT, client.next_event()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("connection ended"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// The bodies of the next pushed messages, acknowledged, until `count`.
async fn receive(client: &Client, count: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    while bodies.len() < count {
        match next_event(client).await {
            Event::Messages(batch) => {
                let last = batch.last().map_or(0, |m| m.seq);
                bodies.extend(batch.into_iter().map(|m| m.body));
                client.ack(last, Vec::new()).await.unwrap();
            }
            Event::Presence { .. } | Event::PresenceRequest { .. } | Event::PresenceApproved { .. } => {}
            other => panic!("expected messages, got {other:?}"),
        }
    }
    bodies
}

/// Waits until `check` holds.
async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    parley_testkit::wait_until(what, WAIT, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_nodes_chat_see_each_other_and_are_kicked_and_told_across() {
    let Some(cluster) = Cluster::create() else { return };
    let a = cluster.node(&[]);
    let b = cluster.node(&[]);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    alice.subscribe(0).await.unwrap();
    bob.subscribe(0).await.unwrap();

    // Presence by consent, across nodes.
    alice.add_contact("bob").await.unwrap();
    assert!(matches!(next_event(&bob).await, Event::PresenceRequest { from } if from == "alice"));
    bob.approve_presence("alice").await.unwrap();
    assert!(matches!(next_event(&alice).await, Event::PresenceApproved { name } if name == "bob"));
    assert!(matches!(next_event(&alice).await, Event::Presence { name, online: true } if name == "bob"));

    // Messages both ways, in order.
    for i in 0..20 {
        alice.send("bob", &format!("a{i}")).await.unwrap();
    }
    let expected: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    assert_eq!(receive(&bob, 20).await, expected);
    bob.send("alice", "hello from b").await.unwrap();
    assert_eq!(receive(&alice, 1).await, ["hello from b"]);

    // The operator of node A sees bob online and broadcasts to him.
    let (code, out, err) = a.ctl(&["sessions"]);
    assert!(code.success(), "{err}");
    let sessions: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        sessions,
        serde_json::json!([{"user": "alice", "sessions": 1}, {"user": "bob", "sessions": 0, "elsewhere": true, "sessions_elsewhere": 1}])
    );
    let (code, out, err) = a.ctl(&["broadcast", "maintenance at noon"]);
    assert!(code.success(), "{out}{err}");
    assert_eq!(receive(&bob, 1).await, ["maintenance at noon"]);
    assert_eq!(receive(&alice, 1).await, ["maintenance at noon"]);

    // Kicked from node A: bob's session on node B ends.
    let (code, out, err) = a.ctl(&["kick", "bob"]);
    assert!(code.success(), "{out}{err}");
    assert_eq!(goodbye(&bob).await, parley_client::ErrorCode::Kicked);
    assert!(matches!(next_event(&alice).await, Event::Presence { name, online: false } if name == "bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_takes_its_users_offline_after_the_timeout() {
    let Some(cluster) = Cluster::create() else { return };
    let a = cluster.node(&[]);
    let mut b = cluster.node(&[]);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    alice.subscribe(0).await.unwrap();
    alice.add_contact("bob").await.unwrap();
    bob.approve_presence("alice").await.unwrap();
    assert!(matches!(next_event(&alice).await, Event::PresenceApproved { .. }));
    assert!(matches!(next_event(&alice).await, Event::Presence { online: true, .. }));
    // Node B stops dead (its processes frozen, as a machine that fails
    // would): no goodbye on the bus, no closed connections.
    let killed = Instant::now();
    let frozen: Vec<u32> = b.workers().into_iter().chain([b.master_pid()]).collect();
    for pid in &frozen {
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status();
    }
    assert!(matches!(next_event(&alice).await, Event::Presence { name, online: false } if name == "bob"));
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "offline after {took:?}, before the node timeout"
    );
    b.kill();
    for pid in &frozen {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status();
    }
    // What is sent to bob meanwhile is stored, and his next login on A gets it.
    alice.send("bob", "while you were away").await.unwrap();
    let bob = a.user("bob").await;
    bob.subscribe(0).await.unwrap();
    assert_eq!(receive(&bob, 1).await, ["while you were away"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_serve_one_port_and_reach_each_others_sessions() {
    let Some(cluster) = Cluster::create() else { return };
    let server = cluster.node(&["--workers", "3"]);
    let (code, out, err) = server.ctl(&["status"]);
    assert!(code.success(), "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["workers"].as_array().map(Vec::len), Some(3), "{status}");

    // Six users, whose connections land on whichever worker accepts them;
    // each sends to every other and receives from every other.
    let names: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let mut clients = Vec::new();
    for name in &names {
        let client = server.user(name).await;
        client.subscribe(0).await.unwrap();
        clients.push(client);
    }
    for (i, client) in clients.iter().enumerate() {
        for (j, to) in names.iter().enumerate() {
            if i != j {
                client.send(to, &format!("{i}->{j}")).await.unwrap();
            }
        }
    }
    for (j, client) in clients.iter().enumerate() {
        let mut got = receive(client, names.len() - 1).await;
        got.sort();
        let mut expected: Vec<String> = (0..names.len())
            .filter(|&i| i != j)
            .map(|i| format!("{i}->{j}"))
            .collect();
        expected.sort();
        assert_eq!(got, expected, "u{j}");
    }

    // A reload replaces the workers one at a time; a killed one comes back.
    let (code, out, err) = server.ctl(&["reload"]);
    assert!(code.success(), "{out}{err}");
    let killed = server.kill_worker();
    eventually("three workers again, without the killed one", async || {
        let workers = server.workers();
        workers.len() >= 3 && !workers.contains(&killed)
    })
    .await;
    let late = server.user("late").await;
    late.subscribe(0).await.unwrap();
    let u0 = server.user("u0").await;
    u0.send("late", "welcome").await.unwrap();
    assert_eq!(receive(&late, 1).await, ["welcome"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_from_one_node_works_on_another() {
    let Some(cluster) = Cluster::create() else { return };
    let a = cluster.node(&[]);
    let b = cluster.node(&[]);
    let _ = a.user("bob").await;
    let on_a = a.client().await;
    on_a.register("alice", "pw-alice").await.unwrap();
    let info = on_a.login("alice", "pw-alice").await.unwrap();
    assert!(!info.resume_token.is_empty());

    // Node A goes away; alice resumes on node B with the token A gave.
    drop(on_a);
    drop(a);
    let on_b = b.client().await;
    let resumed = on_b.resume(&info.resume_token).await.unwrap();
    assert_eq!(resumed.user_id, info.user_id);
    on_b.subscribe(0).await.unwrap();
    let bob = b.user("bob").await;
    bob.send("alice", "on b").await.unwrap();
    assert_eq!(receive(&on_b, 1).await, ["on b"]);
}

/// Waits until `node`'s `ctl sessions` lists `name` with `field` equal to
/// `value`.
async fn listed_with(node: &parley_testkit::TestServer, name: &str, field: &str, value: serde_json::Value) {
    eventually(&format!("{name} listed with {field} = {value}"), async || {
        let (code, out, _) = node.ctl(&["sessions"]);
        code.success()
            && serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|sessions| {
                sessions
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["user"] == name && s[field] == value)
            })
    })
    .await;
}

/// Waits until `node` lists `name` as online in another process. What a
/// process announces on the bus reaches the others in order, so whatever
/// it announced before that login has been counted there too.
async fn seen_elsewhere(node: &parley_testkit::TestServer, name: &str) {
    listed_with(node, name, "elsewhere", true.into()).await;
}

fn rate_limited<T: std::fmt::Debug>(result: parley_client::Result<T>) -> bool {
    match result {
        Err(e) => e.code() == Some(parley_client::ErrorCode::RateLimited),
        Ok(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_that_protect_accounts_hold_across_nodes() {
    let Some(cluster) = Cluster::create() else { return };
    let limits = [
        "--login-failures-per-account",
        "3",
        "--registrations-per-ip-per-hour",
        "3",
        "--send-rate-per-account",
        "1",
    ];
    let a = cluster.node(&limits);
    let b = cluster.node(&limits);

    // Registrations: three from this address on node A use up the
    // address's hour on node B too.
    let alice = a.client().await;
    alice.register("alice", "pw-alice").await.unwrap();
    let alice_token = alice.login("alice", "pw-alice").await.unwrap().resume_token;
    a.client().await.register("bob", "pw-bob").await.unwrap();
    a.client().await.register("r1", "pw-r").await.unwrap();
    // Failed logins: three wrong passwords for alice on node A.
    for _ in 0..3 {
        let guess = a.client().await;
        let failed = guess.login("alice", "wrong").await.unwrap_err();
        assert_eq!(failed.code(), Some(parley_client::ErrorCode::AuthFailed));
    }
    // Once node B has heard what node A said after those, it has counted
    // them: no registration from this address, no password login for alice.
    let marker = a.client().await;
    marker.login("r1", "pw-r").await.unwrap();
    seen_elsewhere(&b, "r1").await;
    assert!(rate_limited(b.client().await.register("r3", "pw-r").await));
    assert!(rate_limited(b.client().await.login("alice", "pw-alice").await));

    // The send rate: alice's ten-message burst spent through node A leaves
    // none for her session on node B. (Her session on B exists before the
    // burst; the sends reach bob on B after the word of each token spent.)
    let bob = b.client().await;
    bob.login("bob", "pw-bob").await.unwrap();
    bob.subscribe(0).await.unwrap();
    // (A resume is not held back by the account's failed logins.)
    let alice_on_b = b.client().await;
    alice_on_b.resume(&alice_token).await.expect("alice resumes on node B");
    seen_elsewhere(&a, "alice").await;
    let mut sent = 0;
    while alice.send("bob", &format!("m{sent}")).await.is_ok() {
        sent += 1;
        assert!(sent <= 20, "the send rate did not hold on node A");
    }
    assert_eq!(receive(&bob, sent).await.len(), sent);
    assert!(rate_limited(alice_on_b.send("bob", "one more").await));
}

/// Waits for the Goodbye that ends `client`'s session.
async fn goodbye(client: &Client) -> parley_client::ErrorCode {
    loop {
        match next_event(client).await {
            Event::Goodbye { code, .. } => return code,
            Event::Disconnected => panic!("disconnected without a goodbye"),
            _ => {}
        }
    }
}

/// Whether `client`'s session still answers.
async fn alive(client: &Client) -> bool {
    client.list_contacts().await.is_ok()
}

/// Waits until `node` counts `count` sessions of `name` in other processes.
async fn counted_elsewhere(node: &parley_testkit::TestServer, name: &str, count: u64) {
    listed_with(node, name, "sessions_elsewhere", count.into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_account_are_bounded_across_nodes() {
    use parley_client::ErrorCode;
    let Some(cluster) = Cluster::create() else { return };
    let limit = ["--max-sessions-per-user", "2"];
    let a = cluster.node(&limit);
    let b = cluster.node(&limit);
    a.client().await.register("carol", "pw-carol").await.unwrap();
    let login = async |node: &parley_testkit::TestServer| {
        let client = node.client().await;
        client.login("carol", "pw-carol").await.unwrap();
        client.subscribe(0).await.unwrap();
        client
    };

    // Two sessions on node B. Once node A counts both, a login on node A
    // (its only session there, which it keeps) asks node B to end its
    // oldest.
    let first = login(&b).await;
    let second = login(&b).await;
    counted_elsewhere(&a, "carol", 2).await;
    let third = login(&a).await;
    assert_eq!(goodbye(&first).await, ErrorCode::LimitReached);
    assert!(alive(&second).await && alive(&third).await);

    // Once node B counts the session on node A, a login on node B ends
    // node B's oldest there (`second`), not the one on node A.
    counted_elsewhere(&b, "carol", 1).await;
    let fourth = login(&b).await;
    assert_eq!(goodbye(&second).await, ErrorCode::LimitReached);
    assert!(alive(&third).await && alive(&fourth).await);
    counted_elsewhere(&a, "carol", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_of_two_workers_are_one_service() {
    let Some(cluster) = Cluster::create() else { return };
    let nodes: Vec<_> = (0..3).map(|_| cluster.node(&["--workers", "2"])).collect();
    for node in &nodes {
        eventually("two workers serving", async || node.workers().len() == 2).await;
    }
    // Two users per node; on each node their connections land on
    // whichever worker accepts them.
    let names: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let mut clients = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let client = nodes[i / 2].user(name).await;
        client.subscribe(0).await.unwrap();
        clients.push(client);
    }

    // Presence by consent between nodes 0 and 2.
    clients[0].add_contact("u5").await.unwrap();
    assert!(matches!(next_event(&clients[5]).await, Event::PresenceRequest { from } if from == "u0"));
    clients[5].approve_presence("u0").await.unwrap();
    assert!(matches!(next_event(&clients[0]).await, Event::PresenceApproved { name } if name == "u5"));
    assert!(matches!(next_event(&clients[0]).await, Event::Presence { name, online: true } if name == "u5"));

    // Every pair chats both ways.
    for (i, client) in clients.iter().enumerate() {
        for (j, to) in names.iter().enumerate() {
            if i != j {
                client.send(to, &format!("{i}->{j}")).await.unwrap();
            }
        }
    }
    for (j, client) in clients.iter().enumerate() {
        let got = receive(client, names.len() - 1).await;
        for i in (0..names.len()).filter(|&i| i != j) {
            assert!(got.contains(&format!("{i}->{j}")), "u{j} missed {i}->{j}: {got:?}");
        }
    }

    // A broadcast from node 1 reaches everyone on every node.
    let (code, out, err) = nodes[1].ctl(&["broadcast", "all hands"]);
    assert!(code.success(), "{out}{err}");
    for client in &clients {
        assert_eq!(receive(client, 1).await, ["all hands"]);
    }

    // Kicked from node 1: u5's session on node 2 ends, and u0 on node 0
    // sees it go offline.
    let (code, out, err) = nodes[1].ctl(&["kick", "u5"]);
    assert!(code.success(), "{out}{err}");
    assert_eq!(goodbye(&clients[5]).await, parley_client::ErrorCode::Kicked);
    loop {
        match next_event(&clients[0]).await {
            Event::Presence { name, online: false } if name == "u5" => break,
            Event::Presence { .. } => {}
            other => panic!("expected u5 to go offline, got {other:?}"),
        }
    }
}
