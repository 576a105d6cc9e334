//! Logging: where log lines go and in which format.
//!
//! - **stderr**, always: every event `log_level` lets through. Without a
//!   log directory, access events (target [`ACCESS_TARGET`]) go here too.
//! - **`<log_dir>/parleyd.log`**, when `log_dir` is set: the same events
//!   as stderr, without the access events.
//! - **`<log_dir>/access.log`**, when `log_dir` is set: the access events
//!   only (connections opened and closed, logins, HTTP requests), whatever
//!   `log_level` says. They never carry a password, a SCRAM proof, a token
//!   or a message body: the events are written that way at their source.
//!
//! Both files rotate daily at midnight UTC: the current file keeps its
//! plain name and yesterday's becomes `parleyd.log.2026-12-01`. They also
//! rotate when the next line would take them past `log_max_bytes`, to
//! `parleyd.log.2026-12-01.001`, `.002`…; rotated files older than
//! `log_retention_days` are deleted (0 keeps them all), and so are the
//! oldest beyond `log_max_files`.
//! Every output, stderr included, is written by a background thread of
//! its own (tracing-appender's non-blocking writer): a request never waits
//! for the disk, or for whatever reads stderr (a terminal, a pipe to a log
//! collector that may stall). When that thread falls [`LOG_QUEUE_LINES`]
//! lines behind, new lines are dropped and counted ([`dropped_lines`],
//! exported as `parley_log_lines_dropped_total`). The stderr thread
//! writes through a buffer that it flushes whenever it has caught up: one
//! write for many lines under load (the access lines of a storm of short
//! connections cost a quarter of the server's CPU per login when each was
//! its own `write` on the serving thread), each line at once when quiet.
//!
//! Repeats are limited before any output (see `log_limit`): the same
//! event more than [`crate::log_limit::REPEATS_PER_SECOND`] times in a
//! second is suppressed for the rest of it and counted in one line,
//! `… (N similar lines suppressed)`, and in `parley_log_lines_suppressed_total`.
//!
//! Format (`log_format`): `human` (the default) everywhere, with colours
//! only on a terminal; `json` everywhere, one object per line; `auto`:
//! human on a terminal, JSON on a stderr that is not one and in files.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tracing::Subscriber;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, Settings};
use crate::log_limit::{RepeatLimitLayer, RepeatLimiter};
use crate::utc;

/// The tracing target of access events, shared with the HTTP front door.
pub const ACCESS_TARGET: &str = parley_http::access::ACCESS_TARGET;
/// The main log file's name inside `log_dir`.
pub const LOG_FILE: &str = "parleyd.log";
/// The access log's name inside `log_dir`.
pub const ACCESS_FILE: &str = "access.log";
/// Lines an output's writer thread (stderr's or a file's) may fall behind
/// before new lines are dropped.
pub const LOG_QUEUE_LINES: usize = 65_536;

/// Bytes the stderr thread gathers before a write, at most: it writes
/// sooner whenever no line is waiting.
const STDERR_BUFFER: usize = 64 * 1024;

/// Keeps the file writers running; dropping it writes the suppressed
/// counts not reported yet and flushes what the writers hold.
#[must_use = "dropping the guard stops the log file writers"]
pub struct LoggingGuard {
    /// The repeat limiter, for its last reports.
    limiter: Arc<RepeatLimiter>,
    /// One per log file.
    _writers: Vec<WorkerGuard>,
}

impl Drop for LoggingGuard {
    fn drop(&mut self) {
        // Before the writers (the fields) are dropped, so that these lines
        // reach the files.
        for report in self.limiter.take_reports(u64::MAX) {
            crate::log_limit::emit(&report);
        }
    }
}

/// The drop counters of the file writers.
static DROP_COUNTERS: OnceLock<Vec<ErrorCounter>> = OnceLock::new();

/// Log lines dropped so far because a file's writer fell behind.
pub fn dropped_lines() -> u64 {
    DROP_COUNTERS
        .get()
        .map_or(0, |counters| counters.iter().map(|c| c.dropped_lines() as u64).sum())
}

type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync + 'static>;

