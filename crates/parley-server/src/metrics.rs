//! `GET /metrics`: the counters of [`Stats`], the store's histograms and
//! facts about this process, in the Prometheus text exposition format
//! (version 0.0.4). Counters end in `_total`; open connections, sessions
//! and queue depths are gauges. docs/OPERATING.md lists every name.
//!
//! Rendering is pure ([`render`]), so that tests check it without a
//! server; the HTTP front door calls it through the callback the server
//! hands it, on every scrape.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use parley_core::histogram::HistogramSnapshot;
use parley_core::store::StoreStats;

use crate::server::Stats;

/// Environment variable in which a supervising process tells a worker how
/// many times it restarted workers before starting this one.
pub const WORKER_RESTARTS_ENV: &str = "PARLEYD_WORKER_RESTARTS";
/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Facts about this process, read once at startup.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessInfo {
    /// Worker restarts before this worker (from [`WORKER_RESTARTS_ENV`]; 0 when absent).
    pub worker_restarts: u64,
    /// When this process started serving, in seconds since the epoch.
    pub start_time_secs: f64,
    /// This process's id.
    pub pid: u32,
}

static PROCESS: OnceLock<ProcessInfo> = OnceLock::new();

/// This process's facts; the first call reads the environment and the clock.
pub fn process() -> &'static ProcessInfo {
    PROCESS.get_or_init(|| {
        let worker_restarts = match std::env::var(WORKER_RESTARTS_ENV) {
            Err(_) => 0,
            Ok(raw) => raw.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(value = %raw, "{WORKER_RESTARTS_ENV} is not a number; counting 0 restarts");
                0
            }),
        };
        ProcessInfo {
            worker_restarts,
            start_time_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            pid: std::process::id(),
        }
    })
}

/// Resource use read from `/proc` at scrape time (Linux only; None elsewhere).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub resident_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

impl Resources {
    /// Reads them now.
    pub fn read() -> Resources {
        #[cfg(target_os = "linux")]
        {
            let resident_memory_bytes = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .map(|kib| kib * 1024)
            });
            let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
            Resources {
                resident_memory_bytes,
                open_fds,
            }
        }
        #[cfg(not(target_os = "linux"))]
        Resources::default()
    }
}

/// The exposition being written.
struct Exposition {
    out: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "counter", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// One counter with a label taking each of `values`.
    fn labelled_counter(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        self.header(name, "counter", help);
        for (value, count) in values {
            let _ = writeln!(self.out, "{name}{{{label}=\"{value}\"}} {count}");
        }
    }

    /// A histogram whose recorded integers are divided by `scale` (1e6 to
    /// turn microseconds into seconds, 1 for plain counts).
    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot, scale: f64) {
        self.header(name, "histogram", help);
        self.series(name, "", h, scale);
    }

    /// One histogram family with a label taking each of `values`.
    fn labelled_histogram(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[(&str, HistogramSnapshot)],
        scale: f64,
    ) {
        self.header(name, "histogram", help);
        for (value, h) in values {
            self.series(name, &format!("{label}=\"{value}\","), h, scale);
        }
    }

    /// The bucket, sum and count lines of one histogram; `labels` is empty
    /// or `name="value",` pairs, written before `le`.
    fn series(&mut self, name: &str, labels: &str, h: &HistogramSnapshot, scale: f64) {
        let mut count = 0;
        for (bound, cumulative) in h.cumulative() {
            let le = bound.map_or_else(|| "+Inf".to_owned(), |b| (b as f64 / scale).to_string());
            let _ = writeln!(self.out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
            count = cumulative;
        }
        let own = labels.trim_end_matches(',');
        let braces = if own.is_empty() {
            String::new()
        } else {
            format!("{{{own}}}")
        };
        let _ = writeln!(self.out, "{name}_sum{braces} {}", h.sum as f64 / scale);
        let _ = writeln!(self.out, "{name}_count{braces} {count}");
    }
}

/// The filters' latency histograms (one family, a `filter` label each),
/// appended to an exposition: time from a message reaching a filter to
/// its verdict, the inference server's round trip included.
pub fn render_filter_latency(out: &mut String, filters: &[(&str, HistogramSnapshot)]) {
    let mut e = Exposition {
        out: std::mem::take(out),
    };
    e.labelled_histogram(
        "parley_filter_latency_seconds",
        "Time from a message reaching a filter to its verdict (an inference server's round trip included).",
        "filter",
        filters,
        1e6,
    );
    *out = e.out;
}

