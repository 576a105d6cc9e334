//! File transfer across real NATs, in network namespaces this test builds:
//! the direct path works between two hosts that sit behind two different
//! Linux routers doing MASQUERADE, and the server relays when UDP cannot
//! cross.
//!
//! ```text
//!                       ns wan: parleyd on 10.231.0.1 (bridge br0)
//!                 ┌───────────────┴───────────────┐
//!   10.231.0.2 ns nata (router)       ns natb (router) 10.231.0.3
//!   10.231.1.1   MASQUERADE             MASQUERADE     10.231.2.1
//!                 │                               │
//!   10.231.1.2 ns hosta: alice         ns hostb: bob   10.231.2.2
//! ```
//!
//! The routers know no route to each other's home network, so neither host
//! can be reached unsolicited: a direct path exists only because the server
//! tells each side the other's public address (the address it saw the
//! other's TCP connection come from, with the announced UDP port, which
//! MASQUERADE keeps when it is free) and both sides dial at once, each
//! opening its own router for the other's packets (hole punching). The
//! real binaries run inside the namespaces (`ip netns exec`): `parleyd`,
//! and `parley send-file` / `files` / `accept-file --json`. The server's
//! relayed-byte counter comes from `parleyd ctl status` over its control
//! socket, a file the test reaches from outside the namespaces.
//!
//! The routers of the direct case also drop packets from the WAN that
//! would open a new flow to the router itself, as home routers do
//! (OpenWrt's wan zone refuses input). Without that, hole punching between
//! two Linux routers usually collides in conntrack and the server relays:
//! see [`behind_routers_that_take_unsolicited_packets_the_file_arrives_by_either_route`].
//!
//! Needs root, `ip` (iproute2) and `iptables`; skipped, saying why, when
//! any is missing or the kernel cannot make namespaces or NAT, unless
//! `PARLEY_REQUIRE_SERVICES=1` (as in CI), which makes that a failure.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parley_testkit::{binary, children, ensure_parleyd, poll_within_blocking, wait_for_exit};
use rand::RngCore;
use serde_json::Value;

/// The whole scenario, from the first namespace to the last check.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// The file sent: a few MiB of random bytes, so a path that carried part
/// of it and broke would show.
const FILE_BYTES: usize = 4 << 20;
/// The server, on the WAN segment. Port 0: the test reads the real one
/// from the start line.
const SERVER_IP: &str = "10.231.0.1";
/// Every account's password (the CLI reads it from PARLEY_PASSWORD).
const PASSWORD: &str = "nat-test-password";
/// Each router's NAT: what leaves by the WAN takes the router's address,
/// and its port where that is free.
const MASQUERADE: &str = "-t nat -A POSTROUTING -o wan -j MASQUERADE";
/// A home router's firewall: a packet from the WAN that would open a new
/// flow to the router itself is dropped (replies and forwarded flows pass).
const DROP_UNSOLICITED: &str = "-A INPUT -i wan -m conntrack --ctstate NEW -j DROP";
/// What a router drops to block every UDP path through it.
const DROP_FORWARDED_UDP: &str = "-A FORWARD -p udp -j DROP";

/// One home network: a router with a WAN and a LAN side, and a host on the LAN.
struct Site {
    /// Namespace names are `{lab tag}-{router}` and `{lab tag}-{host}`.
    router: &'static str,
    host: &'static str,
    /// The router's address on the WAN: the host's public address.
    public_ip: &'static str,
    /// The LAN is 10.231.{lan}.0/24: the router is .1, the host .2.
    lan: u8,
    /// Who uses this host.
    user: &'static str,
}

const ALICE: Site = Site {
    router: "nata",
    host: "hosta",
    public_ip: "10.231.0.2",
    lan: 1,
    user: "alice",
};

const BOB: Site = Site {
    router: "natb",
    host: "hostb",
    public_ip: "10.231.0.3",
    lan: 2,
    user: "bob",
};

/// How the two routers treat packets from the WAN addressed to themselves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Router {
    /// MASQUERADE, and a packet from the WAN that would start a new flow
    /// to the router itself is dropped: what a home router's firewall does.
    Home,
    /// MASQUERADE and nothing else: the router takes unsolicited packets
    /// (its own UDP stack answers them with "port unreachable").
    PlainMasquerade,
}

/// Why the lab cannot be built here.
#[derive(Debug)]
struct Unavailable(String);

