//! The command line: common flags, one subcommand per scenario, and every
//! default as a named constant.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Where parleyd listens unless told otherwise (its own default).
pub const DEFAULT_SERVER: &str = "127.0.0.1:7878";
/// Where NATS listens for `--compare-nats` unless `--target` names it.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Where JetStream listens for `--compare-jetstream` unless `--target` names it.
pub const DEFAULT_JETSTREAM_URL: &str = "jetstream://127.0.0.1:4222";
/// What the report says about JetStream's syncs to disk unless told: the
/// server's own default, a sync every two minutes, not one per message.
pub const DEFAULT_JETSTREAM_SYNC: &str = "server default (sync_interval 2m)";
/// Length of each measured phase, seconds.
pub const DEFAULT_DURATION_SECS: f64 = 10.0;
/// Sender→receiver pairs in relay and overload.
pub const DEFAULT_PAIRS: usize = 8;
/// Message body size, bytes.
pub const DEFAULT_SIZE: usize = 256;
/// Sends in flight per sender connection (relay, offline): parleyd's
/// default pipeline window, the most one connection gets processed at once.
pub const DEFAULT_WINDOW: usize = 256;
/// How long after the sending stops relay waits for stored messages to arrive.
pub const DEFAULT_DRAIN_SECS: f64 = 5.0;
/// Idle connections opened.
pub const DEFAULT_CONNECTIONS: usize = 1000;
/// Seconds idle connections are held once all are open.
pub const DEFAULT_HOLD_SECS: f64 = 5.0;
/// Idle connections sharing one account.
pub const DEFAULT_CONNECTIONS_PER_ACCOUNT: usize = 100;
/// Handshakes in progress at once per process (idle, login).
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Most connections one process opens: the machine caps open files at
/// 20,000 per process, and the bench needs a few dozen for itself.
pub const MAX_CONNECTIONS_PER_PROCESS: usize = 19_900;
/// Connections in the login storm.
pub const DEFAULT_LOGIN_CLIENTS: usize = 16;
/// Offline recipients and messages.
pub const DEFAULT_USERS: usize = 100;
pub const DEFAULT_MESSAGES: usize = 20_000;
/// Sender connections storing offline messages.
pub const DEFAULT_SENDERS: usize = 4;
/// Longest the offline drain may take, seconds.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: f64 = 60.0;
/// Overload: sender→receiver pairs. Enough connections that their
/// pipelines together (100 × 256 requests) exceed parleyd's default backlog
/// limit (16,384), so admission control, not TCP backpressure alone, is
/// what meets the excess.
pub const DEFAULT_OVERLOAD_PAIRS: usize = 100;
/// Overload: multiple of capacity offered, and the capacity probe's length.
pub const DEFAULT_MULTIPLE: f64 = 2.0;
pub const DEFAULT_PROBE_SECS: f64 = 3.0;
/// Sends in flight per sender in overload's capacity probe: parleyd's
/// default pipeline window.
pub const DEFAULT_PROBE_WINDOW: usize = 256;
/// Overload: requests a sender connection may have outstanding before the
/// generator itself sheds load (counted, never hidden).
pub const DEFAULT_MAX_OUTSTANDING: usize = 8192;
/// Overload: the flood's senders write what fell due once per this many
/// milliseconds. At 2× capacity 100 senders writing each send as it fell
/// due made 56,000 small writes a second, the generator's largest cost on
/// cores it shares with the server; latency still counts from each send's
/// due time, so the wait for the tick is in it.
pub const DEFAULT_WRITE_TICK_MS: f64 = 5.0;

