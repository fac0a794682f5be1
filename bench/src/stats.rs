//! Order statistics of a sample: median, p99, min and max (nearest-rank percentiles, no interpolation).
//!
//! Nearest rank: the p-th percentile of n sorted values is the value at rank ceil(p/100 · n). With n = 200 the p99
//! is the second largest value, so one outlier does not decide it; with n < 100 the p99 is the maximum.

use std::time::Duration;

/// Summary of a sample of durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: Duration,
    pub p99: Duration,
    pub min: Duration,
    pub max: Duration,
}

/// The value at rank ceil(p/100 · n) of sorted `v` (1-based), or `None` for an empty sample.
pub fn percentile<T: Copy + Ord>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

impl Summary {
    /// Summarises a sample; `None` when it is empty.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut v = samples.to_vec();
        v.sort();
        Some(Summary {
            n: v.len(),
            median: percentile(&v, 50.0)?,
            p99: percentile(&v, 99.0)?,
            min: *v.first()?,
            max: *v.last()?,
        })
    }
}

/// Milliseconds with a precision that suits the magnitude: `0.412`, `3.14`, `35.1`, `750`.
pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 1.0 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// `a / b` as a ratio with two decimals followed by `×`, or `n/a` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 || !a.is_finite() || !b.is_finite() {
        "n/a".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// Ratio of two durations.
pub fn ratio_d(a: Duration, b: Duration) -> String {
    ratio(a.as_secs_f64(), b.as_secs_f64())
}

/// Bytes as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_d(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=200).collect();
        assert_eq!(percentile(&v, 50.0), Some(100));
        assert_eq!(percentile(&v, 99.0), Some(198));
        assert_eq!(percentile(&v, 100.0), Some(200));
        let small = [5u32];
        assert_eq!(percentile(&small, 99.0), Some(5));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
    }

    #[test]
    fn summary_of_unsorted_sample() {
        let s = Summary::of(&[ms_d(3), ms_d(1), ms_d(2)]).expect("non-empty");
        assert_eq!(
            (s.n, s.median, s.p99, s.min, s.max),
            (3, ms_d(2), ms_d(3), ms_d(1), ms_d(3))
        );
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn formatting() {
        assert_eq!(ms(Duration::from_micros(412)), "0.412");
        assert_eq!(ms(Duration::from_micros(3140)), "3.14");
        assert_eq!(ms(Duration::from_micros(35_100)), "35.1");
        assert_eq!(ratio(1.0, 2.0), "0.50×");
        assert_eq!(ratio(1.0, 0.0), "n/a");
        assert_eq!(mib(10 * 1024 + 512), "10.5");
    }
}