/// Everything `/metrics` shows.
pub fn render(stats: &Stats, store: Option<&StoreStats>, process: &ProcessInfo, resources: &Resources) -> String {
    let mut e = Exposition { out: String::new() };
    let s = stats;
    e.gauge(
        "parley_connections_open",
        "Native connections open now (TCP and WebSocket).",
        s.connections_open,
    );
    e.counter(
        "parley_connections_accepted_total",
        "Native connections accepted (TCP and WebSocket), refused ones included.",
        s.connections_accepted,
    );
    e.counter(
        "parley_connections_refused_busy_total",
        "Connections refused BUSY by max_connections or max_connections_per_ip.",
        s.connections_refused_busy,
    );
    e.gauge(
        "parley_sessions_online",
        "Logged-in sessions now, all front doors.",
        s.sessions_online,
    );
    e.counter("parley_registrations_total", "Accounts registered.", s.registrations);
    e.labelled_counter(
        "parley_logins_total",
        "Password (SCRAM) logins by result.",
        "result",
        &[
            ("ok", s.logins_ok),
            ("failed", s.logins_failed),
            ("rate_limited", s.logins_rate_limited),
        ],
    );
    e.labelled_counter(
        "parley_resumes_total",
        "Logins with a resume token by result.",
        "result",
        &[("ok", s.resumes_ok), ("failed", s.resumes_failed)],
    );
    e.counter(
        "parley_messages_stored_total",
        "Messages stored (acknowledged to their sender).",
        s.messages_stored,
    );
    e.counter(
        "parley_messages_duplicate_total",
        "Sends answered from an earlier send with the same client_msg_id.",
        s.messages_duplicate,
    );
    e.counter(
        "parley_messages_pushed_total",
        "Messages pushed to sessions.",
        s.messages_pushed,
    );
    e.counter(
        "parley_messages_acked_total",
        "Messages acknowledged by their recipients.",
        s.messages_acked,
    );
    e.counter(
        "parley_messages_resent_total",
        "Messages pushed again after an ack timeout.",
        s.messages_resent,
    );
    e.counter(
        "parley_catch_up_reads_total",
        "Pages sessions read from storage to catch up: after subscribing, or after a notification was missed.",
        s.catch_up_reads,
    );
    e.counter(
        "parley_busy_replies_total",
        "Native requests refused BUSY (backlog or store queue full).",
        s.busy_replies,
    );
    e.counter(
        "parley_slow_consumer_pauses_total",
        "Times a connection's output filled up and reading from it paused.",
        s.slow_consumer_pauses,
    );
    e.counter(
        "parley_keepalive_timeouts_total",
        "Connections closed after keep-alive silence.",
        s.keepalive_timeouts,
    );
    e.counter(
        "parley_unauthenticated_refused_total",
        "Connections refused BUSY because max_unauthenticated were not logged in.",
        s.unauthenticated_refused,
    );
    e.counter(
        "parley_lagged_notifications_total",
        "Live notifications dropped for a full session queue (the session catches up from storage).",
        s.lagged_notifications,
    );
    e.counter(
        "parley_presence_events_total",
        "Presence events sent.",
        s.presence_events,
    );
    e.counter("parley_http_requests_total", "HTTP requests answered.", s.http_requests);
    e.counter(
        "parley_http_busy_replies_total",
        "HTTP requests refused BUSY by http_max_in_flight.",
        s.http_busy_replies,
    );
    e.gauge(
        "parley_http_sessions",
        "HTTP (bearer-token) sessions now.",
        s.http_sessions,
    );
    e.gauge("parley_websockets_open", "WebSockets open now.", s.websockets_open);
    e.counter(
        "parley_pager_messages_total",
        "Messages left with the web pager.",
        s.pager_messages,
    );
    e.counter(
        "parley_http_refused_per_address_total",
        "HTTP connections refused (bare 503) by http_max_connections_per_ip.",
        s.http_refused_per_address,
    );
    e.counter(
        "parley_http_header_timeouts_total",
        "HTTP connections closed because a request's headers came later than http_header_timeout_secs.",
        s.http_header_timeouts,
    );
    e.counter(
        "parley_http_body_timeouts_total",
        "HTTP requests answered 408 because their body came later than http_body_timeout_secs.",
        s.http_body_timeouts,
    );
    e.counter(
        "parley_pager_rate_limited_total",
        "Pager posts refused RATE_LIMITED.",
        s.pager_rate_limited,
    );
    if let Some(store) = store {
        e.counter(
            "parley_store_commits_total",
            "Store transactions committed.",
            store.commits,
        );
        e.counter(
            "parley_store_ops_committed_total",
            "Store operations answered from committed transactions.",
            store.ops_committed,
        );
        e.counter(
            "parley_store_failed_batches_total",
            "Store batches whose transaction failed.",
            store.failed_batches,
        );
        e.counter(
            "parley_store_busy_rejections_total",
            "Store operations refused BUSY for a full queue.",
            store.busy_rejections,
        );
        e.gauge(
            "parley_store_queue_depth",
            "Store operations waiting for the writer now.",
            store.queued,
        );
        e.histogram(
            "parley_store_commit_seconds",
            "Time from the start of a batch's transaction to the end of its commit.",
            &store.commit_micros,
            1e6,
        );
        e.histogram(
            "parley_store_sync_seconds",
            "Time of each fsync of SQLite's WAL that answers committed batches (sqlite_synchronous = full).",
            &store.sync_micros,
            1e6,
        );
        e.histogram(
            "parley_store_batch_size",
            "Operations per committed batch (group commit).",
            &store.batch_size,
            1.0,
        );
    }
    e.counter(
        "parley_perf_lines_dropped_total",
        "Perf log lines dropped because the writer was behind.",
        s.perf_lines_dropped,
    );
    e.counter(
        "parley_log_lines_dropped_total",
        "Log lines dropped (stderr and files) because their writer was behind.",
        s.log_lines_dropped,
    );
    e.counter(
        "parley_log_lines_suppressed_total",
        "Log lines suppressed as repeats of the same event past the per-second rate.",
        s.log_lines_suppressed,
    );
    e.counter(
        "parley_bus_frames_sent_total",
        "Frames this process published on the bus to other processes.",
        s.bus_frames_sent,
    );
    e.counter(
        "parley_bus_frames_received_total",
        "Frames from other processes received on the bus.",
        s.bus_frames_received,
    );
    e.counter(
        "parley_bus_dropped_total",
        "Bus frames dropped because the outgoing queue was full or NATS refused them (every process's sessions then read the store).",
        s.bus_frames_dropped,
    );
    e.counter(
        "parley_bus_malformed_total",
        "Bus frames received that did not decode.",
        s.bus_frames_malformed,
    );
    e.gauge(
        "parley_bus_nodes",
        "Other processes heard from on the bus lately.",
        s.bus_nodes,
    );
    e.counter(
        "parley_file_transfers_started_total",
        "File transfers whose two sides met (TransferReady sent to both).",
        s.file_transfers_started,
    );
    e.counter(
        "parley_file_transfers_completed_total",
        "File transfers the recipient reported COMPLETE (size and SHA-256 checked).",
        s.file_transfers_completed,
    );
    e.counter(
        "parley_file_relayed_bytes_total",
        "File bytes passed through this process's relay (0 for direct transfers).",
        s.file_relayed_bytes,
    );
    e.gauge(
        "parley_file_rendezvous_open",
        "File transfers with a side waiting or under way.",
        s.file_rendezvous_open,
    );
    e.labelled_counter(
        "parley_filter_messages_total",
        "Messages through the filter pipeline, by outcome: scored by the classifier, held in a spam folder, rejected as spam, rejected for a blocked phrase, let through unscored (filter_fail = open), refused BUSY (filter_fail = closed or a full inference queue).",
        "outcome",
        &[
            ("scored", s.filter_scored),
            ("held", s.filter_held),
            ("rejected_spam", s.filter_rejected),
            ("rejected_words", s.filter_words_rejected),
            ("fail_open", s.filter_fail_open),
            ("fail_closed", s.filter_fail_closed),
        ],
    );
    e.labelled_counter(
        "parley_filter_remote_requests_total",
        "Requests to the inference server (filter_url), by outcome; messages_total over ok+timeout+failed is the mean batch size.",
        "outcome",
        &[
            (
                "ok",
                s.filter_remote_batches
                    .saturating_sub(s.filter_remote_timeouts + s.filter_remote_failures),
            ),
            ("timeout", s.filter_remote_timeouts),
            ("failed", s.filter_remote_failures),
        ],
    );
    e.counter(
        "parley_filter_remote_messages_total",
        "Messages sent to the inference server for scoring.",
        s.filter_remote_texts,
    );
    e.counter(
        "parley_quic_attempts_total",
        "QUIC connection attempts (new connections' first packets).",
        s.quic_attempts,
    );
    e.counter(
        "parley_quic_retries_total",
        "QUIC attempts answered with a Retry, so that the client proves its address first (quic_retry_above).",
        s.quic_retries,
    );
    e.counter(
        "parley_quic_refused_total",
        "QUIC attempts refused before the handshake: max_unauthenticated handshakes were in progress.",
        s.quic_refused,
    );
    e.counter(
        "parley_quic_handshakes_failed_total",
        "QUIC handshakes that failed or timed out.",
        s.quic_handshakes_failed,
    );
    e.counter(
        "parley_worker_restarts_total",
        "Worker restarts by the supervising process before this worker started.",
        process.worker_restarts,
    );
    e.gauge(
        "parley_worker_start_time_seconds",
        "When this worker started, in seconds since the Unix epoch.",
        process.start_time_secs,
    );
    e.header(
        "parley_build_info",
        "gauge",
        "Version and process id of this worker (always 1).",
    );
    let _ = writeln!(
        e.out,
        "parley_build_info{{version=\"{}\",pid=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        process.pid
    );
    if let Some(bytes) = resources.resident_memory_bytes {
        e.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", bytes);
    }
    if let Some(fds) = resources.open_fds {
        e.gauge("process_open_fds", "Open file descriptors.", fds);
    }
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_core::histogram::Histogram;

    /// Parses an exposition into (series, value) pairs, checking that every
    /// sample belongs to a family declared by `# TYPE` just before it.
    pub(crate) fn samples(text: &str) -> Vec<(String, f64)> {
        let mut family = String::new();
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_owned();
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series value");
            assert!(series.starts_with(&family), "{series} outside its family {family}");
            out.push((series.to_owned(), value.parse().expect("number")));
        }
        out
    }

    const BOUNDS: &[u64] = &[100, 1000];

    #[test]
    fn filter_latency_is_one_family_with_a_label_per_filter() {
        const BOUNDS: &[u64] = &[10, 1_000];
        let spam = Histogram::new(BOUNDS);
        spam.record(5);
        spam.record(2_000);
        let words = Histogram::new(BOUNDS);
        let mut text = String::from("before\n");
        render_filter_latency(&mut text, &[("spam", spam.snapshot()), ("words", words.snapshot())]);
        assert!(
            text.starts_with("before\n# HELP parley_filter_latency_seconds "),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE parley_filter_latency_seconds histogram").count(),
            1
        );
        assert!(
            text.contains("parley_filter_latency_seconds_bucket{filter=\"spam\",le=\"0.00001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("parley_filter_latency_seconds_bucket{filter=\"spam\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("parley_filter_latency_seconds_sum{filter=\"spam\"} 0.002005\n"),
            "{text}"
        );
        assert!(
            text.contains("parley_filter_latency_seconds_count{filter=\"words\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn counters_gauges_and_histograms_are_rendered() {
        let stats = Stats {
            connections_open: 3,
            logins_ok: 2,
            logins_failed: 1,
            messages_stored: 5,
            ..Stats::default()
        };
        let commits = Histogram::new(BOUNDS);
        commits.record(50);
        commits.record(500);
        commits.record(5000);
        let sizes = Histogram::new(BOUNDS);
        sizes.record(1);
        let store = StoreStats {
            commits: 3,
            commit_micros: commits.snapshot(),
            batch_size: sizes.snapshot(),
            ..StoreStats::default()
        };
        let process = ProcessInfo {
            worker_restarts: 4,
            start_time_secs: 1.5,
            pid: 42,
        };
        let text = render(&stats, Some(&store), &process, &Resources::default());
        let samples = samples(&text);
        let get = |name: &str| {
            samples
                .iter()
                .find(|(s, _)| s == name)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        };
        assert_eq!(get("parley_connections_open"), 3.0);
        assert_eq!(get("parley_logins_total{result=\"ok\"}"), 2.0);
        assert_eq!(get("parley_logins_total{result=\"failed\"}"), 1.0);
        assert_eq!(get("parley_messages_stored_total"), 5.0);
        assert_eq!(get("parley_worker_restarts_total"), 4.0);
        assert_eq!(get("parley_worker_start_time_seconds"), 1.5);
        assert_eq!(get("parley_store_commit_seconds_bucket{le=\"0.0001\"}"), 1.0);
        assert_eq!(get("parley_store_commit_seconds_bucket{le=\"0.001\"}"), 2.0);
        assert_eq!(get("parley_store_commit_seconds_bucket{le=\"+Inf\"}"), 3.0);
        assert_eq!(get("parley_store_commit_seconds_count"), 3.0);
        assert!((get("parley_store_commit_seconds_sum") - 0.00555).abs() < 1e-12);
        assert_eq!(get("parley_store_batch_size_count"), 1.0);
        let build = format!(
            "parley_build_info{{version=\"{}\",pid=\"42\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(get(&build), 1.0);
        assert!(text.contains("# TYPE parley_store_commit_seconds histogram\n"));
        assert!(text.contains("# TYPE parley_sessions_online gauge\n"));
        assert!(text.contains("# HELP parley_messages_pushed_total "));
        // Every counter family ends in _total; histograms and gauges do not.
        for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (name, kind) = line.split_once(' ').unwrap();
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
    }

    #[test]
    fn a_store_without_stats_renders_no_store_series() {
        let text = render(&Stats::default(), None, process(), &Resources::read());
        assert!(!text.contains("parley_store_"));
        assert!(text.contains("parley_worker_restarts_total 0\n"));
        samples(&text);
    }
}
