//! Configuration: one place that knows every setting, its default, its
//! environment variable and its flag.
//!
//! Precedence, lowest first: built-in default, TOML file (`--config`),
//! environment (`PARLEY_*`), command-line flag. Every value is parsed and
//! checked here, and every error is reported at once; nothing later in the
//! server parses configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use parley_core::Mechanism;
use parley_store::postgres::PgUrl;
use parley_store::sqlite::Synchronous;

/// Native protocol listener address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// Data directory (SQLite database, server secret), relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "parley-data";
/// Storage backend.
pub const DEFAULT_STORE: &str = "sqlite";
/// Log filter (tracing EnvFilter syntax).
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Log format: human, json, or auto (human on a terminal, JSON elsewhere).
pub const DEFAULT_LOG_FORMAT: &str = "human";
/// Directory for parleyd.log and access.log; empty: stderr only.
pub const DEFAULT_LOG_DIR: &str = "";
/// Days rotated log files are kept; 0 keeps them all.
pub const DEFAULT_LOG_RETENTION_DAYS: u32 = 14;
/// Size at which parleyd.log and access.log rotate, in bytes (100 MiB); 0: by day only.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Smallest non-zero `log_max_bytes`: a few lines.
pub const MIN_LOG_MAX_BYTES: u64 = 1024;
/// Rotated files kept per log; 0: no cap (retention alone applies).
pub const DEFAULT_LOG_MAX_FILES: u32 = 10;
/// Whether the HTTP listener serves Prometheus metrics at /metrics.
pub const DEFAULT_METRICS: bool = true;
/// Whether each request is timed into the perf log.
pub const DEFAULT_PERF_LOG: bool = false;
/// Perf log directory; empty: `<data_dir>/perf`.
pub const DEFAULT_PERF_DIR: &str = "";
/// Most simultaneous connections; one more gets a BUSY error and is closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Largest frame payload accepted or sent, in bytes.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = parley_proto::DEFAULT_MAX_FRAME_BYTES;
/// Largest message body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: u32 = parley_core::limits::DEFAULT_MAX_BODY_BYTES;
/// Time a connection may stay unauthenticated before it is closed.
pub const DEFAULT_AUTH_TIMEOUT_SECS: u64 = 30;
/// Time allowed for a graceful shutdown before connections are cut.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// PBKDF2 iterations required of new registrations.
pub const DEFAULT_SCRAM_ITERATIONS: u32 = parley_core::limits::DEFAULT_SCRAM_ITERATIONS;
/// SCRAM mechanisms for new registrations, preferred first.
pub const DEFAULT_SCRAM_MECHANISMS: &str = "SCRAM-SHA-256,SCRAM-SHA-512";
/// SQLite durability: full, normal or off.
pub const DEFAULT_SQLITE_SYNCHRONOUS: &str = "full";
/// Storage operations that may wait for the writer; past this, BUSY.
pub const DEFAULT_WRITE_QUEUE: usize = parley_store::sqlite::DEFAULT_WRITE_QUEUE;
/// Most operations committed in one transaction (SQLite and PostgreSQL).
pub const DEFAULT_MAX_BATCH: usize = parley_store::sqlite::DEFAULT_MAX_BATCH;
/// PostgreSQL connection string; empty: none (needed by `store = postgres`).
pub const DEFAULT_POSTGRES_URL: &str = "";
/// Most connections the PostgreSQL store opens at once.
pub const DEFAULT_POSTGRES_POOL_SIZE: usize = parley_store::postgres::DEFAULT_POOL_SIZE;
/// Writers of the PostgreSQL store, each committing on its own connection.
pub const DEFAULT_POSTGRES_WRITERS: usize = parley_store::postgres::DEFAULT_WRITERS;
/// Milliseconds a PostgreSQL writer holding only acks waits for more.
pub const DEFAULT_POSTGRES_ACK_LINGER_MS: u64 = parley_store::postgres::DEFAULT_ACK_LINGER.as_millis() as u64;
/// The longest `postgres_ack_linger_ms`.
const MAX_POSTGRES_ACK_LINGER_MS: u64 = parley_store::postgres::MAX_ACK_LINGER.as_millis() as u64;
/// Seconds to open a PostgreSQL connection before the database counts as unreachable.
pub const DEFAULT_POSTGRES_CONNECT_TIMEOUT_SECS: u64 = parley_store::postgres::DEFAULT_CONNECT_TIMEOUT.as_secs();
/// Seconds one batch may take in PostgreSQL before its operations get STORAGE_UNAVAILABLE.
pub const DEFAULT_POSTGRES_BATCH_TIMEOUT_SECS: u64 = parley_store::postgres::DEFAULT_BATCH_TIMEOUT.as_secs();
/// Events queued per session before pushes spill to storage.
pub const DEFAULT_SESSION_QUEUE: usize = parley_core::limits::DEFAULT_SESSION_QUEUE;
/// Requests one connection may have in flight at once.
pub const DEFAULT_PIPELINE_WINDOW: usize = 256;
/// Bytes of replies and pushes buffered for one connection before the server
/// stops reading its requests and pushing to it until the client drains them.
pub const DEFAULT_OUTBOUND_BUFFER_BYTES: usize = 256 * 1024;

/// Seconds of silence after which a connection is closed; clients ping within it.
pub const DEFAULT_KEEPALIVE_SECS: u64 = 60;
/// Milliseconds to wait for an ack before pushing a message again; the wait doubles up to max_ack_backoff_ms.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 10_000;
/// Longest wait between re-pushes, in milliseconds.
pub const DEFAULT_MAX_ACK_BACKOFF_MS: u64 = 120_000;
/// Pushed messages a session may leave unacknowledged before pushing pauses.
pub const DEFAULT_MAX_UNACKED: usize = parley_core::limits::DEFAULT_MAX_UNACKED;
/// Contacts per account.
pub const DEFAULT_MAX_CONTACTS: u32 = parley_core::limits::DEFAULT_MAX_CONTACTS;
/// Simultaneous native and WebSocket connections from one source address
/// (IPv6 by /64).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Requests in flight across all connections before new work is answered BUSY.
pub const DEFAULT_MAX_BACKLOG: usize = 16_384;
/// Failed logins per account name per minute before logins to it are refused with RATE_LIMITED.
pub const DEFAULT_LOGIN_FAILURES_PER_ACCOUNT: u32 = parley_core::throttle::DEFAULT_FAILURES_PER_ACCOUNT;
/// Failed logins and resumes per source address per minute before it is refused with RATE_LIMITED.
pub const DEFAULT_LOGIN_FAILURES_PER_IP: u32 = parley_core::throttle::DEFAULT_FAILURES_PER_IP;
/// Logins in progress (challenge sent, proof not yet checked) per account name.
pub const DEFAULT_LOGIN_PENDING_PER_ACCOUNT: u32 = parley_core::throttle::DEFAULT_PENDING_PER_ACCOUNT;
/// Logins in progress per source address (IPv6 by /64).
pub const DEFAULT_LOGIN_PENDING_PER_IP: u32 = parley_core::throttle::DEFAULT_PENDING_PER_IP;
/// Sessions one account may have at once, over every front door; a login
/// past it ends the account's oldest session (ejabberd's max_user_sessions).
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = parley_core::limits::DEFAULT_MAX_SESSIONS_PER_USER;
/// Native and WebSocket connections not yet logged in, across all addresses.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 2_000;
/// Who may register: open (anyone), closed (nobody) or invite (with a code
/// from `parleyd ctl invite`).
pub const DEFAULT_REGISTRATION: &str = "open";
/// Registrations per source address (IPv6 by /64) per hour; 0: no limit
/// (ejabberd's `registration_timeout`, Prosody's
/// `min_seconds_between_registrations`).
pub const DEFAULT_REGISTRATIONS_PER_IP_PER_HOUR: u32 = parley_core::limits::DEFAULT_REGISTRATIONS_PER_IP_PER_HOUR;
/// Messages per second one account may send (burst: ten seconds' worth); 0: no limit.
pub const DEFAULT_SEND_RATE_PER_ACCOUNT: u32 = parley_core::limits::DEFAULT_SEND_RATE_PER_ACCOUNT;
/// Messages one mailbox may hold, acknowledged or not.
pub const DEFAULT_MAILBOX_MAX_MESSAGES: u64 = parley_core::limits::DEFAULT_MAILBOX_MAX_MESSAGES;
/// Bytes of message bodies one mailbox may hold (100 MiB).
pub const DEFAULT_MAILBOX_MAX_BYTES: u64 = parley_core::limits::DEFAULT_MAILBOX_MAX_BYTES;
pub const DEFAULT_MAX_FILE_BYTES: u64 = parley_core::limits::DEFAULT_MAX_FILE_BYTES;
pub const DEFAULT_RELAY_MAX_FILE_BYTES: u64 = parley_core::limits::DEFAULT_RELAY_MAX_FILE_BYTES;
pub const DEFAULT_RELAY_BYTES_PER_SEC_PER_USER: u64 = parley_core::limits::DEFAULT_RELAY_BYTES_PER_SEC_PER_USER;
/// Lifetime of a resume token, in seconds.
pub const DEFAULT_RESUME_TTL_SECS: u64 = 7 * 24 * 3600;
/// HTTP listener (JSON API, WebSocket, pager, web UI); "off" disables it.
pub const DEFAULT_HTTP_LISTEN: &str = parley_http::DEFAULT_HTTP_LISTEN;
/// QUIC (UDP) listener for the native protocol; off unless set, since it
/// needs a certificate.
pub const DEFAULT_QUIC_LISTEN: &str = "off";
/// QUIC handshakes in progress above which a new client must first prove
/// its address with a Retry round trip; 0: always.
pub const DEFAULT_QUIC_RETRY_ABOVE: usize = crate::quic::DEFAULT_RETRY_ABOVE;
/// Whether the web pager takes messages.
pub const DEFAULT_PAGER: bool = parley_http::DEFAULT_PAGER;
/// Pager posts per source address per minute.
pub const DEFAULT_PAGER_PER_IP_PER_MINUTE: u32 = parley_http::DEFAULT_PAGER_PER_IP_PER_MINUTE;
/// Seconds an HTTP session (bearer token) may go unused before it expires.
pub const DEFAULT_HTTP_SESSION_IDLE_SECS: u64 = parley_http::DEFAULT_HTTP_SESSION_IDLE_SECS;
/// Most HTTP sessions at once.
pub const DEFAULT_HTTP_MAX_SESSIONS: usize = parley_http::DEFAULT_HTTP_MAX_SESSIONS;
/// Most HTTP sessions from one source address (IPv6 by /64).
pub const DEFAULT_HTTP_MAX_SESSIONS_PER_IP: usize = parley_http::DEFAULT_HTTP_MAX_SESSIONS_PER_IP;
/// Most HTTP logins waiting between their two SCRAM steps.
pub const DEFAULT_HTTP_MAX_PENDING_LOGINS: usize = parley_http::DEFAULT_HTTP_MAX_PENDING_LOGINS;
/// Most HTTP requests served at once.
pub const DEFAULT_HTTP_MAX_IN_FLIGHT: usize = parley_http::DEFAULT_HTTP_MAX_IN_FLIGHT;
/// Largest HTTP request body, in bytes.
pub const DEFAULT_HTTP_MAX_REQUEST_BYTES: usize = parley_http::DEFAULT_HTTP_MAX_REQUEST_BYTES;
/// Most HTTP connections open at once (WebSockets included).
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = parley_http::DEFAULT_HTTP_MAX_CONNECTIONS;
/// Seconds a request's headers may take to arrive, from their first byte.
pub const DEFAULT_HTTP_HEADER_TIMEOUT_SECS: u64 = parley_http::DEFAULT_HTTP_HEADER_TIMEOUT_SECS;
/// Seconds a request's whole body may take to arrive.
pub const DEFAULT_HTTP_BODY_TIMEOUT_SECS: u64 = parley_http::DEFAULT_HTTP_BODY_TIMEOUT_SECS;
/// Seconds an HTTP connection may stay idle between requests.
pub const DEFAULT_HTTP_KEEPALIVE_SECS: u64 = parley_http::DEFAULT_HTTP_KEEPALIVE_SECS;
/// Most HTTP connections from one address (trusted proxies are exempt).
pub const DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP: usize = parley_http::DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP;
/// Proxies (CIDR ranges) whose Forwarded / X-Forwarded-For name the client.
pub const DEFAULT_TRUSTED_PROXIES: &str = parley_http::DEFAULT_TRUSTED_PROXIES;
/// Worker processes the master keeps running. Only 1 is accepted until
/// workers can deliver to each other's sessions.
pub const DEFAULT_WORKERS: usize = 1;
/// No bus: one process is the whole service.
pub const DEFAULT_BUS: &str = "off";
/// The bus's subject prefix.
pub const DEFAULT_BUS_PREFIX: &str = "parley";
/// Seconds of silence after which a process on the bus is gone.
pub const DEFAULT_BUS_NODE_TIMEOUT_SECS: u64 = 5;
/// Frames waiting for the bus; past it they are dropped and every session
/// reads the store.
pub const DEFAULT_BUS_QUEUE: usize = 65_536;
/// Seconds a worker may go without a heartbeat on its control channel
/// before the master kills and replaces it; 0 turns the watch off. The
/// worker sends one every half of it, as systemd asks of a service under
/// `WatchdogSec=`. Ten seconds: a stopped or wedged worker leaves its
/// clients hanging for no longer than that, while a busy one is never
/// mistaken for a stuck one (the heartbeat is one timer on the runtime that
/// serves every connection, late by milliseconds under full load; the
/// store's writes run on their own thread).
pub const DEFAULT_WORKER_HEARTBEAT_TIMEOUT_SECS: u64 = 10;
/// The control socket's file name inside the data directory (the default
/// `ctl_socket`).
pub const DEFAULT_CTL_SOCKET_NAME: &str = "parleyd.ctl";
/// PEM file with the server's certificate chain (end-entity first); empty: none.
pub const DEFAULT_TLS_CERT: &str = "";
/// PEM file with the private key of that certificate; empty: none.
pub const DEFAULT_TLS_KEY: &str = "";
/// Whether the native listener speaks TLS (needs tls_cert and tls_key).
pub const DEFAULT_NATIVE_TLS: bool = false;
/// Whether the HTTP listener speaks TLS (off when a proxy in front terminates it).
pub const DEFAULT_HTTP_TLS: bool = false;

