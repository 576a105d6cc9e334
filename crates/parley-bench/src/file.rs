//! The file scenario: what one file transfer costs the server when the two
//! sides reach each other directly, and when the server relays the bytes.
//!
//! Two fresh accounts, one file of random bytes in a temporary directory,
//! and per run two transfers of it through the client library's
//! `send_file` and `receive_file`, alternating: one with both endpoints on
//! loopback (the direct QUIC path opens), one with the direct path blocked
//! or switched off (the bytes go through the server's relay). Around each
//! it reads what went through the server process: the server's own count
//! of relayed bytes (`parley_file_relayed_bytes_total`, with `--http`), the
//! bytes its read and write calls moved (`/proc/PID/io`, with
//! `--server-pid`) and its CPU time; and it times the transfer and records
//! the route each side reported.
//!
//! A transfer that fails, outlasts `--timeout`, delivers other bytes than
//! were sent, resumes instead of starting at 0 or takes another route than
//! asked for ends the whole run with an error: its figures would describe
//! something else. The scenario writes only in its own temporary
//! directory, removed when it ends.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use parley_client::Client;
use parley_client::files::{self, Done, Options, Progress, Route};
use parley_core::files::FileOffer;
use rand::RngCore;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{FileArgs, RelayedBy};
use crate::common;
use crate::procmon::{self, IoBytes};
use crate::report::{Metrics, RunReport, ScenarioReport, TargetReport};

/// The server's counter of bytes it relayed, at `GET /metrics`.
pub const RELAYED_BYTES_METRIC: &str = "parley_file_relayed_bytes_total";
/// Longest a scrape of /metrics may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest /metrics answer read (it is a few tens of KiB).
const MAX_SCRAPE_BYTES: usize = 16 * 1024 * 1024;
/// How often the recipient looks for the offer in its mailbox.
const OFFER_POLL: Duration = Duration::from_millis(20);
/// Unacknowledged messages fetched per look: only this run's offers are
/// unacknowledged (each is acknowledged once its file is in).
const OFFER_FETCH: u32 = 100;
/// Bytes of random data written at a time when making the file.
const WRITE_CHUNK: usize = 1 << 20;

/// Which way a transfer is meant to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Direct,
    Relayed,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::Relayed => "relayed",
        }
    }

    fn route(self) -> Route {
        match self {
            Way::Direct => Route::Direct,
            Way::Relayed => Route::Relayed,
        }
    }
}

fn route_label(route: Route) -> &'static str {
    match route {
        Route::Direct => "direct",
        Route::Relayed => "relayed",
    }
}

