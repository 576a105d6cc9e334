//! Test support shared by the workspace's integration tests: start the real
//! `parleyd` binary on port 0, learn its address from its first stdout line,
//! connect clients, stop it gracefully or kill it, restart it on the same
//! data directory.
//!
//! Every server started here is killed when its handle is dropped, so a
//! failing test never leaves a process behind. A server on PostgreSQL gets
//! a scratch schema of its own ([`postgres::Scratch`]), dropped after the
//! server is killed; tests of several servers on one database share one.
//!
//! Test servers start **without the registration and send rates**
//! (`--registrations-per-ip-per-hour 0 --send-rate-per-account 0`, see
//! [`UNLIMITED_RATES`]): most scenarios register several accounts and send
//! floods from 127.0.0.1, which the production defaults (10 registrations
//! per address per hour, 50 messages per second per account) would refuse.
//! A test that passes either flag itself, or sets its `PARLEY_*` variable
//! (in the server's environment or the test runner's), gets that value
//! instead; the tests of those limits do.
//!
//! Tests wait for conditions with the helpers of [`wait`] (`wait_until`,
//! `poll_until`, their blocking variants, `wait_for_exit`), never with a
//! sleep of a guessed length; `tests/no_guessed_sleeps.rs` holds every test
//! file to that.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use parley_client::Client;

pub mod cluster;
pub mod postgres;
pub mod proxy;
pub mod udp_proxy;
pub mod wait;

pub use wait::{
    poll_until, poll_until_blocking, poll_within, poll_within_blocking, wait_for_exit, wait_until, wait_until_blocking,
};

/// How long a server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop may take before the test fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings the kit turns off unless a test sets them: (flag, environment
/// variable, value).
pub const UNLIMITED_RATES: &[(&str, &str, &str)] = &[
    (
        "--registrations-per-ip-per-hour",
        "PARLEY_REGISTRATIONS_PER_IP_PER_HOUR",
        "0",
    ),
    ("--send-rate-per-account", "PARLEY_SEND_RATE_PER_ACCOUNT", "0"),
];

/// Which store a test server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Memory,
    Sqlite,
    /// A scratch schema in the test database (see [`postgres`]).
    Postgres,
}

impl Store {
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Sqlite => "sqlite",
            Store::Postgres => "postgres",
        }
    }

    /// Whether tests can use this store here: always, except PostgreSQL
    /// when the test database does not answer (then the reason is printed,
    /// or the test fails under `PARLEY_REQUIRE_SERVICES=1`).
    pub fn available(self) -> bool {
        self != Store::Postgres || postgres::available()
    }
}

/// Connections a test server's PostgreSQL pool may open: few, so that
/// tests running side by side stay far below the server's connection limit.
pub const TEST_POSTGRES_POOL_SIZE: &str = "2";

/// Flags that turn the spam classifier on so that it holds every message
/// (every score is at least 0) and rejects none (no score reaches 2):
/// tests of the spam folder then do not depend on what the model thinks.
pub const HOLD_EVERY_MESSAGE: &[&str] = &[
    "--filter-model",
    "builtin",
    "--filter-hold-at",
    "0",
    "--filter-reject-at",
    "2",
];

/// Path of a binary built from this workspace (`parleyd`, `parley`), found
/// next to the running test executable's `deps` directory.
pub fn binary(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// Builds `parleyd` once per test process when it is missing: `cargo test -p
/// X` builds only package X's binaries, and `parleyd` lives in
/// `parley-server`. An existing binary is used as it is — rebuilding it here
/// could replace it under other packages' running tests (`cargo nextest run
/// --workspace` builds it up to date anyway). PARLEYD_BIN, if set, names the
/// binary to use instead.
pub fn ensure_parleyd() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let parleyd = binary("parleyd");
        if std::env::var_os("PARLEYD_BIN").is_some() || parleyd.exists() {
            return;
        }
        let Some(profile_dir) = parleyd.parent() else { return };
        let Some(target_dir) = profile_dir.parent() else { return };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let mut build = Command::new(env!("CARGO"));
        build.args([
            "build",
            "--quiet",
            "-p",
            "parley-server",
            "--bin",
            "parleyd",
            "--manifest-path",
        ]);
        build.arg(&manifest).arg("--target-dir").arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo to build parleyd");
        assert!(status.success(), "building parleyd failed");
    });
}

/// A running `parleyd`.
pub struct TestServer {
    /// The server process.
    child: Option<Child>,
    /// `host:port` of the native listener.
    pub addr: String,
    /// `host:port` of the HTTP listener (None when a test turned it off
    /// with `--http-listen off`).
    pub http_addr: Option<String>,
    /// `host:port` of the QUIC listener (UDP), when a test turned it on
    /// with `--quic-listen`.
    pub quic_addr: Option<String>,
    /// Data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// Owns the temporary data directory, when the kit made it.
    _temp: Option<tempfile::TempDir>,
    /// Store kind and extra flags, for restarts.
    store: Store,
    extra: Vec<String>,
    /// Extra environment variables, for restarts too.
    env: Vec<(String, String)>,
    /// The PostgreSQL connection string, for `Store::Postgres`.
    postgres_url: Option<String>,
    /// The scratch schema the kit made for this server (none when the
    /// test shares its own between servers). Dropped after the server is
    /// killed: fields drop after `Drop::drop` ran.
    _scratch: Option<postgres::Scratch>,
    /// Everything the server wrote to stderr goes to this file.
    pub log_path: PathBuf,
    /// The first worker's pid, from the start line.
    first_worker: u32,
    /// The line the master printed on stdout once listening.
    pub start_line: String,
}

