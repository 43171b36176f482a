//! Summary statistics over timing samples: nearest-rank percentiles, min, max and mean.

use std::time::Duration;

use serde_json::{Value, json};

/// Min, p50, p99, max and mean of a set of samples, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n_samples: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// None when there are no samples.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut secs: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        secs.sort_by(f64::total_cmp);
        let (&min, &max) = (secs.first()?, secs.last()?);
        Some(Summary {
            n_samples: secs.len(),
            min,
            p50: percentile(&secs, 50.0),
            p90: percentile(&secs, 90.0),
            p99: percentile(&secs, 99.0),
            max,
            mean: secs.iter().sum::<f64>() / secs.len() as f64,
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "n": self.n_samples,
            "min_s": round_ms(self.min),
            "p50_s": round_ms(self.p50),
            "p90_s": round_ms(self.p90),
            "p99_s": round_ms(self.p99),
            "max_s": round_ms(self.max),
            "mean_s": round_ms(self.mean),
        })
    }

    /// One line: `p50 2.104 s  p99 2.650 s  min ... (n = 20)`.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.3} s  p99 {:.3} s  min {:.3} s  max {:.3} s  mean {:.3} s  (n = {})",
            self.p50, self.p99, self.min, self.max, self.mean, self.n_samples
        )
    }

    /// One line with p90 instead of p99: `p50 2.104 s  p90 2.650 s  min ... (n = 10)`.
    pub fn line_p90(&self) -> String {
        format!(
            "p50 {:.3} s  p90 {:.3} s  min {:.3} s  max {:.3} s  (n = {})",
            self.p50, self.p90, self.min, self.max, self.n_samples
        )
    }

    /// One line in milliseconds, for short timings.
    pub fn line_ms(&self) -> String {
        format!(
            "p50 {:.3} ms  p99 {:.3} ms  min {:.3} ms  max {:.3} ms  mean {:.3} ms  (n = {})",
            self.p50 * 1e3,
            self.p99 * 1e3,
            self.min * 1e3,
            self.max * 1e3,
            self.mean * 1e3,
            self.n_samples
        )
    }
}

/// The nearest-rank percentile of `sorted` (ascending, not empty): the smallest sample with at
/// least `pct` percent of the samples at or below it. With 20 samples, p99 is the maximum.
pub fn percentile(sorted: &[f64], pct: f64) -> f64 {
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Seconds rounded to the millisecond, so that JSON lines stay readable.
pub fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 10.0);
        assert_eq!(percentile(&sorted, 99.0), 20.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn summary_sorts_its_samples() {
        let summary = Summary::of(&ms(&[300, 100, 200])).unwrap();
        assert_eq!(summary.n_samples, 3);
        assert_eq!((summary.min, summary.p50, summary.max), (0.1, 0.2, 0.3));
        assert!((summary.mean - 0.2).abs() < 1e-9);
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(Summary::of(&[]), None);
    }
}