/// Load generator for parleyd (and NATS core or JetStream, for comparison).
///
/// Drives a running server with one scenario and prints a summary table,
/// or with --json one JSON object holding every number. Accounts are created
/// on the server with a fresh random prefix per run.
#[derive(Parser, Debug)]
#[command(name = "parley-bench", version, about, long_about)]
pub struct Cli {
    /// parleyd native-protocol address
    #[arg(long, global = true, default_value = DEFAULT_SERVER, value_name = "ADDR")]
    pub server: String,
    /// Length of each measured phase, seconds
    #[arg(long, global = true, default_value_t = DEFAULT_DURATION_SECS, value_name = "SECS")]
    pub duration: f64,
    /// parleyd's process id: report its CPU time and RSS (sampled every 100 ms)
    #[arg(long, global = true, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Repeat the scenario N times and report median and range
    #[arg(long, global = true, default_value_t = 1, value_name = "N")]
    pub runs: u32,
    /// Print one JSON object with every number instead of the table
    #[arg(long, global = true)]
    pub json: bool,
    /// Write an SVG picture: latency percentiles and throughput over time
    #[arg(long, global = true, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Internal: run as a child process of `idle`, job on stdin
    #[arg(long, global = true, hide = true)]
    pub worker: bool,
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Sender→receiver pairs: throughput, end-to-end latency, loss, duplicates
    Relay(RelayArgs),
    /// Many logged-in idle connections: server memory per connection
    Idle(IdleArgs),
    /// Login storm: SCRAM and resume-token logins per second
    Login(LoginArgs),
    /// Store messages for offline users, then log them in and drain
    Offline(OfflineArgs),
    /// Offer a multiple of capacity, open loop: admitted, BUSY, latency, memory trend
    Overload(OverloadArgs),
    /// Kill parleyd's worker (SIGKILL) again and again: time from each kill to the first accepted send
    Failover(FailoverArgs),
    /// Send a file peer to peer and through the server's relay, alternating: bytes and CPU through the server
    File(FileArgs),
}

/// Size of the file sent (parsed by `common::parse_size`): 64 MiB.
pub const DEFAULT_FILE_SIZE: &str = "64MiB";
/// Longest one transfer may take, seconds. At the relay's default pace
/// (2 MiB/s per account) 64 MiB alone take 32 s; unpaced, on loopback, a
/// second or two.
pub const DEFAULT_TRANSFER_TIMEOUT_SECS: f64 = 120.0;

#[derive(Args, Debug, Clone)]
pub struct FileArgs {
    /// Size of the file of random bytes sent: bytes, or with K/M/G (1024s) or KB/MB/GB (1000s)
    #[arg(long, default_value = DEFAULT_FILE_SIZE, value_parser = crate::common::parse_size, value_name = "SIZE")]
    pub size: u64,
    /// parleyd's HTTP listener (`HOST:PORT`): read its relayed-bytes
    /// counter (`parley_file_relayed_bytes_total` at /metrics) around each
    /// transfer [default: not read]
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Longest one transfer may take, seconds
    #[arg(long, default_value_t = DEFAULT_TRANSFER_TIMEOUT_SECS, value_name = "SECS")]
    pub timeout: f64,
    /// How the relayed transfer avoids the direct path
    #[arg(long, value_enum, default_value_t = RelayedBy::Blocked, value_name = "HOW")]
    pub relayed_by: RelayedBy,
}

/// The `client_msg_id`s a lean sender gives its sends.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIds {
    /// The send's sequence number in decimal: free to make
    #[default]
    Counter,
    /// What the client library and the web UI make: the time in
    /// milliseconds then random bits, increasing per sender
    Library,
    /// 128 random bits in hex, as the library made before: each lands
    /// anywhere in the server's per-sender index
    Random,
}

/// How the file scenario makes a transfer go through the server.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayedBy {
    /// Each side announces a UDP socket that never answers: the sender
    /// tries the direct path, gives up after its timeout and falls back to
    /// the relay, as behind a NAT that lets nothing in.
    Blocked,
    /// Neither side tries a direct path (the library's `direct: false`).
    NoDirect,
}

/// Kills in a failover run.
pub const DEFAULT_KILLS: usize = 50;
/// Seconds the replacement serves before the next kill: more than the
/// master's one-second crash-loop window.
pub const DEFAULT_SETTLE_SECS: f64 = 1.5;

