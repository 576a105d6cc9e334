//! Log files stay bounded under a flood: they rotate by size as well as by
//! day, rotated files are capped in number, and a line repeated faster
//! than the fixed rate is written a few times per second followed by one
//! "(N similar lines suppressed)" line.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use parley_testkit::{Store, TestServer};

/// Connections opened by the flood; each is refused and logs a line.
const FLOOD_CONNECTIONS: usize = 300;
/// Longest the flood may run.
const FLOOD_TIME: Duration = Duration::from_secs(20);
/// Size at which the test's logs rotate.
const MAX_BYTES: u64 = 2048;
/// Rotated files kept per log in the test.
const MAX_FILES: usize = 3;

/// The files of log `name` in `dir`: the current one and its rotations.
fn files_of(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == name || n.starts_with(&format!("{name}.")))
        })
        .collect();
    files.sort();
    files
}

fn all_text(dir: &Path, name: &str) -> String {
    files_of(dir, name)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

#[test]
fn a_flood_of_refused_connections_leaves_bounded_logs_with_a_suppressed_line() {
    let logs = tempfile::tempdir().unwrap();
    let log_dir = logs.path().join("logs");
    let log_dir_arg = log_dir.to_str().unwrap().to_owned();
    let max_bytes = MAX_BYTES.to_string();
    let max_files = MAX_FILES.to_string();
    let server = TestServer::start_with(
        Store::Sqlite,
        &[
            "--log-dir",
            &log_dir_arg,
            "--log-format",
            "json",
            "--max-connections-per-ip",
            "1",
            "--log-max-bytes",
            &max_bytes,
            "--log-max-files",
            &max_files,
        ],
    );
    let refused = flood_refused_connections(&server, || all_text(&log_dir, "access.log"));

    // The suppressed count is written within a second or two of the burst.
    let suppressed = parley_testkit::poll_within_blocking(Duration::from_secs(10), || {
        all_text(&log_dir, "access.log")
            .contains("similar lines suppressed")
            .then_some(())
    });
    assert!(
        suppressed.is_some(),
        "no suppressed line in:\n{}",
        all_text(&log_dir, "access.log")
    );

    let access = all_text(&log_dir, "access.log");
    let written = access.lines().filter(|l| l.contains("\"connection refused\"")).count();
    assert!(
        written < refused / 2,
        "{written} of {refused} refusals were written: the repeats were not suppressed"
    );
    for name in ["access.log", "parleyd.log"] {
        let files = files_of(&log_dir, name);
        // The current file and at most MAX_FILES rotated ones.
        assert!(files.len() <= MAX_FILES + 1, "{files:?}");
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let longest = text.lines().map(|l| l.len() as u64 + 1).max().unwrap_or(0);
            assert!(
                text.len() as u64 <= MAX_BYTES + longest,
                "{} has {} bytes",
                file.display(),
                text.len()
            );
        }
    }
    // The access log did rotate by size (its lines are well over MAX_BYTES),
    // and rotated names carry the date and a number.
    let access_files = files_of(&log_dir, "access.log");
    assert!(access_files.len() >= 2, "{access_files:?}");
    for file in &access_files[1..] {
        let name = file.file_name().unwrap().to_str().unwrap();
        let rest = name.strip_prefix("access.log.").unwrap();
        assert_eq!(rest.len(), "2026-12-01.001".len(), "{name}");
    }
}