/// Runs the scenario `runs` times and reports direct beside relayed.
pub async fn run(server: &str, server_pid: Option<u32>, runs: u32, args: &FileArgs) -> anyhow::Result<ScenarioReport> {
    anyhow::ensure!(
        args.size > 0,
        "--size must be at least 1 byte (an empty file cannot be offered)"
    );
    let limit = common::secs(args.timeout, "--timeout")?;
    anyhow::ensure!(limit > Duration::ZERO, "--timeout must be more than 0 seconds");
    let http = args.http.as_deref().map(http_authority);
    if let Some(pid) = server_pid {
        // Fail before any work if the numbers cannot be read.
        procmon::io_bytes(pid).context("--server-pid")?;
    }
    if let Some(http) = &http {
        scrape_counter(http, RELAYED_BYTES_METRIC)
            .await
            .with_context(|| format!("--http {http}"))?;
    }

    let prefix = common::run_prefix();
    let password = common::password(&prefix);
    let (sender_name, recipient_name) = (format!("{prefix}-s"), format!("{prefix}-r"));
    common::register_all(server, &[sender_name.clone(), recipient_name.clone()], &password).await?;
    let sender = Arc::new(common::login_client(server, &sender_name, &password).await?);
    let recipient = Arc::new(common::login_client(server, &recipient_name, &password).await?);

    let scratch = Scratch::create(&prefix)?;
    let source = scratch.path().join("source.bin");
    write_random_file(&source, args.size).await?;
    let (_, source_sha) = files::hash_file(&source).await.context("hashing the file")?;
    let inbox = scratch.path().join("inbox");
    std::fs::create_dir(&inbox).with_context(|| format!("creating {}", inbox.display()))?;

    let mut direct = TargetReport {
        target: "direct".into(),
        endpoint: server.to_owned(),
        runs: Vec::new(),
    };
    let mut relayed = TargetReport {
        target: "relayed".into(),
        endpoint: server.to_owned(),
        runs: Vec::new(),
    };
    // Direct and relayed alternate within each run, so slow drifts of the
    // machine affect both alike.
    for run in 1..=runs {
        for (way, report) in [(Way::Direct, &mut direct), (Way::Relayed, &mut relayed)] {
            // Each transfer offers the file under a name of its own: the
            // library makes an offer's idempotency key from the name, so
            // the same name would make it the same offer again.
            let name = format!("run{run}-{}.bin", way.label());
            let offered = scratch.path().join(&name);
            std::fs::hard_link(&source, &offered)
                .with_context(|| format!("linking {} to {}", offered.display(), source.display()))?;
            let measured = measure(
                Setup {
                    server_pid,
                    http: http.as_deref(),
                    sender: &sender,
                    recipient: &recipient,
                    recipient_name: &recipient_name,
                    offered: &offered,
                    inbox: &inbox,
                    size: args.size,
                    sha256: &source_sha,
                    limit,
                    relayed_by: args.relayed_by,
                },
                way,
            )
            .await
            .with_context(|| format!("run {run}, {} transfer", way.label()))?;
            eprintln!(
                "run {run}/{runs} {}: {:.2} s, {:.1} MB/s",
                way.label(),
                measured.wall.as_secs_f64(),
                mb_per_sec(args.size, measured.moving)
            );
            report.runs.push(measured.into_report(args.size));
            std::fs::remove_file(&offered).with_context(|| format!("removing {}", offered.display()))?;
        }
    }

    let mut notes = vec![format!(
        "file: {} of random bytes; each of the {runs} runs sends it directly, then through the relay; direct: both endpoints bound to 127.0.0.1:0",
        common::format_size(args.size),
    )];
    notes.push(match args.relayed_by {
        RelayedBy::Blocked => format!(
            "relayed: each side announces a UDP socket that never answers, so the sender tries the direct path for {:.0} s (the library's default) before the relay; the wall time holds that wait, the time moving bytes does not",
            Options::default().direct_timeout.as_secs_f64()
        ),
        RelayedBy::NoDirect => "relayed: neither side tries a direct path (--relayed-by no-direct)".to_owned(),
    });
    notes.push(
        "wall time: from the offer to both sides done, with the sender's hash of the file, the recipient's fsync and hash, the verdict, and each side closing its QUIC endpoint (up to 1 s when a connection never answered)".to_owned(),
    );
    if http.is_none() {
        notes.push(format!("no --http: {RELAYED_BYTES_METRIC} was not read"));
    }
    if server_pid.is_none() {
        notes.push("no --server-pid: the server's /proc/PID/io and CPU time were not read".to_owned());
    } else {
        notes.push(
            "rchar/wchar count what the server's read- and write-family calls moved (sockets, pipes, its log); recv(from)/send(to)/recvmsg/sendmsg are not counted there, and parleyd reads its sockets with recvfrom(2), so rchar misses what it takes in: a relayed byte crosses the server twice, wchar sees it once".to_owned(),
        );
    }
    let mut comparison = Metrics::default();
    let ratio = |key: &str| {
        let a = direct.spread(key).map(|s| s.median);
        let b = relayed.spread(key).map(|s| s.median);
        match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        }
    };
    for (key, name, label) in [
        (
            "server_relayed_bytes",
            "relayed_bytes_ratio",
            "server relayed bytes, direct / relayed",
        ),
        (
            "server_io_bytes",
            "io_bytes_ratio",
            "server rchar+wchar, direct / relayed",
        ),
        ("server_cpu_ms", "server_cpu_ratio", "server CPU time, direct / relayed"),
        (
            "moving_secs",
            "moving_time_ratio",
            "time moving bytes, direct / relayed",
        ),
    ] {
        if let Some(value) = ratio(key) {
            comparison.push(name, label, "×", value);
        }
    }
    drop(scratch);
    Ok(ScenarioReport {
        scenario: "file",
        params: json!({
            "size": args.size,
            "http": http,
            "timeout_secs": args.timeout,
            "relayed_by": match args.relayed_by {
                RelayedBy::Blocked => "blocked",
                RelayedBy::NoDirect => "no-direct",
            },
        }),
        targets: vec![direct, relayed],
        comparison,
        notes,
    })
}

