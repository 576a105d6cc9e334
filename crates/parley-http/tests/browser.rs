//! The web UI in a real browser: headless Chromium driven by playwright-core
//! (`e2e/chat.mjs`, `e2e/hardening.mjs`, `e2e/files.mjs`, `e2e/spam.mjs`)
//! against the real `parleyd`, and for files also against the real `parley`
//! command-line client. Screenshots are saved under the test output directory (printed).
//! Also `ui/scram.js` on its own in Node (`e2e/scram.test.mjs`), fed hostile
//! server-first-messages. Skips with a reason when node, Chromium or the e2e
//! packages are missing, unless PARLEY_REQUIRE_SERVICES=1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
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

/// Runs one browser scenario against `s` (with `env` added to its
/// environment), restarting the server whenever the scenario prints
/// PARLEY_RESTART; its exit status, or None when it ran past
/// `SCENARIO_LIMIT` and was killed.
fn run_scenario(
    e2e: &Path,
    script: &str,
    s: &mut TestServer,
    out: &Path,
    env: &[(&str, &str)],
) -> Option<std::process::ExitStatus> {
    let mut node = Command::new("node")
        .arg(e2e.join(script))
        .current_dir(e2e)
        .envs(env.iter().copied())
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
    let status = run_scenario(&e2e, "chat.mjs", &mut s, &out, &[]);
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
    let status = run_scenario(&e2e, "hardening.mjs", &mut s, &out, &[]);
    let passed = status.is_some_and(|s| s.success());
    assert!(
        passed,
        "browser hardening scenario failed ({status:?}); server log:\n{}",
        s.log()
    );
}

/// The phrase the server of `e2e/spam.mjs` refuses (its blocked-words file),
/// also handed to the scenario.
const BLOCKED_PHRASE: &str = "cheap watches";

#[test]
fn the_spam_folder_holds_releases_reports_and_deletes_and_filter_refusals_are_said() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    if !browser_ready(&e2e) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let words = dir.path().join("blocked-words.txt");
    std::fs::write(&words, format!("# refused by the spam scenario\n{BLOCKED_PHRASE}\n")).expect("write the phrases");
    // Every message is held (every score is at least 0) and none is refused
    // as spam (no score reaches 2): holds do not depend on the model.
    let mut flags = parley_testkit::HOLD_EVERY_MESSAGE.to_vec();
    flags.extend(["--filter-blocked-words-file", words.to_str().expect("a UTF-8 path")]);
    let mut s = TestServer::start_with(Store::Memory, &flags);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-spam");
    println!("screenshots: {}", out.display());
    let status = run_scenario(
        &e2e,
        "spam.mjs",
        &mut s,
        &out,
        &[("PARLEY_BLOCKED_PHRASE", BLOCKED_PHRASE)],
    );
    let passed = status.is_some_and(|s| s.success());
    assert!(
        passed,
        "browser spam scenario failed ({status:?}); server log:\n{}",
        s.log()
    );
    assert!(out.join("ann-spam.png").exists() && out.join("visitor-refused.png").exists());
}

/// The relay limit `e2e/files.mjs` expects (a file above it is refused by
/// the relay, below it relayed).
const FILES_RELAY_MAX: &str = "3000000";
/// The offer limit `e2e/files.mjs` expects.
const FILES_MAX: &str = "6000000";
/// Longest the native sender may run after the browser scenario ended.
const NATIVE_SENDER_LIMIT: Duration = Duration::from_secs(30);

#[test]
fn files_go_between_browsers_through_the_relay_and_refusals_and_limits_are_said() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    if !browser_ready(&e2e) {
        return;
    }
    let mut s = TestServer::start_with(
        Store::Memory,
        &["--relay-max-file-bytes", FILES_RELAY_MAX, "--max-file-bytes", FILES_MAX],
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-files");
    println!("screenshots: {}", out.display());
    let status = run_scenario(&e2e, "files.mjs", &mut s, &out, &[]);
    let passed = status.is_some_and(|s| s.success());
    assert!(
        passed,
        "browser file scenario failed ({status:?}); server log:\n{}",
        s.log()
    );
    assert!(out.join("fay-sent.png").exists() && out.join("gus-received.png").exists());
}

#[test]
fn a_file_the_command_line_client_sends_arrives_in_the_browser() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    let parley = parley_testkit::binary("parley");
    if !browser_ready(&e2e) || !require_or_skip("the parley binary (cargo build -p parley-cli)", parley.exists()) {
        return;
    }
    let mut s = TestServer::start(Store::Memory);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        s.user("ivy").await;
        s.user("hal").await;
    });
    let home = tempfile::tempdir().expect("temp home");
    let name = "from ivy.bin";
    let file = home.path().join(name);
    let bytes: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&file, &bytes).expect("write the file");
    let stderr = home.path().join("send-file.stderr");

    // The browser announces no direct path, so the native sender relays.
    let mut sender = Command::new(&parley)
        .args(["--server", &s.addr, "--user", "ivy", "send-file", "hal"])
        .arg(&file)
        .arg("--json")
        .env_remove("PARLEY_SERVER")
        .env_remove("PARLEY_USER")
        .env("PARLEY_PASSWORD", "pw-ivy")
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("a file for stderr"))
        .spawn()
        .expect("start parley send-file");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-files-native");
    println!("screenshots: {}", out.display());
    let file_text = file.to_str().expect("a UTF-8 path");
    let env = [
        ("PARLEY_NATIVE_USER", "hal"),
        ("PARLEY_NATIVE_FROM", "ivy"),
        ("PARLEY_NATIVE_NAME", name),
        ("PARLEY_NATIVE_FILE", file_text),
    ];
    let status = run_scenario(&e2e, "files.mjs", &mut s, &out, &env);
    if !status.is_some_and(|s| s.success()) {
        // Nobody will take the file: the sender would wait for ever.
        let _ = sender.kill();
    }
    let sent = parley_testkit::wait_for_exit("parley send-file", &mut sender, NATIVE_SENDER_LIMIT);
    let mut stdout = String::new();
    if let Some(mut pipe) = sender.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    let report = format!("{stdout}{}", std::fs::read_to_string(&stderr).unwrap_or_default());
    assert!(
        status.is_some_and(|s| s.success()),
        "browser scenario failed ({status:?}); parley said:\n{report}\nserver log:\n{}",
        s.log()
    );
    assert!(sent.success(), "parley send-file failed ({sent:?}):\n{report}");
    let done: serde_json::Value = serde_json::from_str(stdout.trim()).expect("parley printed one JSON document");
    assert_eq!(done["route"], "relayed", "{report}");
    assert_eq!(done["size"], bytes.len(), "{report}");
}