/// Installs the global subscriber for `settings`. Fails when a log file
/// cannot be opened (the directory is missing and cannot be made, or is
/// not writable).
pub fn init(settings: &Settings) -> anyhow::Result<LoggingGuard> {
    let stderr_is_terminal = io::stderr().is_terminal();
    let (stderr_json, file_json) = match settings.log_format {
        LogFormat::Human => (false, false),
        LogFormat::Json => (true, true),
        LogFormat::Auto => (!stderr_is_terminal, true),
    };
    let level = || EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    // A filter of targets, not a closure: it tells tracing the most it
    // lets through, so that the levels no output writes stay disabled.
    let not_access = || {
        Targets::new()
            .with_default(tracing::level_filters::LevelFilter::TRACE)
            .with_target(ACCESS_TARGET, tracing::level_filters::LevelFilter::OFF)
    };
    let mut layers: Vec<BoxedLayer<_>> = Vec::new();
    let mut writers = Vec::new();
    let mut counters = Vec::new();
    let mut background = |output: Box<dyn Write + Send>, thread: &str| {
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(LOG_QUEUE_LINES)
            .thread_name(thread)
            .finish(output);
        counters.push(writer.error_counter());
        writers.push(guard);
        writer
    };
    let stderr = background(
        Box::new(io::BufWriter::with_capacity(STDERR_BUFFER, io::stderr())),
        "parley-stderr",
    );
    match &settings.log_dir {
        None => {
            layers.push(
                format_layer(stderr_json, stderr_is_terminal, stderr)
                    .with_filter(level())
                    .boxed(),
            );
        }
        Some(dir) => {
            crate::private_files::create_private_dir(dir)
                .with_context(|| format!("creating the log directory {}", dir.display()))?;
            layers.push(
                format_layer(stderr_json, stderr_is_terminal, stderr)
                    .with_filter(level().and(not_access()))
                    .boxed(),
            );
            for (name, access) in [(LOG_FILE, false), (ACCESS_FILE, true)] {
                let file = DailyFile::open(dir, name, Rotation::from_settings(settings))
                    .with_context(|| format!("opening {}", dir.join(name).display()))?;
                let writer = background(Box::new(file), if access { "parley-access-log" } else { "parley-log" });
                let layer = format_layer(file_json, false, writer);
                layers.push(if access {
                    layer
                        .with_filter(Targets::new().with_target(ACCESS_TARGET, tracing::Level::INFO))
                        .boxed()
                } else {
                    layer.with_filter(level().and(not_access())).boxed()
                });
            }
        }
    }
    let _ = DROP_COUNTERS.set(counters);
    let limiter = Arc::new(RepeatLimiter::new());
    // The limiter sits under every output: a repeat it suppresses is
    // suppressed on stderr and in the files alike. It sees only what some
    // output writes: unfiltered, it would make every event of every level
    // enabled, and so every `log` record of the libraries below (the
    // PostgreSQL client formats each statement's parameters at debug level
    // when debug is on), to be formatted, hashed and thrown away.
    let written = level().or(Targets::new().with_target(ACCESS_TARGET, tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(RepeatLimitLayer::start(Arc::clone(&limiter)).with_filter(written))
        .with(layers)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(LoggingGuard {
        limiter,
        _writers: writers,
    })
}

/// A formatting layer writing to `writer`, human or JSON.
fn format_layer<S, W>(json: bool, ansi: bool, writer: W) -> BoxedLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed()
    }
}

/// When a log file rotates and which rotated files are kept.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// Days rotated files are kept; 0 keeps them all.
    pub retention_days: u32,
    /// Size at which the current file rotates before its day ends; 0: by
    /// day only.
    pub max_bytes: u64,
    /// Rotated files kept, the oldest deleted first; 0: no cap.
    pub max_files: u32,
}

impl Rotation {
    /// The rotation `settings` ask for.
    pub fn from_settings(settings: &Settings) -> Rotation {
        Rotation {
            retention_days: settings.log_retention_days,
            max_bytes: settings.log_max_bytes,
            max_files: settings.log_max_files,
        }
    }
}

/// How often a writer checks that its file's name still names the file it
/// has open (the other process of the pair may have rotated it).
const REOPEN_CHECK: Duration = Duration::from_secs(1);
/// After a failed rotation by size, the writer keeps appending to the
/// current file and tries again this much later (not at every line).
const ROTATE_RETRY: Duration = Duration::from_secs(60);