/// Which store backs the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Sqlite,
    /// A PostgreSQL database (`postgres_url`), which several parleyd may share.
    Postgres,
}

impl StoreKind {
    /// The name the `store` setting uses.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// Where the spam classifier's model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterModel {
    /// No classifier.
    Off,
    /// The model built into the binary.
    Builtin,
    /// A model file written by `parley-train`.
    File(PathBuf),
}

/// The filter pipeline's settings (see `parley_core::filter`).
#[derive(Clone, Debug)]
pub struct FilterConfig {
    pub model: FilterModel,
    /// The inference server (`http://HOST:PORT`), when scoring is offloaded.
    pub url: Option<String>,
    /// Thresholds; None: the model's recommendation.
    pub hold_at: Option<f32>,
    pub reject_at: Option<f32>,
    pub fail: parley_core::filter::FailPolicy,
    pub timeout: Duration,
    pub batch: usize,
    pub queue: usize,
    /// Blocked phrases, lowercase, read from `filter_blocked_words_file`.
    pub blocked_words: Vec<String>,
    pub spam_folder_max: u32,
}

impl FilterModel {
    /// What a `filter_model` value (or `filter-serve --model`) names: `off`
    /// (or nothing), `builtin`, or a model file's path.
    pub fn parse(value: &str) -> FilterModel {
        match value.trim() {
            "off" | "" => FilterModel::Off,
            "builtin" => FilterModel::Builtin,
            path => FilterModel::File(PathBuf::from(path)),
        }
    }
}

/// The model `model` names, loaded and checked.
pub fn load_model(model: &FilterModel) -> Result<Option<parley_filter::Model>, String> {
    match model {
        FilterModel::Off => Ok(None),
        FilterModel::Builtin => parley_filter::Model::builtin()
            .map(|m| Some(m.clone()))
            .map_err(|e| format!("the built-in model does not load: {e}")),
        FilterModel::File(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            parley_filter::Model::load(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: not a model file: {e}", path.display()))
        }
    }
}

/// How log lines are formatted (see `logging`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human on a terminal, JSON on a stderr that is not one and in files.
    Auto,
    /// Human-readable lines everywhere.
    Human,
    /// One JSON object per line everywhere.
    Json,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub log_level: String,
    pub log_format: LogFormat,
    /// None: log to stderr only.
    pub log_dir: Option<PathBuf>,
    pub log_retention_days: u32,
    /// Size at which a log file rotates; 0: by day only.
    pub log_max_bytes: u64,
    /// Rotated files kept per log; 0: no cap.
    pub log_max_files: u32,
    /// Whether /metrics is served on the HTTP listener.
    pub metrics: bool,
    pub perf_log: bool,
    /// Where perf runs go (`<data_dir>/perf` unless set).
    pub perf_dir: PathBuf,
    pub max_connections: usize,
    pub max_frame_bytes: u32,
    pub max_body_bytes: u32,
    pub auth_timeout: Duration,
    pub shutdown_grace: Duration,
    pub scram_iterations: u32,
    pub scram_mechanisms: Vec<Mechanism>,
    pub sqlite_synchronous: Synchronous,
    /// Bound of the database file in MiB, 0 for none.
    pub sqlite_max_db_mb: u64,
    pub write_queue: usize,
    pub max_batch: usize,
    /// The PostgreSQL database; Some exactly when `store` is postgres.
    pub postgres_url: Option<PgUrl>,
    pub postgres_pool_size: usize,
    pub postgres_writers: usize,
    pub postgres_ack_linger: Duration,
    pub postgres_connect_timeout: Duration,
    pub postgres_batch_timeout: Duration,
    pub session_queue: usize,
    pub pipeline_window: usize,
    pub outbound_buffer_bytes: usize,
    pub keepalive: Duration,
    pub ack_timeout: Duration,
    pub max_ack_backoff: Duration,
    pub max_unacked: usize,
    pub max_contacts: u32,
    pub max_connections_per_ip: usize,
    pub max_backlog: usize,
    pub login_failures_per_account: u32,
    pub login_failures_per_ip: u32,
    pub login_pending_per_account: u32,
    pub login_pending_per_ip: u32,
    pub max_sessions_per_user: usize,
    pub max_unauthenticated: usize,
    pub resume_ttl: Duration,
    /// Who may register.
    pub registration: parley_core::service::RegistrationMode,
    /// Registrations per address per hour; 0: no limit.
    pub registrations_per_ip_per_hour: u32,
    /// Messages per second per account; 0: no limit.
    pub send_rate_per_account: u32,
    pub mailbox_max_messages: u64,
    pub mailbox_max_bytes: u64,
    /// Largest file an offer may offer.
    pub max_file_bytes: u64,
    /// Largest file relayed when no direct path works; 0: no relay.
    pub relay_max_file_bytes: u64,
    /// Relay pace per account, bytes a second; 0: no limit.
    pub relay_bytes_per_sec_per_user: u64,
    /// The filter pipeline (the classifier's model is loaded by the
    /// worker, from [`FilterConfig::model`]).
    pub filter: FilterConfig,
    /// The HTTP listener's TCP address; None when it is off or on a unix
    /// socket.
    pub http_listen: Option<SocketAddr>,
    /// The HTTP listener's unix-domain socket (`http_listen = "unix:PATH"`).
    pub http_socket: Option<PathBuf>,
    /// None when the QUIC listener is off (the default).
    pub quic_listen: Option<SocketAddr>,
    /// Handshakes in progress above which QUIC clients get a Retry first.
    pub quic_retry_above: usize,
    pub pager: bool,
    pub pager_per_ip_per_minute: u32,
    pub http_session_idle: Duration,
    pub http_max_sessions: usize,
    pub http_max_sessions_per_ip: usize,
    pub http_max_pending_logins: usize,
    pub http_max_in_flight: usize,
    pub http_max_request_bytes: usize,
    pub http_max_connections: usize,
    pub http_header_timeout: Duration,
    pub http_body_timeout: Duration,
    pub http_keepalive: Duration,
    pub http_max_connections_per_ip: usize,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: parley_http::TrustedProxies,
    /// Worker processes (more than 1 only with PostgreSQL and the bus).
    pub workers: usize,
    /// Silence after which the master replaces a worker; None: not watched.
    pub worker_heartbeat_timeout: Option<Duration>,
    /// The bus to the other processes of the service; None: this process
    /// is the whole service.
    pub bus: Option<parley_bus::BusSettings>,
    /// The local control socket; None when it is off.
    pub ctl_socket: Option<PathBuf>,
    /// The certificate and key, loaded and checked; Some exactly when
    /// `native_tls` or `http_tls` is on.
    pub tls: Option<crate::tls::TlsIdentity>,
    /// TLS on the native listener.
    pub native_tls: bool,
    /// TLS on the HTTP listener.
    pub http_tls: bool,
}

impl Settings {
    /// The TLS acceptor for the native listener, when it speaks TLS.
    pub fn native_tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls
            .as_ref()
            .filter(|_| self.native_tls)
            .map(|t| t.native_acceptor())
    }

    /// The TLS acceptor for the HTTP listener, when it speaks TLS.
    pub fn http_tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.as_ref().filter(|_| self.http_tls).map(|t| t.http_acceptor())
    }
}

/// Declares every setting once: its key (the field name, also the TOML
/// key), its environment variable, its flag's value name and its help text
/// (the doc comment, which `parleyd --help` shows). From this one list come
/// the raw-value struct that clap fills from flags and environment, the
/// keys a file may use, and the lookup by key.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $key:ident : $env:literal, $value_name:literal; )*) => {
        /// Raw values from flags and environment (clap fills both), before the file
        /// is merged in. Every field is a string so that parse errors are collected
        /// here rather than aborting at the first.
        #[derive(Clone, Debug, Default, clap::Args)]
        pub struct SettingArgs {
            /// TOML configuration file. Keys are the setting names below, with underscores.
            #[arg(long, env = "PARLEY_CONFIG", value_name = "FILE")]
            pub config: Option<PathBuf>,
            /// Which of the values above came from a flag and which from the
            /// environment (see [`SettingArgs::note_origins`]), so that an
            /// error can say where a bad value was set.
            #[arg(skip)]
            pub origins: std::collections::BTreeMap<String, Origin>,
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env, value_name = $value_name)]
                pub $key: Option<String>,
            )*
        }

        /// Every setting's key, in the order `--help` lists them.
        const KEYS: &[&str] = &[$(stringify!($key)),*];

        impl SettingArgs {
            fn flag_or_env(&self, key: &str) -> Option<String> {
                match key {
                    $(stringify!($key) => self.$key.clone(),)*
                    _ => None,
                }
            }
        }
    };
}

