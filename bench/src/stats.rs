//! Latency summaries from HDR histograms: the percentiles every table shows and the CDF points
//! the plots draw.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 100 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    #[allow(clippy::unwrap_used)]
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap()
}

/// Records `micros`, clamped into the histogram's range (a value over 100 s is a hang that the
/// max column will show as 100 s).
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    let _ = histogram.record(micros.clamp(1, 100_000_000));
}

/// Percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// (latency µs, fraction of samples at or below it), for the CDF plots.
    pub cdf: Vec<(u64, f64)>,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        // p0 to p90 in steps of 1 %, then 100 points to p99.999, where the brokers differ.
        let body = (0..=90).map(|i| f64::from(i) / 100.0);
        let tail = (1..=100).map(|i| 1.0 - 10f64.powf(-1.0 - 4.0 * f64::from(i) / 100.0));
        let mut cdf: Vec<(u64, f64)> =
            body.chain(tail).map(|q| (histogram.value_at_quantile(q), q)).collect();
        cdf.push((histogram.max(), 1.0));
        Latency {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            cdf,
        }
    }
}

/// `value` in µs as a short human string: `850 µs`, `12.3 ms`, `1.20 s`.
pub fn human_us(value: u64) -> String {
    match value {
        0..1_000 => format!("{value} µs"),
        1_000..100_000 => format!("{:.2} ms", value as f64 / 1e3),
        100_000..1_000_000 => format!("{:.0} ms", value as f64 / 1e3),
        _ => format!("{:.2} s", value as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = histogram();
        for v in 1..=10_000 {
            record(&mut h, v);
        }
        let latency = Latency::of(&h);
        assert_eq!(latency.count, 10_000);
        assert!((4_990..=5_010).contains(&latency.p50_us), "{}", latency.p50_us);
        assert!((9_890..=9_910).contains(&latency.p99_us), "{}", latency.p99_us);
        assert!((9_990..=10_010).contains(&latency.max_us));
        assert_eq!(latency.cdf.first().map(|p| p.1), Some(0.0));
        assert_eq!(latency.cdf.last().map(|p| p.1), Some(1.0));
        assert!(latency.cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn empty_and_clamped() {
        assert_eq!(Latency::of(&histogram()).count, 0);
        let mut h = histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(850), "850 µs");
        assert_eq!(human_us(12_340), "12.34 ms");
        assert_eq!(human_us(1_200_000), "1.20 s");
    }
}
