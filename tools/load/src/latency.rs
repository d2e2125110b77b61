//! Latency histograms (HDR, microsecond resolution) and their summaries in milliseconds.
//!
//! An HDR histogram keeps every percentile to three significant digits in fixed memory,
//! whatever the number of samples, so recording costs the same at the first request and the
//! millionth and the tool stays cheap on the CPU it shares with the system it measures.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency told apart from longer ones: an hour, in microseconds. Longer samples
/// are recorded as an hour.
const HIGHEST_MICROS: u64 = 3_600_000_000;
/// Significant digits kept for every value.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A distribution of durations.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    micros: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram covering 1 µs to an hour.
    pub fn new() -> LatencyHistogram {
        LatencyHistogram {
            micros: Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
                .expect("the bounds are constants that hdrhistogram accepts"),
        }
    }

    /// Adds one sample; anything beyond an hour counts as an hour.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.micros
            .saturating_record(micros.clamp(1, HIGHEST_MICROS));
    }

    /// How many samples were recorded.
    pub fn count(&self) -> u64 {
        self.micros.len()
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        self.micros.reset();
    }

    /// The latency at `quantile` (0.0–1.0), or `None` without samples.
    pub fn quantile(&self, quantile: f64) -> Option<Duration> {
        (self.count() > 0).then(|| Duration::from_micros(self.micros.value_at_quantile(quantile)))
    }

    /// Percentiles, mean and maximum in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        if self.count() == 0 {
            return LatencySummary::default();
        }
        let ms = |micros: f64| Some(round3(micros / 1_000.0));
        let at = |q: f64| ms(self.micros.value_at_quantile(q) as f64);
        LatencySummary {
            count: self.count(),
            mean: ms(self.micros.mean()),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: ms(self.micros.max() as f64),
        }
    }
}

/// What a histogram says, in milliseconds rounded to the microsecond. Every figure is
/// `None` (JSON `null`) when nothing was recorded, so an empty series never reads as 0 ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// 99.9th percentile.
    pub p999: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
}

fn round3(value: f64) -> f64 {
    (value * 1_000.0).round() / 1_000.0
}

/// Milliseconds for a table cell: three significant figures below 100 ms, whole
/// milliseconds above, `-` for nothing.
pub fn format_ms(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms < 10.0 => format!("{ms:.2}"),
        Some(ms) if ms < 100.0 => format!("{ms:.1}"),
        Some(ms) => format!("{ms:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{LatencyHistogram, LatencySummary, format_ms};

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut histogram = LatencyHistogram::new();
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        let summary = histogram.summary();
        assert_eq!(summary.count, 100);
        let near = |value: Option<f64>, expected: f64| {
            let value = value.unwrap_or(f64::NAN);
            (value - expected).abs() <= expected * 0.001 + 0.001
        };
        assert!(near(summary.p50, 50.0), "{summary:?}");
        assert!(near(summary.p90, 90.0), "{summary:?}");
        assert!(near(summary.p99, 99.0), "{summary:?}");
        assert!(near(summary.max, 100.0), "{summary:?}");
        assert!(near(summary.mean, 50.5), "{summary:?}");
    }

    #[test]
    fn an_empty_histogram_has_no_figures_rather_than_zeros() {
        let histogram = LatencyHistogram::new();
        assert_eq!(histogram.summary(), LatencySummary::default());
        assert_eq!(histogram.quantile(0.99), None);
        let json = serde_json::to_value(histogram.summary()).unwrap_or_default();
        assert_eq!(json["count"], 0);
        assert!(json["p99"].is_null());
    }

    #[test]
    fn samples_beyond_an_hour_are_kept_as_an_hour() {
        let mut histogram = LatencyHistogram::new();
        histogram.record(Duration::from_secs(10_000));
        histogram.record(Duration::ZERO);
        assert_eq!(histogram.count(), 2);
        let max = histogram.summary().max.unwrap_or_default();
        assert!((max - 3_600_000.0).abs() < 3_600.0, "{max}");
    }

    #[test]
    fn milliseconds_are_formatted_to_about_three_figures() {
        assert_eq!(format_ms(None), "-");
        assert_eq!(format_ms(Some(0.4237)), "0.42");
        assert_eq!(format_ms(Some(4.2)), "4.20");
        assert_eq!(format_ms(Some(42.26)), "42.3");
        assert_eq!(format_ms(Some(1234.6)), "1235");
    }
}
