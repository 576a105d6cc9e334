//! The web UI in a real browser: headless Chromium driven by playwright-core
//! (`e2e/chat.mjs`) against the real `parleyd`. Screenshots are saved under
//! the test output directory (printed). Also `ui/scram.js` on its own in
//! Node (`e2e/scram.test.mjs`), fed hostile server-first-messages. Skips
//! with a reason when node, Chromium or the e2e packages are missing, unless
//! PARLEY_REQUIRE_SERVICES=1.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{require_or_skip, runs};
use parley_testkit::{Store, TestServer};

/// Longest the browser scenario may take.
const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

fn chromium() -> PathBuf {
    std::env::var_os("PARLEY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Longest the scram.js checks may take.
const SCRAM_JS_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn scram_js_refuses_bad_server_first_messages_before_deriving_keys() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    if !require_or_skip("node", runs("node")) {
        return;
    }
    let mut node = Command::new("node")
        .arg(e2e.join("scram.test.mjs"))
        .current_dir(&e2e)
        .env(
            "PARLEY_SCRAM_MIN_ITERATIONS",
            parley_core::limits::MIN_SCRAM_ITERATIONS.to_string(),
        )
        .env(
            "PARLEY_SCRAM_MAX_ITERATIONS",
            parley_core::scram::MAX_ITERATIONS.to_string(),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("start node");
    let status = parley_testkit::poll_within_blocking(SCRAM_JS_LIMIT, || node.try_wait().ok().flatten());
    if status.is_none() {
        let _ = node.kill();
        let _ = node.wait();
    }
    let mut report = String::new();
    if let Some(mut stdout) = node.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut report);
    }
    println!("{report}");
    assert!(
        status.is_some_and(|s| s.success()),
        "scram.js checks failed ({status:?}):\n{report}"
    );
}

/// Whether node, Chromium and playwright-core are all here (or the reason
/// the browser tests skip).
fn browser_ready(e2e: &Path) -> bool {
    require_or_skip("node", runs("node"))
        && require_or_skip("chromium", chromium().exists())
        && require_or_skip(
            "playwright-core (npm ci in crates/parley-http/e2e)",
            e2e.join("node_modules/playwright-core").exists(),
        )
}

/// Runs one browser scenario against `s`, restarting the server whenever
/// the scenario prints PARLEY_RESTART; its exit status, or None when it ran
/// past `SCENARIO_LIMIT` and was killed.
fn run_scenario(e2e: &Path, script: &str, s: &mut TestServer, out: &Path) -> Option<std::process::ExitStatus> {
    let mut node = Command::new("node")
        .arg(e2e.join(script))
        .current_dir(e2e)
        .env("PARLEY_URL", s.http_url())
        .env("PARLEY_E2E_OUT", out)
        .env("PARLEY_CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start node");
    let mut to_node = node.stdin.take().expect("stdin");
    let from_node = node.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from_node).lines().map_while(Result::ok) {
            println!("{line}");
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + SCENARIO_LIMIT;
    let status = loop {
        if let Ok(Some(status)) = node.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100))
            && line == "PARLEY_RESTART"
        {
            assert!(s.stop().success(), "parleyd did not stop cleanly");
            s.restart();
            writeln!(to_node, "restarted").expect("tell node");
        }
    };
    drop(to_node);
    status
}

#[test]
fn two_people_chat_in_the_browser() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    if !browser_ready(&e2e) {
        return;
    }
    // SQLite, so that accounts and resume tokens survive the restart the
    // scenario asks for.
    let mut s = TestServer::start(Store::Sqlite);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e");
    println!("screenshots: {}", out.display());
    let status = run_scenario(&e2e, "chat.mjs", &mut s, &out);
    let passed = status.is_some_and(|s| s.success());
    assert!(passed, "browser scenario failed ({status:?}); server log:\n{}", s.log());
    assert!(out.join("ann.png").exists() && out.join("ben.png").exists());
}

#[test]
fn the_web_ui_warns_without_webcrypto_forgets_on_logout_and_marks_visitors() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    if !browser_ready(&e2e) {
        return;
    }
    let mut s = TestServer::start(Store::Memory);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-hardening");
    println!("screenshots: {}", out.display());
    let status = run_scenario(&e2e, "hardening.mjs", &mut s, &out);
    let passed = status.is_some_and(|s| s.success());
    assert!(
        passed,
        "browser hardening scenario failed ({status:?}); server log:\n{}",
        s.log()
    );
}
