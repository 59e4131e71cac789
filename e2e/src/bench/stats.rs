//! Summaries of timing samples: mean and nearest-rank percentiles, in milliseconds.

use std::time::Duration;

/// What a table shows of one series of samples (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Summary {
    /// Summarizes `samples`; an empty series is all zeros.
    pub(crate) fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        if ms.is_empty() {
            return Self { n: 0, mean: 0.0, p50: 0.0, p99: 0.0, min: 0.0, max: 0.0 };
        }
        Self {
            n: ms.len(),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
            p50: percentile(&ms, 50.0),
            p99: percentile(&ms, 99.0),
            min: ms[0],
            max: ms[ms.len() - 1],
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `a / b`, or NaN when `b` is zero.
pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

/// `(a − b) / b` in percent.
pub(crate) fn added_percent(with: f64, without: f64) -> f64 {
    (ratio(with, without) - 1.0) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!(s.n, 100);
        assert!((s.p50 - 50.0).abs() < 1e-9, "{s:?}");
        assert!((s.p99 - 99.0).abs() < 1e-9, "{s:?}");
        assert!((s.mean - 50.5).abs() < 1e-9, "{s:?}");
        assert!((s.min - 1.0).abs() < 1e-9 && (s.max - 100.0).abs() < 1e-9);
        let one = Summary::of(&[Duration::from_millis(3)]);
        assert!((one.p99 - 3.0).abs() < 1e-9 && (one.p50 - 3.0).abs() < 1e-9);
        assert_eq!(Summary::of(&[]).n, 0);
        assert!((added_percent(110.0, 100.0) - 10.0).abs() < 1e-9);
        assert!(ratio(1.0, 0.0).is_nan());
    }
}