settings! {
    /// Native protocol listen address [default: 127.0.0.1:7878]
    listen: "PARLEY_LISTEN", "ADDR";
    /// Data directory [default: ./parley-data]
    data_dir: "PARLEY_DATA_DIR", "DIR";
    /// Storage backend: sqlite, postgres (needs postgres_url; several parleyd may share it) or memory (nothing survives a restart) [default: sqlite]
    store: "PARLEY_STORE", "KIND";
    /// Log filter, e.g. info, debug, parley_server=trace [default: info]
    log_level: "PARLEY_LOG_LEVEL", "FILTER";
    /// Log format: human, json, or auto (human on a terminal, JSON otherwise) [default: human]
    log_format: "PARLEY_LOG_FORMAT", "FORMAT";
    /// Directory for parleyd.log and access.log, rotated daily and by size; unset: stderr only [default: unset]
    log_dir: "PARLEY_LOG_DIR", "DIR";
    /// Days rotated log files are kept, 0 to keep them all [default: 14]
    log_retention_days: "PARLEY_LOG_RETENTION_DAYS", "DAYS";
    /// Size in bytes at which parleyd.log and access.log rotate (at least 1024), 0 to rotate by day only [default: 104857600]
    log_max_bytes: "PARLEY_LOG_MAX_BYTES", "BYTES";
    /// Rotated files kept per log, oldest deleted first, 0 for no cap [default: 10]
    log_max_files: "PARLEY_LOG_MAX_FILES", "N";
    /// Serve Prometheus metrics at /metrics on the HTTP listener: true or false [default: true]
    metrics: "PARLEY_METRICS", "BOOL";
    /// Time every request into PERF_DIR/RUN/PID.log: true or false [default: false]
    perf_log: "PARLEY_PERF_LOG", "BOOL";
    /// Perf log directory [default: DATA_DIR/perf]
    perf_dir: "PARLEY_PERF_DIR", "DIR";
    /// Most simultaneous connections [default: 10000]
    max_connections: "PARLEY_MAX_CONNECTIONS", "N";
    /// Largest frame payload in bytes, 1024 to 16777216 [default: 262144]
    max_frame_bytes: "PARLEY_MAX_FRAME_BYTES", "BYTES";
    /// Largest message body in bytes; must fit in a frame [default: 65536]
    max_body_bytes: "PARLEY_MAX_BODY_BYTES", "BYTES";
    /// Seconds a connection may stay unauthenticated [default: 30]
    auth_timeout_secs: "PARLEY_AUTH_TIMEOUT_SECS", "SECS";
    /// Seconds allowed for graceful shutdown [default: 10]
    shutdown_grace_secs: "PARLEY_SHUTDOWN_GRACE_SECS", "SECS";
    /// PBKDF2 iterations required of new registrations, at least 4096 [default: 4096]
    scram_iterations: "PARLEY_SCRAM_ITERATIONS", "N";
    /// SCRAM mechanisms for new registrations, preferred first [default: SCRAM-SHA-256,SCRAM-SHA-512]
    scram_mechanisms: "PARLEY_SCRAM_MECHANISMS", "LIST";
    /// SQLite durability: full (every acked message survives power loss), normal
    /// (survives a crash of parleyd; the last commits may be lost on power loss), off [default: full]
    sqlite_synchronous: "PARLEY_SQLITE_SYNCHRONOUS", "MODE";
    /// Largest the SQLite database may grow, in MiB; past it writes are refused with
    /// STORAGE_UNAVAILABLE as on a full disk, reads go on; 0 for no bound [default: 0]
    sqlite_max_db_mb: "PARLEY_SQLITE_MAX_DB_MB", "MIB";
    /// Storage operations queued for the writer before new work gets BUSY [default: 4096]
    write_queue: "PARLEY_WRITE_QUEUE", "N";
    /// Most operations committed in one transaction (group commit) [default: 512]
    max_batch: "PARLEY_MAX_BATCH", "N";
    /// PostgreSQL connection string for store = postgres, e.g. postgres://parley@127.0.0.1:5432/parley; no TLS, so loopback or a unix socket (host=/run/postgresql) [default: unset]
    postgres_url: "PARLEY_POSTGRES_URL", "URL";
    /// Most connections the PostgreSQL store opens at once [default: 4]
    postgres_pool_size: "PARLEY_POSTGRES_POOL_SIZE", "N";
    /// Writers of the PostgreSQL store per process, each committing its own batches on its own connection; a connection's operations always go to the same one, in order [default: 4]
    postgres_writers: "PARLEY_POSTGRES_WRITERS", "N";
    /// Milliseconds a PostgreSQL writer holding only acks waits for more before it commits them; any other request ends the wait, 0 for none (0-1000) [default: 5]
    postgres_ack_linger_ms: "PARLEY_POSTGRES_ACK_LINGER_MS", "MS";
    /// Seconds to open a PostgreSQL connection before the database counts as unreachable and requests get STORAGE_UNAVAILABLE [default: 5]
    postgres_connect_timeout_secs: "PARLEY_POSTGRES_CONNECT_TIMEOUT_SECS", "SECS";
    /// Seconds one batch may take in PostgreSQL before its requests get STORAGE_UNAVAILABLE and its connection is dropped [default: 30]
    postgres_batch_timeout_secs: "PARLEY_POSTGRES_BATCH_TIMEOUT_SECS", "SECS";
    /// Events queued per session before live pushes spill to storage [default: 1024]
    session_queue: "PARLEY_SESSION_QUEUE", "N";
    /// Requests one connection may have in flight [default: 256]
    pipeline_window: "PARLEY_PIPELINE_WINDOW", "N";
    /// Outbound bytes buffered per connection before it is paused [default: 262144]
    outbound_buffer_bytes: "PARLEY_OUTBOUND_BUFFER_BYTES", "BYTES";
    /// Seconds of silence after which a connection is closed; clients ping within it [default: 60]
    keepalive_secs: "PARLEY_KEEPALIVE_SECS", "N";
    /// Milliseconds to wait for an ack before pushing a message again; the wait doubles up to max_ack_backoff_ms [default: 10000]
    ack_timeout_ms: "PARLEY_ACK_TIMEOUT_MS", "N";
    /// Longest wait between re-pushes, in milliseconds [default: 120000]
    max_ack_backoff_ms: "PARLEY_MAX_ACK_BACKOFF_MS", "N";
    /// Pushed messages a session may leave unacknowledged before pushing pauses [default: 1024]
    max_unacked: "PARLEY_MAX_UNACKED", "N";
    /// Contacts per account [default: 1000]
    max_contacts: "PARLEY_MAX_CONTACTS", "N";
    /// Simultaneous native and WebSocket connections from one source address (IPv6: one /64) [default: 256]
    max_connections_per_ip: "PARLEY_MAX_CONNECTIONS_PER_IP", "N";
    /// Requests in flight across all connections before new work is answered BUSY [default: 16384]
    max_backlog: "PARLEY_MAX_BACKLOG", "N";
    /// Failed logins per account name per minute before logins to it are refused with RATE_LIMITED [default: 10]
    login_failures_per_account: "PARLEY_LOGIN_FAILURES_PER_ACCOUNT", "N";
    /// Failed logins and resumes per source address per minute before it is refused with RATE_LIMITED [default: 30]
    login_failures_per_ip: "PARLEY_LOGIN_FAILURES_PER_IP", "N";
    /// Logins in progress (challenge sent, proof not checked) per account name; more get RATE_LIMITED [default: 8]
    login_pending_per_account: "PARLEY_LOGIN_PENDING_PER_ACCOUNT", "N";
    /// Logins in progress per source address (IPv6: one /64); more get RATE_LIMITED [default: 64]
    login_pending_per_ip: "PARLEY_LOGIN_PENDING_PER_IP", "N";
    /// Sessions one account may have at once (native, WebSocket and HTTP); a login past it ends the oldest [default: 32]
    max_sessions_per_user: "PARLEY_MAX_SESSIONS_PER_USER", "N";
    /// Native and WebSocket connections not yet logged in, in all; more get BUSY and are closed [default: 2000]
    max_unauthenticated: "PARLEY_MAX_UNAUTHENTICATED", "N";
    /// Lifetime of a resume token, in seconds [default: 604800]
    resume_ttl_secs: "PARLEY_RESUME_TTL_SECS", "N";
    /// Who may register: open, closed (REGISTRATION_CLOSED) or invite (a one-time code from `parleyd ctl invite`) [default: open]
    registration: "PARLEY_REGISTRATION", "MODE";
    /// Registrations per source address (IPv6: one /64) per hour, on every front door; more get RATE_LIMITED; 0 for no limit [default: 10]
    registrations_per_ip_per_hour: "PARLEY_REGISTRATIONS_PER_IP_PER_HOUR", "N";
    /// Messages per second one account may send over all its sessions, with a burst of ten seconds' worth; more get RATE_LIMITED; 0 for no limit [default: 50]
    send_rate_per_account: "PARLEY_SEND_RATE_PER_ACCOUNT", "N";
    /// Messages one mailbox may hold, acknowledged or not; a send past it gets MAILBOX_FULL; 0 for no limit [default: 10000]
    mailbox_max_messages: "PARLEY_MAILBOX_MAX_MESSAGES", "N";
    /// Bytes of message bodies one mailbox may hold; a send past it gets MAILBOX_FULL; 0 for no limit [default: 104857600]
    mailbox_max_bytes: "PARLEY_MAILBOX_MAX_BYTES", "BYTES";
    /// Largest file one file offer may offer (the bytes go peer to peer or through the relay, never to storage) [default: 17179869184]
    max_file_bytes: "PARLEY_MAX_FILE_BYTES", "BYTES";
    /// Largest file the server relays between two online clients when they find no direct path; 0 for no relay [default: 268435456]
    relay_max_file_bytes: "PARLEY_RELAY_MAX_FILE_BYTES", "BYTES";
    /// Bytes a second one account may send through the file relay, over all its transfers; 0 for no limit [default: 2097152]
    relay_bytes_per_sec_per_user: "PARLEY_RELAY_BYTES_PER_SEC_PER_USER", "BYTES";
    /// The spam classifier on the send path: "off", "builtin" (the model shipped in the binary) or the path of a model file from parley-train; scored in the worker [default: off]
    filter_model: "PARLEY_FILTER_MODEL", "MODEL";
    /// Score on an inference server (parleyd filter-serve) at this http://HOST:PORT instead of in the worker; unset: in the worker [default: unset]
    filter_url: "PARLEY_FILTER_URL", "URL";
    /// Classifier score (0 to 1) at or above which a message is held in the recipient's spam folder, unpushed [default: the model's recommendation]
    filter_hold_at: "PARLEY_FILTER_HOLD_AT", "SCORE";
    /// Classifier score (0 to 1) at or above which a message is refused with REJECTED (reason spam); above 1: never [default: the model's recommendation]
    filter_reject_at: "PARLEY_FILTER_REJECT_AT", "SCORE";
    /// When the inference server does not answer in time: open (the message goes through unscored, counted) or closed (the sender gets BUSY) [default: open]
    filter_fail: "PARLEY_FILTER_FAIL", "POLICY";
    /// Milliseconds the inference server has to score a batch before the failure policy decides [default: 200]
    filter_timeout_ms: "PARLEY_FILTER_TIMEOUT_MS", "MS";
    /// Most messages sent to the inference server in one request [default: 256]
    filter_batch: "PARLEY_FILTER_BATCH", "N";
    /// Most messages waiting for the inference server; past it senders get BUSY [default: 4096]
    filter_queue: "PARLEY_FILTER_QUEUE", "N";
    /// A file of phrases, one per line, that get a message refused with REJECTED (reason blocked_words), matched ignoring case; unset: none [default: unset]
    filter_blocked_words_file: "PARLEY_FILTER_BLOCKED_WORDS_FILE", "FILE";
    /// Most messages one account's spam folder keeps; holding one more drops its oldest [default: 1000]
    spam_folder_max: "PARLEY_SPAM_FOLDER_MAX", "N";
    /// HTTP listen address (JSON API, WebSocket, pager, web UI), a unix socket as unix:PATH (mode 0660, for a proxy on this machine), or "off" [default: 127.0.0.1:7880]
    http_listen: "PARLEY_HTTP_LISTEN", "ADDR";
    /// QUIC (UDP) listen address for the native protocol (needs tls_cert and tls_key), or "off" [default: off]
    quic_listen: "PARLEY_QUIC_LISTEN", "ADDR";
    /// QUIC handshakes in progress above which a new client must first prove its address with a Retry; 0: always [default: 64]
    quic_retry_above: "PARLEY_QUIC_RETRY_ABOVE", "N";
    /// Whether the web pager (POST /v1/pager/USER) takes messages: true or false [default: true]
    pager: "PARLEY_PAGER", "BOOL";
    /// Pager posts per source address per minute [default: 10]
    pager_per_ip_per_minute: "PARLEY_PAGER_PER_IP_PER_MINUTE", "N";
    /// Seconds an HTTP session (bearer token) may go unused before it expires [default: 1800]
    http_session_idle_secs: "PARLEY_HTTP_SESSION_IDLE_SECS", "SECS";
    /// Most HTTP sessions at once; more logins get BUSY [default: 10000]
    http_max_sessions: "PARLEY_HTTP_MAX_SESSIONS", "N";
    /// Most HTTP sessions from one source address (IPv6: one /64); past it that address's least recently used one ends [default: 256]
    http_max_sessions_per_ip: "PARLEY_HTTP_MAX_SESSIONS_PER_IP", "N";
    /// Most HTTP logins between their two SCRAM steps [default: 10000]
    http_max_pending_logins: "PARLEY_HTTP_MAX_PENDING_LOGINS", "N";
    /// Most HTTP requests served at once; more get BUSY [default: 1024]
    http_max_in_flight: "PARLEY_HTTP_MAX_IN_FLIGHT", "N";
    /// Largest HTTP request body in bytes [default: 262144]
    http_max_request_bytes: "PARLEY_HTTP_MAX_REQUEST_BYTES", "BYTES";
    /// Most HTTP connections open at once, WebSockets included; more wait to be accepted [default: 4096]
    http_max_connections: "PARLEY_HTTP_MAX_CONNECTIONS", "N";
    /// Seconds a request's headers may take from their first byte (for the first request, from the accept or the TLS handshake) [default: 10]
    http_header_timeout_secs: "PARLEY_HTTP_HEADER_TIMEOUT_SECS", "SECS";
    /// Seconds a request's whole body may take; then 408 [default: 10]
    http_body_timeout_secs: "PARLEY_HTTP_BODY_TIMEOUT_SECS", "SECS";
    /// Seconds an HTTP connection may stay idle between requests [default: 75]
    http_keepalive_secs: "PARLEY_HTTP_KEEPALIVE_SECS", "SECS";
    /// Most HTTP connections from one address (IPv6 by /64), WebSockets included; more get 503 [default: 64]
    http_max_connections_per_ip: "PARLEY_HTTP_MAX_CONNECTIONS_PER_IP", "N";
    /// Proxies whose Forwarded / X-Forwarded-For name the client, as CIDR ranges, comma-separated [default: none]
    trusted_proxies: "PARLEY_TRUSTED_PROXIES", "LIST";
    /// Worker processes, all accepting on the same listeners; more than 1 needs store = postgres and the bus [default: 1]
    workers: "PARLEY_WORKERS", "N";
    /// Seconds a worker may go without a heartbeat before the master kills and replaces it (a stopped or stuck worker); 0 to never [default: 10]
    worker_heartbeat_timeout_secs: "PARLEY_WORKER_HEARTBEAT_TIMEOUT_SECS", "SECS";
    /// NATS server(s) joining this process to the others of the service (nats://host:port, comma-separated), or "off" [default: off]
    bus: "PARLEY_BUS", "URL";
    /// Subject prefix of this service on the bus, so that several services can share one NATS [default: parley]
    bus_prefix: "PARLEY_BUS_PREFIX", "NAME";
    /// Seconds after which a process silent on the bus is taken as gone and its users offline (it says it is alive five times in that time) [default: 5]
    bus_node_timeout_secs: "PARLEY_BUS_NODE_TIMEOUT_SECS", "SECS";
    /// Control socket for `parleyd ctl` (mode 0600), or "off" [default: DATA_DIR/parleyd.ctl]
    ctl_socket: "PARLEY_CTL_SOCKET", "PATH";
    /// PEM file with the certificate chain, end-entity first (`parleyd gen-cert` makes one for development)
    tls_cert: "PARLEY_TLS_CERT", "FILE";
    /// PEM file with the certificate's private key (PKCS#8, RSA or EC)
    tls_key: "PARLEY_TLS_KEY", "FILE";
    /// TLS on the native listener (needs tls_cert and tls_key): true or false [default: false]
    native_tls: "PARLEY_NATIVE_TLS", "BOOL";
    /// TLS on the HTTP listener (needs tls_cert and tls_key): true or false [default: false]
    http_tls: "PARLEY_HTTP_TLS", "BOOL";
}