/// What one transfer needs to know.
struct Setup<'a> {
    server_pid: Option<u32>,
    /// `HOST:PORT` of parleyd's HTTP listener.
    http: Option<&'a str>,
    sender: &'a Arc<Client>,
    recipient: &'a Arc<Client>,
    recipient_name: &'a str,
    /// The file offered (its name is this transfer's own).
    offered: &'a Path,
    /// Where the recipient puts it.
    inbox: &'a Path,
    size: u64,
    sha256: &'a [u8; 32],
    limit: Duration,
    relayed_by: RelayedBy,
}

/// What the server had counted at one moment; None where not read.
#[derive(Clone, Debug, Default)]
struct ServerReading {
    relayed_bytes: Option<u64>,
    io: Option<IoBytes>,
    /// From `/proc/PID/stat`, in 10 ms ticks.
    cpu_secs: Option<f64>,
    /// Each live thread's CPU nanoseconds, from its schedstat.
    thread_cpu_ns: Option<BTreeMap<u32, u64>>,
}

/// One measured transfer.
struct Measured {
    /// From the offer to both sides done.
    wall: Duration,
    /// From the first side's start of bytes (the library's
    /// `Progress::Started`) to the recipient holding the last one: the
    /// bytes' own time, without the ends of the transfer (the recipient's
    /// fsync and hash, the verdict, and the close of each side's QUIC
    /// endpoint, which waits up to a second for peers that never answer).
    moving: Duration,
    sender_route: Route,
    recipient_route: Route,
    before: ServerReading,
    after: ServerReading,
}

impl Measured {
    fn into_report(self, size: u64) -> RunReport {
        let mut m = Metrics::default();
        m.push(
            "wall_secs",
            "wall time, offer to both done",
            "s",
            self.wall.as_secs_f64(),
        );
        m.push(
            "moving_secs",
            "time moving bytes (first sent to last received)",
            "s",
            self.moving.as_secs_f64(),
        );
        m.push(
            "mb_per_sec",
            "throughput (file size / time moving bytes)",
            "MB/s",
            mb_per_sec(size, self.moving),
        );
        if let (Some(before), Some(after)) = (self.before.relayed_bytes, self.after.relayed_bytes) {
            m.push(
                "server_relayed_bytes",
                "server relayed bytes (parley_file_relayed_bytes_total Δ)",
                "B",
                after.saturating_sub(before) as f64,
            );
        }
        if let (Some(before), Some(after)) = (self.before.io, self.after.io) {
            let io = after.since(before);
            let total = io.rchar + io.wchar;
            m.push(
                "server_rchar_bytes",
                "server rchar Δ (/proc/PID/io)",
                "B",
                io.rchar as f64,
            );
            m.push(
                "server_wchar_bytes",
                "server wchar Δ (/proc/PID/io)",
                "B",
                io.wchar as f64,
            );
            m.push("server_io_bytes", "server rchar+wchar Δ", "B", total as f64);
            m.push(
                "server_io_per_file_byte",
                "server rchar+wchar / file size",
                "×",
                total as f64 / size as f64,
            );
        }
        if let (Some(before), Some(after)) = (&self.before.thread_cpu_ns, &self.after.thread_cpu_ns) {
            m.push(
                "server_cpu_ms",
                "server CPU time (its threads' schedstat)",
                "ms",
                procmon::thread_cpu_ns_since(before, after) as f64 / 1e6,
            );
        }
        if let (Some(before), Some(after)) = (self.before.cpu_secs, self.after.cpu_secs) {
            m.push(
                "server_cpu_secs",
                "server CPU time (/proc/PID/stat, 10 ms ticks)",
                "s",
                (after - before).max(0.0),
            );
        }
        let (sender, recipient) = (route_label(self.sender_route), route_label(self.recipient_route));
        let mut extra = serde_json::Map::new();
        extra.insert("sender_route".into(), json!(sender));
        extra.insert("recipient_route".into(), json!(recipient));
        RunReport {
            metrics: m,
            notes: vec![format!("route reported: sender {sender}, recipient {recipient}")],
            extra,
            ..RunReport::default()
        }
    }
}