/// A log file that rotates at midnight UTC and when it reaches
/// `max_bytes`. The current lines go to `<dir>/<name>`. At the first write
/// of a new day that file is renamed `<name>.<its date>`; a file that
/// reached its size is renamed `<name>.<date>.<NNN>`, numbered from 001
/// within the day (a day that was also cut by size gets its last piece
/// numbered too, so that the names sort in the order they were written).
/// Rotated files past the retention, and the oldest beyond `max_files`,
/// are deleted at each rotation and at open. Only the writer thread uses
/// it.
pub struct DailyFile {
    /// The log directory.
    dir: PathBuf,
    /// The current file's name.
    name: String,
    /// When to rotate and what to keep.
    rotation: Rotation,
    /// The open current file.
    file: File,
    /// The day (since the epoch) whose lines the current file holds.
    day: i64,
    /// When to check next that `<dir>/<name>` is still `file`.
    next_reopen_check: SystemTime,
    /// No rotation by size is tried before this (after a failure).
    size_rotation_paused_until: Option<SystemTime>,
}

impl DailyFile {
    /// Opens (appending) `<dir>/<name>`; a file left from an earlier day is
    /// rotated first.
    pub fn open(dir: &Path, name: &str, rotation: Rotation) -> io::Result<DailyFile> {
        DailyFile::open_at(dir, name, rotation, SystemTime::now())
    }

    fn open_at(dir: &Path, name: &str, rotation: Rotation, now: SystemTime) -> io::Result<DailyFile> {
        let path = dir.join(name);
        let today = utc::day_number(now);
        if let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) {
            let day = utc::day_number(modified);
            if day < today {
                rotate(dir, name, day, false)?;
            }
        }
        let file = open_append(&path)?;
        let daily = DailyFile {
            dir: dir.to_owned(),
            name: name.to_owned(),
            rotation,
            file,
            day: today,
            next_reopen_check: now + REOPEN_CHECK,
            size_rotation_paused_until: None,
        };
        daily.prune(today);
        Ok(daily)
    }

    /// Moves to a new file if `now` is on a later day than the current
    /// one, or if `incoming` more bytes would take the current file past
    /// `max_bytes` (a file is never empty for that reason: a line longer
    /// than `max_bytes` gets a file of its own).
    fn roll_if_due(&mut self, now: SystemTime, incoming: usize) -> io::Result<()> {
        let today = utc::day_number(now);
        if today > self.day {
            let day = self.day;
            self.day = today;
            return self.roll(day, false, today);
        }
        if now >= self.next_reopen_check {
            self.next_reopen_check = now + REOPEN_CHECK;
            if !self.path_is_ours() {
                self.file = open_append(&self.dir.join(&self.name))?;
            }
        }
        if self.rotation.max_bytes == 0 || self.size_rotation_paused_until.is_some_and(|until| now < until) {
            return Ok(());
        }
        // The file's own size, not a count of our writes: the master and
        // its worker append to the same file.
        let size = self.file.metadata()?.len();
        if size == 0 || size.saturating_add(incoming as u64) <= self.rotation.max_bytes {
            return Ok(());
        }
        match self.roll(today, true, today) {
            Ok(()) => {
                self.size_rotation_paused_until = None;
                Ok(())
            }
            Err(e) => {
                self.size_rotation_paused_until = Some(now + ROTATE_RETRY);
                Err(e)
            }
        }
    }

    /// Renames the current file as a piece of `day` (numbered when
    /// `by_size`), opens a fresh one and prunes.
    fn roll(&mut self, day: i64, by_size: bool, today: i64) -> io::Result<()> {
        self.file.flush()?;
        // The master and its worker write the same files: if the other one
        // rotated already, the path names a new file and only reopening is due.
        if self.path_is_ours() {
            rotate(&self.dir, &self.name, day, by_size)?;
        }
        self.file = open_append(&self.dir.join(&self.name))?;
        self.prune(today);
        Ok(())
    }

    /// Whether `<dir>/<name>` is still the file this one has open.
    fn path_is_ours(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(self.dir.join(&self.name)), self.file.metadata()) {
            (Ok(path), Ok(open)) => path.ino() == open.ino() && path.dev() == open.dev(),
            _ => false,
        }
    }

    /// Deletes rotated files older than the retention, then the oldest
    /// beyond `max_files`. Failures are reported on stderr only: the log
    /// itself may be what fails.
    fn prune(&self, today: i64) {
        let mut kept = Vec::new();
        for (day, number, path) in rotated_files(&self.dir, &self.name) {
            if self.rotation.retention_days != 0 && today - day > i64::from(self.rotation.retention_days) {
                remove_old_log(&path);
            } else {
                kept.push((day, number, path));
            }
        }
        let cap = self.rotation.max_files as usize;
        if cap != 0 && kept.len() > cap {
            kept.sort();
            let excess = kept.len() - cap;
            for (_, _, path) in kept.drain(..excess) {
                remove_old_log(&path);
            }
        }
    }
}

