//! Checks on the repository itself: what the manifests, the codemap, the
//! README and CI promise about each other. Each test names what to fix.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn crates() -> Vec<PathBuf> {
    let mut crates: Vec<PathBuf> = fs::read_dir(root().join("crates"))
        .expect("crates/")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    crates
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|name| name != "node_modules") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn manifest(dir: &Path) -> toml::Table {
    read(&dir.join("Cargo.toml")).parse().expect("Cargo.toml parses")
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .expect("a crate directory")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_crate_says_which_rust_it_needs_and_ci_checks_it() {
    let workspace = manifest(&root());
    let version = workspace["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("[workspace.package] rust-version");
    let parts: Vec<&str> = version.split('.').collect();
    assert!(
        parts.len() == 2 && parts.iter().all(|part| part.parse::<u32>().is_ok()),
        "rust-version {version:?} should be MAJOR.MINOR"
    );
    for dir in crates() {
        let package = &manifest(&dir)["package"];
        let inherits = package
            .get("rust-version")
            .and_then(|value| value.get("workspace"))
            .and_then(toml::Value::as_bool);
        assert_eq!(
            inherits,
            Some(true),
            "{}: add `rust-version.workspace = true` to [package]",
            name_of(&dir)
        );
    }
    let ci = read(&root().join(".ci/run"));
    assert!(
        ci.lines().any(|line| line.trim() == "scripts/check-rust-version"),
        ".ci/run must run scripts/check-rust-version"
    );
    assert!(root().join("scripts/check-rust-version").is_file());
}

/// How a dependency's name appears in Rust code that uses it.
fn used_in(code: &str, dependency: &str) -> bool {
    let name = dependency.replace('-', "_");
    [
        format!("{name}::"),
        format!("use {name}"),
        format!("extern crate {name}"),
    ]
    .iter()
    .any(|form| {
        code.match_indices(form.as_str()).any(|(at, _)| {
            // Not the tail of a longer path or name (`x_tokio::`).
            !code[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    })
}

#[test]
fn every_dependency_is_used_where_it_is_declared() {
    let declared = manifest(&root());
    let in_workspace: BTreeSet<String> = declared["workspace"]["dependencies"]
        .as_table()
        .expect("[workspace.dependencies]")
        .keys()
        .cloned()
        .collect();
    let mut used_somewhere = BTreeSet::new();
    let mut unused = Vec::new();
    for dir in crates() {
        let crate_name = name_of(&dir);
        let text = |dirs: &[&str]| -> String {
            dirs.iter()
                .flat_map(|sub| {
                    let path = dir.join(sub);
                    if path.is_file() { vec![path] } else { rust_files(&path) }
                })
                .map(|path| read(&path))
                .collect()
        };
        let code = text(&["src"]);
        let test_code = text(&["src", "tests", "benches", "examples"]);
        let build_code = text(&["build.rs"]);
        let table = manifest(&dir);
        // A dev-dependency declared exactly as a normal one adds nothing.
        if let (Some(normal), Some(dev)) = (
            table.get("dependencies").and_then(toml::Value::as_table),
            table.get("dev-dependencies").and_then(toml::Value::as_table),
        ) {
            for (dependency, spec) in dev {
                if normal.get(dependency) == Some(spec) {
                    unused.push(format!(
                        "{crate_name} [dev-dependencies] {dependency} (already a dependency)"
                    ));
                }
            }
        }
        for (section, code) in [
            ("dependencies", &code),
            ("dev-dependencies", &test_code),
            ("build-dependencies", &build_code),
        ] {
            let Some(dependencies) = table.get(section).and_then(toml::Value::as_table) else {
                continue;
            };
            for dependency in dependencies.keys() {
                used_somewhere.insert(dependency.clone());
                if !used_in(code, dependency) {
                    unused.push(format!("{crate_name} [{section}] {dependency}"));
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "declared but never used (remove them):\n{}",
        unused.join("\n")
    );
    let orphans: Vec<&String> = in_workspace.difference(&used_somewhere).collect();
    assert!(
        orphans.is_empty(),
        "[workspace.dependencies] that no crate takes (remove them): {orphans:?}"
    );
}

#[test]
fn every_source_file_is_named_in_the_codemap() {
    let architecture = read(&root().join("ARCHITECTURE.md"));
    let start = architecture.find("\n## Codemap").expect("a Codemap section");
    let codemap = &architecture[start..];
    let codemap = &codemap[..codemap[1..].find("\n## ").map_or(codemap.len(), |end| end + 1)];
    let mut missing = Vec::new();
    for dir in crates() {
        let crate_name = name_of(&dir);
        // The crate's own part of the codemap: from its bullet to the next
        // top-level bullet.
        let Some(at) = codemap.find(&format!("- `crates/{crate_name}`")) else {
            missing.push(format!("crates/{crate_name} (no bullet of its own)"));
            continue;
        };
        let part = &codemap[at..];
        let part = &part[..part[1..].find("\n- ").map_or(part.len(), |end| end + 1)];
        let src = dir.join("src");
        for file in rust_files(&src) {
            let relative = file
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            // A module directory's `mod.rs` is named by the directory.
            let named = match relative.strip_suffix("mod.rs") {
                Some(directory) if !directory.is_empty() => part.contains(&format!("`{directory}`")),
                _ => part.contains(&format!("`{relative}`")),
            };
            if !named {
                missing.push(format!("crates/{crate_name}/src/{relative}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's codemap should say what each of these is, in its crate's bullet:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_readme_test_command_installs_its_runner_and_is_what_ci_runs() {
    let readme = read(&root().join("README.md"));
    let after = readme.split("Run every test").nth(1).expect("README: `Run every test`");
    let block = after.split("```sh\n").nth(1).and_then(|rest| rest.split("```").next());
    let command = block.expect("a ```sh block after `Run every test`").trim();
    assert_eq!(command, "scripts/test", "the README's test command");
    let ci = read(&root().join(".ci/run"));
    let last = ci
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty() && !line.starts_with('#'))
        .expect(".ci/run has commands");
    assert_eq!(last, command, ".ci/run must end by running the README's test command");
    let script = read(&root().join("scripts/test"));
    assert!(
        script.contains("cargo install cargo-nextest"),
        "scripts/test must install the test runner where it is missing"
    );
}

#[test]
fn one_poison_tolerant_lock_helper() {
    let mut copies = Vec::new();
    for dir in crates() {
        for file in rust_files(&dir.join("src")) {
            if file.ends_with("parley-core/src/sync.rs") {
                continue;
            }
            for (number, line) in read(&file).lines().enumerate() {
                let recovers = line.contains("into_inner()") || line.contains("PoisonError::into_inner");
                let takes_lock = [".lock()", ".read()", ".write()"]
                    .iter()
                    .any(|call| line.contains(call));
                if recovers && takes_lock {
                    copies.push(format!("{}:{}", file.display(), number + 1));
                }
            }
        }
    }
    assert!(
        copies.is_empty(),
        "take locks with parley_core::sync::{{lock, read, write}} instead:\n{}",
        copies.join("\n")
    );
}
