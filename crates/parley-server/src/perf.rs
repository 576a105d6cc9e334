//! Perf logs: one line per request, per worker process, per run, and the
//! `parleyd perf summary` command that reads them.
//!
//! With `perf_log = true`, each worker writes `<perf_dir>/<run>/<pid>.log`.
//! The run id comes from `PARLEYD_RUN` when a supervising process sets it
//! (so that all its workers share one directory), otherwise the process
//! makes one with [`new_run_id`]. Ids start with the UTC start time, so
//! the latest run is the one whose name sorts last.
//!
//! A line is `timestamp<TAB>operation<TAB>microseconds<TAB>outcome`:
//! the RFC 3339 time the request finished, the native request type
//! (`send`, `fetch`, `ack`, `login_start`...) or the HTTP route (`http POST
//! /v1/messages`), the time from the request's arrival to its answer, and
//! `ok` or the error code. Lines starting with `#` are comments: a header,
//! and at the end the count of lines dropped, if any.
//!
//! Recording never waits: a request's line goes into a bounded channel
//! ([`PERF_QUEUE`]) to a writer thread that owns a buffered file; when the
//! channel is full the line is dropped and counted (logged at shutdown,
//! exported as `parley_perf_lines_dropped_total`). The writer flushes at
//! least every [`PERF_FLUSH_INTERVAL`] and on [`PerfLog::close`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::utc::Utc;
use parley_core::sync::lock;

/// Lines that may wait for the perf writer; past this they are dropped.
pub const PERF_QUEUE: usize = 65_536;
/// Longest time a recorded line stays in the writer's buffer.
pub const PERF_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Environment variable naming the run (set by a supervising process).
pub const RUN_ENV: &str = "PARLEYD_RUN";
/// Longest run id accepted from the environment or the command line.
const MAX_RUN_ID: usize = 100;
/// The outcome of a request that succeeded.
pub const OK: &str = "ok";

/// A new run id: the UTC time now (`20261201T213000Z`) and six random hex
/// digits, so that ids sort by start time and two runs started in the same
/// second still differ.
pub fn new_run_id() -> String {
    let suffix: u32 = rand::random::<u32>() & 0x00ff_ffff;
    format!("{}-{suffix:06x}", Utc::now().compact())
}

/// Whether `id` can name a run directory: 1 to 100 of `A-Z a-z 0-9 . _ -`,
/// not starting with a dot.
pub fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RUN_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// This process's run id: `PARLEYD_RUN` if set, otherwise a new one.
pub fn run_id_from_env() -> anyhow::Result<String> {
    match std::env::var(RUN_ENV) {
        Ok(id) if valid_run_id(&id) => Ok(id),
        Ok(id) => anyhow::bail!("{RUN_ENV}={id:?} is not a valid run id (letters, digits, '.', '_', '-')"),
        Err(std::env::VarError::NotPresent) => Ok(new_run_id()),
        Err(e) => anyhow::bail!("{RUN_ENV}: {e}"),
    }
}

/// What goes to the writer thread.
enum Entry {
    /// One request.
    Line {
        /// When it finished.
        at: SystemTime,
        /// Its operation.
        op: Cow<'static, str>,
        /// How long it took, in microseconds.
        micros: u64,
        /// `ok` or the error code.
        outcome: Cow<'static, str>,
    },
    /// Flush and stop.
    Stop,
}

/// The perf log of this process: cheap to record into from any thread.
pub struct PerfLog {
    /// Into the writer's bounded queue.
    sender: SyncSender<Entry>,
    /// Lines dropped because the queue was full or the writer had stopped.
    dropped: Arc<AtomicU64>,
    /// The writer thread, until `close` joins it.
    thread: Mutex<Option<JoinHandle<io::Result<()>>>>,
    /// The file written.
    path: PathBuf,
}

