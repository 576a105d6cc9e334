//! schemathesis against the served OpenAPI document, every phase including
//! the stateful one, with every check: no server errors, no response off
//! the document, and every request the document calls valid accepted (2xx,
//! or a refusal by the state it met: 401, 404, 409, 429).
//! Bounded in examples and time. Skips with a reason when schemathesis is
//! missing, unless PARLEY_REQUIRE_SERVICES=1.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Api, require_or_skip, run_bounded, runs, server};

/// Test cases per operation and phase.
const MAX_EXAMPLES: &str = "25";
/// Time budget schemathesis gets for its run, in seconds.
const MAX_TIME_SECS: &str = "60";
/// Longest the whole run may take, with startup.
const RUN_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_conforms_to_its_openapi_document() {
    if !require_or_skip("schemathesis (pip install schemathesis)", runs("schemathesis")) {
        return;
    }
    // Generous limits, so that fuzzing meets the API rather than the throttles.
    let s = server(&[
        "--pager-per-ip-per-minute",
        "1000000",
        "--login-failures-per-ip",
        "1000000",
        "--login-failures-per-account",
        "1000000",
    ]);
    let api = Api::new(&s);
    api.register("peer", "pw").await.ok();
    let token = api.user("fuzzer").await;
    let report = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    println!("report: {}", report.display());
    std::fs::create_dir_all(&report).unwrap();
    let mut run = Command::new("schemathesis");
    // Its cache goes in the working directory: keep it out of the tree.
    run.current_dir(&report)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", s.http_url()))
        .arg("--url")
        .arg(s.http_url())
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--max-time", MAX_TIME_SECS])
        .args(["--seed", "7"])
        // One worker: the run shares the machine with the rest of the suite.
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--checks", "all"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        // These cannot be valid by construction here: each ends the session
        // the run authenticates with (so every later request is refused),
        // and the WebSocket is not a JSON operation. The Rust API tests
        // cover them.
        .args(["--exclude-operation-id", "logout"])
        .args(["--exclude-operation-id", "logoutAll"])
        .args(["--exclude-operation-id", "deleteAccount"])
        .args(["--exclude-operation-id", "websocket"])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(&report)
        .env("NO_COLOR", "1");
    let passed = tokio::task::spawn_blocking(move || run_bounded(run, RUN_LIMIT))
        .await
        .unwrap();
    assert!(
        passed,
        "schemathesis found problems (see above); server log:\n{}",
        s.log()
    );
    assert!(!s.log().contains("panicked"), "the server panicked:\n{}", s.log());
}
