//! What an operator types and reads: `parleyd ctl` and `parleyd perf
//! summary` take their flags where the README puts them, configuration
//! errors say where the bad value was set, and the start-up lines read as
//! plain facts.

use std::process::{Command, Output};

use parley_testkit::{Store, TestServer, binary, ensure_parleyd, gen_cert};

fn parleyd(args: &[&str], env: &[(&str, &str)]) -> Output {
    ensure_parleyd();
    Command::new(binary("parleyd"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run parleyd")
}

/// The log's "parleyd listening" line (the log may trail the stdout line
/// the test kit waits for by a moment).
fn listening_line(server: &TestServer) -> String {
    let line = parley_testkit::poll_within_blocking(std::time::Duration::from_secs(10), || {
        let log = server.log();
        log.lines().find(|l| l.contains("parleyd listening")).map(str::to_owned)
    });
    line.unwrap_or_else(|| panic!("no listening line in:\n{}", server.log()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `parleyd ctl status --json`, as the README writes it, and the flags of
/// `ctl` after its action in general.
#[test]
fn ctl_flags_go_before_or_after_the_action() {
    let server = TestServer::start(Store::Memory);
    let socket = server.ctl_socket().display().to_string();
    let master = server.master_pid();
    for args in [
        vec!["ctl", "--ctl-socket", &socket, "status", "--json"],
        vec!["ctl", "status", "--json", "--ctl-socket", &socket],
        vec!["ctl", "--json", "--ctl-socket", &socket, "status"],
    ] {
        let out = parleyd(&args, &[]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let status: serde_json::Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {stdout}"));
        assert_eq!(status["master_pid"].as_u64(), Some(u64::from(master)), "{stdout}");
    }
    let data_dir = server.data_dir.display().to_string();
    let out = parleyd(&["ctl", "sessions", "--data-dir", &data_dir, "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[]");
}

/// `parleyd perf summary --config FILE` reads the perf runs of the server
/// that file configures, as `parleyd ctl --config FILE` finds its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_summary_finds_the_runs_through_the_config_file() {
    let mut server = TestServer::start_with(Store::Sqlite, &["--perf-log", "true"]);
    let alice = server.user("alice").await;
    let _bob = server.user("bob").await;
    alice.send("bob", "timed").await.unwrap();
    drop(alice);
    assert!(server.stop().success());

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("parleyd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nperf_log = true\n",
            server.data_dir.display().to_string()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let out = parleyd(&["perf", "summary", "--config", &config, "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\"send\""), "{stdout}");
}

/// A bad value is reported with where it was set: environment variable,
/// flag, or file and line.
#[test]
fn config_errors_say_where_the_bad_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("parleyd.toml");
    std::fs::write(&config, "# parleyd\n\nstore = \"oracle\"\nmax_batch = 0\n").unwrap();
    let config_arg = config.display().to_string();
    let out = parleyd(
        &["--config", &config_arg, "--listen", "nowhere"],
        &[("PARLEY_MAX_CONNECTIONS", "abc")],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = |start: &str| {
        stderr
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no error for {start} in:\n{stderr}"))
            .to_owned()
    };
    assert!(
        line("max_connections:").ends_with("(from environment variable PARLEY_MAX_CONNECTIONS)"),
        "{stderr}"
    );
    assert!(line("listen:").ends_with("(from flag --listen)"), "{stderr}");
    assert!(
        line("store:").ends_with(&format!("(from {config_arg} line 3)")),
        "{stderr}"
    );
    assert!(
        line("max_batch:").ends_with(&format!("(from {config_arg} line 4)")),
        "{stderr}"
    );
}

/// The start-up lines: which listeners speak TLS, plain addresses, no
/// absent values, and the store by its setting's name with its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listening_lines_name_tls_and_the_store_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(&dir.path().join("tls"));
    let (cert_path, key_path) = (cert.cert.display().to_string(), cert.key.display().to_string());
    let server = TestServer::start_with(
        Store::Sqlite,
        &["--tls-cert", &cert_path, "--tls-key", &key_path, "--native-tls", "true"],
    );
    assert!(
        server.start_line.contains(" tls=native ") && !server.start_line.contains("tls=native,http"),
        "{}",
        server.start_line
    );
    let listening = listening_line(&server);
    assert!(!listening.contains("Some("), "{listening}");
    assert!(listening.contains(&format!("native={}", server.addr)), "{listening}");
    assert!(listening.contains("tls=native"), "{listening}");
    let database = server.data_dir.join("parley.db");
    assert!(
        listening.contains(&format!("store=sqlite {}", database.display())),
        "{listening}"
    );

    let plain = TestServer::start_with(Store::Memory, &["--http-listen", "off", "--ctl-socket", "off"]);
    assert!(!plain.start_line.contains("tls="), "{}", plain.start_line);
    let listening = listening_line(&plain);
    assert!(listening.contains("store=memory"), "{listening}");
    for absent in ["http=", "tls=", "ctl=", "None"] {
        assert!(!listening.contains(absent), "{absent} in {listening}");
    }
}