/// One transfer of `setup.offered`, the way `way`, with the server's
/// counters read around it.
async fn measure(setup: Setup<'_>, way: Way) -> anyhow::Result<Measured> {
    // Each side's "never answers" socket lives as long as the transfer.
    let holes = match (way, setup.relayed_by) {
        (Way::Relayed, RelayedBy::Blocked) => Some((
            UdpSocket::bind("127.0.0.1:0").context("binding a blocking UDP socket")?,
            UdpSocket::bind("127.0.0.1:0").context("binding a blocking UDP socket")?,
        )),
        _ => None,
    };
    let (sender_options, recipient_options) = match (way, &holes) {
        (Way::Direct, _) => (loopback(), loopback()),
        (Way::Relayed, Some((a, b))) => (blocked(a.local_addr()?), blocked(b.local_addr()?)),
        (Way::Relayed, None) => (no_direct(), no_direct()),
    };

    // The server's counters are read innermost, so the scrape's own
    // traffic stays outside the /proc figures.
    let relayed_before = scrape(setup.http).await?;
    let mut before = read_process(setup.server_pid)?;
    before.relayed_bytes = relayed_before;
    let started = Instant::now();
    let clock = Arc::new(ByteClock::default());
    let (sent, received) = tokio::time::timeout(
        setup.limit,
        transfer(&setup, sender_options, recipient_options, Arc::clone(&clock)),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "did not finish within {:.0} s (--timeout); is the server's relay paced (relay_bytes_per_sec_per_user, 2 MiB/s by default)?",
            setup.limit.as_secs_f64()
        )
    })??;
    let done_at = Instant::now();
    let mut after = read_process(setup.server_pid)?;
    after.relayed_bytes = scrape(setup.http).await?;

    let expected = way.route();
    anyhow::ensure!(
        sent.route == expected && received.route == expected,
        "asked for a {} transfer, but the sender reported {} and the recipient {}{}",
        way.label(),
        route_label(sent.route),
        route_label(received.route),
        if way == Way::Direct {
            " (no direct QUIC path opened on 127.0.0.1)"
        } else {
            ""
        }
    );
    anyhow::ensure!(
        sent.from == 0 && received.from == 0,
        "the transfer resumed at byte {} instead of starting at 0",
        received.from.max(sent.from)
    );
    let (got_size, got_sha) = files::hash_file(&received.path)
        .await
        .with_context(|| format!("hashing the received {}", received.path.display()))?;
    anyhow::ensure!(
        got_size == setup.size && received.size == setup.size && &got_sha == setup.sha256,
        "the received file differs from the one sent: {got_size} bytes with SHA-256 {}, sent {} bytes with {}",
        common::hex(&got_sha),
        setup.size,
        common::hex(setup.sha256)
    );
    std::fs::remove_file(&received.path).with_context(|| format!("removing {}", received.path.display()))?;

    let first = clock.first_byte.get().copied().unwrap_or(started);
    let last = clock.last_byte.get().copied().unwrap_or(done_at);
    Ok(Measured {
        wall: done_at - started,
        moving: last.saturating_duration_since(first),
        sender_route: sent.route,
        recipient_route: received.route,
        before,
        after,
    })
}