impl PerfLog {
    /// Creates `<dir>/<run>/<pid>.log` and starts its writer thread.
    pub fn open(dir: &Path, run: &str) -> anyhow::Result<PerfLog> {
        use anyhow::Context;
        anyhow::ensure!(valid_run_id(run), "{run:?} is not a valid run id");
        let run_dir = dir.join(run);
        crate::private_files::create_private_dir(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let pid = std::process::id();
        let path = run_dir.join(format!("{pid}.log"));
        let file = File::options()
            .create(true)
            .append(true)
            .mode(crate::private_files::PRIVATE_FILE_MODE)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut out = BufWriter::new(file);
        writeln!(
            out,
            "# parleyd perf log v1 run={run} pid={pid} started={}",
            Utc::now().rfc3339_micros()
        )?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(PERF_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = Arc::clone(&dropped);
        let thread = std::thread::Builder::new()
            .name("parley-perf-log".into())
            .spawn(move || write_lines(out, receiver, &writer_dropped))
            .context("starting the perf log writer")?;
        Ok(PerfLog {
            sender,
            dropped,
            thread: Mutex::new(Some(thread)),
            path,
        })
    }

    /// Records one request, without waiting; dropped (and counted) when
    /// the writer is behind.
    pub fn record(&self, op: impl Into<Cow<'static, str>>, elapsed: Duration, outcome: impl Into<Cow<'static, str>>) {
        let entry = Entry::Line {
            at: SystemTime::now(),
            op: op.into(),
            micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            outcome: outcome.into(),
        };
        match self.sender.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The file this process writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes out everything recorded so far and stops the writer; later
    /// lines are dropped. Calling it again does nothing.
    pub fn close(&self) {
        let thread = lock(&self.thread).take();
        let Some(thread) = thread else { return };
        // A blocking send: the writer is draining, so there is room soon.
        let _ = self.sender.send(Entry::Stop);
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(path = %self.path.display(), error = %e, "writing the perf log failed"),
            Err(_) => tracing::warn!(path = %self.path.display(), "the perf log writer stopped abnormally"),
        }
        let dropped = self.dropped();
        if dropped > 0 {
            tracing::warn!(path = %self.path.display(), dropped, "perf log lines were dropped (writer behind)");
        }
    }
}

impl Drop for PerfLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's body.
fn write_lines(mut out: BufWriter<File>, queue: Receiver<Entry>, dropped: &AtomicU64) -> io::Result<()> {
    let mut dirty = false;
    loop {
        match queue.recv_timeout(PERF_FLUSH_INTERVAL) {
            Ok(Entry::Line {
                at,
                op,
                micros,
                outcome,
            }) => {
                writeln!(
                    out,
                    "{}\t{}\t{micros}\t{}",
                    Utc::from_system(at).rfc3339_micros(),
                    clean(&op),
                    clean(&outcome)
                )?;
                dirty = true;
            }
            Ok(Entry::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                if dirty {
                    out.flush()?;
                    dirty = false;
                }
            }
        }
    }
    let dropped = dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        writeln!(out, "# dropped={dropped}")?;
    }
    out.flush()
}

/// A field without tabs or line breaks, so that a line always splits into
/// its four fields.
fn clean(field: &str) -> Cow<'_, str> {
    if field.contains(['\t', '\n', '\r']) {
        Cow::Owned(field.replace(['\t', '\n', '\r'], " "))
    } else {
        Cow::Borrowed(field)
    }
}

// ------------------------------------------------------------ summary

