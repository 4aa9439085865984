//! Summary statistics of one case's timed iterations: mean, median, standard deviation, min, max and total.
//!
//! The median is the figure tokens/s and TFLOP/s are derived from: one slow iteration (a page fault, a neighbour's
//! compile on a shared machine, a clock dip) moves the mean but not the median. The standard deviation is the sample
//! one (divided by n - 1), 0 for a single sample.

use serde::Serialize;

/// Statistics over n > 0 samples, in the samples' unit (the bench records milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    /// The middle sample; for even n the mean of the two middle ones.
    pub median: f64,
    /// Sample standard deviation (n - 1 in the denominator); 0 when n = 1.
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub total: f64,
}

impl Stats {
    /// None for no samples or a non-finite one (a timing can never be NaN or infinite, so that is a bug upstream).
    pub fn from_samples(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() || samples.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let n = samples.len();
        let total: f64 = samples.iter().sum();
        let mean = total / n as f64;
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        let std =
            if n > 1 { (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        Some(Stats { n, mean, median, std, min: sorted[0], max: sorted[n - 1], total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn known_values_odd_count() {
        // 2, 4, 4, 4, 5, 5, 7, 9 has population std 2; drop the 9 for an odd count.
        let s = Stats::from_samples(&[5.0, 2.0, 4.0, 7.0, 4.0, 5.0, 4.0]).unwrap();
        assert_eq!(s.n, 7);
        assert_eq!((s.min, s.max, s.median), (2.0, 7.0, 4.0));
        assert!(close(s.total, 31.0));
        assert!(close(s.mean, 31.0 / 7.0));
        // sum of squared deviations = sum x^2 - n mean^2 = 151 - 961/7 = 96/7; sample variance = 96/42.
        assert!(close(s.std, (96.0f64 / 42.0).sqrt()), "{}", s.std);
    }

    #[test]
    fn known_values_even_count() {
        let s = Stats::from_samples(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(s.median, 4.5);
        assert_eq!(s.mean, 5.0);
        // Population variance 4 -> sample variance 4 * 8 / 7.
        assert!(close(s.std, (32.0f64 / 7.0).sqrt()));
        assert_eq!((s.min, s.max, s.total), (2.0, 9.0, 40.0));
    }

    #[test]
    fn single_sample_and_rejects() {
        let s = Stats::from_samples(&[3.5]).unwrap();
        assert_eq!((s.mean, s.median, s.std, s.min, s.max, s.total), (3.5, 3.5, 0.0, 3.5, 3.5, 3.5));
        assert!(Stats::from_samples(&[]).is_none());
        assert!(Stats::from_samples(&[1.0, f64::NAN]).is_none());
    }
}