#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// The parleyd master's process id; its worker is what gets killed
    #[arg(long, value_name = "PID")]
    pub master_pid: u32,
    /// Kills
    #[arg(long, default_value_t = DEFAULT_KILLS, value_name = "N")]
    pub kills: usize,
    /// Seconds the new worker serves before the next kill
    #[arg(long, default_value_t = DEFAULT_SETTLE_SECS, value_name = "SECS")]
    pub settle: f64,
}

#[derive(Args, Debug, Clone)]
pub struct RelayArgs {
    /// Sender→receiver connection pairs
    #[arg(long, default_value_t = DEFAULT_PAIRS)]
    pub pairs: usize,
    /// Message body size in bytes (at least 32: sequence and timestamp)
    #[arg(long, default_value_t = DEFAULT_SIZE, value_name = "BYTES")]
    pub size: usize,
    /// Total messages per second over all pairs [default: as fast as possible]
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate: Option<f64>,
    /// Sends in flight per sender connection
    #[arg(long, default_value_t = DEFAULT_WINDOW, value_name = "W")]
    pub window: usize,
    /// Seconds to wait after sending for stored messages to be delivered
    #[arg(long, default_value_t = DEFAULT_DRAIN_SECS, value_name = "SECS")]
    pub drain: f64,
    /// Run against this instead of parleyd: `parley`, `nats://HOST:PORT`
    /// (NATS core) or `jetstream://HOST:PORT` (NATS JetStream: a file-backed
    /// stream of its own per run, acknowledged publishes, a pull consumer
    /// per receiver)
    #[arg(long, value_name = "TARGET")]
    pub target: Option<String>,
    /// Run against parleyd, then NATS (--target's URL or nats://127.0.0.1:4222), and compare
    #[arg(long)]
    pub compare_nats: bool,
    /// Run against parleyd, then JetStream (--target's URL or
    /// jetstream://127.0.0.1:4222), and compare
    #[arg(long, conflicts_with = "compare_nats")]
    pub compare_jetstream: bool,
    /// How the JetStream server syncs to disk, as its operator configured
    /// it: only printed beside the figures (the bench cannot see it)
    #[arg(long, default_value = DEFAULT_JETSTREAM_SYNC, value_name = "LABEL")]
    pub jetstream_sync: String,
    /// NATS server's process id, for its CPU and RSS
    #[arg(long, value_name = "PID")]
    pub nats_pid: Option<u32>,
    /// Receivers log in here instead of --server (another node of the same
    /// service: messages cross between nodes)
    #[arg(long, value_name = "ADDR")]
    pub receivers_on: Option<String>,
    /// Also run against this parleyd, alternating with --server, and
    /// compare (a same-node peer for --receivers-on, or a server on another
    /// store)
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["compare_nats", "compare_jetstream"])]
    pub peer_server: Option<String>,
    /// Where the peer's receivers log in [default: --peer-server]
    #[arg(long, value_name = "ADDR", requires = "peer_server")]
    pub peer_receivers_on: Option<String>,
    /// The idempotency keys parleyd's senders give their messages
    #[arg(long, value_enum, default_value_t = ClientIds::Counter, value_name = "KIND")]
    pub client_ids: ClientIds,
    /// A shell command run before every run of every target (`sh -c`),
    /// e.g. a database checkpoint so that each run starts from the same
    /// state; the bench stops if it fails
    #[arg(long, value_name = "COMMAND")]
    pub before_run: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Connections to open, log in and hold
    #[arg(long, default_value_t = DEFAULT_CONNECTIONS, value_name = "N")]
    pub connections: usize,
    /// Seconds to hold them once all are open
    #[arg(long, default_value_t = DEFAULT_HOLD_SECS, value_name = "SECS")]
    pub hold: f64,
    /// Processes to spread the connections over [default: 1, more above 19,900 connections]
    #[arg(long, value_name = "P")]
    pub processes: Option<usize>,
    /// Bind client sockets to 127.0.0.1 … 127.0.0.K, round robin
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub source_addrs: u8,
    /// Connections sharing one account (each is its own session)
    #[arg(long, default_value_t = DEFAULT_CONNECTIONS_PER_ACCOUNT, value_name = "N")]
    pub per_account: usize,
    /// Handshakes in progress at once, per process
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// How each connection logs in
    #[arg(long, value_enum, default_value_t = AuthMode::Scram)]
    pub auth: AuthMode,
}