/// Sends `setup.offered` from the sender and receives it at the
/// recipient, each on a task of its own; the first error ends both.
async fn transfer(
    setup: &Setup<'_>,
    sender_options: Options,
    recipient_options: Options,
    clock: Arc<ByteClock>,
) -> anyhow::Result<(Done, Done)> {
    let name = setup
        .offered
        .file_name()
        .and_then(|n| n.to_str())
        .context("the offered file has no name")?
        .to_owned();
    let sender_progress = {
        let clock = Arc::clone(&clock);
        move |p: Progress| clock.sender(&p)
    };
    let recipient_progress = move |p: Progress| clock.recipient(&p);
    let sending = {
        let (client, to, path) = (
            Arc::clone(setup.sender),
            setup.recipient_name.to_owned(),
            setup.offered.to_owned(),
        );
        Aborting(tokio::spawn(async move {
            files::send_file(&client, &to, &path, &sender_options, &sender_progress).await
        }))
    };
    let receiving = {
        let (client, inbox) = (Arc::clone(setup.recipient), setup.inbox.to_owned());
        Aborting(tokio::spawn(async move {
            let seq = offer_seq(&client, &name).await?;
            files::receive_file(&client, seq, Some(&inbox), &recipient_options, &recipient_progress)
                .await
                .context("receiving")
        }))
    };
    futures::future::try_join(
        async move {
            let mut sending = sending;
            (&mut sending.0).await.context("the sending task")?.context("sending")
        },
        async move {
            let mut receiving = receiving;
            (&mut receiving.0).await.context("the receiving task")?
        },
    )
    .await
}

/// When the bytes of one transfer moved, from the library's progress
/// reports.
#[derive(Default)]
struct ByteClock {
    /// The first `Started` of either side.
    first_byte: OnceLock<Instant>,
    /// The recipient's report that it holds every byte.
    last_byte: OnceLock<Instant>,
}

impl ByteClock {
    fn sender(&self, progress: &Progress) {
        if let Progress::Started { .. } = progress {
            let _ = self.first_byte.set(Instant::now());
        }
    }

    fn recipient(&self, progress: &Progress) {
        match *progress {
            Progress::Started { .. } => {
                let _ = self.first_byte.set(Instant::now());
            }
            Progress::Bytes { done, size } if done >= size => {
                let _ = self.last_byte.set(Instant::now());
            }
            _ => {}
        }
    }
}

/// A spawned task aborted when its handle is dropped: a transfer given up
/// on (timed out, or the other side failed) stops at once.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits until the recipient's mailbox holds the offer of `name`; its seq.
/// Bounded by the caller's timeout.
async fn offer_seq(client: &Client, name: &str) -> anyhow::Result<u64> {
    loop {
        let batch = client
            .fetch(0, OFFER_FETCH, false)
            .await
            .context("looking for the offer")?;
        if let Some(message) = batch
            .messages
            .iter()
            .find(|m| FileOffer::parse(&m.body).is_some_and(|offer| offer.name == name))
        {
            return Ok(message.seq);
        }
        tokio::time::sleep(OFFER_POLL).await;
    }
}

/// Direct path on loopback, the library's timeout.
fn loopback() -> Options {
    Options {
        bind: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        ..Options::default()
    }
}

/// A direct path announced at `hole`, a UDP socket that never answers:
/// blocked both ways (as the server's tests block it).
fn blocked(hole: SocketAddr) -> Options {
    Options {
        announce: Some(vec![hole]),
        ..loopback()
    }
}

fn no_direct() -> Options {
    Options {
        direct: false,
        ..Options::default()
    }
}

/// The server process's counters now (nothing without a pid).
fn read_process(pid: Option<u32>) -> anyhow::Result<ServerReading> {
    let Some(pid) = pid else {
        return Ok(ServerReading::default());
    };
    Ok(ServerReading {
        relayed_bytes: None,
        io: Some(procmon::io_bytes(pid)?),
        cpu_secs: Some(procmon::cpu_secs(Some(pid)).with_context(|| format!("reading /proc/{pid}/stat"))?),
        thread_cpu_ns: Some(procmon::thread_cpu_ns(pid)?),
    })
}

/// The relayed-bytes counter now (nothing without `--http`).
async fn scrape(http: Option<&str>) -> anyhow::Result<Option<u64>> {
    match http {
        Some(http) => Ok(Some(scrape_counter(http, RELAYED_BYTES_METRIC).await?)),
        None => Ok(None),
    }
}

/// `HOST:PORT` from what `--http` was given (`http://` and a trailing `/`
/// are allowed).
fn http_authority(given: &str) -> String {
    let trimmed = given.strip_prefix("http://").unwrap_or(given);
    trimmed.trim_end_matches('/').to_owned()
}