fn remove_old_log(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        eprintln!("parleyd: cannot delete old log {}: {e}", path.display());
    }
}

/// The rotated files of log `name` in `dir`: `<name>.YYYY-MM-DD` (piece 0)
/// and `<name>.YYYY-MM-DD.N`, as (day, piece, path). Other names, such as
/// a piece an operator compressed, are not ours to count or delete.
fn rotated_files(dir: &Path, name: &str) -> Vec<(i64, u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    entries
        .flatten()
        .filter_map(|entry| {
            let file_name = entry.file_name();
            let rest = file_name.to_str()?.strip_prefix(&prefix)?;
            let day = utc::parse_date(rest.get(..10)?)?;
            let number = match rest.get(10..)? {
                "" => 0,
                piece => {
                    let digits = piece.strip_prefix('.')?;
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    digits.parse().ok()?
                }
            };
            Some((day, number, entry.path()))
        })
        .collect()
}

impl DailyFile {
    /// Writes `buf` as of `now`, rotating first if a new day has begun or
    /// the file is full.
    fn write_at(&mut self, buf: &[u8], now: SystemTime) -> io::Result<usize> {
        if let Err(e) = self.roll_if_due(now, buf.len()) {
            // Keep writing to the old file rather than losing lines.
            eprintln!("parleyd: cannot rotate {}: {e}", self.dir.join(&self.name).display());
        }
        self.file.write(buf)
    }
}

impl Write for DailyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(buf, SystemTime::now())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, crate::private_files::PRIVATE_FILE_MODE);
    options.open(path)
}

