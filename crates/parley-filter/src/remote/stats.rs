//! The scorer's counters and its two histograms (batch size, batch
//! latency): atomics that the dispatcher and submitters bump without a
//! lock, and the snapshot [`RemoteStats`] that reading them gives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the scorer has done since it started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RemoteStats {
    /// Requests sent to the server.
    pub batches_sent: u64,
    /// Texts in those requests.
    pub texts_sent: u64,
    /// Texts answered with a score.
    pub texts_scored: u64,
    /// Batches that got no answer within the timeout.
    pub timeouts: u64,
    /// Batches that could not reach the server (refused, reset, closed).
    pub unreachable: u64,
    /// Batches answered wrongly (a status other than 200, bad JSON, the
    /// wrong number of scores, a score outside [0, 1]).
    pub bad_answers: u64,
    /// Texts answered with an error, of any kind (the next two included).
    pub unscored: u64,
    /// Texts answered [`crate::remote::Unscored::Paused`] without asking
    /// the server.
    pub paused: u64,
    /// Texts answered [`crate::remote::Unscored::Closed`].
    pub closed: u64,
    /// Submissions refused because the queue was full or the scorer closed.
    pub rejected: u64,
    /// `done` callbacks that panicked (the panic was caught; the others
    /// were still called).
    pub done_panics: u64,
    /// Texts waiting for a batch now.
    pub queue_len: usize,
    /// Texts per request sent.
    pub batch_size: HistogramSnapshot,
    /// Microseconds from sending a request to its answer (or failure).
    pub latency_us: HistogramSnapshot,
}

/// A histogram's contents: bucket `i` counts values in
/// `(bounds[i - 1], bounds[i]]` (the first from 0); the last bound is
/// `u64::MAX`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Each bucket's inclusive upper bound: 1, 2, 4, 8, … then `u64::MAX`.
    pub bounds: Vec<u64>,
    /// How many values fell in each bucket.
    pub counts: Vec<u64>,
    /// How many values in all.
    pub count: u64,
    /// Their sum.
    pub sum: u64,
    /// The largest.
    pub max: u64,
}

impl HistogramSnapshot {
    /// The mean value, 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// An upper bound for the `q` quantile (`q` in [0, 1]): the bound of
    /// the bucket holding it, or the maximum if smaller. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (count, bound) in self.counts.iter().zip(&self.bounds) {
            seen += count;
            if seen >= rank {
                return (*bound).min(self.max);
            }
        }
        self.max
    }
}

/// A lock-free histogram over power-of-two buckets: bucket `i` holds
/// `(2^(i-1), 2^i]`, bucket 0 holds 0 and 1, the last holds the rest.
pub(crate) struct Histogram {
    /// One counter per bucket.
    counts: Box<[AtomicU64]>,
    /// The sum of the values, for the mean.
    sum: AtomicU64,
    /// The largest value.
    max: AtomicU64,
}

impl Histogram {
    /// A histogram with `buckets` buckets (at least 2).
    pub(crate) fn new(buckets: usize) -> Histogram {
        let buckets = buckets.clamp(2, 64);
        Histogram {
            counts: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, value: u64) {
        let bucket = (u64::BITS - value.saturating_sub(1).leading_zeros()) as usize;
        let last = self.counts.len() - 1;
        if let Some(counter) = self.counts.get(bucket.min(last)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    pub(crate) fn record_duration(&self, elapsed: Duration) {
        self.record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let last = self.counts.len() - 1;
        let bounds = (0..=last)
            .map(|i| if i == last { u64::MAX } else { 1u64 << i })
            .collect();
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        HistogramSnapshot {
            bounds,
            count: counts.iter().sum(),
            counts,
            sum: self.sum.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// The scorer's live counters, bumped with relaxed atomics: each is read
/// alone, never as a consistent set.
pub(crate) struct Counters {
    pub batches_sent: AtomicU64,
    pub texts_sent: AtomicU64,
    pub texts_scored: AtomicU64,
    pub timeouts: AtomicU64,
    pub unreachable: AtomicU64,
    pub bad_answers: AtomicU64,
    pub unscored: AtomicU64,
    pub paused: AtomicU64,
    pub closed: AtomicU64,
    pub rejected: AtomicU64,
    pub done_panics: AtomicU64,
    /// Texts per request: up to 1024 (bucket 10), one more for overflow.
    pub batch_size: Histogram,
    /// Microseconds per request: up to 2^24 µs (16 s), one more for overflow.
    pub latency_us: Histogram,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            batches_sent: AtomicU64::new(0),
            texts_sent: AtomicU64::new(0),
            texts_scored: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            unreachable: AtomicU64::new(0),
            bad_answers: AtomicU64::new(0),
            unscored: AtomicU64::new(0),
            paused: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            done_panics: AtomicU64::new(0),
            batch_size: Histogram::new(12),
            latency_us: Histogram::new(26),
        }
    }

    pub(crate) fn snapshot(&self, queue_len: usize) -> RemoteStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RemoteStats {
            batches_sent: load(&self.batches_sent),
            texts_sent: load(&self.texts_sent),
            texts_scored: load(&self.texts_scored),
            timeouts: load(&self.timeouts),
            unreachable: load(&self.unreachable),
            bad_answers: load(&self.bad_answers),
            unscored: load(&self.unscored),
            paused: load(&self.paused),
            closed: load(&self.closed),
            rejected: load(&self.rejected),
            done_panics: load(&self.done_panics),
            queue_len,
            batch_size: self.batch_size.snapshot(),
            latency_us: self.latency_us.snapshot(),
        }
    }
}

/// Adds one to `counter`.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to `counter`.
pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}