/// Holds 127.0.0.1's only connection slot (once `log` shows it admitted),
/// then opens up to [`FLOOD_CONNECTIONS`] more, each refused BUSY, within
/// [`FLOOD_TIME`]. Returns how many were refused.
fn flood_refused_connections(server: &TestServer, log: impl Fn() -> String) -> usize {
    // One connection holds 127.0.0.1's only slot; wait until the server
    // has admitted it (its access line is written).
    let held = TcpStream::connect(&server.addr).unwrap();
    parley_testkit::wait_until_blocking("the first connection's access line", Duration::from_secs(10), || {
        log().contains("connection opened")
    });

    // The flood: every further connection from 127.0.0.1 is refused BUSY.
    let started = Instant::now();
    let mut refused = 0;
    for _ in 0..FLOOD_CONNECTIONS {
        if started.elapsed() > FLOOD_TIME {
            break;
        }
        let Ok(mut stream) = TcpStream::connect(&server.addr) else {
            continue;
        };
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut reply = Vec::new();
        // The BUSY error, then end of stream.
        if stream.read_to_end(&mut reply).is_ok() && !reply.is_empty() {
            refused += 1;
        }
    }
    assert!(
        refused >= FLOOD_CONNECTIONS / 2,
        "only {refused} connections were refused"
    );

    drop(held);
    refused
}

#[test]
fn repeats_are_suppressed_on_stderr_too() {
    // Without a log directory every line, access lines included, goes to
    // stderr (the kit's log file).
    let server = TestServer::start_with(Store::Memory, &["--max-connections-per-ip", "1"]);
    let refused = flood_refused_connections(&server, || server.log());
    let suppressed = parley_testkit::poll_within_blocking(Duration::from_secs(10), || {
        server.log().contains("similar lines suppressed").then_some(())
    });
    assert!(suppressed.is_some(), "no suppressed line in:\n{}", server.log());
    let written = server
        .log()
        .lines()
        .filter(|l| l.contains("connection refused"))
        .count();
    assert!(written < refused / 2, "{written} of {refused} refusals were written");
}

/// A parleyd whose stderr is a pipe nobody reads, stopped by its pid.
struct UnreadStderr {
    master: std::process::Child,
    /// The read end, held open and never read: the pipe fills.
    _stderr: std::io::PipeReader,
    addr: String,
}

impl Drop for UnreadStderr {
    fn drop(&mut self) {
        let master = self.master.id();
        let workers = parley_testkit::children(master);
        let signal = |pid: u32, signal| {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        };
        signal(master, nix::sys::signal::Signal::SIGTERM);
        let stopped = parley_testkit::poll_within_blocking(Duration::from_secs(15), || {
            self.master.try_wait().ok().flatten().map(|_| ())
        });
        if stopped.is_none() {
            // A server stuck in a write to its stderr does not stop.
            for pid in workers {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = self.master.kill();
            let _ = self.master.wait();
        }
    }
}

/// Every connection writes two access lines (opened, closed) to stderr
/// when there is no log directory. Written straight from the tasks that
/// serve, a stderr that stops being read (a stuck log collector, a full
/// pipe) blocked the runtime's threads in `write` once the pipe's 64 KiB
/// were full, and the server stopped answering anyone. Lines it cannot
/// write now are dropped and counted; the server keeps serving.
#[test]
fn a_stderr_nobody_reads_does_not_stall_the_server() {
    use std::io::BufRead;
    parley_testkit::ensure_parleyd();
    let data = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let mut master = std::process::Command::new(parley_testkit::binary("parleyd"))
        .args(["--listen", "127.0.0.1:0", "--store", "memory", "--http-listen", "off"])
        .arg("--data-dir")
        .arg(data.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(writer)
        .spawn()
        .unwrap();
    let stdout = master.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let addr = line
        .as_deref()
        .ok()
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("native=")))
        .map(str::to_owned);
    let server = UnreadStderr {
        master,
        _stderr: reader,
        addr: addr.unwrap_or_else(|| panic!("parleyd did not start: {line:?}")),
    };

    // About 200 bytes of access lines per connection: 2,000 connections
    // write several times what a pipe holds.
    for n in 0..2_000 {
        let mut stream = TcpStream::connect(&server.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut welcome = [0u8; 4];
        if let Err(e) = stream.read_exact(&mut welcome) {
            panic!("connection {n} got no Welcome: {e}");
        }
    }
}