/// Where a setting's value came from, when not from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Environment,
}

/// Every problem found in the configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

impl SettingArgs {
    /// Records which settings clap took from a flag and which from the
    /// environment, from the matches the fields were filled from.
    pub fn note_origins(&mut self, matches: &clap::ArgMatches) {
        for key in KEYS {
            let origin = match matches.value_source(key) {
                Some(clap::parser::ValueSource::CommandLine) => Origin::Flag,
                Some(clap::parser::ValueSource::EnvVariable) => Origin::Environment,
                _ => continue,
            };
            self.origins.insert((*key).to_owned(), origin);
        }
    }

    /// Reads the file leniently, for the helpers that look up one or two
    /// settings: a missing or broken file reads as empty.
    fn lenient_file(&self) -> toml::Table {
        self.config
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| text.parse::<toml::Table>().ok())
            .unwrap_or_default()
    }

    /// One setting's raw value, with the precedence of [`SettingArgs::resolve`].
    fn raw_value(&self, file: &toml::Table, key: &str) -> Option<String> {
        self.flag_or_env(key).or_else(|| file.get(key).map(toml_text))
    }

    /// The control socket `parleyd ctl` talks to. Like [`SettingArgs::resolve`]
    /// but it reads only `ctl_socket` and `data_dir`, so that a broken
    /// setting elsewhere in the file does not keep an operator from the
    /// running server. None when the control socket is off.
    pub fn ctl_socket_path(&self) -> Option<PathBuf> {
        let file = self.lenient_file();
        ctl_socket_from(self.raw_value(&file, "ctl_socket"), &self.lenient_data_dir(&file))
    }

    /// The perf directory `parleyd perf summary` reads, found like the
    /// control socket: only `perf_dir` and `data_dir` are read.
    pub fn perf_dir_path(&self) -> PathBuf {
        let file = self.lenient_file();
        perf_dir_from(self.raw_value(&file, "perf_dir"), &self.lenient_data_dir(&file))
    }

    fn lenient_data_dir(&self, file: &toml::Table) -> PathBuf {
        PathBuf::from(
            self.raw_value(file, "data_dir")
                .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned()),
        )
    }

    /// Where `key`'s value came from, for an error about it; None for a
    /// default.
    fn origin_text(&self, key: &str, file: &toml::Table, file_text: &str) -> Option<String> {
        let flag = || format!("--{}", key.replace('_', "-"));
        let env = || format!("PARLEY_{}", key.to_uppercase());
        if self.flag_or_env(key).is_some() {
            return Some(match self.origins.get(key) {
                Some(Origin::Flag) => format!("flag {}", flag()),
                Some(Origin::Environment) => format!("environment variable {}", env()),
                None => format!("{} or {}", flag(), env()),
            });
        }
        file.get(key)?;
        let path = self.config.as_ref()?.display();
        Some(match line_of(file_text, key) {
            Some(line) => format!("{path} line {line}"),
            None => path.to_string(),
        })
    }

    /// `error` with where the settings it names were set: "(from flag
    /// --listen)", or "(ack_timeout_ms from …; max_ack_backoff_ms from …)".
    fn with_origins(&self, error: String, file: &toml::Table, file_text: &str) -> String {
        // Quoted text is a value, which may look like a key by chance.
        let unquoted: String = error.split('"').step_by(2).collect::<Vec<_>>().join(" ");
        let mut named: Vec<&str> = Vec::new();
        for word in unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(key) = KEYS.iter().find(|k| **k == word)
                && !named.contains(key)
            {
                named.push(key);
            }
        }
        let origins: Vec<(&str, String)> = named
            .into_iter()
            .filter_map(|key| Some((key, self.origin_text(key, file, file_text)?)))
            .collect();
        match origins.as_slice() {
            [] => error,
            [(_, origin)] => format!("{error} (from {origin})"),
            many => {
                let each: Vec<String> = many
                    .iter()
                    .map(|(key, origin)| format!("{key} from {origin}"))
                    .collect();
                format!("{error} ({})", each.join("; "))
            }
        }
    }

    /// Merges file, environment and flags and validates the result.
    pub fn resolve(&self) -> Result<Settings, ConfigErrors> {
        let mut errors = Vec::new();
        let mut file_text = String::new();
        let file = match &self.config {
            None => toml::Table::new(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => {
                    errors.push(format!("config file {}: {e}", path.display()));
                    toml::Table::new()
                }
                Ok(text) => {
                    file_text = text;
                    match file_text.parse::<toml::Table>() {
                        Ok(table) => table,
                        Err(e) => {
                            errors.push(format!("config file {}: {e}", path.display()));
                            toml::Table::new()
                        }
                    }
                }
            },
        };
        for key in file.keys() {
            if !KEYS.contains(&key.as_str()) {
                let path = self
                    .config
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let line = line_of(&file_text, key)
                    .map(|n| format!(" line {n}"))
                    .unwrap_or_default();
                errors.push(format!("config file {path}{line}: unknown setting {key:?}"));
            }
        }
        let raw = |key: &str| -> Option<String> { self.raw_value(&file, key) };
        let get = |key: &str, default: &str| raw(key).unwrap_or_else(|| default.to_owned());

        fn boolean(errors: &mut Vec<String>, key: &str, value: &str, fallback: bool) -> bool {
            match value.trim() {
                "true" | "on" | "1" => true,
                "false" | "off" | "0" => false,
                other => {
                    errors.push(format!("{key}: {other:?} is not true or false"));
                    fallback
                }
            }
        }

        fn num<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
            errors: &mut Vec<String>,
            key: &str,
            value: &str,
            range: std::ops::RangeInclusive<T>,
            fallback: T,
        ) -> T {
            match value.trim().parse::<T>() {
                Ok(n) if range.contains(&n) => n,
                _ => {
                    errors.push(format!(
                        "{key}: {value:?} is not a number from {} to {}",
                        range.start(),
                        range.end()
                    ));
                    fallback
                }
            }
        }

        let listen_raw = get("listen", DEFAULT_LISTEN);
        let listen = listen_raw.parse::<SocketAddr>().unwrap_or_else(|_| {
            errors.push(format!("listen: {listen_raw:?} is not an address like 127.0.0.1:7878"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let data_dir = PathBuf::from(get("data_dir", DEFAULT_DATA_DIR));
        let store_raw = get("store", DEFAULT_STORE);
        let store = match store_raw.as_str() {
            "sqlite" => StoreKind::Sqlite,
            "postgres" => StoreKind::Postgres,
            "memory" => StoreKind::Memory,
            other => {
                errors.push(format!("store: {other:?} is not one of sqlite, postgres, memory"));
                StoreKind::Memory
            }
        };
        let log_level = get("log_level", DEFAULT_LOG_LEVEL);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            errors.push(format!("log_level: {log_level:?}: {e}"));
        }
        let log_format = match get("log_format", DEFAULT_LOG_FORMAT).trim() {
            "auto" => LogFormat::Auto,
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                errors.push(format!("log_format: {other:?} is not one of auto, human, json"));
                LogFormat::Human
            }
        };
        let log_dir = Some(get("log_dir", DEFAULT_LOG_DIR))
            .filter(|dir| !dir.trim().is_empty())
            .map(PathBuf::from);
        let log_retention_days: u32 = num(
            &mut errors,
            "log_retention_days",
            &get("log_retention_days", &DEFAULT_LOG_RETENTION_DAYS.to_string()),
            0..=36_500,
            0,
        );
        let log_max_bytes: u64 = num(
            &mut errors,
            "log_max_bytes",
            &get("log_max_bytes", &DEFAULT_LOG_MAX_BYTES.to_string()),
            0..=1 << 40,
            DEFAULT_LOG_MAX_BYTES,
        );
        if log_max_bytes != 0 && log_max_bytes < MIN_LOG_MAX_BYTES {
            errors.push(format!(
                "log_max_bytes: {log_max_bytes} is below {MIN_LOG_MAX_BYTES}; use 0 to rotate by day only"
            ));
        }
        let log_max_files: u32 = num(
            &mut errors,
            "log_max_files",
            &get("log_max_files", &DEFAULT_LOG_MAX_FILES.to_string()),
            0..=100_000,
            DEFAULT_LOG_MAX_FILES,
        );
        let metrics = boolean(
            &mut errors,
            "metrics",
            &get("metrics", &DEFAULT_METRICS.to_string()),
            DEFAULT_METRICS,
        );
        let perf_log = boolean(
            &mut errors,
            "perf_log",
            &get("perf_log", &DEFAULT_PERF_LOG.to_string()),
            DEFAULT_PERF_LOG,
        );
        let perf_dir = perf_dir_from(raw("perf_dir"), &data_dir);
        let max_connections = num(
            &mut errors,
            "max_connections",
            &get("max_connections", &DEFAULT_MAX_CONNECTIONS.to_string()),
            1..=1_000_000,
            1,
        );
        let max_frame_bytes = num(
            &mut errors,
            "max_frame_bytes",
            &get("max_frame_bytes", &DEFAULT_MAX_FRAME_BYTES.to_string()),
            1024..=16 * 1024 * 1024,
            1024,
        );
        let max_body_bytes = num(
            &mut errors,
            "max_body_bytes",
            &get("max_body_bytes", &DEFAULT_MAX_BODY_BYTES.to_string()),
            1..=16 * 1024 * 1024,
            1,
        );
        // A body must fit in a frame with room for the envelope around it.
        if max_body_bytes as u64 + 1024 > max_frame_bytes as u64 {
            errors.push(format!(
                "max_body_bytes ({max_body_bytes}) must be at least 1024 bytes below max_frame_bytes ({max_frame_bytes})"
            ));
        }
        let auth_timeout = Duration::from_secs(num(
            &mut errors,
            "auth_timeout_secs",
            &get("auth_timeout_secs", &DEFAULT_AUTH_TIMEOUT_SECS.to_string()),
            1..=3600,
            1,
        ));
        let shutdown_grace = Duration::from_secs(num(
            &mut errors,
            "shutdown_grace_secs",
            &get("shutdown_grace_secs", &DEFAULT_SHUTDOWN_GRACE_SECS.to_string()),
            0..=3600,
            0,
        ));
        let scram_iterations = num(
            &mut errors,
            "scram_iterations",
            &get("scram_iterations", &DEFAULT_SCRAM_ITERATIONS.to_string()),
            parley_core::limits::MIN_SCRAM_ITERATIONS..=parley_core::scram::MAX_ITERATIONS,
            parley_core::limits::MIN_SCRAM_ITERATIONS,
        );
        let mechanisms_raw = get("scram_mechanisms", DEFAULT_SCRAM_MECHANISMS);
        let mut scram_mechanisms = Vec::new();
        for name in mechanisms_raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match Mechanism::from_name(name) {
                Some(m) if !scram_mechanisms.contains(&m) => scram_mechanisms.push(m),
                Some(_) => {}
                None => errors.push(format!(
                    "scram_mechanisms: {name:?} is not SCRAM-SHA-256 or SCRAM-SHA-512"
                )),
            }
        }
        if scram_mechanisms.is_empty() {
            errors.push("scram_mechanisms: at least one mechanism is needed".into());
            scram_mechanisms.push(Mechanism::Sha256);
        }
        let sync_raw = get("sqlite_synchronous", DEFAULT_SQLITE_SYNCHRONOUS);
        let sqlite_synchronous = match sync_raw.as_str() {
            "full" => Synchronous::Full,
            "normal" => Synchronous::Normal,
            "off" => Synchronous::Off,
            other => {
                errors.push(format!("sqlite_synchronous: {other:?} is not one of full, normal, off"));
                Synchronous::Full
            }
        };
        let sqlite_max_db_mb: u64 = num(
            &mut errors,
            "sqlite_max_db_mb",
            &get("sqlite_max_db_mb", "0"),
            0..=u64::MAX / (1 << 20),
            0,
        );
        let write_queue = num(
            &mut errors,
            "write_queue",
            &get("write_queue", &DEFAULT_WRITE_QUEUE.to_string()),
            1..=1_000_000,
            1,
        );
        let max_batch = num(
            &mut errors,
            "max_batch",
            &get("max_batch", &DEFAULT_MAX_BATCH.to_string()),
            1..=100_000,
            1,
        );
        let postgres_url = match get("postgres_url", DEFAULT_POSTGRES_URL).trim() {
            "" => None,
            raw => match PgUrl::parse(raw) {
                Ok(url) => Some(url),
                // The value is not repeated: it may hold a password.
                Err(e) => {
                    errors.push(format!("postgres_url: {e}"));
                    None
                }
            },
        };
        match (store, &postgres_url) {
            (StoreKind::Postgres, None) if errors.iter().all(|e| !e.starts_with("postgres_url")) => {
                errors.push("store is postgres but postgres_url is not set".into())
            }
            (StoreKind::Sqlite | StoreKind::Memory, Some(_)) => errors.push(format!(
                "postgres_url is set but store is {}: set store = postgres, or unset postgres_url",
                store.name()
            )),
            _ => {}
        }
        let postgres_pool_size: usize = num(
            &mut errors,
            "postgres_pool_size",
            &get("postgres_pool_size", &DEFAULT_POSTGRES_POOL_SIZE.to_string()),
            1..=1000,
            DEFAULT_POSTGRES_POOL_SIZE,
        );
        let postgres_writers: usize = num(
            &mut errors,
            "postgres_writers",
            &get("postgres_writers", &DEFAULT_POSTGRES_WRITERS.to_string()),
            1..=parley_store::postgres::MAX_WRITERS,
            DEFAULT_POSTGRES_WRITERS,
        );
        let postgres_ack_linger_ms: u64 = num(
            &mut errors,
            "postgres_ack_linger_ms",
            &get("postgres_ack_linger_ms", &DEFAULT_POSTGRES_ACK_LINGER_MS.to_string()),
            0..=MAX_POSTGRES_ACK_LINGER_MS,
            DEFAULT_POSTGRES_ACK_LINGER_MS,
        );
        let postgres_connect_timeout_secs: u64 = num(
            &mut errors,
            "postgres_connect_timeout_secs",
            &get(
                "postgres_connect_timeout_secs",
                &DEFAULT_POSTGRES_CONNECT_TIMEOUT_SECS.to_string(),
            ),
            1..=3600,
            DEFAULT_POSTGRES_CONNECT_TIMEOUT_SECS,
        );
        let postgres_batch_timeout_secs: u64 = num(
            &mut errors,
            "postgres_batch_timeout_secs",
            &get(
                "postgres_batch_timeout_secs",
                &DEFAULT_POSTGRES_BATCH_TIMEOUT_SECS.to_string(),
            ),
            1..=3600,
            DEFAULT_POSTGRES_BATCH_TIMEOUT_SECS,
        );
        let session_queue = num(
            &mut errors,
            "session_queue",
            &get("session_queue", &DEFAULT_SESSION_QUEUE.to_string()),
            1..=1_000_000,
            1,
        );
        let pipeline_window = num(
            &mut errors,
            "pipeline_window",
            &get("pipeline_window", &DEFAULT_PIPELINE_WINDOW.to_string()),
            1..=100_000,
            1,
        );
        let outbound_buffer_bytes = num(
            &mut errors,
            "outbound_buffer_bytes",
            &get("outbound_buffer_bytes", &DEFAULT_OUTBOUND_BUFFER_BYTES.to_string()),
            4096..=1 << 30,
            4096,
        );
        if (outbound_buffer_bytes as u64) < max_frame_bytes as u64 {
            errors.push(format!(
                "outbound_buffer_bytes ({outbound_buffer_bytes}) must be at least max_frame_bytes ({max_frame_bytes})"
            ));
        }
        let keepalive_secs: u64 = num(
            &mut errors,
            "keepalive_secs",
            &get("keepalive_secs", &DEFAULT_KEEPALIVE_SECS.to_string()),
            1..=3600,
            1,
        );
        let ack_timeout_ms: u64 = num(
            &mut errors,
            "ack_timeout_ms",
            &get("ack_timeout_ms", &DEFAULT_ACK_TIMEOUT_MS.to_string()),
            10..=3_600_000,
            10,
        );
        let max_ack_backoff_ms: u64 = num(
            &mut errors,
            "max_ack_backoff_ms",
            &get("max_ack_backoff_ms", &DEFAULT_MAX_ACK_BACKOFF_MS.to_string()),
            10..=86_400_000,
            10,
        );
        let max_unacked: usize = num(
            &mut errors,
            "max_unacked",
            &get("max_unacked", &DEFAULT_MAX_UNACKED.to_string()),
            1..=1_000_000,
            1,
        );
        let max_contacts: u32 = num(
            &mut errors,
            "max_contacts",
            &get("max_contacts", &DEFAULT_MAX_CONTACTS.to_string()),
            1..=1_000_000,
            1,
        );
        let max_connections_per_ip: usize = num(
            &mut errors,
            "max_connections_per_ip",
            &get("max_connections_per_ip", &DEFAULT_MAX_CONNECTIONS_PER_IP.to_string()),
            1..=1_000_000,
            1,
        );
        let max_backlog: usize = num(
            &mut errors,
            "max_backlog",
            &get("max_backlog", &DEFAULT_MAX_BACKLOG.to_string()),
            1..=10_000_000,
            1,
        );
        let login_failures_per_account: u32 = num(
            &mut errors,
            "login_failures_per_account",
            &get(
                "login_failures_per_account",
                &DEFAULT_LOGIN_FAILURES_PER_ACCOUNT.to_string(),
            ),
            1..=1_000_000,
            1,
        );
        let login_failures_per_ip: u32 = num(
            &mut errors,
            "login_failures_per_ip",
            &get("login_failures_per_ip", &DEFAULT_LOGIN_FAILURES_PER_IP.to_string()),
            1..=1_000_000,
            1,
        );
        let login_pending_per_account: u32 = num(
            &mut errors,
            "login_pending_per_account",
            &get(
                "login_pending_per_account",
                &DEFAULT_LOGIN_PENDING_PER_ACCOUNT.to_string(),
            ),
            1..=1_000_000,
            1,
        );
        let login_pending_per_ip: u32 = num(
            &mut errors,
            "login_pending_per_ip",
            &get("login_pending_per_ip", &DEFAULT_LOGIN_PENDING_PER_IP.to_string()),
            1..=1_000_000,
            1,
        );
        let max_sessions_per_user: usize = num(
            &mut errors,
            "max_sessions_per_user",
            &get("max_sessions_per_user", &DEFAULT_MAX_SESSIONS_PER_USER.to_string()),
            1..=1_000_000,
            1,
        );
        let max_unauthenticated: usize = num(
            &mut errors,
            "max_unauthenticated",
            &get("max_unauthenticated", &DEFAULT_MAX_UNAUTHENTICATED.to_string()),
            1..=1_000_000,
            1,
        );
        let resume_ttl_secs: u64 = num(
            &mut errors,
            "resume_ttl_secs",
            &get("resume_ttl_secs", &DEFAULT_RESUME_TTL_SECS.to_string()),
            60..=31_536_000,
            60,
        );
        let registration = match get("registration", DEFAULT_REGISTRATION).trim() {
            "open" => parley_core::service::RegistrationMode::Open,
            "closed" => parley_core::service::RegistrationMode::Closed,
            "invite" => parley_core::service::RegistrationMode::Invite,
            other => {
                errors.push(format!("registration: {other:?} is not one of open, closed, invite"));
                parley_core::service::RegistrationMode::Closed
            }
        };
        let registrations_per_ip_per_hour: u32 = num(
            &mut errors,
            "registrations_per_ip_per_hour",
            &get(
                "registrations_per_ip_per_hour",
                &DEFAULT_REGISTRATIONS_PER_IP_PER_HOUR.to_string(),
            ),
            0..=1_000_000,
            DEFAULT_REGISTRATIONS_PER_IP_PER_HOUR,
        );
        let send_rate_per_account: u32 = num(
            &mut errors,
            "send_rate_per_account",
            &get("send_rate_per_account", &DEFAULT_SEND_RATE_PER_ACCOUNT.to_string()),
            0..=1_000_000,
            DEFAULT_SEND_RATE_PER_ACCOUNT,
        );
        let mailbox_max_messages: u64 = num(
            &mut errors,
            "mailbox_max_messages",
            &get("mailbox_max_messages", &DEFAULT_MAILBOX_MAX_MESSAGES.to_string()),
            0..=1_000_000_000,
            DEFAULT_MAILBOX_MAX_MESSAGES,
        );
        let mailbox_max_bytes: u64 = num(
            &mut errors,
            "mailbox_max_bytes",
            &get("mailbox_max_bytes", &DEFAULT_MAILBOX_MAX_BYTES.to_string()),
            0..=1 << 50,
            DEFAULT_MAILBOX_MAX_BYTES,
        );
        let max_file_bytes: u64 = num(
            &mut errors,
            "max_file_bytes",
            &get("max_file_bytes", &DEFAULT_MAX_FILE_BYTES.to_string()),
            1..=1 << 50,
            DEFAULT_MAX_FILE_BYTES,
        );
        let relay_max_file_bytes: u64 = num(
            &mut errors,
            "relay_max_file_bytes",
            &get("relay_max_file_bytes", &DEFAULT_RELAY_MAX_FILE_BYTES.to_string()),
            0..=1 << 50,
            DEFAULT_RELAY_MAX_FILE_BYTES,
        );
        let relay_bytes_per_sec_per_user: u64 = num(
            &mut errors,
            "relay_bytes_per_sec_per_user",
            &get(
                "relay_bytes_per_sec_per_user",
                &DEFAULT_RELAY_BYTES_PER_SEC_PER_USER.to_string(),
            ),
            0..=1 << 40,
            DEFAULT_RELAY_BYTES_PER_SEC_PER_USER,
        );
        let filter = {
            let model = FilterModel::parse(&get("filter_model", "off"));
            let url = raw("filter_url")
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty());
            if let Some(url) = &url {
                // HOST:PORT after http://, the port a number the client can
                // dial: checked here, so that a worker never starts with a
                // filter it cannot build.
                let rest = url.strip_prefix("http://").unwrap_or("");
                let port = rest.rsplit_once(':').and_then(|(host, port)| {
                    (!host.is_empty() && !host.contains('/')).then(|| port.parse::<u16>().ok().filter(|p| *p > 0))?
                });
                if port.is_none() {
                    errors.push(format!("filter_url: {url:?} is not like http://127.0.0.1:7890"));
                }
                if model != FilterModel::Off {
                    errors.push(
                        "filter_url and filter_model: choose one (filter_url scores on the inference server, with its model)"
                            .into(),
                    );
                }
            } else if let Err(e) = load_model(&model) {
                errors.push(format!("filter_model: {e}"));
            }
            let score = |errors: &mut Vec<String>, key: &str| -> Option<f32> {
                raw(key)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| num(errors, key, &v, 0.0f32..=2.0, 2.0))
            };
            let hold_at = score(&mut errors, "filter_hold_at");
            let reject_at = score(&mut errors, "filter_reject_at");
            if let (Some(hold), Some(reject)) = (hold_at, reject_at)
                && hold > reject
            {
                errors.push(format!(
                    "filter_hold_at {hold} is above filter_reject_at {reject}: nothing would ever be held"
                ));
            }
            let fail = match get("filter_fail", "open").trim() {
                "open" => parley_core::filter::FailPolicy::Open,
                "closed" => parley_core::filter::FailPolicy::Closed,
                other => {
                    errors.push(format!("filter_fail: {other:?} is not open or closed"));
                    parley_core::filter::FailPolicy::Open
                }
            };
            let timeout_ms: u64 = num(
                &mut errors,
                "filter_timeout_ms",
                &get("filter_timeout_ms", "200"),
                1..=60_000,
                200,
            );
            let batch: usize = num(&mut errors, "filter_batch", &get("filter_batch", "256"), 1..=256, 256);
            let queue: usize = num(
                &mut errors,
                "filter_queue",
                &get("filter_queue", "4096"),
                1..=1_000_000,
                4096,
            );
            let blocked_words = match raw("filter_blocked_words_file").filter(|p| !p.trim().is_empty()) {
                None => Vec::new(),
                Some(path) => match std::fs::read_to_string(path.trim()) {
                    Ok(text) => text
                        .lines()
                        .map(|l| l.trim().to_lowercase())
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .collect(),
                    Err(e) => {
                        errors.push(format!("filter_blocked_words_file: {}: {e}", path.trim()));
                        Vec::new()
                    }
                },
            };
            let spam_folder_max: u32 = num(
                &mut errors,
                "spam_folder_max",
                &get("spam_folder_max", "1000"),
                1..=1_000_000,
                1000,
            );
            FilterConfig {
                model,
                url,
                hold_at,
                reject_at,
                fail,
                timeout: Duration::from_millis(timeout_ms),
                batch,
                queue,
                blocked_words,
                spam_folder_max,
            }
        };
        let http_raw = get("http_listen", DEFAULT_HTTP_LISTEN);
        let mut http_socket = None;
        let http_listen = match http_raw.trim() {
            "off" | "" => None,
            raw if raw.starts_with("unix:") => {
                let path = PathBuf::from(&raw["unix:".len()..]);
                if path.as_os_str().is_empty() {
                    errors.push("http_listen: \"unix:\" needs a path, like unix:/run/parley/http.sock".into());
                } else if path
                    .parent()
                    .is_some_and(|dir| !dir.as_os_str().is_empty() && !dir.is_dir())
                {
                    errors.push(format!(
                        "http_listen: the directory of {} does not exist (parleyd does not create it: its mode decides who reaches the socket)",
                        path.display()
                    ));
                } else {
                    http_socket = Some(path);
                }
                None
            }
            raw => address(&mut errors, "http_listen", raw, "127.0.0.1:7880, unix:/path/to/socket"),
        };
        if let Some(http) = http_listen
            && http == listen
            && http.port() != 0
        {
            errors.push(format!("http_listen: {http} is also the native listen address"));
        }
        let quic_listen = match get("quic_listen", DEFAULT_QUIC_LISTEN).trim() {
            "off" | "" => None,
            raw => address(&mut errors, "quic_listen", raw, "127.0.0.1:7878 (UDP)"),
        };
        let quic_retry_above: usize = num(
            &mut errors,
            "quic_retry_above",
            &get("quic_retry_above", &DEFAULT_QUIC_RETRY_ABOVE.to_string()),
            0..=1_000_000,
            DEFAULT_QUIC_RETRY_ABOVE,
        );
        let pager = boolean(
            &mut errors,
            "pager",
            &get("pager", &DEFAULT_PAGER.to_string()),
            DEFAULT_PAGER,
        );
        let pager_per_ip_per_minute: u32 = num(
            &mut errors,
            "pager_per_ip_per_minute",
            &get("pager_per_ip_per_minute", &DEFAULT_PAGER_PER_IP_PER_MINUTE.to_string()),
            1..=1_000_000,
            1,
        );
        let http_session_idle_secs: u64 = num(
            &mut errors,
            "http_session_idle_secs",
            &get("http_session_idle_secs", &DEFAULT_HTTP_SESSION_IDLE_SECS.to_string()),
            10..=31_536_000,
            10,
        );
        let http_max_sessions: usize = num(
            &mut errors,
            "http_max_sessions",
            &get("http_max_sessions", &DEFAULT_HTTP_MAX_SESSIONS.to_string()),
            1..=1_000_000,
            1,
        );
        let http_max_sessions_per_ip: usize = num(
            &mut errors,
            "http_max_sessions_per_ip",
            &get(
                "http_max_sessions_per_ip",
                &DEFAULT_HTTP_MAX_SESSIONS_PER_IP.to_string(),
            ),
            1..=1_000_000,
            1,
        );
        let http_max_pending_logins: usize = num(
            &mut errors,
            "http_max_pending_logins",
            &get("http_max_pending_logins", &DEFAULT_HTTP_MAX_PENDING_LOGINS.to_string()),
            1..=1_000_000,
            1,
        );
        let http_max_in_flight: usize = num(
            &mut errors,
            "http_max_in_flight",
            &get("http_max_in_flight", &DEFAULT_HTTP_MAX_IN_FLIGHT.to_string()),
            1..=1_000_000,
            1,
        );
        let http_max_request_bytes: usize = num(
            &mut errors,
            "http_max_request_bytes",
            &get("http_max_request_bytes", &DEFAULT_HTTP_MAX_REQUEST_BYTES.to_string()),
            4096..=64 * 1024 * 1024,
            4096,
        );
        let http_max_connections: usize = num(
            &mut errors,
            "http_max_connections",
            &get("http_max_connections", &DEFAULT_HTTP_MAX_CONNECTIONS.to_string()),
            1..=1_000_000,
            1,
        );
        let http_header_timeout_secs: u64 = num(
            &mut errors,
            "http_header_timeout_secs",
            &get(
                "http_header_timeout_secs",
                &DEFAULT_HTTP_HEADER_TIMEOUT_SECS.to_string(),
            ),
            1..=3600,
            1,
        );
        let http_body_timeout_secs: u64 = num(
            &mut errors,
            "http_body_timeout_secs",
            &get("http_body_timeout_secs", &DEFAULT_HTTP_BODY_TIMEOUT_SECS.to_string()),
            1..=3600,
            1,
        );
        let http_keepalive_secs: u64 = num(
            &mut errors,
            "http_keepalive_secs",
            &get("http_keepalive_secs", &DEFAULT_HTTP_KEEPALIVE_SECS.to_string()),
            1..=3600,
            1,
        );
        let http_max_connections_per_ip: usize = num(
            &mut errors,
            "http_max_connections_per_ip",
            &get(
                "http_max_connections_per_ip",
                &DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP.to_string(),
            ),
            1..=1_000_000,
            1,
        );
        let trusted_proxies = parley_http::TrustedProxies::parse(&get("trusted_proxies", DEFAULT_TRUSTED_PROXIES))
            .unwrap_or_else(|bad| {
                errors.extend(bad.into_iter().map(|e| format!("trusted_proxies: {e}")));
                parley_http::TrustedProxies::default()
            });
        let workers: usize = num(
            &mut errors,
            "workers",
            &get("workers", &DEFAULT_WORKERS.to_string()),
            1..=1024,
            1,
        );
        let bus_node_timeout_secs: u64 = num(
            &mut errors,
            "bus_node_timeout_secs",
            &get("bus_node_timeout_secs", &DEFAULT_BUS_NODE_TIMEOUT_SECS.to_string()),
            1..=3600,
            DEFAULT_BUS_NODE_TIMEOUT_SECS,
        );
        let bus_prefix = get("bus_prefix", DEFAULT_BUS_PREFIX);
        if bus_prefix.is_empty()
            || !bus_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push(format!(
                "bus_prefix: {bus_prefix:?} must be letters, digits, '-' or '_' (it starts NATS subjects)"
            ));
        }
        let bus = match get("bus", DEFAULT_BUS).trim() {
            "" | "off" => None,
            url => {
                if !url
                    .split(',')
                    .all(|u| u.trim().starts_with("nats://") || u.trim().starts_with("tls://"))
                {
                    errors.push(format!(
                        "bus: {url:?} must be nats://host:port (several: comma-separated), or off"
                    ));
                }
                Some(parley_bus::BusSettings {
                    url: url.to_owned(),
                    prefix: bus_prefix.clone(),
                    heartbeat: Duration::from_secs(bus_node_timeout_secs) / 5,
                    node_timeout: Duration::from_secs(bus_node_timeout_secs),
                    queue: DEFAULT_BUS_QUEUE,
                })
            }
        };
        if workers > 1 {
            // Workers share the listeners, so a user's sessions may land on
            // any of them: they need one store they all see and the bus to
            // reach each other's sessions.
            if store != StoreKind::Postgres {
                errors.push(format!(
                    "workers: {workers} needs store = \"postgres\" (with postgres_url): the workers must share one \
                     store, which {} is not; set store = \"postgres\", or workers = 1",
                    store.name()
                ));
            }
            if bus.is_none() {
                errors.push(format!(
                    "workers: {workers} needs the bus (bus = \"nats://127.0.0.1:4222\"), through which each worker \
                     reaches the sessions the others hold; set bus, or workers = 1"
                ));
            }
            if quic_listen.is_some() {
                // One UDP socket read by several processes would hand a
                // connection's datagrams to whichever reads first.
                errors.push(format!(
                    "quic_listen works with one worker only (workers: {workers}): QUIC's datagrams cannot yet be \
                     routed to the worker that holds their connection; run QUIC on a node of its own, or set \
                     quic_listen = \"off\""
                ));
            }
        }
        let worker_heartbeat_timeout_secs: u64 = num(
            &mut errors,
            "worker_heartbeat_timeout_secs",
            &get(
                "worker_heartbeat_timeout_secs",
                &DEFAULT_WORKER_HEARTBEAT_TIMEOUT_SECS.to_string(),
            ),
            0..=3600,
            DEFAULT_WORKER_HEARTBEAT_TIMEOUT_SECS,
        );
        let ctl_socket = ctl_socket_from(raw("ctl_socket"), &data_dir);
        let tls_cert = get("tls_cert", DEFAULT_TLS_CERT);
        let tls_key = get("tls_key", DEFAULT_TLS_KEY);
        let native_tls = boolean(
            &mut errors,
            "native_tls",
            &get("native_tls", &DEFAULT_NATIVE_TLS.to_string()),
            DEFAULT_NATIVE_TLS,
        );
        let http_tls = boolean(
            &mut errors,
            "http_tls",
            &get("http_tls", &DEFAULT_HTTP_TLS.to_string()),
            DEFAULT_HTTP_TLS,
        );
        if http_tls && http_socket.is_some() {
            errors.push(
                "http_tls is for a TCP listener; on a unix socket (http_listen = \"unix:...\") the proxy in front terminates TLS: set http_tls = false"
                    .into(),
            );
        }
        let tls = resolve_tls(
            &mut errors,
            tls_cert.trim(),
            tls_key.trim(),
            Wanted {
                native: native_tls,
                http: http_tls && http_listen.is_some(),
                quic: quic_listen.is_some(),
            },
        );
        if ack_timeout_ms > max_ack_backoff_ms {
            errors.push(format!(
                "ack_timeout_ms ({ack_timeout_ms}) must not exceed max_ack_backoff_ms ({max_ack_backoff_ms})"
            ));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(
                errors
                    .into_iter()
                    .map(|e| self.with_origins(e, &file, &file_text))
                    .collect(),
            ));
        }
        Ok(Settings {
            listen,
            data_dir,
            store,
            log_level,
            log_format,
            log_dir,
            log_retention_days,
            log_max_bytes,
            log_max_files,
            metrics,
            perf_log,
            perf_dir,
            max_connections,
            max_frame_bytes,
            max_body_bytes,
            auth_timeout,
            shutdown_grace,
            scram_iterations,
            scram_mechanisms,
            sqlite_synchronous,
            sqlite_max_db_mb,
            write_queue,
            max_batch,
            postgres_url,
            postgres_pool_size,
            postgres_writers,
            postgres_ack_linger: Duration::from_millis(postgres_ack_linger_ms),
            postgres_connect_timeout: Duration::from_secs(postgres_connect_timeout_secs),
            postgres_batch_timeout: Duration::from_secs(postgres_batch_timeout_secs),
            session_queue,
            pipeline_window,
            outbound_buffer_bytes,
            keepalive: Duration::from_secs(keepalive_secs),
            ack_timeout: Duration::from_millis(ack_timeout_ms),
            max_ack_backoff: Duration::from_millis(max_ack_backoff_ms),
            max_unacked,
            max_contacts,
            max_connections_per_ip,
            max_backlog,
            login_failures_per_account,
            login_failures_per_ip,
            login_pending_per_account,
            login_pending_per_ip,
            max_sessions_per_user,
            max_unauthenticated,
            resume_ttl: Duration::from_secs(resume_ttl_secs),
            registration,
            registrations_per_ip_per_hour,
            send_rate_per_account,
            mailbox_max_messages,
            mailbox_max_bytes,
            max_file_bytes,
            relay_max_file_bytes,
            relay_bytes_per_sec_per_user,
            filter,
            http_listen,
            http_socket,
            quic_listen,
            quic_retry_above,
            pager,
            pager_per_ip_per_minute,
            http_session_idle: Duration::from_secs(http_session_idle_secs),
            http_max_sessions,
            http_max_sessions_per_ip,
            http_max_pending_logins,
            http_max_in_flight,
            http_max_request_bytes,
            http_max_connections,
            http_header_timeout: Duration::from_secs(http_header_timeout_secs),
            http_body_timeout: Duration::from_secs(http_body_timeout_secs),
            http_keepalive: Duration::from_secs(http_keepalive_secs),
            http_max_connections_per_ip,
            trusted_proxies,
            workers,
            worker_heartbeat_timeout: Some(Duration::from_secs(worker_heartbeat_timeout_secs)).filter(|t| !t.is_zero()),
            bus,
            ctl_socket,
            tls,
            native_tls,
            http_tls,
        })
    }
}

