//! The master and its worker, seen by clients: a `parley watch` and a
//! sending client keep going across a worker killed with SIGKILL and
//! across a reload, losing nothing that was acked and seeing one
//! reconnect; the control socket's commands.

mod common;

use std::time::Duration;

use common::{Harness, Running, distinct_bodies, finish_watch, parse};
use parley_client::{Client, ErrorCode};
use parley_testkit::{Store, binary};
use serde_json::Value;

/// Messages the sender sends in each scenario.
const MESSAGES: usize = 30;
/// Pause between sends, so that the disruption lands mid-stream.
const PACE: Duration = Duration::from_millis(15);

/// Logs in as `name`, retrying while the server is between workers.
async fn connect(addr: &str, name: &str) -> Client {
    parley_testkit::poll_until(&format!("a login as {name}"), Duration::from_secs(20), async || {
        let client = Client::connect(addr).await.ok()?;
        client.login(name, &format!("pw-{name}")).await.ok()?;
        Some(client)
    })
    .await
}

/// Sends `m0..mN` to `to` in order, each until the server says it is
/// stored; a retry reuses the client message id, so nothing is stored
/// twice. Calls `midway` once, after a third was acked.
async fn send_all(addr: String, from: &str, to: &str, midway: impl FnOnce()) -> usize {
    let mut midway = Some(midway);
    let mut client = Some(connect(&addr, from).await);
    let mut retries = 0;
    for i in 0..MESSAGES {
        loop {
            let c = match client.take() {
                Some(c) => c,
                None => connect(&addr, from).await,
            };
            match c.send_with_id(to, &format!("id-{i}"), &format!("m{i}")).await {
                Ok(_) => {
                    client = Some(c);
                    break;
                }
                Err(e) => {
                    assert!(
                        e.code().is_none() || matches!(e.code(), Some(ErrorCode::ShuttingDown | ErrorCode::Busy)),
                        "unexpected send error: {e}"
                    );
                    retries += 1;
                    // deliberate: a moment before the same send again, as a
                    // client would pause after a refusal.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        if i == MESSAGES / 3
            && let Some(f) = midway.take()
        {
            f();
        }
        // deliberate: paces the load so the reload happens mid-stream.
        tokio::time::sleep(PACE).await;
    }
    retries
}

fn expected() -> Vec<String> {
    (0..MESSAGES).map(|i| format!("m{i}")).collect()
}

fn status(h: &Harness) -> Value {
    let (code, out, err) = h.server.ctl(&["status"]);
    assert!(code.success(), "ctl status: {err}");
    parse(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_restarted_and_nothing_acked_is_lost() {
    let h = Harness::start(Store::Sqlite);
    h.user("alice").await;
    h.user("bob").await;
    let first = h.server.pid();
    let count = (MESSAGES + 1).to_string();
    let mut watch = Running::spawn(h.command_as("alice", &["--json", "watch", "--count", &count]));
    // The watch is subscribed once it printed its first message.
    let bob = h.user("bob").await;
    bob.send_with_id("alice", "warm-up", "m-warm").await.expect("send");
    assert_eq!(parse(&watch.stdout_line().await)["body"], "m-warm");
    drop(bob);

    let killer = &h.server;
    let retries = send_all(h.server.addr.clone(), "bob", "alice", || {
        assert_eq!(killer.kill_worker(), first);
    })
    .await;

    let (code, lines, stderr) = finish_watch(&mut watch).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(distinct_bodies(&lines), expected(), "{stderr}");
    assert_eq!(stderr.matches("connection lost").count(), 1, "{stderr}");
    assert!(stderr.contains("reconnected"), "{stderr}");

    let st = status(&h);
    assert_eq!(st["worker_restarts"], 1, "{st}");
    let now = st["worker"]["pid"].as_u64().expect("a worker serves");
    assert_ne!(now, u64::from(first));
    assert!(h.server.log().contains("worker died"), "{}", h.server.log());
    // Every acked message is stored exactly once: the mailbox holds the
    // warm-up and the 30, nothing twice, whatever the sender retried.
    let alice = h.user("alice").await;
    let all = alice.fetch(0, 1000, true).await.expect("fetch");
    let mut stored: Vec<String> = all.messages.iter().map(|m| m.body.clone()).collect();
    stored.retain(|b| b != "m-warm");
    assert_eq!(stored, expected(), "retries: {retries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_worker_under_traffic_and_a_bad_config_is_refused() {
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("parleyd.toml");
    std::fs::write(&config, "max_body_bytes = 65536\n").expect("write config");
    let config_arg = config.to_str().expect("utf-8 path").to_owned();
    let h = Harness::start_with(Store::Sqlite, &["--config", &config_arg]);
    h.user("alice").await;
    h.user("bob").await;
    let count = (MESSAGES + 1).to_string();
    let mut watch = Running::spawn(h.command_as("alice", &["--json", "watch", "--count", &count]));
    let bob = h.user("bob").await;
    bob.send_with_id("alice", "warm-up", "m-warm").await.expect("send");
    assert_eq!(parse(&watch.stdout_line().await)["body"], "m-warm");
    drop(bob);
    let before = status(&h);

    let server = &h.server;
    let config_for_reload = config.clone();
    send_all(h.server.addr.clone(), "bob", "alice", move || {
        std::fs::write(&config_for_reload, "max_body_bytes = 2000\n").expect("rewrite config");
        let (code, out, err) = server.ctl(&["reload"]);
        assert!(code.success(), "reload: {err}");
        let reloaded = parse(&out);
        assert_eq!(reloaded["old_worker_pid"], before["worker"]["pid"], "{reloaded}");
    })
    .await;

    let (code, lines, stderr) = finish_watch(&mut watch).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(distinct_bodies(&lines), expected(), "{stderr}");
    assert!(stderr.matches("connection lost").count() <= 1, "{stderr}");

    // The new configuration is in force.
    let bob = connect(&h.server.addr, "bob").await;
    let err = bob.send("alice", &"x".repeat(3000)).await.expect_err("too large now");
    assert_eq!(err.code(), Some(ErrorCode::MessageTooLarge));

    // A broken file is refused; the running worker keeps serving.
    let generation = status(&h)["generation"].clone();
    std::fs::write(&config, "max_body_bytes = \"lots\"\nno_such_setting = 1\n").expect("break config");
    let (code, _, err) = h.server.ctl(&["reload"]);
    assert_eq!(code.code(), Some(1), "{err}");
    assert!(
        err.contains("reload refused") && err.contains("no_such_setting"),
        "{err}"
    );
    assert_eq!(status(&h)["generation"], generation);
    bob.send("alice", "still here")
        .await
        .expect("send after a refused reload");

    // SIGHUP reloads too.
    std::fs::write(&config, "max_body_bytes = 65536\n").expect("fix config");
    let master = h.server.master_pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &master])
            .status()
            .expect("kill")
            .success()
    );
    parley_testkit::wait_until("SIGHUP to reload", Duration::from_secs(20), async || {
        status(&h)["generation"] != generation
    })
    .await;
    let bob = connect(&h.server.addr, "bob").await;
    bob.send("alice", &"x".repeat(3000))
        .await
        .expect("the limit is back up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_lists_kicks_broadcasts_and_stops() {
    let mut h = Harness::start(Store::Sqlite);
    h.user("alice").await;
    let carol = h.user("carol").await;
    let mut watch = Running::spawn(h.command_as("alice", &["--json", "watch"]));
    // Wait until alice's watch is online.
    parley_testkit::wait_until("alice's watch to be online", Duration::from_secs(20), async || {
        let (_, out, _) = h.server.ctl(&["sessions"]);
        parse(&out)
            .as_array()
            .is_some_and(|users| users.iter().any(|u| u["user"] == "alice"))
    })
    .await;
    let (_, out, _) = h.server.ctl(&["sessions"]);
    let users = parse(&out);
    assert!(
        users
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"user": "alice", "sessions": 1})),
        "{users}"
    );
    assert!(
        users
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"user": "carol", "sessions": 1})),
        "{users}"
    );

    // The socket is its owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(h.server.ctl_socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Another user cannot reach it (when this test can become one).
    if let Some(code) = ctl_as_nobody(&h) {
        assert_eq!(code, 3, "another user reached the control socket");
    }

    // A broadcast is a stored message for everyone online.
    let (code, out, err) = h.server.ctl(&["broadcast", "maintenance", "at", "noon"]);
    assert!(code.success(), "{err}");
    let done = parse(&out);
    assert_eq!(done["recipients"], 2, "{done}");
    assert_eq!(done["stored"], 2, "{done}");
    let line = parse(&watch.stdout_line().await);
    assert_eq!(line["body"], "maintenance at noon");
    assert_eq!(line["from"], "system:admin", "{line}");
    let carols = carol.fetch(0, 10, false).await.expect("fetch");
    assert_eq!(carols.messages[0].body, "maintenance at noon");
    // Bad input changes nothing.
    let (code, _, err) = h.server.ctl(&["kick", "nobody-here"]);
    assert_eq!(code.code(), Some(1));
    assert!(err.contains("no such user"), "{err}");

    // Kicked, the watch ends and does not reconnect by itself.
    let (code, out, err) = h.server.ctl(&["kick", "ALICE"]);
    assert!(code.success(), "{err}");
    assert_eq!(parse(&out)["sessions"], 1);
    let (code, _, stderr) = finish_watch(&mut watch).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("KICKED"), "{stderr}");
    assert!(!stderr.contains("reconnected"), "{stderr}");

    // Stop: the master and its worker exit, and the socket is gone.
    let worker = h.server.pid();
    let (code, _, err) = h.server.ctl(&["stop"]);
    assert!(code.success(), "{err}");
    let status = h.server.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(!std::path::Path::new(&format!("/proc/{worker}/status")).exists() || zombie(worker));
    assert!(!h.server.ctl_socket().exists());
    let (code, _, err) = h.server.ctl(&["status"]);
    assert_eq!(code.code(), Some(3), "{err}");
}

