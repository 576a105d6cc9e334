//! What parleyd writes to disk is readable by its own user only: the data
//! directory it creates is 0700 and every file it creates in it, in the log
//! directory and in the perf directory is 0600, whatever the umask it was
//! started with. The database holds every message body and every account's
//! SCRAM keys.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use parley_client::Client;
use parley_testkit::{binary, ensure_parleyd};

/// Longest wait for parleyd to start or stop.
const WAIT: Duration = Duration::from_secs(30);

/// A parleyd started under `sh -c 'umask 022; exec …'`, stopped with
/// SIGTERM (by its pid) when dropped.
struct Umask022Server {
    child: Child,
    addr: String,
}

impl Umask022Server {
    fn start(data_dir: &Path, log_dir: &Path, perf_dir: &Path, stderr: &Path) -> Umask022Server {
        ensure_parleyd();
        let stderr = std::fs::File::create(stderr).unwrap();
        // The shell sets the permissive umask most systems start services
        // with, then becomes parleyd; no test-side unsafe code is needed.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("umask 022 && exec \"$@\"")
            .arg("sh")
            .arg(binary("parleyd"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--store",
                "sqlite",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--log-dir")
            .arg(log_dir)
            .args(["--perf-log", "true"])
            .arg("--perf-dir")
            .arg(perf_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("parleyd did not start");
            }
        };
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("native="))
            .unwrap()
            .to_owned();
        Umask022Server { child, addr }
    }

    /// SIGTERM to the master (its pid), then waits for it to exit.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if parley_testkit::poll_within_blocking(WAIT, || self.child.try_wait().ok().flatten()).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Umask022Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Every file and directory under `root` with its permission bits.
fn modes(root: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            let is_dir = meta.is_dir();
            found.push((entry.path(), meta.permissions().mode() & 0o777, is_dir));
            if is_dir {
                stack.push(entry.path());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_every_file_in_it_are_private_under_umask_022() {
    let temp = tempfile::tempdir().unwrap();
    // Paths that do not exist yet: parleyd makes them itself.
    let data_dir = temp.path().join("data");
    let log_dir = temp.path().join("logs");
    let perf_dir = temp.path().join("perf");
    let mut server = Umask022Server::start(&data_dir, &log_dir, &perf_dir, &temp.path().join("stderr"));

    // Some traffic, so that the database, its WAL, the logs and the perf log
    // all have content.
    let alice = Client::connect(&server.addr).await.unwrap();
    alice.register("alice", "pw-alice-1").await.unwrap();
    alice.login("alice", "pw-alice-1").await.unwrap();
    alice.send("alice", "a secret").await.unwrap();

    let mut seen = Vec::new();
    for (root, expect_db) in [(&data_dir, true), (&log_dir, false), (&perf_dir, false)] {
        let mode = std::fs::metadata(root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", root.display());
        let found = modes(root);
        for (path, mode, is_dir) in &found {
            let want = if *is_dir { 0o700 } else { 0o600 };
            assert_eq!(*mode, want, "{} is {mode:o}", path.display());
        }
        let names: Vec<String> = found
            .iter()
            .filter_map(|(p, _, _)| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        if expect_db {
            for name in ["parley.db", "parley.db-wal", "server.secret", "parleyd.ctl"] {
                assert!(names.iter().any(|n| n == name), "no {name} in {names:?}");
            }
        }
        seen.extend(names);
    }
    for name in ["parleyd.log", "access.log"] {
        assert!(seen.iter().any(|n| n == name), "no {name} in {seen:?}");
    }
    assert!(
        seen.iter()
            .any(|n| n.ends_with(".log") && n.chars().next().is_some_and(|c| c.is_ascii_digit())),
        "no perf log in {seen:?}"
    );
    drop(alice);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_data_directory_open_to_others_is_warned_about_and_left_alone() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log_dir = temp.path().join("logs");
    let perf_dir = temp.path().join("perf");
    let stderr = temp.path().join("stderr");
    let mut server = Umask022Server::start(&data_dir, &log_dir, &perf_dir, &stderr);
    server.stop();
    let mode = std::fs::metadata(&data_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "the operator's directory was changed");
    let log = std::fs::read_to_string(log_dir.join("parleyd.log")).unwrap();
    let warning = format!("chmod 700 {}", data_dir.display());
    assert!(log.contains(&warning), "no warning naming `{warning}` in:\n{log}");
}
