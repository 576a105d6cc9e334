//! Observability against the real `parleyd`: `/metrics` after traffic, the
//! log directory (main log and access log, JSON, no secrets), and perf
//! logs read back by `parleyd perf summary`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::collect_pushes;
use parley_testkit::{Store, TestServer};

/// The samples of a Prometheus exposition, by series (name and labels).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

async fn scrape(server: &TestServer) -> (String, HashMap<String, f64>) {
    let response = reqwest::get(format!("{}/metrics", server.http_url())).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.text().await.unwrap();
    let samples = samples(&text);
    (text, samples)
}

/// A histogram's buckets never decrease, end with +Inf equal to _count.
fn check_histogram(samples: &HashMap<String, f64>, name: &str) -> f64 {
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(series, value)| {
            let le = series
                .strip_prefix(&format!("{name}_bucket{{le=\""))?
                .strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            Some((le, *value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "{name} has no buckets");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name} buckets decrease: {buckets:?}"
    );
    let count = samples[&format!("{name}_count")];
    assert_eq!(buckets.last().map(|b| (b.0, b.1)), Some((f64::INFINITY, count)));
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic() {
    let server = TestServer::start(Store::Sqlite);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let intruder = server.client().await;
    assert!(intruder.login("alice", "not her password").await.is_err());
    bob.subscribe(0).await.unwrap();
    for n in 0..3 {
        alice.send("bob", &format!("message {n}")).await.unwrap();
    }
    let pushed = collect_pushes(&bob, 3).await;
    let last = pushed.iter().map(|m| m.seq).max().unwrap();
    assert_eq!(bob.ack(last, vec![]).await.unwrap().acked, 3);

    let (text, m) = scrape(&server).await;
    let get = |series: &str| *m.get(series).unwrap_or_else(|| panic!("{series} missing in\n{text}"));
    assert_eq!(get("parley_registrations_total"), 2.0);
    assert_eq!(get("parley_logins_total{result=\"ok\"}"), 2.0);
    assert_eq!(get("parley_logins_total{result=\"failed\"}"), 1.0);
    assert_eq!(get("parley_logins_total{result=\"rate_limited\"}"), 0.0);
    assert_eq!(get("parley_messages_stored_total"), 3.0);
    assert!(get("parley_messages_pushed_total") >= 3.0);
    assert_eq!(get("parley_messages_acked_total"), 3.0);
    assert_eq!(get("parley_messages_resent_total"), 0.0);
    assert_eq!(get("parley_busy_replies_total"), 0.0);
    assert_eq!(get("parley_slow_consumer_pauses_total"), 0.0);
    assert_eq!(get("parley_connections_open"), 3.0);
    assert_eq!(get("parley_connections_accepted_total"), 3.0);
    assert_eq!(get("parley_sessions_online"), 2.0);
    assert_eq!(get("parley_worker_restarts_total"), 0.0);
    assert!(get("parley_worker_start_time_seconds") > 1.6e9);
    // Group commit: one commit-latency and one batch-size value per commit,
    // and the batch sizes add up to the operations committed.
    let commits = get("parley_store_commits_total");
    assert!(commits >= 5.0, "{commits}");
    assert_eq!(check_histogram(&m, "parley_store_commit_seconds"), commits);
    assert_eq!(check_histogram(&m, "parley_store_batch_size"), commits);
    assert_eq!(
        get("parley_store_batch_size_sum"),
        get("parley_store_ops_committed_total")
    );
    assert!(get("parley_store_commit_seconds_sum") > 0.0);
    // The default `sqlite_synchronous = full` fsyncs the WAL beside the
    // commits: one fsync answers one or more of them.
    let syncs = check_histogram(&m, "parley_store_sync_seconds");
    assert!(syncs >= 1.0 && syncs <= commits, "{syncs} syncs, {commits} commits");
    assert!(
        text.contains("# TYPE parley_store_commit_seconds histogram\n"),
        "{text}"
    );

    // A closed connection leaves the gauge.
    drop(intruder);
    parley_testkit::wait_until("the connection gauge to fall", Duration::from_secs(10), async || {
        let (_, m) = scrape(&server).await;
        m["parley_connections_open"] == 2.0
    })
    .await;

    // A worker the master had to restart counts; the new worker's own
    // counters start again (a counter reset, as Prometheus expects).
    let killed = server.kill_worker();
    parley_testkit::wait_until(
        "the restarted worker to be counted",
        Duration::from_secs(20),
        async || {
            if server.pid() != killed
                && let Ok(response) = reqwest::get(format!("{}/metrics", server.http_url())).await
                && let Ok(text) = response.text().await
            {
                samples(&text).get("parley_worker_restarts_total") == Some(&1.0)
            } else {
                false
            }
        },
    )
    .await;
}

/// Live delivery follows the order the store made messages durable, not
/// the order a connection happens to poll its replies in: a burst of
/// pipelined sends reaches an online recipient without a single read from
/// storage past the one that follows its subscribe. (Delivered from each
/// reply as it was polled, a burst came out partly reversed, and the
/// recipient read half of it back from storage.)
async fn pipelined_sends_reach_an_online_recipient_without_catching_up(store: Store) {
    const SENDS: usize = 600;
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    bob.subscribe(0).await.unwrap();
    // Once the first message is pushed, the read after subscribing is
    // done and pushes are live.
    alice.send("bob", "first").await.unwrap();
    collect_pushes(&bob, 1).await;
    let bodies: Vec<String> = (0..SENDS).map(|n| format!("message {n}")).collect();
    let sends = bodies.iter().map(|body| alice.send("bob", body));
    let sent = futures::future::try_join_all(sends).await.unwrap();
    let pushed = collect_pushes(&bob, SENDS).await;
    let seqs: Vec<u64> = pushed.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (2..=SENDS as u64 + 1).collect::<Vec<_>>(),
        "pushed once each, in seq order"
    );
    for (receipt, body) in sent.iter().zip(&bodies) {
        assert_eq!(&pushed[receipt.seq as usize - 2].body, body);
    }
    let (text, m) = scrape(&server).await;
    let reads = *m
        .get("parley_catch_up_reads_total")
        .unwrap_or_else(|| panic!("no catch-up counter in\n{text}"));
    assert_eq!(reads, 1.0, "only the read after subscribing");
}
every_store!(
    pipelined_sends_arrive_in_order_without_catching_up,
    pipelined_sends_reach_an_online_recipient_without_catching_up
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_switched_off_and_the_memory_store_has_no_store_series() {
    let server = TestServer::start_with(Store::Memory, &["--metrics", "false"]);
    let response = reqwest::get(format!("{}/metrics", server.http_url())).await.unwrap();
    assert_eq!(response.status(), 404);
    let on = TestServer::start(Store::Memory);
    let (text, m) = scrape(&on).await;
    assert!(!text.contains("parley_store_"), "{text}");
    assert_eq!(m["parley_worker_restarts_total"], 0.0);
}

/// Reads a log file as JSON objects, one per line.
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_directory_gets_the_log_and_an_access_log_without_secrets() {
    let logs = tempfile::tempdir().unwrap();
    let log_dir = logs.path().join("logs");
    let log_dir_arg = log_dir.to_str().unwrap().to_owned();
    let mut server = TestServer::start_with(Store::Sqlite, &["--log-dir", &log_dir_arg, "--log-format", "json"]);
    const WRONG_PASSWORD: &str = "correct-horse-battery-staple-9431";
    const BODY: &str = "the eagle lands at midnight 7781";
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let intruder = server.client().await;
    assert!(intruder.login("alice", WRONG_PASSWORD).await.is_err());
    alice.send("bob", BODY).await.unwrap();
    let fetched = bob.fetch(0, 10, false).await.unwrap();
    assert_eq!(fetched.messages[0].body, BODY);
    let health = reqwest::get(format!("{}/healthz", server.http_url())).await.unwrap();
    assert_eq!(health.status(), 200);
    drop((alice, bob, intruder));
    assert!(server.stop().success());

    let access = json_lines(&log_dir.join("access.log"));
    let main = json_lines(&log_dir.join("parleyd.log"));
    assert!(access.iter().all(|e| e["target"] == "parley::access"), "{access:?}");
    assert!(main.iter().all(|e| e["target"] != "parley::access"));
    assert!(main.iter().any(|e| e["message"] == "parleyd listening"), "{main:?}");
    let with =
        |message: &str| -> Vec<&serde_json::Value> { access.iter().filter(|e| e["message"] == message).collect() };
    assert_eq!(with("connection opened").len(), 3, "{access:?}");
    let closed = with("connection closed");
    assert_eq!(closed.len(), 3, "{access:?}");
    assert!(
        closed
            .iter()
            .all(|e| e["bytes_in"].as_u64() > Some(0) && e["bytes_out"].as_u64() > Some(0))
    );
    assert!(
        closed
            .iter()
            .all(|e| e["transport"] == "native" && e["duration_ms"].is_u64())
    );
    let logins = with("login");
    let ok: Vec<_> = logins.iter().filter(|e| e["result"] == "ok").collect();
    let failed: Vec<_> = logins.iter().filter(|e| e["result"] == "failed").collect();
    assert_eq!(ok.len(), 2, "{logins:?}");
    assert!(
        ok.iter()
            .any(|e| e["user"] == "\"alice\"" && e["mechanism"] == "SCRAM-SHA-256"),
        "{ok:?}"
    );
    assert_eq!(failed.len(), 1, "{logins:?}");
    assert_eq!(failed[0]["user"], "\"alice\"");
    assert_eq!(failed[0]["code"], "AUTH_FAILED");
    assert!(failed[0]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")));
    let http = with("http request");
    assert!(
        http.iter().any(|e| e["path"] == "\"/healthz\"" && e["status"] == 200),
        "{http:?}"
    );

    // No password, proof or body anywhere: not in the files, not on stderr.
    for text in [
        std::fs::read_to_string(log_dir.join("access.log")).unwrap(),
        std::fs::read_to_string(log_dir.join("parleyd.log")).unwrap(),
        server.log(),
    ] {
        for secret in [WRONG_PASSWORD, "pw-alice", "pw-bob", BODY, "c=biws"] {
            assert!(!text.contains(secret), "{secret:?} was logged:\n{text}");
        }
    }
    // stderr had the main log as JSON too, and no access lines (they went
    // to the access log).
    let stderr = server.log();
    assert!(
        stderr
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{stderr}"
    );
    assert!(!stderr.contains("parley::access"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_logs_record_every_request_and_the_summary_reads_them() {
    const RUN: &str = "20261201T213000Z-test01";
    let mut server = TestServer::start_with_env(Store::Sqlite, &["--perf-log", "true"], &[("PARLEYD_RUN", RUN)]);
    let pid = server.pid();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    for n in 0..5 {
        alice.send("bob", &format!("m{n}")).await.unwrap();
    }
    let batch = bob.fetch(0, 10, false).await.unwrap();
    assert_eq!(batch.messages.len(), 5);
    bob.ack(batch.messages[4].seq, vec![]).await.unwrap();
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{}/healthz", server.http_url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let unauthenticated = http
        .get(format!("{}/v1/mailbox", server.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    drop((alice, bob));
    assert!(server.stop().success());

    let perf_dir = server.data_dir.join("perf");
    let file = perf_dir.join(RUN).join(format!("{pid}.log"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let lines: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect())
        .collect();
    assert!(
        lines.iter().all(|f| f.len() == 4 && f[2].parse::<u64>().is_ok()),
        "{text}"
    );
    let count = |op: &str| lines.iter().filter(|f| f[1] == op).count();
    assert_eq!(count("send"), 5, "{text}");
    assert_eq!(count("register"), 2, "{text}");
    assert_eq!(count("login_start"), 2, "{text}");
    assert_eq!(count("login_finish"), 2, "{text}");
    assert_eq!(count("fetch"), 1, "{text}");
    assert_eq!(count("ack"), 1, "{text}");
    assert!(
        lines
            .iter()
            .any(|f| f[1] == "http GET /v1/mailbox" && f[3] == "NOT_AUTHENTICATED"),
        "{text}"
    );
    assert!(
        lines.iter().any(|f| f[1] == "http GET /healthz" && f[3] == "ok"),
        "{text}"
    );

    // A second, older run: the summary reads the latest by default.
    std::fs::create_dir_all(perf_dir.join("20250101T000000Z-old000")).unwrap();
    std::fs::write(perf_dir.join("20250101T000000Z-old000/1.log"), "t\tsend\t1\tok\n").unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(parley_testkit::binary("parleyd"))
            .args(["perf", "summary", "--dir"])
            .arg(&perf_dir)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(&[]);
    assert!(table.starts_with(&format!("run {RUN}: 1 worker file(s)")), "{table}");
    let send = table
        .lines()
        .find(|l| l.starts_with("send "))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(send.split_whitespace().nth(1), Some("5"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(json["run"], RUN);
    assert_eq!(json["malformed"], 0);
    let ops = json["operations"].as_array().unwrap();
    let op = |name: &str| {
        ops.iter()
            .find(|o| o["operation"] == name)
            .unwrap_or_else(|| panic!("{name}: {json}"))
    };
    assert_eq!(op("send")["count"], 5);
    assert_eq!(op("send")["errors"], 0);
    assert!(op("send")["p50_us"].as_u64() <= op("send")["p99_us"].as_u64());
    assert!(op("send")["p99_us"].as_u64() <= op("send")["max_us"].as_u64());
    assert_eq!(op("http GET /v1/mailbox")["errors"], 1);
    let old = run(&["20250101T000000Z-old000", "--json"]);
    assert!(old.contains("\"requests\":1"), "{old}");
}

/// `THP_enabled` of a process, from its status file: 0 when transparent huge
/// pages are off for it.
#[cfg(target_os = "linux")]
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"));
    line.unwrap_or_else(|| panic!("no THP_enabled in\n{status}"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

#[cfg(target_os = "linux")]
#[test]
fn master_and_worker_run_without_transparent_huge_pages() {
    let server = TestServer::start(Store::Memory);
    assert_eq!(thp_enabled(server.master_pid()), "0");
    assert_eq!(thp_enabled(server.pid()), "0");
}

#[cfg(target_os = "linux")]
#[test]
fn mimallocs_switch_keeps_transparent_huge_pages() {
    let server = TestServer::start_with_env(Store::Memory, &[], &[("MIMALLOC_ALLOW_THP", "1")]);
    assert_eq!(thp_enabled(server.master_pid()), "1");
    assert_eq!(thp_enabled(server.pid()), "1");
}