/// `parleyd ctl status` run as the user nobody, with the socket's
/// directory opened to everyone so that only the socket's own mode and the
/// server's check stand in the way. None where setpriv or root is missing.
fn ctl_as_nobody(h: &Harness) -> Option<i32> {
    use std::os::unix::fs::PermissionsExt;
    let dir = h.server.ctl_socket().parent()?.to_owned();
    let old = std::fs::metadata(&dir).ok()?.permissions();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).ok()?;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary("parleyd"))
        .args(["ctl", "--ctl-socket"])
        .arg(h.server.ctl_socket())
        .arg("status")
        .output();
    let _ = std::fs::set_permissions(&dir, old);
    let out = out.ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    // setpriv itself failed (not root): nothing was tested.
    if err.contains("setpriv:") {
        return None;
    }
    assert!(err.contains("ermission denied"), "{err}");
    out.status.code()
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| s.contains("State:\tZ"))
}

#[test]
fn more_than_one_worker_without_a_shared_store_and_the_bus_is_refused_with_what_to_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(binary("parleyd"))
            .args(["--workers", "2", "--listen", "127.0.0.1:0", "--http-listen", "off"])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("run parleyd");
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[]);
    assert!(err.contains("workers: 2 needs store = \"postgres\""), "{err}");
    assert!(err.contains("which sqlite is not"), "{err}");
    assert!(err.contains("workers: 2 needs the bus"), "{err}");
    let err = run(&["--store", "memory", "--bus", "nats://127.0.0.1:4222"]);
    assert!(err.contains("which memory is not"), "{err}");
    assert!(!err.contains("needs the bus"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_master_and_its_worker_gracefully() {
    let mut h = Harness::start(Store::Sqlite);
    let bob = h.user("bob").await;
    h.user("alice").await;
    bob.send("alice", "before the stop").await.expect("send");
    let worker = h.server.pid();
    let master = h.server.master_pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &master])
            .status()
            .expect("kill")
            .success()
    );
    let status = h.server.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(!std::path::Path::new(&format!("/proc/{worker}/status")).exists() || zombie(worker));
    let log = h.server.log();
    assert!(
        log.contains("SIGINT: stopping") && log.contains("worker stopped"),
        "{log}"
    );
    assert!(!log.contains("worker died"), "{log}");
    // Nothing was lost: the next start finds the message.
    h.server.restart();
    let alice = h.user("alice").await;
    let unread = alice.fetch(0, 10, false).await.expect("fetch");
    assert_eq!(unread.messages[0].body, "before the stop");
}
