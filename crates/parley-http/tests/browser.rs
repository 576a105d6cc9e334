//! The web UI in a real browser: headless Chromium driven by playwright-core
//! (`e2e/chat.mjs`) against the real `parleyd`. Screenshots are saved under
//! the test output directory (printed). Skips with a reason when node,
//! Chromium or the e2e packages are missing, unless PARLEY_REQUIRE_SERVICES=1.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{require_or_skip, run_bounded, runs, server};

/// Longest the browser scenario may take.
const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

fn chromium() -> PathBuf {
    std::env::var_os("PARLEY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

#[test]
fn two_people_chat_in_the_browser() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    if !require_or_skip("node", runs("node"))
        || !require_or_skip("chromium", chromium().exists())
        || !require_or_skip(
            "playwright-core (npm ci in crates/parley-http/e2e)",
            e2e.join("node_modules/playwright-core").exists(),
        )
    {
        return;
    }
    let s = server(&[]);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e");
    println!("screenshots: {}", out.display());
    let mut node = Command::new("node");
    node.arg(e2e.join("chat.mjs"))
        .current_dir(&e2e)
        .env("PARLEY_URL", s.http_url())
        .env("PARLEY_E2E_OUT", &out)
        .env("PARLEY_CHROMIUM", chromium());
    let passed = run_bounded(node, SCENARIO_LIMIT);
    assert!(passed, "browser scenario failed; server log:\n{}", s.log());
    assert!(out.join("ann.png").exists() && out.join("ben.png").exists());
}