/// A file value as the text a flag would carry (a list: comma-separated).
fn toml_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string()))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// The line (from 1) of a flat TOML file where `key` is set.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let rest = line
                .strip_prefix(key)
                .or_else(|| line.strip_prefix(&format!("\"{key}\"")))
                .or_else(|| line.strip_prefix(&format!("'{key}'")));
            rest.is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

/// `ctl_socket` from its raw value: unset is the default file in the data
/// directory, "off" (or empty) is none.
fn ctl_socket_from(raw: Option<String>, data_dir: &std::path::Path) -> Option<PathBuf> {
    match raw {
        None => Some(data_dir.join(DEFAULT_CTL_SOCKET_NAME)),
        Some(raw) if matches!(raw.trim(), "off" | "") => None,
        Some(raw) => Some(PathBuf::from(raw)),
    }
}

/// `perf_dir` from its raw value: unset or empty is `perf` in the data directory.
fn perf_dir_from(raw: Option<String>, data_dir: &std::path::Path) -> PathBuf {
    raw.filter(|dir| !dir.trim().is_empty())
        .map_or_else(|| data_dir.join("perf"), PathBuf::from)
}

/// Checks that the TLS settings agree and loads the certificate and key
/// when a listener uses them. Every problem goes to `errors`.
/// A listener's address, or None with an error saying what was expected
/// (`like`: examples of what the setting takes besides "off").
fn address(errors: &mut Vec<String>, key: &str, raw: &str, like: &str) -> Option<SocketAddr> {
    match raw.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(format!("{key}: {raw:?} is not an address like {like}, or \"off\""));
            None
        }
    }
}

