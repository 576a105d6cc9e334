//! Watching a process from outside: CPU time and resident memory read from
//! `/proc/PID/stat` and `/proc/PID/status`, sampled every 100 ms on a thread
//! of its own so that a saturated async runtime cannot delay the samples,
//! and the bytes its system calls moved, from `/proc/PID/io`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use parley_core::sync::lock;

use crate::report::Metrics;
use crate::stats;

/// Time between samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Clock ticks per second in `/proc/PID/stat`. The kernel reports these in
/// USER_HZ, which is 100 on every Linux architecture the bench runs on; it
/// is fixed ABI, unlike the kernel's internal HZ.
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the monitor started.
    pub at_secs: f64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads the CPU ticks and RSS of `pid` (`None` for this process).
pub fn read(pid: Option<u32>) -> anyhow::Result<(u64, u64)> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).with_context(|| format!("reading {dir}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces,
    // so fields are counted from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' come field 3 (state) onwards; utime is field 14, stime 15.
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).context("no utime")?;
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).context("no stime")?;
    let status = std::fs::read_to_string(format!("{dir}/status")).with_context(|| format!("reading {dir}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok((utime + stime, rss_kib))
}

/// CPU seconds `pid` (`None` for this process) has used so far, if its
/// `/proc` entry can be read.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    read(pid).ok().map(|(ticks, _)| ticks as f64 / TICKS_PER_SEC)
}

/// CPU seconds this process has used so far.
pub fn own_cpu_secs() -> f64 {
    cpu_secs(None).unwrap_or(0.0)
}

/// Bytes a process's system calls moved, from `/proc/PID/io`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoBytes {
    /// `rchar`: bytes its `read`-family calls returned, from files, pipes
    /// and sockets alike. The kernel counts it in the VFS read path, so
    /// `recv`, `recvfrom` and `recvmsg` on a socket do not add to it.
    pub rchar: u64,
    /// `wchar`: bytes passed to its `write`-family calls (with the same
    /// blind spot: `send`, `sendto` and `sendmsg` do not add to it).
    pub wchar: u64,
}

impl IoBytes {
    /// What moved between `before` and `self`.
    pub fn since(self, before: IoBytes) -> IoBytes {
        IoBytes {
            rchar: self.rchar.saturating_sub(before.rchar),
            wchar: self.wchar.saturating_sub(before.wchar),
        }
    }
}

/// Reads `/proc/PID/io` (readable for a process of the same user).
pub fn io_bytes(pid: u32) -> anyhow::Result<IoBytes> {
    let path = format!("/proc/{pid}/io");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_io(&text).with_context(|| format!("no rchar and wchar in {path}"))
}

fn parse_io(text: &str) -> Option<IoBytes> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(IoBytes {
        rchar: field("rchar")?,
        wchar: field("wchar")?,
    })
}

/// CPU time each live thread of `pid` has run, nanoseconds by thread id,
/// from `/proc/PID/task/TID/schedstat` (its first field: time on a CPU).
/// Finer than `/proc/PID/stat`'s 10 ms ticks, but it knows only the
/// threads alive now: a thread that exited took its time with it.
pub fn thread_cpu_ns(pid: u32) -> anyhow::Result<std::collections::BTreeMap<u32, u64>> {
    let tasks = format!("/proc/{pid}/task");
    let mut threads = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let task = task?;
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat"))
            && let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse().ok())
        {
            threads.insert(tid, ns);
        }
    }
    anyhow::ensure!(!threads.is_empty(), "no thread of {pid} has a schedstat");
    Ok(threads)
}

/// CPU nanoseconds run between two [`thread_cpu_ns`] readings: each
/// thread's growth, and the whole time of a thread that started between
/// them.
pub fn thread_cpu_ns_since(
    before: &std::collections::BTreeMap<u32, u64>,
    after: &std::collections::BTreeMap<u32, u64>,
) -> u64 {
    after
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// A sampling thread for one process.
pub struct Monitor {
    /// Samples so far, shared with the thread.
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Tells the thread to stop.
    stop: Arc<AtomicBool>,
    /// The thread, joined at `finish`.
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a monitored process used during a run.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    pub wall_secs: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_max_kib: u64,
    /// (seconds, KiB) for every sample.
    pub rss_timeline: Vec<(f64, u64)>,
}

impl Monitor {
    /// Starts sampling `pid`; fails at once if the process cannot be read.
    pub fn start(pid: u32) -> anyhow::Result<Monitor> {
        let origin = Instant::now();
        let (cpu_ticks, rss_kib) = read(Some(pid)).with_context(|| format!("watching server process {pid}"))?;
        let samples = Arc::new(Mutex::new(vec![Sample {
            at_secs: 0.0,
            rss_kib,
            cpu_ticks,
        }]));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let samples = Arc::clone(&samples);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("procmon".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(SAMPLE_EVERY);
                        // A process that went away simply stops producing samples.
                        if let Ok((cpu_ticks, rss_kib)) = read(Some(pid)) {
                            let sample = Sample {
                                at_secs: origin.elapsed().as_secs_f64(),
                                rss_kib,
                                cpu_ticks,
                            };
                            lock(&samples).push(sample);
                        }
                    }
                })
                .context("starting the sampling thread")?
        };
        Ok(Monitor {
            samples,
            stop,
            thread: Some(thread),
        })
    }

    /// Takes one last sample, stops the thread and summarises.
    pub fn finish(mut self, pid: u32) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut samples = std::mem::take(&mut *lock(&self.samples));
        if let (Ok((cpu_ticks, rss_kib)), Some(last)) = (read(Some(pid)), samples.last()) {
            let at_secs = last.at_secs + 0.001;
            samples.push(Sample {
                at_secs,
                rss_kib,
                cpu_ticks,
            });
        }
        summarise(&samples)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn summarise(samples: &[Sample]) -> Usage {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Usage::default();
    };
    Usage {
        cpu_secs: last.cpu_ticks.saturating_sub(first.cpu_ticks) as f64 / TICKS_PER_SEC,
        wall_secs: last.at_secs - first.at_secs,
        rss_before_kib: first.rss_kib,
        rss_after_kib: last.rss_kib,
        rss_max_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        rss_timeline: samples.iter().map(|s| (s.at_secs, s.rss_kib)).collect(),
    }
}

