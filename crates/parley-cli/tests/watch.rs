//! `parley watch` as a long-running process: presence lines, and surviving
//! the server going away (stopped, killed, restarted on the same port and
//! data) without losing a message or printing one twice.

mod common;

use common::{Harness, Running, distinct_bodies, finish_watch, parse, wait_presence};
use parley_testkit::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_graceful_restart() {
    let mut h = Harness::start(Store::Sqlite);
    h.user("alice").await;
    let bob = h.user("bob").await;
    let mut watch = Running::spawn(h.command_as("alice", &["--json", "watch", "--count", "4"]));
    bob.send("alice", "one").await.expect("send");
    bob.send("alice", "two").await.expect("send");
    let mut lines = vec![parse(&watch.stdout_line().await), parse(&watch.stdout_line().await)];
    drop(bob);

    h.server.stop();
    h.server.restart();
    let bob = h.user("bob").await;
    bob.send("alice", "three").await.expect("send");
    bob.send("alice", "four").await.expect("send");

    let (code, rest, stderr) = finish_watch(&mut watch).await;
    lines.extend(rest);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(distinct_bodies(&lines), ["one", "two", "three", "four"]);
    assert!(
        stderr.contains("connection lost; reconnecting…") && stderr.contains("reconnected"),
        "{stderr}"
    );
    // The resume token outlived the restart: no password login was needed.
    assert!(!stderr.contains("could not be resumed"), "{stderr}");
    // Everything printed was acknowledged, across both connections.
    let out = h.run("alice", &["login"]).await.expect_code(0);
    assert!(out.stdout.contains("0 unread messages"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_loses_nothing_when_the_server_is_killed_with_messages_unacked() {
    let mut h = Harness::start(Store::Sqlite);
    h.user("alice").await;
    let bob = h.user("bob").await;
    let mut watch = Running::spawn(h.command_as("alice", &["--json", "watch", "--count", "4"]));
    bob.send("alice", "one").await.expect("send");
    let mut lines = vec![parse(&watch.stdout_line().await)];

    // Frozen, the watch can neither print nor acknowledge: these two are
    // stored (Sent means durable) and at most sit in its socket, unacked,
    // when the server dies without a Goodbye.
    watch.signal("STOP");
    bob.send("alice", "two").await.expect("send");
    bob.send("alice", "three").await.expect("send");
    drop(bob);
    h.server.kill();
    watch.signal("CONT");
    h.server.restart();
    let bob = h.user("bob").await;
    bob.send("alice", "four").await.expect("send");

    let (code, rest, stderr) = finish_watch(&mut watch).await;
    lines.extend(rest);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(distinct_bodies(&lines), ["one", "two", "three", "four"]);
    assert!(stderr.contains("reconnecting"), "{stderr}");
    let out = h.run("alice", &["login"]).await.expect_code(0);
    assert!(out.stdout.contains("0 unread messages"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_logs_in_with_the_password_when_the_resume_token_is_gone() {
    let mut h = Harness::start(Store::Sqlite);
    h.user("alice").await;
    let bob = h.user("bob").await;
    let mut watch = Running::spawn(h.command_as("alice", &["--json", "watch", "--count", "2"]));
    bob.send("alice", "before").await.expect("send");
    let mut lines = vec![parse(&watch.stdout_line().await)];
    drop(bob);
    // Every login gets a token and an account keeps 32 (parley-core's
    // default): these logins push out the one the watch holds.
    for _ in 0..32 {
        h.server.client().await.login("alice", "pw-alice").await.expect("login");
    }

    h.server.stop();
    h.server.restart();
    h.user("bob").await.send("alice", "after").await.expect("send");

    let (code, rest, stderr) = finish_watch(&mut watch).await;
    lines.extend(rest);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(distinct_bodies(&lines), ["before", "after"]);
    assert!(
        stderr.contains("the session could not be resumed; logging in again") && stderr.contains("reconnected"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_3_when_the_account_is_deleted() {
    let h = Harness::start(Store::Memory);
    let alice = h.user("alice").await;
    let mut watch = Running::spawn(h.command_as("alice", &["watch"]));
    assert!(watch.stderr_line().await.starts_with("watching messages for alice"));
    alice
        .delete_account("alice", "pw-alice")
        .await
        .expect("delete the account");
    let (code, rest, stderr) = finish_watch(&mut watch).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(rest.is_empty() && stderr.contains("ACCOUNT_DELETED"), "{stderr}");
    assert!(!stderr.contains("reconnecting"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_contacts_coming_and_going() {
    let h = Harness::start(Store::Memory);
    // alice watches as text, dave as JSON; both follow bob.
    drop(h.user("bob").await);
    let carol = h.user("carol").await;
    for name in ["alice", "dave"] {
        let watcher = h.user(name).await;
        watcher.add_contact("bob").await.expect("add contact");
        // Presence is by consent: bob approves, then leaves.
        h.user("bob").await.approve_presence(name).await.expect("approve");
        wait_presence(&watcher, "bob", false).await;
    }

    let mut text = Running::spawn(h.command_as("alice", &["watch"]));
    let mut json = Running::spawn(h.command_as("dave", &["watch", "--json"]));
    // Both are subscribed (and so logged in) once they print this.
    carol.send("alice", "ready?").await.expect("send");
    carol.send("dave", "ready?").await.expect("send");
    assert!(text.stdout_line().await.ends_with("carol: ready?"));
    assert_eq!(parse(&json.stdout_line().await)["body"], "ready?");

    let bob = h.user("bob").await;
    assert_eq!(text.stdout_line().await, "* bob is online");
    assert_eq!(
        parse(&json.stdout_line().await),
        serde_json::json!({ "presence": { "name": "bob", "online": true } })
    );
    drop(bob);
    assert_eq!(text.stdout_line().await, "* bob went offline");
    assert_eq!(
        parse(&json.stdout_line().await),
        serde_json::json!({ "presence": { "name": "bob", "online": false } })
    );

    for watch in [&mut text, &mut json] {
        watch.signal("TERM");
        assert_eq!(watch.exit_code().await, 0);
    }
}