/// Which listeners need the certificate.
struct Wanted {
    native: bool,
    http: bool,
    quic: bool,
}

fn resolve_tls(errors: &mut Vec<String>, cert: &str, key: &str, by: Wanted) -> Option<crate::tls::TlsIdentity> {
    let before = errors.len();
    let wanted = by.native || by.http || by.quic;
    match (cert.is_empty(), key.is_empty()) {
        (true, false) => errors.push("tls_key is set but tls_cert is not".into()),
        (false, true) => errors.push("tls_cert is set but tls_key is not".into()),
        (true, true) if wanted => {
            let on = if by.native {
                "native_tls is on"
            } else if by.http {
                "http_tls is on"
            } else {
                "quic_listen is set (QUIC always speaks TLS 1.3)"
            };
            errors.push(format!("{on} but tls_cert and tls_key are not set"));
        }
        (false, false) if !wanted => errors.push(
            "tls_cert and tls_key are set but no listener uses them: set native_tls and/or http_tls to true, or quic_listen"
                .into(),
        ),
        _ => {}
    }
    if errors.len() > before || !wanted {
        return None;
    }
    match crate::tls::load_identity(std::path::Path::new(cert), std::path::Path::new(key)) {
        Ok(identity) => Some(identity),
        Err(problems) => {
            errors.extend(problems);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = SettingArgs::default().resolve().unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.store, StoreKind::Sqlite);
        assert_eq!(s.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
        assert_eq!(s.pipeline_window, DEFAULT_PIPELINE_WINDOW);
        assert_eq!(s.outbound_buffer_bytes, DEFAULT_OUTBOUND_BUFFER_BYTES);
        assert_eq!(s.write_queue, DEFAULT_WRITE_QUEUE);
        assert_eq!(
            s.http_listen.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_HTTP_LISTEN)
        );
        assert!(s.pager);
    }

    #[test]
    fn the_http_listener_can_be_switched_off() {
        let args = SettingArgs {
            http_listen: Some("off".into()),
            pager: Some("false".into()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.http_listen, None);
        assert!(!s.pager);
        let bad = SettingArgs {
            http_listen: Some("nowhere".into()),
            pager: Some("maybe".into()),
            ..Default::default()
        };
        assert_eq!(bad.resolve().unwrap_err().0.len(), 2);
    }

    /// deploy/parleyd.toml names every setting, and its values are the
    /// defaults: uncommented, it configures exactly what no file does.
    #[test]
    fn the_sample_config_lists_every_setting_at_its_default() {
        let sample = include_str!("../../../deploy/parleyd.toml");
        for key in KEYS {
            assert!(
                sample.lines().any(|line| line.starts_with(&format!("# {key} = "))),
                "deploy/parleyd.toml does not mention {key}"
            );
        }
        let uncommented: String = sample
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| KEYS.iter().any(|key| line.starts_with(&format!("{key} = "))))
            .map(|line| format!("{line}\n"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parleyd.toml");
        std::fs::write(&path, uncommented).unwrap();
        let from_file = SettingArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let defaults = SettingArgs::default().resolve().unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn observability_settings() {
        let s = SettingArgs::default().resolve().unwrap();
        assert_eq!(s.log_format, LogFormat::Human);
        assert_eq!(s.log_dir, None);
        assert!(s.metrics);
        assert!(!s.perf_log);
        assert_eq!(s.perf_dir, PathBuf::from(DEFAULT_DATA_DIR).join("perf"));
        let args = SettingArgs {
            data_dir: Some("/srv/parley".into()),
            log_format: Some("json".into()),
            log_dir: Some("/var/log/parley".into()),
            log_retention_days: Some("0".into()),
            metrics: Some("false".into()),
            perf_log: Some("true".into()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.log_dir, Some(PathBuf::from("/var/log/parley")));
        assert_eq!(s.log_retention_days, 0);
        assert!(!s.metrics);
        assert!(s.perf_log);
        assert_eq!(s.perf_dir, PathBuf::from("/srv/parley/perf"));
        let bad = SettingArgs {
            log_format: Some("xml".into()),
            log_retention_days: Some("-1".into()),
            metrics: Some("maybe".into()),
            perf_log: Some("yes please".into()),
            ..Default::default()
        };
        assert_eq!(bad.resolve().unwrap_err().0.len(), 4);
    }

    #[test]
    fn log_size_settings() {
        let s = SettingArgs::default().resolve().unwrap();
        assert_eq!(s.log_max_bytes, DEFAULT_LOG_MAX_BYTES);
        assert_eq!(s.log_max_files, DEFAULT_LOG_MAX_FILES);
        let s = SettingArgs {
            log_max_bytes: Some("0".into()),
            log_max_files: Some("0".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((s.log_max_bytes, s.log_max_files), (0, 0));
        let bad = SettingArgs {
            log_max_bytes: Some("100".into()),
            log_max_files: Some("-1".into()),
            ..Default::default()
        };
        let errors = bad.resolve().unwrap_err().0;
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("below 1024"), "{errors:?}");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let args = SettingArgs {
            listen: Some("nowhere".into()),
            store: Some("oracle".into()),
            max_frame_bytes: Some("12".into()),
            scram_mechanisms: Some("MD5".into()),
            ..Default::default()
        };
        let errors = args.resolve().unwrap_err().0;
        assert!(errors.len() >= 4, "{errors:?}");
    }

    #[test]
    fn postgres_needs_a_url_and_a_url_needs_postgres() {
        let url = "postgres://parley:secret-pw@127.0.0.1:5432/parley";
        let s = SettingArgs {
            store: Some("postgres".into()),
            postgres_url: Some(url.into()),
            postgres_pool_size: Some("3".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.store, StoreKind::Postgres);
        assert_eq!(s.postgres_pool_size, 3);
        assert_eq!(s.postgres_writers, DEFAULT_POSTGRES_WRITERS);
        assert_eq!(s.postgres_ack_linger, parley_store::postgres::DEFAULT_ACK_LINGER);
        assert_eq!(s.postgres_connect_timeout, Duration::from_secs(5));
        let parsed = s.postgres_url.as_ref().expect("the URL");
        assert_eq!(parsed.redacted(), "postgres://parley@127.0.0.1:5432/parley");
        assert!(parsed.is_local());
        assert!(
            !format!("{s:?}").contains("secret-pw"),
            "the password stays out of Debug"
        );

        let errors_of = |args: SettingArgs| args.resolve().unwrap_err().0;
        assert_eq!(
            errors_of(SettingArgs {
                store: Some("postgres".into()),
                ..Default::default()
            }),
            ["store is postgres but postgres_url is not set (from --store or PARLEY_STORE)"]
        );
        let errors = errors_of(SettingArgs {
            postgres_url: Some(url.into()),
            ..Default::default()
        });
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("postgres_url is set but store is sqlite"),
            "{errors:?}"
        );
        let errors = errors_of(SettingArgs {
            store: Some("postgres".into()),
            postgres_url: Some("postgres://parley:secret-pw@db.example:5432/parley?sslmode=require".into()),
            postgres_pool_size: Some("0".into()),
            ..Default::default()
        });
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("TLS"), "{errors:?}");
        assert!(errors.iter().all(|e| !e.contains("secret-pw")), "{errors:?}");
        let remote = SettingArgs {
            store: Some("postgres".into()),
            postgres_url: Some("host=db.example user=parley dbname=parley".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(!remote.postgres_url.unwrap().is_local());
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nstore = \"memory\"\nmax_connections = 7\n",
        )
        .unwrap();
        let args = SettingArgs {
            config: Some(path),
            listen: Some("127.0.0.1:9001".into()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.listen.port(), 9001);
        assert_eq!(s.store, StoreKind::Memory);
        assert_eq!(s.max_connections, 7);
    }

    fn pair(dir: &std::path::Path, name: &str) -> crate::gen_cert::Generated {
        crate::gen_cert::generate(&crate::gen_cert::GenCertArgs {
            out: dir.join(name),
            names: Vec::new(),
            days: 1,
            force: false,
        })
        .unwrap()
    }

    fn tls_args(cert: &std::path::Path, key: &std::path::Path) -> SettingArgs {
        SettingArgs {
            tls_cert: Some(cert.display().to_string()),
            tls_key: Some(key.display().to_string()),
            native_tls: Some("true".into()),
            http_tls: Some("true".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_generated_pair_turns_tls_on_for_the_chosen_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let made = pair(dir.path(), "a");
        let s = tls_args(&made.cert_path, &made.key_path).resolve().unwrap();
        assert_eq!(
            s.tls.as_ref().map(|t| t.fingerprint.as_str()),
            Some(made.fingerprint.as_str())
        );
        assert!(s.native_tls_acceptor().is_some() && s.http_tls_acceptor().is_some());
        let native_only = SettingArgs {
            http_tls: Some("false".into()),
            ..tls_args(&made.cert_path, &made.key_path)
        }
        .resolve()
        .unwrap();
        assert!(native_only.native_tls_acceptor().is_some() && native_only.http_tls_acceptor().is_none());
        let defaults = SettingArgs::default().resolve().unwrap();
        assert!(defaults.tls.is_none() && !defaults.native_tls && !defaults.http_tls);
    }

    #[test]
    fn the_http_listener_may_be_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("http.sock");
        let s = SettingArgs {
            http_listen: Some(format!("unix:{}", path.display())),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((s.http_listen, s.http_socket.as_deref()), (None, Some(path.as_path())));
        let errors_of = |args: SettingArgs| args.resolve().unwrap_err().0;
        let errors = errors_of(SettingArgs {
            http_listen: Some("unix:".into()),
            ..Default::default()
        });
        assert!(errors[0].contains("needs a path"), "{errors:?}");
        let errors = errors_of(SettingArgs {
            http_listen: Some(format!("unix:{}", dir.path().join("none/http.sock").display())),
            ..Default::default()
        });
        assert!(errors[0].contains("does not exist"), "{errors:?}");
    }

    #[test]
    fn quic_is_off_by_default_and_needs_a_certificate_and_one_worker() {
        let defaults = SettingArgs::default().resolve().unwrap();
        assert_eq!((defaults.quic_listen, defaults.quic_retry_above), (None, 64));
        let errors_of = |args: SettingArgs| args.resolve().unwrap_err().0;
        let errors = errors_of(SettingArgs {
            quic_listen: Some("127.0.0.1:7878".into()),
            ..Default::default()
        });
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("quic_listen is set (QUIC always speaks TLS 1.3) but tls_cert and tls_key are not set"),
            "{errors:?}"
        );
        let errors = errors_of(SettingArgs {
            quic_listen: Some("nowhere".into()),
            ..Default::default()
        });
        assert!(
            errors[0].starts_with("quic_listen: \"nowhere\" is not an address"),
            "{errors:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let made = pair(dir.path(), "q");
        // QUIC alone may use the certificate: no TCP listener needs TLS.
        let quic_only = SettingArgs {
            quic_listen: Some("127.0.0.1:0".into()),
            native_tls: Some("false".into()),
            http_tls: Some("false".into()),
            ..tls_args(&made.cert_path, &made.key_path)
        }
        .resolve()
        .unwrap();
        assert!(quic_only.tls.is_some() && quic_only.native_tls_acceptor().is_none());
        let errors = errors_of(SettingArgs {
            quic_listen: Some("127.0.0.1:0".into()),
            workers: Some("2".into()),
            store: Some("postgres".into()),
            postgres_url: Some("postgres://localhost/x".into()),
            bus: Some("nats://127.0.0.1:4222".into()),
            ..tls_args(&made.cert_path, &made.key_path)
        });
        assert!(
            errors.len() == 1 && errors[0].starts_with("quic_listen works with one worker only"),
            "{errors:?}"
        );
    }

    #[test]
    fn tls_errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a");
        let b = pair(dir.path(), "b");
        let errors_of = |args: SettingArgs| args.resolve().unwrap_err().0;

        // Missing files: both reported at once, with other errors too.
        let missing = dir.path().join("missing.pem");
        let errors = errors_of(SettingArgs {
            store: Some("oracle".into()),
            ..tls_args(&missing, &missing)
        });
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.starts_with("tls_cert: cannot read")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("tls_key: cannot read")),
            "{errors:?}"
        );

        // A key that belongs to another certificate.
        let errors = errors_of(tls_args(&a.cert_path, &b.key_path));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("does not belong to the certificate"), "{errors:?}");

        // The files swapped: no certificate where one is expected, no key
        // where the key should be.
        let errors = errors_of(tls_args(&a.key_path, &a.cert_path));
        assert!(errors.iter().any(|e| e.contains("holds no certificate")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("holds no private key")), "{errors:?}");

        // Settings that disagree.
        let errors = errors_of(SettingArgs {
            native_tls: Some("true".into()),
            ..Default::default()
        });
        assert_eq!(
            errors,
            ["native_tls is on but tls_cert and tls_key are not set (from --native-tls or PARLEY_NATIVE_TLS)"]
        );
        let errors = errors_of(SettingArgs {
            native_tls: Some("false".into()),
            http_tls: Some("false".into()),
            ..tls_args(&a.cert_path, &a.key_path)
        });
        assert!(errors[0].contains("no listener uses them"), "{errors:?}");
        let errors = errors_of(SettingArgs {
            tls_key: None,
            ..tls_args(&a.cert_path, &a.key_path)
        });
        assert_eq!(
            errors,
            ["tls_cert is set but tls_key is not (from --tls-cert or PARLEY_TLS_CERT)"]
        );
        let errors = errors_of(SettingArgs {
            native_tls: Some("yes please".into()),
            ..Default::default()
        });
        assert!(errors[0].starts_with("native_tls:"), "{errors:?}");
    }

    /// Every setting's variable is PARLEY_ and its key in capitals, and its
    /// flag is the key with dashes: one spelling, three forms.
    #[test]
    fn every_setting_has_its_variable_and_flag() {
        use clap::Args;
        let command = SettingArgs::augment_args(clap::Command::new("parleyd"));
        for key in KEYS {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id().as_str() == *key)
                .unwrap_or_else(|| panic!("no argument for {key}"));
            assert_eq!(arg.get_long(), Some(key.replace('_', "-").as_str()), "{key}");
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert_eq!(env, format!("PARLEY_{}", key.to_uppercase()), "{key}");
        }
    }

    /// An error naming two settings says where each was set (one setting
    /// from each source is covered by the `operator` integration test,
    /// which goes through clap).
    #[test]
    fn an_error_about_two_settings_says_where_each_was_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "# a comment\n\nack_timeout_ms = 5000\n").unwrap();
        let mut args = SettingArgs {
            config: Some(path.clone()),
            max_ack_backoff_ms: Some("100".into()),
            ..Default::default()
        };
        args.origins.insert("max_ack_backoff_ms".into(), Origin::Flag);
        let errors = args.resolve().unwrap_err().0;
        assert_eq!(
            errors,
            [format!(
                "ack_timeout_ms (5000) must not exceed max_ack_backoff_ms (100) \
                 (ack_timeout_ms from {} line 3; max_ack_backoff_ms from flag --max-ack-backoff-ms)",
                path.display()
            )]
        );
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let args = SettingArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(args.resolve().unwrap_err().0[0].contains("lisen"));
    }
}
