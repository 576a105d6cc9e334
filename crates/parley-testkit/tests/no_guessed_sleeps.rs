//! Tests wait for conditions, not for a guessed length of time. Every
//! `sleep(` in the workspace's test code (each crate's `tests/` and the test
//! kit itself) either polls through the kit's helpers (`wait_until`,
//! `poll_until`, ...) or is deliberately part of its scenario — letting
//! time pass to show that nothing happens, pacing a load — and says so in a
//! comment containing `deliberate:` on its line or in the comment block
//! right above it.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The `file:line` of every `sleep(` in `text` without a `deliberate:`
/// comment on its line or in the comment lines right above it.
fn guessed_sleeps(file: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if !code.contains("sleep(") || line.contains("deliberate:") {
            continue;
        }
        let explained = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with("//"))
            .any(|l| l.contains("deliberate:"));
        if !explained {
            found.push(format!("{file}:{}: {}", i + 1, line.trim()));
        }
    }
    found
}

#[test]
fn tests_poll_for_conditions_instead_of_sleeping_a_guess() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    let mut crate_dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .expect("the crates directory")
        .flatten()
        .map(|e| e.path())
        .collect();
    crate_dirs.sort();
    for dir in &crate_dirs {
        rust_files(&dir.join("tests"), &mut files);
    }
    // The kit waits on behalf of every test.
    rust_files(&crates.join("parley-testkit").join("src"), &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("parley-server/tests/reliability.rs")),
        "the scan found the test files"
    );
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a readable test file");
        let shown = file
            .strip_prefix(&crates)
            .map(|p| format!("crates/{}", p.display()))
            .unwrap_or_else(|_| file.display().to_string());
        offenders.extend(guessed_sleeps(&shown, &text));
    }
    assert!(
        offenders.is_empty(),
        "sleeps that wait for a condition by guessing; poll it with parley_testkit::wait_until / \
         poll_until (or their blocking variants), or say why the sleep is part of the scenario \
         in a `deliberate:` comment:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_scan_tells_a_guess_from_a_deliberate_pause() {
    // Written with `nap(` for `sleep(`, so that this file passes its own scan.
    let text = "\
fn f() {
    std::thread::nap(d);
    // deliberate: pacing the load.
    std::thread::nap(d);
    tokio::time::nap(d).await; // deliberate: nothing may arrive meanwhile.
    // Time passes,
    // deliberate: so that the timer fires.
    tokio::time::nap(d).await;
    // deliberate: a comment that ends before code.
    let x = 1;
    tokio::time::nap(d).await;
    // only a mention of nap( in a comment
}
"
    .replace("nap(", &format!("{}(", "sleep"));
    assert_eq!(
        guessed_sleeps("x.rs", &text),
        [
            "x.rs:2: std::thread::nap(d);".replace("nap(", &format!("{}(", "sleep")),
            "x.rs:11: tokio::time::nap(d).await;".replace("nap(", &format!("{}(", "sleep")),
        ]
    );
}