/// Reads one counter from parleyd's `GET /metrics` at `http` (`HOST:PORT`).
/// The request is HTTP/1.0, so the answer comes whole and ends with the
/// connection (no chunked encoding to undo).
async fn scrape_counter(http: &str, metric: &str) -> anyhow::Result<u64> {
    let response = tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(http)
            .await
            .with_context(|| format!("connecting to {http}"))?;
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_SCRAPE_BYTES as u64)
            .read_to_end(&mut response)
            .await?;
        anyhow::Ok(response)
    })
    .await
    .with_context(|| format!("GET http://{http}/metrics took more than {SCRAPE_TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("http://{http}/metrics: not an HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "http://{http}/metrics answered {status:?} (is metrics = false in parleyd's configuration?)"
    );
    counter_value(body, metric).with_context(|| format!("http://{http}/metrics has no {metric}"))
}

/// The value of the unlabelled sample `metric` in Prometheus' text format.
fn counter_value(exposition: &str, metric: &str) -> Option<u64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(metric)?.strip_prefix(' ')?;
        let value = value.split_whitespace().next()?;
        value.parse::<u64>().ok().or_else(|| {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v as u64)
        })
    })
}

/// Writes `size` random bytes to `path` (random, so nothing on the way can
/// compress them).
async fn write_random_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use std::io::Write;
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let mut chunk = vec![0u8; WRITE_CHUNK];
        let mut rng = rand::rng();
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(WRITE_CHUNK).min(WRITE_CHUNK);
            rng.fill_bytes(&mut chunk[..n]);
            out.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        out.flush()?;
        Ok(())
    })
    .await
    .context("the task writing the file")?
    .context("writing the file")
}

/// Decimal megabytes a second.
fn mb_per_sec(size: u64, took: Duration) -> f64 {
    let secs = took.as_secs_f64();
    if secs > 0.0 { size as f64 / 1e6 / secs } else { f64::NAN }
}

