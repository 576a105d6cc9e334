//! The master and its worker when the worker fails: a worker that cannot
//! start says why, a worker that served and died is replaced at once, one
//! that keeps failing to start makes the master give up, and one that stops
//! answering is killed and replaced.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use parley_client::Client;
use parley_testkit::{Store, TestServer, binary, ensure_parleyd};

/// Longest a failing start may take to end in an exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// Writes `parley.db` full of text, as a disk or an operator mistake might.
fn write_garbage_database(data_dir: &Path) {
    let garbage = "this is not a database, only some text in its place\n".repeat(200);
    std::fs::write(data_dir.join("parley.db"), garbage).unwrap();
}

/// Runs `parleyd` on port 0 over `data_dir` and waits for it to exit;
/// returns the exit code and what it wrote to stderr. Fails the test if it
/// is still running after [`EXIT_DEADLINE`].
fn run_to_exit(data_dir: &Path) -> (Option<i32>, String) {
    ensure_parleyd();
    let stderr_path = data_dir.join("stderr.txt");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(binary("parleyd"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let status = parley_testkit::wait_for_exit("parleyd", &mut child, EXIT_DEADLINE);
    (status.code(), std::fs::read_to_string(&stderr_path).unwrap_or_default())
}

/// Waits until `check` holds, polling; fails the test with `what` after `limit`.
async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    parley_testkit::wait_until(what, limit, async || check()).await
}

/// Logs in as `name` and sends `body` to `to`, retrying while the server is
/// between workers; returns the logged-in client.
async fn send_when_served(addr: &str, name: &str, to: &str, body: &str) -> Client {
    parley_testkit::poll_until(
        &format!("a worker to serve {name}'s send"),
        Duration::from_secs(20),
        async || {
            if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), Client::connect(addr)).await
                && let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(2), client.login(name, &format!("pw-{name}"))).await
                && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), client.send(to, body)).await
            {
                return Some(client);
            }
            None
        },
    )
    .await
}

/// The worker's uptime as `parleyd ctl status` reports it.
fn worker_uptime(server: &TestServer) -> Option<u64> {
    let (status, out, _) = server.ctl(&["status"]);
    if !status.success() {
        return None;
    }
    let status: serde_json::Value = serde_json::from_str(&out).ok()?;
    status["worker"]["uptime_secs"].as_u64()
}

/// A database that is not one: `parleyd` exits 1 and says so, every time
/// (the master used to kill the worker before it could print why).
#[test]
fn a_worker_that_cannot_open_the_store_says_why() {
    for attempt in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        write_garbage_database(dir.path());
        let (code, stderr) = run_to_exit(dir.path());
        assert_eq!(code, Some(1), "attempt {attempt}: {stderr}");
        assert!(
            stderr.contains("the first worker did not start") && stderr.contains("not a database"),
            "attempt {attempt}: the cause is not in stderr:\n{stderr}"
        );
        assert!(!stderr.contains("SIGKILL"), "attempt {attempt}: {stderr}");
    }
}

/// The database goes bad under a running server and its worker dies: each
/// failed restart is logged with its cause, and after a few the master gives
/// up and exits non-zero instead of retrying silently forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_gives_up_on_a_worker_that_cannot_restart() {
    let mut server = TestServer::start(Store::Sqlite);
    let _alice = server.user("alice").await;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(server.data_dir.join(format!("parley.db{suffix}")));
    }
    write_garbage_database(&server.data_dir);
    server.kill_worker();
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", server.log());
    let log = server.log();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("worker restart failed")).collect();
    assert_eq!(failures.len(), 5, "{log}");
    for line in &failures {
        assert!(
            line.contains("not a database"),
            "a failed restart without its cause: {line}"
        );
    }
    assert!(log.contains("giving up"), "{log}");
    assert!(
        log.contains("no worker could be started (5 attempts in a row failed)"),
        "{log}"
    );
}

/// A worker that served for a while and died is restarted at once, again
/// and again: the pause is for crash loops only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_served_and_died_is_restarted_without_backoff() {
    let server = TestServer::start(Store::Sqlite);
    let _alice = server.user("alice").await;
    let _bob = server.user("bob").await;
    for round in 1..=3 {
        // It has served (as the master counts it from its `ready`) for
        // longer than a crash loop's worker would.
        wait_until(Duration::from_secs(20), "the worker did not stay up", || {
            worker_uptime(&server).is_some_and(|up| up >= 2)
        })
        .await;
        let killed = server.kill_worker();
        wait_until(Duration::from_secs(20), "no new worker", || {
            let workers = server.workers();
            !workers.is_empty() && !workers.contains(&killed)
        })
        .await;
        send_when_served(&server.addr, "alice", "bob", &format!("after kill {round}")).await;
    }
    let log = server.log();
    assert_eq!(
        log.matches("worker died; restarting it now").count(),
        3,
        "every restart after a worker served should be immediate:\n{log}"
    );
    assert!(!log.contains("after a pause"), "{log}");
}

/// SIGSTOP on the worker: it stops sending heartbeats, and the master kills
/// it and starts another, which serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_replaced() {
    let server = TestServer::start_with(Store::Sqlite, &["--worker-heartbeat-timeout-secs", "1"]);
    let alice = server.user("alice").await;
    let _bob = server.user("bob").await;
    alice.send("bob", "before").await.unwrap();
    let stopped = server.signal_worker("STOP");
    wait_until(Duration::from_secs(20), "the stopped worker was not replaced", || {
        let workers = server.workers();
        !workers.is_empty() && !workers.contains(&stopped)
    })
    .await;
    send_when_served(&server.addr, "alice", "bob", "after").await;
    let log = server.log();
    assert!(log.contains("worker sent no heartbeat in time"), "{log}");
    assert!(log.contains("worker died; restarting it now"), "{log}");
}
