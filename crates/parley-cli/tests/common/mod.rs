//! Scenario helpers: a real `parleyd` on port 0, a private HOME so no real
//! config or history is touched, and the real `parley` binary run with a
//! time limit.
#![allow(dead_code)] // Each test file uses a different part of this module.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use parley_client::Client;
use parley_testkit::{Store, TestServer, binary};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// Longest any single `parley` run may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for one expected line or event.
pub const WAIT: Duration = Duration::from_secs(10);

/// What a finished `parley` run left behind.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }

    /// Asserts the exit code, showing everything on failure.
    pub fn expect_code(self, code: i32) -> Out {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }
}

/// One server and one private home directory.
pub struct Harness {
    pub server: TestServer,
    /// HOME for every `parley` run; XDG_CONFIG_HOME is `home/config`.
    pub home: tempfile::TempDir,
}

impl Harness {
    pub fn start(store: Store) -> Harness {
        Harness::start_with(store, &[])
    }

    /// A harness whose server gets extra flags (`--max-contacts 2`).
    pub fn start_with(store: Store, flags: &[&str]) -> Harness {
        Harness {
            server: TestServer::start_with(store, flags),
            home: tempfile::tempdir().expect("temp home"),
        }
    }

    /// A harness around a server started elsewhere (a node of a cluster).
    pub fn on(server: TestServer) -> Harness {
        Harness {
            server,
            home: tempfile::tempdir().expect("temp home"),
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.home.path().join("config")
    }

    /// A library client registered and logged in as `name` (password `pw-NAME`).
    pub async fn user(&self, name: &str) -> Client {
        self.server.user(name).await
    }

    /// `parley` with a clean environment: no PARLEY_* variables, the private
    /// home, stdin empty (so it is not a terminal and holds no password).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(binary("parley"));
        for var in [
            "PARLEY_SERVER",
            "PARLEY_USER",
            "PARLEY_PASSWORD",
            "PARLEY_CA",
            "PARLEY_TOFU",
            "PARLEY_FINGERPRINT",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.config_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// `parley --server ADDR --user NAME ARGS...` with PARLEY_PASSWORD=pw-NAME.
    pub fn command_as(&self, user: &str, args: &[&str]) -> Command {
        let mut cmd = self.command();
        cmd.args(["--server", &self.server.addr, "--user", user])
            .args(args)
            .env("PARLEY_PASSWORD", format!("pw-{user}"));
        cmd
    }

    /// `parley --server SERVER --user NAME ARGS...` with PARLEY_PASSWORD=pw-NAME,
    /// for a server address other than the plain one (`tls://...`).
    pub fn command_at(&self, server: &str, user: &str, args: &[&str]) -> Command {
        let mut cmd = self.command();
        cmd.args(["--server", server, "--user", user])
            .args(args)
            .env("PARLEY_PASSWORD", format!("pw-{user}"));
        cmd
    }

    /// Runs `command_at` to completion.
    pub async fn run_at(&self, server: &str, user: &str, args: &[&str]) -> Out {
        finish(self.command_at(server, user, args), None).await
    }

    /// Runs `command_as` to completion.
    pub async fn run(&self, user: &str, args: &[&str]) -> Out {
        finish(self.command_as(user, args), None).await
    }
}

/// Runs a command to completion within [`RUN_TIMEOUT`], feeding `stdin`.
pub async fn finish(mut cmd: Command, stdin: Option<&str>) -> Out {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("start parley");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("parley did not finish in time")
        .expect("wait for parley");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `parley` process that keeps running (`watch`), read line by line.
pub struct Running {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    pub stderr: Lines<BufReader<ChildStderr>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.spawn().expect("start parley");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        Running { child, stdout, stderr }
    }

    pub async fn stdout_line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("no line on stdout: {other:?}"),
        }
    }

    pub async fn stderr_line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.stderr.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("no line on stderr: {other:?}"),
        }
    }

    /// Every remaining stdout line, until the process closes it.
    pub async fn rest_of_stdout(&mut self) -> Vec<String> {
        rest(&mut self.stdout).await
    }

    /// Every remaining stderr line, until the process closes it.
    pub async fn rest_of_stderr(&mut self) -> Vec<String> {
        rest(&mut self.stderr).await
    }

    /// Waits for the exit code.
    pub async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(RUN_TIMEOUT, self.child.wait())
            .await
            .expect("parley did not exit in time")
            .expect("wait for parley");
        status.code().unwrap_or(-1)
    }

    /// Sends a signal by name (INT, TERM).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// Reads lines until the end of the stream, within [`RUN_TIMEOUT`].
async fn rest<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut Lines<R>) -> Vec<String> {
    let mut all = Vec::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
    };
    tokio::time::timeout(RUN_TIMEOUT, read)
        .await
        .expect("the stream did not end in time");
    all
}

/// Waits until `observer` sees `name` online (or offline): the server
/// notices connections and disconnections asynchronously.
pub async fn wait_presence(observer: &Client, name: &str, online: bool) {
    parley_testkit::wait_until(&format!("{name} to be online={online}"), WAIT, async || {
        let page = observer.list_accounts(name, "", 10).await.expect("list");
        page.accounts.iter().any(|a| a.name == name && a.online == online)
    })
    .await
}

/// `watcher`, logged in and seeing `watched`'s presence (approved), with
/// `watched` offline: the start of every presence scenario.
pub async fn watcher_of(h: &Harness, watcher: &str, watched: &str) -> Client {
    let client = h.user(watcher).await;
    let other = h.user(watched).await;
    client.add_contact(watched).await.expect("add contact");
    other.approve_presence(watcher).await.expect("approve");
    drop(other);
    wait_presence(&client, watched, false).await;
    client
}

pub fn parse(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

/// The bodies of JSON message lines, asserting their ids are all different.
pub fn distinct_bodies(lines: &[serde_json::Value]) -> Vec<String> {
    let mut ids: Vec<u64> = lines.iter().map(|l| l["id"].as_u64().expect("id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), lines.len(), "a message was printed twice: {lines:#?}");
    lines
        .iter()
        .map(|l| l["body"].as_str().expect("body").to_owned())
        .collect()
}

/// Waits for the exit and returns (exit code, every remaining stdout line
/// parsed, all of stderr).
pub async fn finish_watch(watch: &mut Running) -> (i32, Vec<serde_json::Value>, String) {
    let rest = watch.rest_of_stdout().await;
    let stderr = watch.rest_of_stderr().await.join("\n");
    let code = watch.exit_code().await;
    (code, rest.iter().map(|l| parse(l)).collect(), stderr)
}