/// A directory of the bench's own under the system's temporary
/// directory, removed with everything in it when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn create(prefix: &str) -> anyhow::Result<Scratch> {
        let path = std::env::temp_dir().join(format!("parley-bench-file-{prefix}"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relayed_bytes_counter_is_found_in_an_exposition() {
        let text = "# HELP parley_file_relayed_bytes_total Bytes relayed.\n\
                    # TYPE parley_file_relayed_bytes_total counter\n\
                    parley_file_relayed_bytes_total_other 5\n\
                    parley_file_relayed_bytes_total 67108864\n\
                    parley_sessions 2\n";
        assert_eq!(counter_value(text, RELAYED_BYTES_METRIC), Some(67_108_864));
        assert_eq!(
            counter_value("parley_file_relayed_bytes_total 1.5e3\n", RELAYED_BYTES_METRIC),
            Some(1500)
        );
        assert_eq!(
            counter_value("parley_file_relayed_bytes_total 12 1700000000\n", RELAYED_BYTES_METRIC),
            Some(12)
        );
        assert_eq!(counter_value("parley_sessions 2\n", RELAYED_BYTES_METRIC), None);
        assert_eq!(
            counter_value("parley_file_relayed_bytes_total NaN\n", RELAYED_BYTES_METRIC),
            None
        );
    }

    #[test]
    fn the_byte_clock_runs_from_the_first_start_to_the_recipients_last_byte() {
        let clock = ByteClock::default();
        let started = Progress::Started {
            route: Route::Relayed,
            from: 0,
            size: 10,
        };
        clock.sender(&started);
        let first = clock.first_byte.get().copied();
        assert!(first.is_some());
        // The sender's own "all sent" is not the recipient holding them.
        clock.sender(&Progress::Bytes { done: 10, size: 10 });
        clock.recipient(&started);
        clock.recipient(&Progress::Bytes { done: 5, size: 10 });
        assert_eq!(clock.first_byte.get().copied(), first, "the first start counts");
        assert!(clock.last_byte.get().is_none());
        clock.recipient(&Progress::Bytes { done: 10, size: 10 });
        assert!(clock.last_byte.get().is_some());
    }

    #[test]
    fn the_http_address_may_come_as_a_url() {
        assert_eq!(http_authority("127.0.0.1:9090"), "127.0.0.1:9090");
        assert_eq!(http_authority("http://127.0.0.1:9090/"), "127.0.0.1:9090");
    }

    #[tokio::test]
    async fn a_scrape_reads_the_counter_from_an_http_answer() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move {
            for body in ["parley_file_relayed_bytes_total 42\n", ""] {
                let (mut socket, _) = listener.accept().await?;
                let mut request = vec![0u8; 1024];
                let n = socket.read(&mut request).await?;
                assert!(request[..n].starts_with(b"GET /metrics HTTP/1.0\r\n"));
                let status = if body.is_empty() { "404 Not Found" } else { "200 OK" };
                let answer = format!("HTTP/1.0 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                socket.write_all(answer.as_bytes()).await?;
            }
            anyhow::Ok(())
        });
        assert_eq!(scrape_counter(&addr, RELAYED_BYTES_METRIC).await?, 42);
        match scrape_counter(&addr, RELAYED_BYTES_METRIC).await {
            Err(e) => assert!(e.to_string().contains("404"), "{e:#}"),
            Ok(v) => panic!("a 404 gave {v}"),
        }
        server.await??;
        Ok(())
    }

    #[test]
    fn a_measured_transfer_reports_its_deltas() {
        let measured = Measured {
            wall: Duration::from_secs(4),
            moving: Duration::from_secs(2),
            sender_route: Route::Relayed,
            recipient_route: Route::Relayed,
            before: ServerReading {
                relayed_bytes: Some(100),
                io: Some(IoBytes { rchar: 10, wchar: 20 }),
                cpu_secs: Some(1.0),
                thread_cpu_ns: Some(BTreeMap::from([(7, 1_000_000)])),
            },
            after: ServerReading {
                relayed_bytes: Some(100 + 8_000_000),
                io: Some(IoBytes {
                    rchar: 10 + 1_000,
                    wchar: 20 + 8_001_000,
                }),
                cpu_secs: Some(1.5),
                thread_cpu_ns: Some(BTreeMap::from([(7, 3_000_000), (8, 500_000)])),
            },
        };
        let report = measured.into_report(8_000_000);
        let get = |key| report.metrics.get(key);
        assert_eq!(get("mb_per_sec"), Some(4.0));
        assert_eq!(get("server_relayed_bytes"), Some(8_000_000.0));
        assert_eq!(get("server_io_bytes"), Some(8_002_000.0));
        assert_eq!(get("server_io_per_file_byte"), Some(8_002_000.0 / 8_000_000.0));
        assert_eq!(get("server_cpu_secs"), Some(0.5));
        assert_eq!(get("server_cpu_ms"), Some(2.5));
        assert_eq!(report.extra["sender_route"], "relayed");
        // Without --http and --server-pid those figures are left out, not zero.
        let bare = Measured {
            wall: Duration::from_secs(1),
            moving: Duration::from_secs(1),
            sender_route: Route::Direct,
            recipient_route: Route::Direct,
            before: ServerReading::default(),
            after: ServerReading::default(),
        }
        .into_report(1);
        assert_eq!(bare.metrics.get("server_relayed_bytes"), None);
        assert_eq!(bare.metrics.get("server_io_bytes"), None);
        assert_eq!(bare.metrics.get("server_cpu_secs"), None);
        assert_eq!(bare.metrics.get("server_cpu_ms"), None);
        assert_eq!(
            bare.notes,
            vec!["route reported: sender direct, recipient direct".to_owned()]
        );
    }

    #[tokio::test]
    async fn the_random_file_has_the_size_asked_for_and_the_scratch_goes_away() -> anyhow::Result<()> {
        let scratch = Scratch::create(&common::run_prefix())?;
        let dir = scratch.path().to_owned();
        let path = dir.join("f.bin");
        write_random_file(&path, 3 * WRITE_CHUNK as u64 + 17).await?;
        assert_eq!(std::fs::metadata(&path)?.len(), 3 * WRITE_CHUNK as u64 + 17);
        drop(scratch);
        assert!(!dir.exists());
        Ok(())
    }
}