impl Usage {
    /// Least-squares RSS growth over the second half of the samples, KiB/s:
    /// the first half holds warm-up (buffers, caches filling), the second
    /// half shows whether memory keeps growing under steady load.
    pub fn rss_slope_kib_per_sec(&self) -> f64 {
        let Some(&(end, _)) = self.rss_timeline.last() else {
            return 0.0;
        };
        let half = end / 2.0;
        let points: Vec<(f64, f64)> = self
            .rss_timeline
            .iter()
            .filter(|(t, _)| *t >= half)
            .map(|&(t, kib)| (t, kib as f64))
            .collect();
        stats::slope(&points)
    }

    /// Adds the server's numbers to a run's metrics.
    pub fn add_to(&self, metrics: &mut Metrics, prefix: &'static str) {
        let keys: [(&'static str, &'static str); 5] = match prefix {
            "nats" => [
                ("nats_cpu_secs", "NATS CPU time"),
                ("nats_cpu_percent", "NATS CPU (of one core)"),
                ("nats_rss_before_kib", "NATS RSS before"),
                ("nats_rss_after_kib", "NATS RSS after"),
                ("nats_rss_max_kib", "NATS RSS max"),
            ],
            _ => [
                ("server_cpu_secs", "server CPU time"),
                ("server_cpu_percent", "server CPU (of one core)"),
                ("server_rss_before_kib", "server RSS before"),
                ("server_rss_after_kib", "server RSS after"),
                ("server_rss_max_kib", "server RSS max"),
            ],
        };
        let percent = if self.wall_secs > 0.0 {
            100.0 * self.cpu_secs / self.wall_secs
        } else {
            0.0
        };
        metrics.push(keys[0].0, keys[0].1, "s", self.cpu_secs);
        metrics.push(keys[1].0, keys[1].1, "%", percent);
        metrics.push(keys[2].0, keys[2].1, "KiB", self.rss_before_kib as f64);
        metrics.push(keys[3].0, keys[3].1, "KiB", self.rss_after_kib as f64);
        metrics.push(keys[4].0, keys[4].1, "KiB", self.rss_max_kib as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() -> anyhow::Result<()> {
        let (_, rss) = read(None)?;
        assert!(rss > 0);
        Ok(())
    }

    #[test]
    fn io_counters_are_read_and_subtracted() -> anyhow::Result<()> {
        let text = "rchar: 1234\nwchar: 99\nsyscr: 5\nsyscw: 6\nread_bytes: 0\nwrite_bytes: 4096\n";
        assert_eq!(parse_io(text), Some(IoBytes { rchar: 1234, wchar: 99 }));
        assert_eq!(parse_io("syscr: 5\n"), None);
        let later = IoBytes { rchar: 2000, wchar: 50 };
        assert_eq!(
            later.since(IoBytes { rchar: 1234, wchar: 99 }),
            IoBytes { rchar: 766, wchar: 0 }
        );
        // A read of a file counts in rchar.
        let before = io_bytes(std::process::id())?;
        let read = std::fs::read("/proc/self/status")?.len() as u64;
        let after = io_bytes(std::process::id())?;
        assert!(after.since(before).rchar >= read, "{before:?} → {after:?}, read {read}");
        Ok(())
    }

    #[test]
    fn thread_cpu_time_grows_with_work() -> anyhow::Result<()> {
        let before = thread_cpu_ns(std::process::id())?;
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = thread_cpu_ns(std::process::id())?;
        assert!(
            thread_cpu_ns_since(&before, &after) > 1_000_000,
            "{before:?} → {after:?}"
        );
        Ok(())
    }

    #[test]
    fn thread_cpu_time_counts_new_threads_whole_and_lost_ones_not_at_all() {
        let before = std::collections::BTreeMap::from([(1, 100), (2, 50)]);
        let after = std::collections::BTreeMap::from([(1, 150), (3, 7)]);
        assert_eq!(thread_cpu_ns_since(&before, &after), 57);
    }

    #[test]
    fn summary_and_slope() {
        let samples: Vec<Sample> = (0..20)
            .map(|i| Sample {
                at_secs: i as f64,
                rss_kib: 1000 + if i >= 10 { 2 * i } else { 100 * i },
                cpu_ticks: 10 * i,
            })
            .collect();
        let usage = summarise(&samples);
        assert_eq!(usage.rss_before_kib, 1000);
        assert!((usage.cpu_secs - 1.9).abs() < 1e-9);
        assert!((usage.rss_slope_kib_per_sec() - 2.0).abs() < 1e-9);
    }
}
