//! Latency statistics: min, mean, median and percentiles of a sample.

use serde::Serialize;

/// Summary of a set of durations, in milliseconds (the key order is that of `kiln bench --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub min: f64,
    pub mean: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Summary {
    /// Statistics of `samples` (any order); all zero for an empty sample.
    pub fn of(samples: &[f64]) -> Summary {
        if samples.is_empty() {
            return Summary { min: 0.0, mean: 0.0, median: 0.0, p90: 0.0, p99: 0.0 };
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Summary {
            min: sorted[0],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            median: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
        }
    }
}

/// The `p`-th percentile (0..=100) of an ascending, non-empty sample, interpolating linearly
/// between the two nearest ranks (numpy's default): the median of [1, 2, 3, 4] is 2.5.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of an empty sample");
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// The median of a sample in any order.
pub fn median(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-12);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&hundred, 99.0) - 99.01).abs() < 1e-9);
    }

    #[test]
    fn summary_of_unsorted_samples() {
        let s = Summary::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.min, s.mean, s.median), (1.0, 3.0, 3.0));
        assert!(s.p90 > 4.5 && s.p99 <= 5.0);
        assert_eq!(Summary::of(&[]).median, 0.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }
}
