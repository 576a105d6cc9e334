//! Fixed-bucket histograms that a hot path can update without a lock.
//!
//! A [`Histogram`] has bucket upper bounds chosen at compile time and one
//! atomic counter per bucket, plus a running sum: recording a value is a
//! short scan of the bounds and two relaxed `fetch_add`s. Readers take a
//! [`HistogramSnapshot`], which the server renders for Prometheus. The
//! counters are statistics, not synchronisation: a snapshot taken while
//! values are recorded may see a bucket and the sum from slightly different
//! moments, but its count is always the sum of its buckets.

use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram over `u64` values with fixed, inclusive upper bounds.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, strictly increasing; a value above the last goes to the
    /// overflow bucket.
    bounds: &'static [u64],
    /// One counter per bound, then the overflow bucket.
    buckets: Box<[AtomicU64]>,
    /// Sum of every recorded value (wrapping, like any counter).
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with the given upper bounds (strictly increasing).
    pub fn new(bounds: &'static [u64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must increase");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn record(&self, value: u64) {
        let index = self.bounds.partition_point(|&bound| bound < value);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Upper bounds of the buckets (inclusive), without the overflow bucket.
    pub bounds: &'static [u64],
    /// Values per bucket (not cumulative): one per bound, then the overflow.
    pub counts: Vec<u64>,
    /// Sum of the recorded values.
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |total, c| total.wrapping_add(*c))
    }

    /// (upper bound, values at or below it) for every bound, then
    /// (None, count) for "+Inf": the cumulative form Prometheus uses.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut running = 0u64;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                running = running.wrapping_add(*c);
                (self.bounds.get(i).copied(), running)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[u64] = &[1, 10, 100];

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(BOUNDS);
        for v in [0, 1, 2, 10, 11, 100, 101, u64::MAX / 4] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 2, 2, 2]);
        assert_eq!(s.count(), 8);
        assert_eq!(s.sum, 225 + u64::MAX / 4);
        assert_eq!(
            s.cumulative(),
            vec![(Some(1), 2), (Some(10), 4), (Some(100), 6), (None, 8)]
        );
    }

    #[test]
    fn an_empty_histogram_has_zero_everywhere() {
        let s = Histogram::new(BOUNDS).snapshot();
        assert_eq!(s.count(), 0);
        assert_eq!(s.cumulative().last(), Some(&(None, 0)));
    }
}