impl TestServer {
    /// Starts a server with a fresh data directory.
    pub fn start(store: Store) -> TestServer {
        TestServer::start_with(store, &[])
    }

    /// Starts a server with extra command-line flags.
    pub fn start_with(store: Store, extra: &[&str]) -> TestServer {
        TestServer::start_with_env(store, extra, &[])
    }

    /// Starts a server with extra flags and environment variables (for
    /// what a supervising process would set, such as `PARLEYD_RUN`).
    pub fn start_with_env(store: Store, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        let scratch = match store {
            Store::Postgres => Some(
                postgres::Scratch::create()
                    .expect("PostgreSQL does not answer: check Store::available() before starting a server on it"),
            ),
            _ => None,
        };
        let url = scratch.as_ref().map(|s| s.url().to_owned());
        TestServer::launch(store, extra, env, url, scratch)
    }

    /// Starts a server on the PostgreSQL database at `url` (a scratch
    /// schema's, or a proxy's in front of it), which other servers may share
    /// and which the test keeps and drops itself.
    pub fn start_on_postgres(url: &str, extra: &[&str]) -> TestServer {
        TestServer::launch(Store::Postgres, extra, &[], Some(url.to_owned()), None)
    }

    fn launch(
        store: Store,
        extra: &[&str],
        env: &[(&str, &str)],
        postgres_url: Option<String>,
        scratch: Option<postgres::Scratch>,
    ) -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().to_path_buf();
        let mut server = TestServer {
            child: None,
            addr: String::new(),
            http_addr: None,
            quic_addr: None,
            log_path: data_dir.join("parleyd.log"),
            data_dir,
            _temp: Some(temp),
            store,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            first_worker: 0,
            start_line: String::new(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            postgres_url,
            _scratch: scratch,
        };
        server.spawn(None);
        server
    }

