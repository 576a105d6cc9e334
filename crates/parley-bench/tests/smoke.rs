//! Smoke runs of every scenario: a real `parleyd` on port 0 and the real
//! `parley-bench` binary with `--json`, checked for sane numbers. Each run
//! lasts a second or two with a handful of connections; the point is that
//! every scenario works end to end, not what the numbers are.

use std::process::Stdio;
use std::time::Duration;

use parley_testkit::{Store, TestServer};
use serde_json::Value;

/// Longest one bench run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Where the NATS smoke test looks for a server.
const NATS_ADDR: &str = "127.0.0.1:4222";

fn server(store: Store) -> TestServer {
    TestServer::start(store)
}

/// Runs the bench against `server`, watching its CPU and memory
/// (`--server-pid`), with `args` after those options.
async fn bench_watching(server: &TestServer, args: &[&str]) -> Value {
    let pid = server.pid().to_string();
    let mut all = vec!["--server", server.addr.as_str(), "--server-pid", &pid];
    all.extend_from_slice(args);
    bench(&all).await
}

/// Runs the bench with `args` and returns its JSON output.
async fn bench(args: &[&str]) -> Value {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley-bench"));
    command
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("parley-bench {args:?} did not finish within {RUN_TIMEOUT:?}"))
        .expect("run parley-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "parley-bench {args:?} failed: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("parley-bench {args:?} printed no JSON ({e}); stderr: {stderr}"))
}

/// The first run's numbers of the first target.
fn first_run(report: &Value) -> &Value {
    &report["results"][0]["runs"][0]
}

