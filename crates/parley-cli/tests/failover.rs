//! Several servers (the nodes of one service on PostgreSQL and NATS):
//! `--server a,b` tries them in order and moves to the next when one is
//! gone, for one-shot commands and for `watch`, which loses nothing and
//! shows nothing twice across the move.

mod common;

use common::{Harness, Running, distinct_bodies, finish_watch, parse};
use parley_testkit::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_moves_to_another_node_when_its_node_dies() {
    let Some(cluster) = Cluster::create() else { return };
    let mut h = Harness::on(cluster.node(&[]));
    let b = cluster.node(&[]);
    let both = format!("{},{}", h.server.addr, b.addr);
    h.user("alice").await;
    let bob = b.user("bob").await;

    let mut watch = Running::spawn(h.command_at(&both, "alice", &["--json", "watch", "--count", "4"]));
    bob.send("alice", "one").await.expect("send");
    bob.send("alice", "two").await.expect("send");
    let mut lines = vec![parse(&watch.stdout_line().await), parse(&watch.stdout_line().await)];

    // The node alice's watch is on dies whole (master and workers, no
    // goodbye); bob goes on sending through the other node.
    h.server.kill();
    bob.send("alice", "three").await.expect("send");
    bob.send("alice", "four").await.expect("send");

    let (code, rest, stderr) = finish_watch(&mut watch).await;
    lines.extend(rest);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(distinct_bodies(&lines), ["one", "two", "three", "four"]);
    assert!(stderr.contains(&format!("reconnected to {}", b.addr)), "{stderr}");
    // The session was resumed on the other node with the first node's token.
    assert!(!stderr.contains("could not be resumed"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_use_the_first_server_that_answers() {
    let Some(cluster) = Cluster::create() else { return };
    let mut h = Harness::on(cluster.node(&[]));
    let b = cluster.node(&[]);
    let dead = h.server.addr.clone();
    h.user("alice").await;
    h.user("bob").await;
    h.server.kill();

    // The dead node first: the command moves on to the live one.
    let out = h
        .run_at(&format!("{dead},{}", b.addr), "bob", &["send", "alice", "hi"])
        .await
        .expect_code(0);
    assert!(out.stderr.is_empty(), "{out:#?}");

    // Through the environment as well.
    let mut cmd = h.command();
    cmd.env("PARLEY_SERVER", format!("{dead},{}", b.addr))
        .env("PARLEY_USER", "alice")
        .env("PARLEY_PASSWORD", "pw-alice")
        .args(["--json", "read"]);
    let out = common::finish(cmd, None).await.expect_code(0);
    assert!(out.stdout.contains("\"hi\""), "{out:#?}");

    // None answers: exit 7, naming each server's failure.
    let other_dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let out = h
        .run_at(&format!("{dead},{other_dead}"), "bob", &["send", "alice", "hi"])
        .await
        .expect_code(7);
    assert!(
        out.stderr.contains("no server answered") && out.stderr.contains(&dead) && out.stderr.contains(&other_dead),
        "{out:#?}"
    );
}