/// What a finished process left behind.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Asserts success and returns stdout as the one JSON document it is.
    fn json(&self, what: &str) -> Value {
        assert!(self.status.success(), "{what} failed: {}", self.shown());
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{what}: stdout is not one JSON document ({e}): {}", self.shown()))
    }

    fn shown(&self) -> String {
        format!(
            "{}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A process the lab started, killed when the lab goes.
struct Process {
    what: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// The namespaces, the processes in them and a scratch directory (seen by
/// every namespace: they share the file system). Dropping it kills every
/// process it started and removes every namespace, also when a test fails.
struct Lab {
    /// Prefix of this lab's namespace names, unique per process and lab,
    /// so parallel tests and runs never share a namespace.
    tag: String,
    /// The namespaces made so far, removed on drop.
    namespaces: Vec<String>,
    /// Every process started, killed on drop if still running.
    processes: Vec<Process>,
    /// Server data, the files sent and received, every process's output.
    dir: tempfile::TempDir,
    /// Paths of `ip` and `iptables`.
    ip: PathBuf,
    iptables: PathBuf,
    /// The test fails rather than waits past this.
    deadline: Instant,
    /// The server's native address, once it runs.
    server: Option<String>,
}

impl Lab {
    /// The lab with `router` routers, or None (after saying why on stderr)
    /// when this machine cannot build it; under PARLEY_REQUIRE_SERVICES=1
    /// that is a failure instead.
    fn or_skip(router: Router) -> Option<Lab> {
        match Lab::build(router) {
            Ok(lab) => Some(lab),
            Err(Unavailable(why)) => {
                let required = std::env::var("PARLEY_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "the NAT lab is required (PARLEY_REQUIRE_SERVICES=1) but cannot be built: {why}"
                );
                eprintln!("files_nat: skipped: {why}");
                None
            }
        }
    }

    fn build(router: Router) -> Result<Lab, Unavailable> {
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        if !root {
            return Err(Unavailable("network namespaces need root".into()));
        }
        let ip = tool("ip").ok_or_else(|| Unavailable("`ip` (iproute2) is not installed".into()))?;
        let iptables = tool("iptables")
            .ok_or_else(|| Unavailable("`iptables` is not installed (apt-get install iptables)".into()))?;
        ensure_parleyd();
        ensure_parley();
        static LABS: AtomicUsize = AtomicUsize::new(0);
        let mut lab = Lab {
            tag: format!("pnat{}-{}", std::process::id(), LABS.fetch_add(1, Ordering::Relaxed)),
            namespaces: Vec::new(),
            processes: Vec::new(),
            dir: tempfile::tempdir().expect("a scratch directory"),
            ip,
            iptables,
            deadline: Instant::now() + TEST_LIMIT,
            server: None,
        };
        lab.wan()?;
        lab.site(&ALICE, router)?;
        lab.site(&BOB, router)?;
        Ok(lab)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// Time left before the test limit.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Makes namespace `name`, with its loopback up.
    fn namespace(&mut self, name: &str) -> Result<String, Unavailable> {
        let ns = self.ns(name);
        self.setup(&self.ip, &["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        self.ip_in(&ns, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The WAN: a bridge in its own namespace, where the server runs.
    fn wan(&mut self) -> Result<(), Unavailable> {
        let wan = self.namespace("wan")?;
        self.ip_in(&wan, &["link", "add", "br0", "type", "bridge"])?;
        self.ip_in(&wan, &["addr", "add", &format!("{SERVER_IP}/24"), "dev", "br0"])?;
        self.ip_in(&wan, &["link", "set", "br0", "up"])
    }

    /// A router on the WAN bridge and a host behind it.
    fn site(&mut self, site: &Site, router: Router) -> Result<(), Unavailable> {
        let (wan, nat) = (self.ns("wan"), self.namespace(site.router)?);
        let host = self.namespace(site.host)?;
        let port = format!("to-{}", site.router);
        // The router's WAN side, plugged into the bridge.
        self.ip_in(
            &nat,
            &[
                "link", "add", "wan", "type", "veth", "peer", "name", &port, "netns", &wan,
            ],
        )?;
        self.ip_in(&wan, &["link", "set", &port, "master", "br0", "up"])?;
        self.ip_in(&nat, &["addr", "add", &format!("{}/24", site.public_ip), "dev", "wan"])?;
        self.ip_in(&nat, &["link", "set", "wan", "up"])?;
        // The LAN: one cable from the router to the host.
        self.ip_in(
            &nat,
            &[
                "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", &host,
            ],
        )?;
        let lan = site.lan;
        self.ip_in(&nat, &["addr", "add", &format!("10.231.{lan}.1/24"), "dev", "lan"])?;
        self.ip_in(&nat, &["link", "set", "lan", "up"])?;
        self.ip_in(&host, &["addr", "add", &format!("10.231.{lan}.2/24"), "dev", "eth0"])?;
        self.ip_in(&host, &["link", "set", "eth0", "up"])?;
        self.ip_in(&host, &["route", "add", "default", "via", &format!("10.231.{lan}.1")])?;
        // Routing and NAT.
        self.in_ns_setup(&nat, Path::new("sh"), &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
        self.iptables_in(&nat, MASQUERADE)
            .map_err(|Unavailable(why)| Unavailable(format!("MASQUERADE does not work here: {why}")))?;
        if router == Router::Home {
            self.iptables_in(&nat, DROP_UNSOLICITED)?;
        }
        Ok(())
    }

    /// Makes router `site` drop every UDP packet it would forward.
    fn block_udp_through(&self, site: &Site) {
        let nat = self.ns(site.router);
        if let Err(Unavailable(why)) = self.iptables_in(&nat, DROP_FORWARDED_UDP) {
            panic!("blocking UDP through {nat}: {why}");
        }
    }

    fn ip_in(&self, ns: &str, args: &[&str]) -> Result<(), Unavailable> {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        self.setup(&self.ip, &all)
    }

    /// Adds `rule` (iptables arguments, space-separated) in namespace `ns`.
    fn iptables_in(&self, ns: &str, rule: &str) -> Result<(), Unavailable> {
        let args: Vec<&str> = rule.split_whitespace().collect();
        self.in_ns_setup(ns, &self.iptables, &args)
    }

    fn in_ns_setup(&self, ns: &str, program: &Path, args: &[&str]) -> Result<(), Unavailable> {
        let mut all = vec!["netns".as_ref(), "exec".as_ref(), ns.as_ref(), program.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        self.setup(&self.ip, &all)
    }

    /// Runs one setup command; its failure says what this machine lacks.
    fn setup<S: AsRef<std::ffi::OsStr>>(&self, program: &Path, args: &[S]) -> Result<(), Unavailable> {
        let shown = std::iter::once(program.as_os_str())
            .chain(args.iter().map(AsRef::as_ref))
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Unavailable(format!("`{shown}` cannot run: {e}")))?;
        let status = wait_for_exit(&shown, &mut child, self.left());
        if status.success() {
            return Ok(());
        }
        let mut why = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut why);
        }
        Err(Unavailable(format!("`{shown}` failed ({status}): {}", why.trim())))
    }

    /// `program args` inside namespace `ns`.
    fn in_ns(&self, ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Starts `cmd` with its output in files; it is killed when the lab goes.
    fn spawn(&mut self, what: &str, mut cmd: Command) -> usize {
        let id = self.processes.len();
        let stdout = self.dir.path().join(format!("{id}.stdout"));
        let stderr = self.dir.path().join(format!("{id}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("an output file"))
            .stderr(std::fs::File::create(&stderr).expect("an output file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        self.processes.push(Process {
            what: what.to_owned(),
            child,
            stdout,
            stderr,
        });
        id
    }

    /// Waits (at most until the test limit) for process `id` to exit.
    fn wait(&mut self, id: usize) -> Ran {
        let left = self.left();
        let process = &mut self.processes[id];
        let status = wait_for_exit(&process.what, &mut process.child, left);
        Ran {
            status,
            stdout: std::fs::read_to_string(&process.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&process.stderr).unwrap_or_default(),
        }
    }

    fn run(&mut self, what: &str, cmd: Command) -> Ran {
        let id = self.spawn(what, cmd);
        self.wait(id)
    }

    /// Starts `parleyd` on the WAN, in memory, HTTP off, no rates.
    fn start_server(&mut self) {
        let data = self.dir.path().join("server");
        std::fs::create_dir(&data).expect("the server's data directory");
        let mut cmd = self.in_ns(&self.ns("wan"), &binary("parleyd"));
        cmd.args(["--listen", &format!("{SERVER_IP}:0"), "--http-listen", "off"])
            .args(["--store", "memory", "--log-level", "debug", "--data-dir"])
            .arg(&data)
            .args(["--registrations-per-ip-per-hour", "0", "--send-rate-per-account", "0"])
            .args(["--relay-bytes-per-sec-per-user", "0"]);
        let id = self.spawn("parleyd", cmd);
        let start_line = self.processes[id].stdout.clone();
        // "parleyd listening native=ADDR ... master=PID worker=PID"
        let native = poll_within_blocking(self.left(), || {
            let line = std::fs::read_to_string(&start_line).ok()?;
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("native="))
                .map(str::to_owned)
        });
        self.server = Some(native.unwrap_or_else(|| panic!("parleyd did not start:\n{}", self.server_log())));
    }

    fn server_log(&self) -> String {
        self.processes
            .iter()
            .find(|p| p.what == "parleyd")
            .and_then(|p| std::fs::read_to_string(&p.stderr).ok())
            .unwrap_or_default()
    }

    /// `parley --server ... --user USER --json ARGS`, run on `site`'s host
    /// with a private config directory.
    fn parley(&self, site: &Site, args: &[&str]) -> Command {
        let server = self.server.as_deref().expect("the server runs");
        let home = self.dir.path().join(format!("home-{}", site.user));
        let mut cmd = self.in_ns(&self.ns(site.host), &binary("parley"));
        for var in [
            "PARLEY_SERVER",
            "PARLEY_USER",
            "PARLEY_CA",
            "PARLEY_TOFU",
            "PARLEY_FINGERPRINT",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("PARLEY_PASSWORD", PASSWORD)
            .args(["--server", server, "--user", site.user, "--json"])
            .args(args);
        cmd
    }

    /// The bytes the server has relayed, from `parleyd ctl status`: the
    /// control socket is a file, reachable from outside the namespaces.
    fn relayed_bytes(&mut self) -> u64 {
        let mut cmd = Command::new(binary("parleyd"));
        cmd.arg("ctl")
            .arg("--ctl-socket")
            .arg(self.dir.path().join("server").join("parleyd.ctl"))
            .args(["--json", "status"]);
        let status = self.run("parleyd ctl status", cmd).json("parleyd ctl status");
        status["worker"]["stats"]["file_relayed_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no file_relayed_bytes in {status}"))
    }

    /// The scenario every test runs: alice (on hosta) and bob (on hostb)
    /// register, alice sends a file of random bytes, bob finds the offer
    /// with `parley files` and accepts it.
    fn transfer_a_file(&mut self) -> Transfer {
        self.start_server();
        for site in [&ALICE, &BOB] {
            let register = self.parley(site, &["register"]);
            self.run(&format!("registering {}", site.user), register)
                .json("register");
        }
        let source = self.dir.path().join("holiday.mkv");
        let mut bytes = vec![0u8; FILE_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        std::fs::write(&source, &bytes).expect("the file to send");
        let inbox = self.dir.path().join("inbox");
        std::fs::create_dir(&inbox).expect("the inbox");

        let send = self.parley(&ALICE, &["send-file", "bob", &source.to_string_lossy()]);
        let sender = self.spawn("alice's send-file", send);
        let seq = self.offer_seq(&BOB);
        let accept = self.parley(
            &BOB,
            &["accept-file", &seq.to_string(), "--out", &inbox.to_string_lossy()],
        );
        let received = self.run("bob's accept-file", accept);
        // Checked before waiting for alice, who would wait for a verdict.
        let route_received = route(&received, "bob's accept-file");
        let sent = self.wait(sender);
        Transfer {
            route_sent: route(&sent, "alice's send-file"),
            route_received,
            same_bytes: std::fs::read(inbox.join("holiday.mkv")).ok().as_ref() == Some(&bytes),
            sent,
            received,
        }
    }

    /// Polls `parley files` as `site`'s user until an offer is there; its seq.
    fn offer_seq(&mut self, site: &Site) -> u64 {
        let deadline = self.deadline;
        let found = poll_within_blocking(deadline.saturating_duration_since(Instant::now()), || {
            let files = self.parley(site, &["files"]);
            let listed = self.run("parley files", files).json("files");
            listed["offers"].as_array()?.first()?["seq"].as_u64()
        });
        found.unwrap_or_else(|| panic!("no file offer reached {}", site.user))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for process in &mut self.processes {
            if !matches!(process.child.try_wait(), Ok(None)) {
                continue;
            }
            // parleyd's workers are its children; take them before the master goes.
            let descendants = children(process.child.id());
            let _ = process.child.kill();
            let _ = process.child.wait();
            for pid in descendants.into_iter().filter_map(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        for ns in self.namespaces.iter().rev() {
            let removed = Command::new(&self.ip).args(["netns", "del", ns]).status();
            if !removed.is_ok_and(|s| s.success()) {
                eprintln!("files_nat: could not remove network namespace {ns}");
            }
        }
    }
}

/// What both sides reported.
struct Transfer {
    /// "direct" or "relayed", from `send-file --json` and `accept-file --json`.
    route_sent: String,
    route_received: String,
    /// Whether bob's file holds exactly the bytes alice sent.
    same_bytes: bool,
    /// Both runs, whose stderr tells how each went, for failure messages.
    sent: Ran,
    received: Ran,
}

impl Transfer {
    /// The routes both sides reported.
    fn routes(&self) -> (&str, &str) {
        (&self.route_sent, &self.route_received)
    }

    /// How both runs went, for a failure message.
    fn shown(&self) -> String {
        format!(
            "alice's send-file: {}\nbob's accept-file: {}",
            self.sent.shown(),
            self.received.shown()
        )
    }
}

/// The route a finished `send-file` or `accept-file --json` reports.
fn route(ran: &Ran, what: &str) -> String {
    ran.json(what)["route"].as_str().unwrap_or_default().to_owned()
}

/// The path of system tool `name`, wherever this distribution keeps it.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Builds the `parley` binary when it is missing: `cargo test -p
/// parley-server` builds only this package's binaries (see
/// `parley_testkit::ensure_parleyd`).
fn ensure_parley() {
    let parley = binary("parley");
    if std::env::var_os("PARLEY_BIN").is_some() || parley.exists() {
        return;
    }
    let Some(profile_dir) = parley.parent() else { return };
    let Some(target_dir) = profile_dir.parent() else { return };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut build = Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "parley-cli",
            "--bin",
            "parley",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    assert!(build.status().expect("run cargo").success(), "building parley failed");
}

#[test]
fn behind_two_home_routers_the_file_goes_directly() {
    let Some(mut lab) = Lab::or_skip(Router::Home) else {
        return;
    };
    let transfer = lab.transfer_a_file();
    assert_eq!(
        transfer.routes(),
        ("direct", "direct"),
        "{}\nserver log:\n{}",
        transfer.shown(),
        lab.server_log()
    );
    assert!(transfer.same_bytes, "bob's file differs from alice's");
    assert_eq!(lab.relayed_bytes(), 0, "nothing went through the server");
}

#[test]
fn with_udp_blocked_at_one_router_the_server_relays_the_file() {
    let Some(mut lab) = Lab::or_skip(Router::Home) else {
        return;
    };
    lab.block_udp_through(&BOB);
    let transfer = lab.transfer_a_file();
    assert_eq!(transfer.routes(), ("relayed", "relayed"), "{}", transfer.shown());
    assert!(transfer.same_bytes, "bob's file differs from alice's");
    assert_eq!(
        lab.relayed_bytes(),
        FILE_BYTES as u64,
        "every byte went through the server"
    );
}

/// KNOWN LIMITATION, not the behaviour we want: between routers that do
/// MASQUERADE and nothing else, the simultaneous dial usually collides and
/// the file goes through the relay; the direct path is luck (1 run in 15
/// here). So this test holds only what must hold either way: the file
/// arrives whole, and the server's relay counter agrees with the route
/// both sides report.
///
/// Why it collides: both sides dial at full TTL, and whichever side's
/// first packet reaches the other's router before that router has sent
/// anything to it (the two dials start microseconds apart; the WAN hop
/// takes less) is addressed to the router itself, which takes it:
/// conntrack records the flow `A_public:Pa -> B_public:Pb` as a local one
/// (UNREPLIED, kept alive by every retransmission). When B's own packets to
/// `A_public:Pa` then leave, MASQUERADE cannot map them to port Pb (the
/// reply tuple is that local flow's) and picks another port, which nobody
/// announced: B's packets come from the wrong port for A's router, and
/// A's keep landing in B's router's local flow (`conntrack -L` in natb
/// shows B's flow SNATed to a random port beside the UNREPLIED local
/// one). Home routers drop such packets in INPUT, before conntrack keeps
/// them, which is why the direct case above has that rule. A client that
/// opened its own router with packets whose TTL ends before the peer's
/// router would avoid it (this lab would then need a router between the
/// two NATs); then this test should expect "direct".
#[test]
fn behind_routers_that_take_unsolicited_packets_the_file_arrives_by_either_route() {
    let Some(mut lab) = Lab::or_skip(Router::PlainMasquerade) else {
        return;
    };
    let transfer = lab.transfer_a_file();
    let relayed = match transfer.routes() {
        ("direct", "direct") => 0,
        ("relayed", "relayed") => FILE_BYTES as u64,
        other => panic!("the two sides disagree on the route {other:?}: {}", transfer.shown()),
    };
    eprintln!(
        "files_nat: between plain MASQUERADE routers the file went {}",
        transfer.route_sent
    );
    assert!(transfer.same_bytes, "bob's file differs from alice's");
    assert_eq!(lab.relayed_bytes(), relayed, "the relay counter agrees with the route");
}
