//! Numbers: latency histograms, medians over repeated runs, and the trend
//! of a sampled series.

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;

/// Highest latency a histogram can hold, in microseconds (one hour). Longer
/// values are clamped rather than dropped, so a stuck request still shows.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits kept per value: 0.1% resolution.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency distribution in microseconds.
#[derive(Clone)]
pub struct Latency {
    /// Every recorded value, bucketed.
    histogram: Histogram<u64>,
}

impl Latency {
    pub fn new() -> anyhow::Result<Latency> {
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS)
            .context("creating a latency histogram")?;
        Ok(Latency { histogram })
    }

    pub fn record(&mut self, latency: Duration) {
        self.record_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_us(&mut self, micros: u64) {
        // Zero cannot be stored (the lowest bucket is 1 µs); a sub-microsecond
        // latency is honestly "at most 1 µs".
        self.histogram.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Latency) -> anyhow::Result<()> {
        self.histogram
            .add(&other.histogram)
            .map_err(|e| anyhow::anyhow!("merging latency histograms: {e:?}"))
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `quantile` (0..=1) in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.max() as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.mean() / 1000.0
    }

    /// (percentile, milliseconds) pairs from p50 to p99.99, evenly spaced on
    /// the "number of nines" axis the plot uses.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        const STEPS: usize = 60;
        let low = 2f64.log10();
        let high = 4.0;
        (0..=STEPS)
            .map(|i| {
                let nines = low + (high - low) * i as f64 / STEPS as f64;
                let percentile = 100.0 * (1.0 - 10f64.powf(-nines));
                (percentile, self.quantile_ms(percentile / 100.0))
            })
            .collect()
    }
}

/// Median, lowest and highest of one number over several runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Spread {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let Some((&min, &max)) = sorted.first().zip(sorted.last()) else {
        return Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        };
    };
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    Spread { median, min, max }
}

/// Least-squares slope of `y` over `x`; 0 with fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if variance == 0.0 { 0.0 } else { covariance / variance }
}

/// `count` events over `elapsed`, per second; 0 for an empty interval.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        assert_eq!(
            spread(&[3.0, 1.0, 2.0]),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(spread(&[]).median, 0.0);
    }

    #[test]
    fn slope_of_a_line() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 7.0)).collect();
        assert!((slope(&points) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }

    #[test]
    fn histogram_quantiles() -> anyhow::Result<()> {
        let mut latency = Latency::new()?;
        for us in 1..=1000 {
            latency.record_us(us);
        }
        assert!((latency.quantile_ms(0.5) - 0.5).abs() < 0.01);
        assert!((latency.max_ms() - 1.0).abs() < 0.01);
        let curve = latency.percentile_curve();
        assert!((curve[0].0 - 50.0).abs() < 1e-6);
        assert!((curve[curve.len() - 1].0 - 99.99).abs() < 1e-6);
        Ok(())
    }
}