    /// Launches the process; `ports` pins the native and HTTP ports (for restarts).
    fn spawn(&mut self, ports: Option<(u16, u16)>) {
        ensure_parleyd();
        let (port, http_port) = ports.unwrap_or((0, 0));
        let listen = format!("127.0.0.1:{port}");
        // Every test server gets its own HTTP port unless the test says
        // otherwise: the default port would collide between servers.
        let http = if self.extra.iter().any(|a| a == "--http-listen") {
            Vec::new()
        } else {
            vec!["--http-listen".to_owned(), format!("127.0.0.1:{http_port}")]
        };
        let mut rates = Vec::new();
        for (flag, var, value) in UNLIMITED_RATES {
            let set_by_test = self
                .extra
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
                || self.env.iter().any(|(k, _)| k == var)
                || std::env::var_os(var).is_some();
            if !set_by_test {
                rates.push(flag.to_string());
                rates.push(value.to_string());
            }
        }
        let mut database = Vec::new();
        if let Some(url) = &self.postgres_url {
            database.extend(["--postgres-url".to_owned(), url.clone()]);
            if !self.extra.iter().any(|a| a == "--postgres-pool-size") {
                database.extend(["--postgres-pool-size".to_owned(), TEST_POSTGRES_POOL_SIZE.to_owned()]);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut child = Command::new(binary("parleyd"))
            .args([
                "--listen",
                &listen,
                "--store",
                self.store.as_str(),
                "--log-level",
                "debug",
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&http)
            .args(&database)
            .args(&rates)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start parleyd (is it built? run the tests through cargo)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "parleyd did not start; log:\n{}",
                std::fs::read_to_string(&self.log_path).unwrap_or_default()
            )
        });
        // "parleyd listening native=ADDR [http=ADDR] [quic=ADDR] [tls=LISTENERS] master=PID worker=PID"
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_owned)
        };
        self.addr = field("native=").unwrap_or_default();
        self.http_addr = field("http=");
        self.quic_addr = field("quic=");
        self.first_worker = field("worker=").and_then(|p| p.parse().ok()).unwrap_or(0);
        self.child = Some(child);
        self.start_line = line;
    }

    /// Base URL of the HTTP listener, e.g. `http://127.0.0.1:41234`.
    pub fn http_url(&self) -> String {
        let addr = self.http_addr.as_deref().expect("the HTTP listener is on");
        format!("http://{addr}")
    }

    /// The master process's pid.
    pub fn master_pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The pid of the process that serves: the master's worker now (it
    /// changes when the master restarts or replaces its worker).
    pub fn pid(&self) -> u32 {
        let master = self.master_pid();
        children(master).into_iter().min().unwrap_or(self.first_worker)
    }

    /// The master's control socket (the default one, in the data directory).
    pub fn ctl_socket(&self) -> PathBuf {
        self.data_dir.join("parleyd.ctl")
    }

    /// Runs `parleyd ctl --json ARGS` against this server; returns the exit
    /// status and stdout.
    pub fn ctl(&self, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        let out = Command::new(binary("parleyd"))
            .arg("ctl")
            .arg("--ctl-socket")
            .arg(self.ctl_socket())
            .arg("--json")
            .args(args)
            .output()
            .expect("run parleyd ctl");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A connected, not yet logged-in client.
    pub async fn client(&self) -> Client {
        Client::connect(&self.addr).await.expect("connect")
    }

    /// A client registered (if needed) and logged in as `name`.
    pub async fn user(&self, name: &str) -> Client {
        let client = self.client().await;
        let password = format!("pw-{name}");
        match client.register(name, &password).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(parley_client::ErrorCode::NameTaken) => {}
            Err(e) => panic!("register {name}: {e}"),
        }
        client.login(name, &password).await.expect("login");
        client
    }

    /// Stops the server with SIGTERM and waits for it; returns its exit status
    /// and asserts it stopped within the timeout.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let master = self.master_pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &master]).status();
        self.wait_exit()
    }

    /// Waits for a server that was told to stop some other way (`parleyd
    /// ctl stop`) to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        wait_for_exit("parleyd", &mut child, STOP_TIMEOUT)
    }

    /// Kills the server with SIGKILL, master first (so that it restarts
    /// nothing), then its workers: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let workers = children(child.id());
            let _ = child.kill();
            let _ = child.wait();
            for pid in workers {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                wait_gone(pid);
            }
        }
    }

    /// Kills only the serving worker with SIGKILL; the master restarts it.
    /// Returns the killed pid.
    pub fn kill_worker(&self) -> u32 {
        self.signal_worker("KILL")
    }

    /// Sends `signal` (a name for kill(1): "STOP", "KILL") to the serving
    /// worker; returns its pid.
    pub fn signal_worker(&self, signal: &str) -> u32 {
        let pid = self.pid();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status();
        pid
    }

    /// The master's worker processes now (the serving one, and any still
    /// draining).
    pub fn workers(&self) -> Vec<u32> {
        children(self.master_pid())
    }

    /// Starts the server again on the same data directory and ports, with
    /// `extra` flags in place of those it was started with (another
    /// certificate, say).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        let port_of = |addr: &str| addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        let port = port_of(&self.addr).unwrap_or(0);
        let http_port = self.http_addr.as_deref().and_then(port_of).unwrap_or(0);
        // The old ports can linger briefly.
        let taken = |p: u16| p != 0 && std::net::TcpListener::bind(("127.0.0.1", p)).is_err();
        wait_until_blocking("the old ports to be free", Duration::from_secs(5), || {
            !(taken(port) || taken(http_port))
        });
        self.spawn(Some((port, http_port)));
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// The pids whose parent is `parent` (from /proc).
pub fn children(parent: u32) -> Vec<u32> {
    if parent == 0 {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    let state = rest.split_whitespace().next()?;
                    let ppid = rest.split_whitespace().nth(1)?.parse::<u32>().ok()?;
                    Some(ppid == parent && state != "Z")
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Waits until a process has gone (a zombie counts as gone).
fn wait_gone(pid: u32) {
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| Some(stat[stat.rfind(')')? + 1..].split_whitespace().next()? != "Z"))
            .unwrap_or(false)
    };
    wait_until_blocking(&format!("process {pid} to go"), Duration::from_secs(5), || !alive());
}

/// A certificate and key written by `parleyd gen-cert`.
#[derive(Clone, Debug)]
pub struct GeneratedCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// As `parleyd gen-cert` prints it: `AB:CD:...` (no `SHA256:` prefix).
    pub fingerprint: String,
}

impl GeneratedCert {
    /// The flags that turn TLS on for both listeners with this pair.
    pub fn tls_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
            "--native-tls".into(),
            "true".into(),
            "--http-tls".into(),
            "true".into(),
        ]
    }
}

/// Runs the real `parleyd gen-cert --out DIR` and reads the fingerprint it
/// prints.
pub fn gen_cert(out: &Path) -> GeneratedCert {
    ensure_parleyd();
    let output = Command::new(binary("parleyd"))
        .arg("gen-cert")
        .arg("--out")
        .arg(out)
        .output()
        .expect("run parleyd gen-cert");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "parleyd gen-cert failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fingerprint = stdout
        .lines()
        .find_map(|line| line.strip_prefix("SHA-256 fingerprint: "))
        .expect("gen-cert prints the fingerprint")
        .trim()
        .to_owned();
    let dir = std::fs::canonicalize(out).expect("gen-cert's directory");
    GeneratedCert {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        fingerprint,
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}