/// How an idle connection authenticates.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AuthMode {
    /// Full SCRAM exchange (the client computes PBKDF2 for each)
    Scram,
    /// Resume token of one SCRAM login per account
    Resume,
}

#[derive(Args, Debug, Clone)]
pub struct LoginArgs {
    /// Concurrent clients, each with its own account
    #[arg(long, default_value_t = DEFAULT_LOGIN_CLIENTS, value_name = "C")]
    pub clients: usize,
    /// How each resume connection ends: `reset` aborts it (no TIME_WAIT
    /// left on the generator's ports), `fin` closes it gracefully
    #[arg(long, value_enum, default_value_t = ResumeClose::Reset, value_name = "HOW")]
    pub resume_close: ResumeClose,
}

/// How the login storm ends each resume connection (`login.rs` says why
/// it aborts them by default).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeClose {
    /// SO_LINGER 0: the close sends a reset and leaves no TIME_WAIT.
    Reset,
    /// An orderly close (FIN); the generator's side keeps TIME_WAIT.
    Fin,
}

#[derive(Args, Debug, Clone)]
pub struct OfflineArgs {
    /// Offline recipients
    #[arg(long, default_value_t = DEFAULT_USERS, value_name = "U")]
    pub users: usize,
    /// Messages stored, spread round robin over the recipients
    #[arg(long, default_value_t = DEFAULT_MESSAGES, value_name = "M")]
    pub messages: usize,
    /// Message body size in bytes
    #[arg(long, default_value_t = DEFAULT_SIZE, value_name = "BYTES")]
    pub size: usize,
    /// Sender connections (sessions of one sending account)
    #[arg(long, default_value_t = DEFAULT_SENDERS)]
    pub senders: usize,
    /// Sends in flight per sender connection
    #[arg(long, default_value_t = DEFAULT_WINDOW, value_name = "W")]
    pub window: usize,
    /// Recipients draining at once
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Longest the drain may take, seconds
    #[arg(long, default_value_t = DEFAULT_DRAIN_TIMEOUT_SECS, value_name = "SECS")]
    pub drain_timeout: f64,
}

#[derive(Args, Debug, Clone)]
pub struct OverloadArgs {
    /// Offered load as a multiple of capacity
    #[arg(long, default_value_t = DEFAULT_MULTIPLE, value_name = "X")]
    pub multiple: f64,
    /// Capacity in messages per second [default: measured by a short relay first]
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub capacity: Option<f64>,
    /// Seconds of the capacity probe
    #[arg(long, default_value_t = DEFAULT_PROBE_SECS, value_name = "SECS")]
    pub probe: f64,
    /// Sends in flight per sender during the capacity probe
    #[arg(long, default_value_t = DEFAULT_PROBE_WINDOW, value_name = "W")]
    pub probe_window: usize,
    /// Sender→receiver connection pairs
    #[arg(long, default_value_t = DEFAULT_OVERLOAD_PAIRS)]
    pub pairs: usize,
    /// Message body size in bytes
    #[arg(long, default_value_t = DEFAULT_SIZE, value_name = "BYTES")]
    pub size: usize,
    /// Outstanding requests per sender before the generator sheds load itself
    #[arg(long, default_value_t = DEFAULT_MAX_OUTSTANDING)]
    pub max_outstanding: usize,
    /// Milliseconds between two writes of one flooding sender (what fell due meanwhile goes out together); 0 writes each send when due
    #[arg(long, default_value_t = DEFAULT_WRITE_TICK_MS, value_name = "MS")]
    pub write_tick_ms: f64,
}