fn number(run: &Value, key: &str) -> f64 {
    run[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {run}"))
}

fn assert_clean_relay(run: &Value) {
    assert!(number(run, "delivered") > 0.0, "nothing delivered: {run}");
    assert_eq!(number(run, "lost"), 0.0, "lost messages: {run}");
    assert_eq!(number(run, "duplicates"), 0.0, "duplicates: {run}");
    assert_eq!(number(run, "delivered"), number(run, "stored"), "{run}");
    assert!(number(run, "latency_p99_ms") > 0.0, "{run}");
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_memory_with_runs_server_usage_and_plot() {
    let server = server(Store::Memory);
    let dir = tempfile_dir();
    let plot = dir.join("relay.svg");
    let report = bench_watching(
        &server,
        &[
            "--duration",
            "1",
            "--runs",
            "2",
            "--plot",
            plot.to_str().expect("utf-8 path"),
            "relay",
            "--pairs",
            "2",
            "--size",
            "64",
        ],
    )
    .await;
    assert_eq!(report["scenario"], "relay");
    let runs = report["results"][0]["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert_clean_relay(run);
        assert!(number(run, "server_rss_max_kib") > 0.0, "{run}");
        assert!(number(run, "server_cpu_secs") >= 0.0, "{run}");
    }
    assert!(report["results"][0]["median"]["delivered_per_sec"].as_f64().is_some());
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_sqlite_paced() {
    let server = server(Store::Sqlite);
    let report = bench(&[
        "--server",
        &server.addr,
        "--duration",
        "1",
        "relay",
        "--pairs",
        "2",
        "--rate",
        "400",
    ])
    .await;
    let run = first_run(&report);
    assert_clean_relay(run);
    assert_eq!(number(run, "target_rate"), 400.0);
    // Paced at 400/s for a second: roughly that many, never a flood.
    assert!(number(run, "sent") <= 420.0, "{run}");
}

/// QUIC and TCP to the same server in one invocation: the senders' lean
/// sockets, the receivers and the registrations all go over QUIC for the
/// `quic://` target.
#[tokio::test(flavor = "multi_thread")]
async fn relay_over_quic_against_tcp() {
    let (server, quic, dir) = quic_server();
    let report = bench(&[
        "--server",
        &quic,
        "--duration",
        "1",
        "relay",
        "--pairs",
        "2",
        "--peer-server",
        &server.addr,
    ])
    .await;
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{report}");
    for result in results {
        assert_clean_relay(&result["runs"][0]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A memory-store server with QUIC on (TLS for QUIC only: its TCP
/// listener stays plaintext), its `quic://` address, and the directory
/// holding its certificate.
fn quic_server() -> (TestServer, String, std::path::PathBuf) {
    let dir = tempfile_dir();
    let pair = parley_testkit::gen_cert(&dir.join("certs"));
    let (cert, key) = (pair.cert.display().to_string(), pair.key.display().to_string());
    let flags = ["--tls-cert", &cert, "--tls-key", &key, "--quic-listen", "127.0.0.1:0"];
    let server = TestServer::start_with(Store::Memory, &flags);
    let quic = format!("quic://{}", server.quic_addr.as_deref().expect("QUIC is on"));
    (server, quic, dir)
}

/// The bench talks to parleyd only, so a parleyd on PostgreSQL is measured
/// like any other.
#[tokio::test(flavor = "multi_thread")]
async fn relay_postgres() {
    if !Store::Postgres.available() {
        return;
    }
    let server = server(Store::Postgres);
    let report = bench(&["--server", &server.addr, "--duration", "1", "relay", "--pairs", "2"]).await;
    assert_clean_relay(first_run(&report));
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_against_nats() {
    if nats_or_skip().await.is_none() {
        return;
    }
    let report = bench(&[
        "--duration",
        "1",
        "relay",
        "--pairs",
        "2",
        "--target",
        &format!("nats://{NATS_ADDR}"),
    ])
    .await;
    assert_eq!(report["results"][0]["target"], "nats");
    let run = first_run(&report);
    assert!(number(run, "delivered") > 0.0, "{run}");
    assert_eq!(number(run, "duplicates"), 0.0, "{run}");
}

/// The durable peer: a stream of the run's own, acknowledged publishes and
/// one pull consumer per receiver; nothing lost or repeated, and the
/// stream gone once the run is over.
#[tokio::test(flavor = "multi_thread")]
async fn relay_against_jetstream_leaves_no_stream() {
    let Some(jetstream) = jetstream_or_skip().await else {
        return;
    };
    let report = bench(&[
        "--duration",
        "1",
        "relay",
        "--pairs",
        "2",
        "--window",
        "32",
        "--target",
        &format!("jetstream://{NATS_ADDR}"),
    ])
    .await;
    assert_eq!(report["results"][0]["target"], "jetstream");
    assert_eq!(report["params"]["jetstream_sync"], "server default (sync_interval 2m)");
    let run = first_run(&report);
    assert_clean_relay(run);
    let stream = run["jetstream_stream"].as_str().expect("the run names its stream");
    // Only the server's own "stream not found" proves it gone: a failed
    // request or an answer the client cannot read proves nothing.
    use async_nats::jetstream::{ErrorCode, context::GetStreamErrorKind};
    match jetstream.get_stream(stream).await {
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {}
        Err(e) => panic!("asking for stream {stream}: {e}"),
        Ok(_) => panic!("stream {stream} is still there after the run"),
    }
}

/// Skips the test, saying why, unless `PARLEY_REQUIRE_SERVICES=1`, when
/// it fails instead.
fn skip(why: &str) {
    assert!(
        std::env::var("PARLEY_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "required (PARLEY_REQUIRE_SERVICES=1), but {why}"
    );
    println!("skipped: {why}");
}

/// A client of the NATS at [`NATS_ADDR`], or None (the test skips).
async fn nats_or_skip() -> Option<async_nats::Client> {
    match tokio::time::timeout(Duration::from_secs(2), async_nats::connect(NATS_ADDR)).await {
        Ok(Ok(client)) => Some(client),
        _ => {
            skip(&format!("no NATS server accepts connections at {NATS_ADDR}"));
            None
        }
    }
}

/// A JetStream context on the NATS at [`NATS_ADDR`], or None (the test
/// skips).
async fn jetstream_or_skip() -> Option<async_nats::jetstream::Context> {
    let client = nats_or_skip().await?;
    // Without JetStream nobody answers its API ("no responders").
    if let Err(e) = client.request("$JS.API.INFO", "".into()).await {
        skip(&format!("NATS at {NATS_ADDR} runs without JetStream ({e})"));
        return None;
    }
    Some(async_nats::jetstream::new(client))
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_reports_memory_per_connection() {
    let server = server(Store::Memory);
    let report = bench_watching(
        &server,
        &["idle", "--connections", "30", "--per-account", "10", "--hold", "0.5"],
    )
    .await;
    let run = first_run(&report);
    assert_eq!(number(run, "opened"), 30.0, "{run}");
    assert_eq!(number(run, "failed"), 0.0, "{run}");
    assert_eq!(number(run, "alive_at_end"), 30.0, "{run}");
    assert_eq!(number(run, "accounts"), 3.0, "{run}");
    number(run, "rss_per_connection_kib");
    assert!(number(run, "login_p99_ms") > 0.0, "{run}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_over_quic_in_two_processes() {
    let (server, quic, dir) = quic_server();
    let pid = server.pid().to_string();
    let report = bench(&[
        "--server",
        &quic,
        "--server-pid",
        &pid,
        "idle",
        "--connections",
        "30",
        "--per-account",
        "10",
        "--processes",
        "2",
        "--hold",
        "0.5",
    ])
    .await;
    let run = first_run(&report);
    assert_eq!(number(run, "opened"), 30.0, "{run}");
    assert_eq!(number(run, "alive_at_end"), 30.0, "{run}");
    number(run, "rss_per_connection_kib");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_splits_into_processes_and_source_addresses() {
    // All 40 connections are one account's sessions: more than the
    // default max_sessions_per_user (32), which would end the oldest.
    let server = TestServer::start_with(Store::Memory, &["--max-sessions-per-user", "100"]);
    let report = bench(&[
        "--server",
        &server.addr,
        "idle",
        "--connections",
        "40",
        "--processes",
        "2",
        "--source-addrs",
        "2",
        "--hold",
        "0.5",
    ])
    .await;
    let run = first_run(&report);
    assert_eq!(number(run, "processes"), 2.0, "{run}");
    assert_eq!(number(run, "source_addrs"), 2.0, "{run}");
    assert_eq!(number(run, "opened"), 40.0, "{run}");
    assert_eq!(number(run, "alive_at_end"), 40.0, "{run}");
}

/// Both kinds of login, with resume connections ended either way, and the
/// server's CPU per resume login (each connection a new login on the
/// server, whether it ends with a reset or a FIN).
#[tokio::test(flavor = "multi_thread")]
async fn login_storm_measures_both_kinds() {
    let server = server(Store::Memory);
    for close in ["reset", "fin"] {
        let report = bench_watching(
            &server,
            &["--duration", "1", "login", "--clients", "2", "--resume-close", close],
        )
        .await;
        let run = first_run(&report);
        assert!(number(run, "scram_logins_per_sec") > 0.0, "{close}: {run}");
        assert!(number(run, "resume_logins_per_sec") > 0.0, "{close}: {run}");
        assert!(number(run, "scram_iterations") >= 4096.0, "{close}: {run}");
        assert_eq!(number(run, "scram_errors"), 0.0, "{close}: {run}");
        assert_eq!(number(run, "resume_errors"), 0.0, "{close}: {run}");
        assert!(number(run, "resume_server_cpu_secs") >= 0.0, "{close}: {run}");
        assert!(number(run, "resume_bench_cpu_us_per_login") > 0.0, "{close}: {run}");
        // The server's figures come from the process that serves.
        assert!(number(run, "server_cpu_secs") > 0.0, "{close}: {run}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_drains_everything_stored() {
    let server = server(Store::Sqlite);
    let report = bench(&["--server", &server.addr, "offline", "--users", "5", "--messages", "300"]).await;
    let run = first_run(&report);
    assert_eq!(number(run, "stored"), 300.0, "{run}");
    assert_eq!(number(run, "drained"), number(run, "stored"), "{run}");
    assert_eq!(number(run, "unread_after"), 0.0, "{run}");
    assert_eq!(number(run, "duplicates"), 0.0, "{run}");
    assert!(
        number(run, "store_per_sec") > 0.0 && number(run, "drain_per_sec") > 0.0,
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_reports_admitted_and_busy() {
    let server = server(Store::Memory);
    let report = bench_watching(
        &server,
        &["--duration", "1", "overload", "--probe", "1", "--pairs", "3"],
    )
    .await;
    let run = first_run(&report);
    assert!(number(run, "capacity_per_sec") > 0.0, "{run}");
    assert!(number(run, "admitted") + number(run, "busy") > 0.0, "{run}");
    assert!(number(run, "issued") > 0.0, "{run}");
    number(run, "rss_slope_kib_per_sec");
    number(run, "admitted_p99_ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_sends_with_the_client_ids_asked_for_and_says_so() {
    let server = server(Store::Sqlite);
    for (kind, note) in [("library", "the time, then random bits"), ("random", "128 random bits")] {
        let report = bench_watching(
            &server,
            &["--duration", "1", "relay", "--pairs", "2", "--client-ids", kind],
        )
        .await;
        let run = first_run(&report);
        assert!(number(run, "delivered_per_sec") > 0.0, "{run}");
        assert_eq!(number(run, "duplicates"), 0.0, "{run}");
        assert!(run["notes"].to_string().contains(note), "{run}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_probes_with_the_window_asked_for_and_reports_the_probes_busy_rate() {
    let server = server(Store::Memory);
    let report = bench_watching(
        &server,
        &[
            "--duration",
            "1",
            "overload",
            "--probe",
            "1",
            "--pairs",
            "2",
            "--probe-window",
            "3",
        ],
    )
    .await;
    let run = first_run(&report);
    assert!(number(run, "capacity_per_sec") > 0.0, "{run}");
    assert!(number(run, "probe_busy_per_sec") >= 0.0, "{run}");
    let notes = run["notes"].as_array().expect("notes");
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("2 pairs, window 3,"))),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn file_goes_directly_and_through_the_relay_and_only_the_relay_costs_the_server() {
    let size = 1 << 20;
    let server = TestServer::start_with(Store::Memory, &["--relay-bytes-per-sec-per-user", "0"]);
    let http = server.http_url();
    // The default way of relaying: the direct path blocked, so the sender
    // gives up on it before the relay.
    let report = bench_watching(&server, &["--runs", "2", "file", "--size", "1M", "--http", &http]).await;
    assert_eq!(report["scenario"], "file");
    let (direct, relayed) = (&report["results"][0], &report["results"][1]);
    assert_eq!(
        (direct["target"].as_str(), relayed["target"].as_str()),
        (Some("direct"), Some("relayed"))
    );
    for (target, route, relayed_bytes) in [(direct, "direct", 0.0), (relayed, "relayed", size as f64)] {
        let runs = target["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 2);
        for run in runs {
            assert_eq!(run["sender_route"], route, "{run}");
            assert_eq!(run["recipient_route"], route, "{run}");
            assert_eq!(number(run, "server_relayed_bytes"), relayed_bytes, "{run}");
            assert!(number(run, "mb_per_sec") > 0.0, "{run}");
            assert!(number(run, "server_cpu_ms") >= 0.0, "{run}");
            // The relay writes every byte once more on the recipient's connection.
            assert!(number(run, "server_wchar_bytes") >= relayed_bytes, "{run}");
        }
    }
    assert_eq!(
        report["comparison"]["relayed_bytes_ratio"].as_f64(),
        Some(0.0),
        "{report}"
    );
    let io_ratio = report["comparison"]["io_bytes_ratio"].as_f64().expect("io ratio");
    assert!(
        io_ratio < 0.1,
        "direct cost the server {io_ratio}× of the relay's bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn file_without_the_servers_numbers_still_checks_the_bytes() {
    let server = TestServer::start_with(Store::Memory, &["--relay-bytes-per-sec-per-user", "0"]);
    let report = bench(&[
        "--server",
        &server.addr,
        "file",
        "--size",
        "100000",
        "--relayed-by",
        "no-direct",
    ])
    .await;
    let relayed = &report["results"][1]["runs"][0];
    assert_eq!(relayed["recipient_route"], "relayed", "{relayed}");
    assert!(relayed.get("server_relayed_bytes").is_none(), "{relayed}");
    assert!(relayed.get("server_io_bytes").is_none(), "{relayed}");
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("no --http") && notes.contains("no --server-pid"),
        "{notes}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn file_fails_loudly_when_a_transfer_fails_or_outlasts_its_timeout() {
    // The relay refuses a file this large and no direct path is tried.
    let server = TestServer::start_with(Store::Memory, &["--relay-max-file-bytes", "1000"]);
    let stderr = bench_failing(&[
        "--server",
        &server.addr,
        "file",
        "--size",
        "100000",
        "--relayed-by",
        "no-direct",
    ])
    .await;
    assert!(
        stderr.contains("relayed transfer") && stderr.contains("cannot relay this transfer"),
        "{stderr}"
    );
    // A relay paced at 100 kB/s cannot move 1 MiB within a second.
    let server = TestServer::start_with(Store::Memory, &["--relay-bytes-per-sec-per-user", "100000"]);
    let stderr = bench_failing(&[
        "--server",
        &server.addr,
        "file",
        "--size",
        "1M",
        "--relayed-by",
        "no-direct",
        "--timeout",
        "1",
    ])
    .await;
    assert!(stderr.contains("did not finish within 1 s"), "{stderr}");
}

/// Runs the bench with `args`, expecting it to fail; its stderr.
async fn bench_failing(args: &[&str]) -> String {
    let output = tokio::time::timeout(
        RUN_TIMEOUT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_parley-bench"))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("parley-bench {args:?} did not finish within {RUN_TIMEOUT:?}"))
    .expect("run parley-bench");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "parley-bench {args:?} succeeded: {stderr}");
    stderr
}

/// A fresh directory for files a test writes.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("parley-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