/// Renames `<dir>/<name>` to a rotated name for `day`: `<name>.<date>`
/// when that is free and the day has no numbered pieces and `by_size` is
/// false; otherwise `<name>.<date>.<NNN>`, one past the day's highest.
fn rotate(dir: &Path, name: &str, day: i64, by_size: bool) -> io::Result<()> {
    let base = format!("{name}.{}", utc::day_text(day));
    let pieces: Vec<u64> = rotated_files(dir, name)
        .into_iter()
        .filter(|(piece_day, _, _)| *piece_day == day)
        .map(|(_, number, _)| number)
        .collect();
    let target = if pieces.is_empty() && !by_size {
        dir.join(&base)
    } else {
        let next = pieces.iter().max().map_or(1, |n| n + 1);
        dir.join(format!("{base}.{next:03}"))
    };
    match std::fs::rename(dir.join(name), target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daily(retention_days: u32) -> Rotation {
        Rotation {
            retention_days,
            max_bytes: 0,
            max_files: 0,
        }
    }

    fn at_day(day: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(day as u64 * utc::DAY_SECS + 3600)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Nothing writes a debug line at the default level, so no debug event
    /// may be enabled. The repeat limiter (unfiltered) and the log file's
    /// filter (a closure, which tells tracing no most level) once made every
    /// level enabled, and with it every `log` record of the libraries below:
    /// the PostgreSQL client formatted each statement's parameters for it,
    /// and the limiter hashed them, for nothing — most of the store
    /// thread's time.
    #[test]
    fn what_no_output_writes_is_not_enabled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = crate::config::SettingArgs::default().resolve().expect("defaults");
        settings.log_dir = Some(dir.path().to_path_buf());
        let _guard = init(&settings).expect("init");
        assert_eq!(
            tracing::level_filters::LevelFilter::current(),
            tracing::level_filters::LevelFilter::INFO
        );
        assert!(!tracing::enabled!(target: "tokio_postgres::query", tracing::Level::DEBUG));
        // What libraries log through the `log` crate comes in as events too.
        assert!(!log::log_enabled!(target: "tokio_postgres::query", log::Level::Debug));
        assert!(tracing::enabled!(target: "parley_server", tracing::Level::INFO));
    }

    #[test]
    fn a_new_day_rotates_the_file_and_old_files_expire() {
        let dir = tempfile::tempdir().unwrap();
        let day = utc::day_of(2026, 12, 1).expect("a real date");
        let mut log = DailyFile::open_at(dir.path(), "access.log", daily(2), at_day(day)).unwrap();
        log.write_at(b"one\n", at_day(day)).unwrap();
        log.write_at(b"two\n", at_day(day + 1)).unwrap();
        log.flush().unwrap();
        assert_eq!(names(dir.path()), ["access.log", "access.log.2026-12-01"]);
        assert_eq!(std::fs::read_to_string(dir.path().join("access.log")).unwrap(), "two\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("access.log.2026-12-01")).unwrap(),
            "one\n"
        );
        // On 2026-12-04 the 2026-12-01 file is past a two-day retention,
        // the 2026-12-02 one is not.
        log.roll_if_due(at_day(day + 3), 0).unwrap();
        assert_eq!(names(dir.path()), ["access.log", "access.log.2026-12-02"]);
    }

    #[test]
    fn a_file_left_from_an_earlier_day_is_rotated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("parleyd.log"), "old\n").unwrap();
        let tomorrow = SystemTime::now() + Duration::from_secs(utc::DAY_SECS);
        let log = DailyFile::open_at(dir.path(), "parleyd.log", daily(0), tomorrow).unwrap();
        drop(log);
        let names = names(dir.path());
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[1].starts_with("parleyd.log."), "{names:?}");
    }

    #[test]
    fn a_full_file_rotates_to_numbered_pieces_and_the_count_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let day = utc::day_of(2026, 12, 1).expect("a real date");
        let rotation = Rotation {
            retention_days: 0,
            max_bytes: 7,
            max_files: 3,
        };
        let mut log = DailyFile::open_at(dir.path(), "access.log", rotation, at_day(day)).unwrap();
        // Three-byte lines: two fit in seven bytes, the third starts a new piece.
        for line in ["a1\n", "a2\n", "a3\n", "a4\n", "a5\n"] {
            log.write_at(line.as_bytes(), at_day(day)).unwrap();
        }
        assert_eq!(
            names(dir.path()),
            ["access.log", "access.log.2026-12-01.001", "access.log.2026-12-01.002"]
        );
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("access.log.2026-12-01.001"), "a1\na2\n");
        assert_eq!(read("access.log.2026-12-01.002"), "a3\na4\n");
        assert_eq!(read("access.log"), "a5\n");

        // A line longer than the limit gets a file of its own, not an empty one.
        log.write_at(b"a-very-long-line\n", at_day(day)).unwrap();
        log.write_at(b"b1\n", at_day(day)).unwrap();
        assert_eq!(read("access.log.2026-12-01.004"), "a-very-long-line\n");
        assert_eq!(read("access.log"), "b1\n");
        // The cap keeps the three newest pieces.
        assert_eq!(
            names(dir.path()),
            [
                "access.log",
                "access.log.2026-12-01.002",
                "access.log.2026-12-01.003",
                "access.log.2026-12-01.004"
            ]
        );

        // The day's last piece is numbered after the size pieces, so that
        // the names sort in the order the lines were written; the next day
        // starts again from 001.
        log.write_at(b"c1\n", at_day(day + 1)).unwrap();
        log.write_at(b"c2\n", at_day(day + 1)).unwrap();
        log.write_at(b"c3\n", at_day(day + 1)).unwrap();
        assert_eq!(read("access.log.2026-12-01.005"), "b1\n");
        assert_eq!(read("access.log.2026-12-02.001"), "c1\nc2\n");
        assert_eq!(
            names(dir.path()),
            [
                "access.log",
                "access.log.2026-12-01.004",
                "access.log.2026-12-01.005",
                "access.log.2026-12-02.001"
            ]
        );
        drop(log);

        // The cap and the retention apply at open too.
        std::fs::write(dir.path().join("access.log.2026-11-01"), "old\n").unwrap();
        std::fs::write(dir.path().join("access.log.2026-12-01.gz"), "not ours\n").unwrap();
        let rotation = Rotation {
            retention_days: 30,
            max_bytes: 7,
            max_files: 2,
        };
        let _log = DailyFile::open_at(dir.path(), "access.log", rotation, at_day(day + 1)).unwrap();
        assert_eq!(
            names(dir.path()),
            [
                "access.log",
                "access.log.2026-12-01.005",
                "access.log.2026-12-01.gz",
                "access.log.2026-12-02.001"
            ]
        );
    }
}