/// `parleyd perf ...`
#[derive(Debug, clap::Args)]
pub struct PerfArgs {
    #[command(subcommand)]
    pub command: PerfCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PerfCommand {
    /// Per-operation counts, errors and latency percentiles of one run.
    Summary(SummaryArgs),
}

#[derive(Debug, clap::Args)]
pub struct SummaryArgs {
    /// The run to summarise (a directory name under the perf directory) [default: the latest]
    pub run: Option<String>,
    /// The perf directory [default: perf_dir from the server's configuration, or DATA_DIR/perf]
    #[arg(long, env = "PARLEY_PERF_DIR", value_name = "DIR")]
    pub dir: Option<String>,
    /// The server's configuration file, to find its perf directory (as `parleyd ctl` finds its socket)
    #[arg(long, env = "PARLEY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The server's data directory, whose perf/ is read when neither --dir nor the file names one [default: ./parley-data]
    #[arg(long, env = "PARLEY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Runs `parleyd perf ...`.
pub fn run_command(args: PerfArgs) -> ExitCode {
    match args.command {
        PerfCommand::Summary(args) => {
            let dir = crate::config::SettingArgs {
                config: args.config.clone(),
                data_dir: args.data_dir.clone(),
                perf_dir: args.dir.clone(),
                ..Default::default()
            }
            .perf_dir_path();
            match summarize_run(&dir, args.run.as_deref()) {
                Ok(summary) => {
                    let text = if args.json {
                        summary.to_json()
                    } else {
                        summary.to_table()
                    };
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("parleyd perf summary: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// One parsed perf line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerfLine<'a> {
    pub timestamp: &'a str,
    pub op: &'a str,
    pub micros: u64,
    pub outcome: &'a str,
}

/// What a line of a perf file is.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Request(PerfLine<'a>),
    /// A comment; `Some(n)` for the trailer that counts dropped lines.
    Comment(Option<u64>),
    Malformed,
}

/// Parses one line (without its line break).
pub fn parse_line(line: &str) -> Parsed<'_> {
    if line.trim().is_empty() {
        return Parsed::Comment(None);
    }
    if let Some(comment) = line.strip_prefix('#') {
        let dropped = comment.trim().strip_prefix("dropped=").and_then(|n| n.parse().ok());
        return Parsed::Comment(dropped);
    }
    let mut fields = line.split('\t');
    let (Some(timestamp), Some(op), Some(micros), Some(outcome), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Parsed::Malformed;
    };
    match micros.parse::<u64>() {
        Ok(micros) if !op.is_empty() && !outcome.is_empty() && !timestamp.is_empty() => Parsed::Request(PerfLine {
            timestamp,
            op,
            micros,
            outcome,
        }),
        _ => Parsed::Malformed,
    }
}

/// The value at percentile `p` (0–100) of sorted values, by nearest rank;
/// 0 for no values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One operation's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpSummary {
    pub op: String,
    pub count: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// A run's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub run: String,
    /// Worker files read.
    pub files: u64,
    pub requests: u64,
    /// Lines that were neither a request nor a comment (skipped).
    pub malformed: u64,
    /// Lines the workers reported dropping.
    pub dropped: u64,
    /// Operations, most frequent first.
    pub ops: Vec<OpSummary>,
}

/// Accumulates lines into a [`Summary`].
#[derive(Default)]
pub struct Summarizer {
    /// Durations and error counts by operation.
    ops: BTreeMap<String, (Vec<u64>, u64)>,
    files: u64,
    malformed: u64,
    dropped: u64,
}

impl Summarizer {
    /// Adds every line of one worker's file.
    pub fn add_file(&mut self, reader: impl BufRead) -> io::Result<()> {
        self.files += 1;
        for line in reader.split(b'\n') {
            let line = line?;
            match std::str::from_utf8(&line) {
                Ok(text) => self.add_line(text.trim_end_matches('\r')),
                Err(_) => self.malformed += 1,
            }
        }
        Ok(())
    }

    pub fn add_line(&mut self, line: &str) {
        match parse_line(line) {
            Parsed::Request(l) => {
                let entry = self.ops.entry(l.op.to_owned()).or_default();
                entry.0.push(l.micros);
                if l.outcome != OK {
                    entry.1 += 1;
                }
            }
            Parsed::Comment(Some(dropped)) => self.dropped += dropped,
            Parsed::Comment(None) => {}
            Parsed::Malformed => self.malformed += 1,
        }
    }

    pub fn finish(self, run: &str) -> Summary {
        let mut ops: Vec<OpSummary> = self
            .ops
            .into_iter()
            .map(|(op, (mut micros, errors))| {
                micros.sort_unstable();
                OpSummary {
                    op,
                    count: micros.len() as u64,
                    errors,
                    p50_us: percentile(&micros, 50.0),
                    p99_us: percentile(&micros, 99.0),
                    max_us: micros.last().copied().unwrap_or(0),
                }
            })
            .collect();
        ops.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.op.cmp(&b.op)));
        Summary {
            run: run.to_owned(),
            files: self.files,
            requests: ops.iter().map(|o| o.count).sum(),
            malformed: self.malformed,
            dropped: self.dropped,
            ops,
        }
    }
}

/// The run directories under `dir`, oldest first (by name).
pub fn runs(dir: &Path) -> io::Result<Vec<String>> {
    let mut runs: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| valid_run_id(name))
        .collect();
    runs.sort();
    Ok(runs)
}

/// Summarises `run` (the latest when None) under `dir`.
pub fn summarize_run(dir: &Path, run: Option<&str>) -> anyhow::Result<Summary> {
    use anyhow::Context;
    let run = match run {
        Some(run) => {
            anyhow::ensure!(valid_run_id(run), "{run:?} is not a run id");
            run.to_owned()
        }
        None => runs(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .pop()
            .with_context(|| format!("no perf runs in {}", dir.display()))?,
    };
    let run_dir = dir.join(&run);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&run_dir)
        .with_context(|| format!("reading {}", run_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    let mut summarizer = Summarizer::default();
    for path in files {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        summarizer
            .add_file(io::BufReader::new(file))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(summarizer.finish(&run))
}

impl Summary {
    /// The human table.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "run {}: {} worker file(s), {} request(s), {} malformed line(s) skipped, {} dropped\n",
            self.run, self.files, self.requests, self.malformed, self.dropped
        );
        let width = self
            .ops
            .iter()
            .map(|o| o.op.len())
            .max()
            .unwrap_or(0)
            .max("operation".len());
        out.push_str(&format!(
            "{:<width$}  {:>9}  {:>7}  {:>10}  {:>10}  {:>10}\n",
            "operation", "count", "errors", "p50_us", "p99_us", "max_us"
        ));
        for o in &self.ops {
            out.push_str(&format!(
                "{:<width$}  {:>9}  {:>7}  {:>10}  {:>10}  {:>10}\n",
                o.op, o.count, o.errors, o.p50_us, o.p99_us, o.max_us
            ));
        }
        out
    }

    /// The JSON document (one object, then a line break).
    pub fn to_json(&self) -> String {
        let ops: Vec<serde_json::Value> = self
            .ops
            .iter()
            .map(|o| {
                serde_json::json!({
                    "operation": o.op,
                    "count": o.count,
                    "errors": o.errors,
                    "p50_us": o.p50_us,
                    "p99_us": o.p99_us,
                    "max_us": o.max_us,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "run": self.run,
            "files": self.files,
            "requests": self.requests,
            "malformed": self.malformed,
            "dropped": self.dropped,
            "operations": ops,
        });
        format!("{doc}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&values, 100.0), 100);
        assert_eq!(percentile(&values, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[1, 2, 3, 1000], 99.0), 1000);
        assert_eq!(percentile(&[1, 2, 3, 1000], 50.0), 2);
    }

    #[test]
    fn lines_parse_and_bad_ones_are_malformed() {
        assert_eq!(
            parse_line("2026-12-01T21:30:00.000001Z\tsend\t153\tok"),
            Parsed::Request(PerfLine {
                timestamp: "2026-12-01T21:30:00.000001Z",
                op: "send",
                micros: 153,
                outcome: "ok"
            })
        );
        assert!(matches!(
            parse_line("t\thttp POST /v1/messages\t9\tBUSY"),
            Parsed::Request(PerfLine {
                op: "http POST /v1/messages",
                outcome: "BUSY",
                ..
            })
        ));
        assert_eq!(parse_line("# parleyd perf log v1"), Parsed::Comment(None));
        assert_eq!(parse_line("# dropped=12"), Parsed::Comment(Some(12)));
        assert_eq!(parse_line(""), Parsed::Comment(None));
        for bad in [
            "t\tsend\tfast\tok",
            "t\tsend\t1",
            "t\tsend\t1\tok\textra",
            "garbage",
            "t\t\t1\tok",
        ] {
            assert_eq!(parse_line(bad), Parsed::Malformed, "{bad:?}");
        }
    }

    #[test]
    fn a_summary_counts_operations_errors_and_percentiles() {
        let mut s = Summarizer::default();
        let file_a = "# header\nt\tsend\t10\tok\nt\tsend\t30\tBUSY\nt\tfetch\t5\tok\nnot a line\n";
        s.add_file(file_a.as_bytes()).unwrap();
        s.add_file(&b"t\tsend\t20\tok\n\xff\xfe\n# dropped=3\n"[..]).unwrap();
        let summary = s.finish("r1");
        assert_eq!(summary.files, 2);
        assert_eq!(summary.requests, 4);
        assert_eq!(summary.malformed, 2);
        assert_eq!(summary.dropped, 3);
        assert_eq!(
            summary.ops[0],
            OpSummary {
                op: "send".into(),
                count: 3,
                errors: 1,
                p50_us: 20,
                p99_us: 30,
                max_us: 30
            }
        );
        assert_eq!(summary.ops[1].op, "fetch");
        let table = summary.to_table();
        assert!(table.contains("send"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
        assert_eq!(json["operations"][0]["count"], 3);
        assert_eq!(json["malformed"], 2);
    }

    #[test]
    fn run_ids_sort_by_time_and_are_safe_names() {
        let id = new_run_id();
        assert!(valid_run_id(&id), "{id}");
        assert_eq!(id.len(), "20261201T213000Z-abcdef".len());
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(101)] {
            assert!(!valid_run_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_log_is_written_flushed_and_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let log = PerfLog::open(dir.path(), "20260101T000000Z-000001").unwrap();
        log.record("send", Duration::from_micros(120), OK);
        log.record(
            String::from("http GET /v1/messages"),
            Duration::from_micros(80),
            "NOT_AUTHENTICATED",
        );
        log.close();
        log.record("late", Duration::ZERO, OK);
        assert_eq!(log.dropped(), 1);
        std::fs::create_dir(dir.path().join("20250101T000000Z-000001")).unwrap();
        let summary = summarize_run(dir.path(), None).unwrap();
        assert_eq!(summary.run, "20260101T000000Z-000001");
        assert_eq!(summary.requests, 2);
        assert_eq!(summary.malformed, 0);
        let http = summary.ops.iter().find(|o| o.op == "http GET /v1/messages").unwrap();
        assert_eq!((http.count, http.errors, http.max_us), (1, 1, 80));
    }
}
