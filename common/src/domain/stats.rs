//! Traffic statistics: the window a report covers ([`StatsWindow`]), how its rows are
//! grouped ([`StatsGroupBy`]), and the duration histograms its medians are read from
//! ([`DurationHistogram`]).
//!
//! Figures are kept per hour and per UTC day of the verifications' start (migration
//! V18), so a window is made of whole hours: its start is rounded down to the hour and
//! its end up, and the whole days inside it are read from day rows.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, DurationRound, TimeDelta, Utc};
use utoipa::ToSchema;

/// The longest window a report may cover.
pub const MAX_WINDOW_DAYS: i64 = 400;

/// Buckets of a [`DurationHistogram`], as `stats_bucket` in migration V18 numbers them:
/// 0 below 1 ms, then three per doubling up to 2^22 ms (about 70 minutes), and the last
/// for anything longer.
pub const HISTOGRAM_BUCKETS: usize = 68;
const BUCKETS_PER_DOUBLING: f64 = 3.0;

/// The hours a report covers: `[from, to)`, both on the hour, `from` before `to`, at
/// most [`MAX_WINDOW_DAYS`] apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsWindow {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// Why a window was refused; [`StatsWindowError::field`] names the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsWindowError {
    #[error("{field} is required: an RFC 3339 time such as 2026-12-01T00:00:00Z")]
    Missing { field: &'static str },
    #[error(
        "{field} must be an RFC 3339 time between the years 1970 and 9999, such as \
         2026-12-01T00:00:00Z; got {value:?}"
    )]
    NotATime { field: &'static str, value: String },
    #[error("to must be later than from")]
    Empty,
    #[error("the window may span at most {MAX_WINDOW_DAYS} days")]
    TooLong,
}

impl StatsWindowError {
    /// The query parameter at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Missing { field } | Self::NotATime { field, .. } => field,
            Self::Empty | Self::TooLong => "to",
        }
    }
}

/// The parts of a window read from each kind of rollup row: the whole UTC days inside it
/// from day rows, the hours before and after them from hour rows. Each is `[start, end)`;
/// an empty part has `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowParts {
    pub hours_before: (DateTime<Utc>, DateTime<Utc>),
    pub days: (DateTime<Utc>, DateTime<Utc>),
    pub hours_after: (DateTime<Utc>, DateTime<Utc>),
}

impl StatsWindow {
    /// Reads `from` and `to` (RFC 3339, any offset). `from` is rounded down to the hour
    /// and `to` up, so every hour the instants touch is covered.
    ///
    /// # Errors
    /// [`StatsWindowError`] for a missing or unreadable time, `to` not after `from`, or
    /// a window over [`MAX_WINDOW_DAYS`].
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, StatsWindowError> {
        let from = instant("from", from)?;
        let to = instant("to", to)?;
        if to <= from {
            return Err(StatsWindowError::Empty);
        }
        let hour = TimeDelta::hours(1);
        let from = from
            .duration_trunc(hour)
            .map_err(|_| StatsWindowError::Empty)?;
        let truncated_to = to
            .duration_trunc(hour)
            .map_err(|_| StatsWindowError::Empty)?;
        let to = if truncated_to == to {
            to
        } else {
            truncated_to + hour
        };
        if to - from > TimeDelta::days(MAX_WINDOW_DAYS) {
            return Err(StatsWindowError::TooLong);
        }
        Ok(Self { from, to })
    }

    /// The first hour covered.
    pub fn from(&self) -> DateTime<Utc> {
        self.from
    }

    /// The end of the last hour covered.
    pub fn to(&self) -> DateTime<Utc> {
        self.to
    }

    /// The window cut into the whole UTC days inside it and the hours around them.
    pub fn parts(&self) -> WindowParts {
        let day = TimeDelta::days(1);
        let first_midnight = match self.from.duration_trunc(day) {
            Ok(midnight) if midnight == self.from => midnight,
            Ok(midnight) => midnight + day,
            Err(_) => self.to,
        };
        let last_midnight = self.to.duration_trunc(day).unwrap_or(self.from);
        if first_midnight < last_midnight {
            WindowParts {
                hours_before: (self.from, first_midnight),
                days: (first_midnight, last_midnight),
                hours_after: (last_midnight, self.to),
            }
        } else {
            WindowParts {
                hours_before: (self.from, self.to),
                days: (self.to, self.to),
                hours_after: (self.to, self.to),
            }
        }
    }
}

fn instant(field: &'static str, raw: Option<&str>) -> Result<DateTime<Utc>, StatsWindowError> {
    let raw = raw.ok_or(StatsWindowError::Missing { field })?;
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|at| at.with_timezone(&Utc))
        .filter(|at| (1970..=9999).contains(&at.year()))
        .ok_or_else(|| StatsWindowError::NotATime {
            field,
            value: raw.to_owned(),
        })
}

/// What a report's rows are grouped by; without one, a report has a single row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum StatsGroupBy {
    Country,
    Template,
    Provider,
    Day,
}

/// A `group_by` that is none of [`StatsGroupBy`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("group_by must be country, template, provider or day; got {0:?}")]
pub struct StatsGroupByError(pub String);

impl StatsGroupBy {
    /// Reads `country`, `template`, `provider` or `day`.
    ///
    /// # Errors
    /// [`StatsGroupByError`] for anything else.
    pub fn parse(raw: &str) -> Result<Self, StatsGroupByError> {
        match raw {
            "country" => Ok(Self::Country),
            "template" => Ok(Self::Template),
            "provider" => Ok(Self::Provider),
            "day" => Ok(Self::Day),
            other => Err(StatsGroupByError(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Country => "country",
            Self::Template => "template",
            Self::Provider => "provider",
            Self::Day => "day",
        }
    }
}

impl fmt::Display for StatsGroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many durations fell in each bucket (bounds in [`HISTOGRAM_BUCKETS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationHistogram {
    counts: [u64; HISTOGRAM_BUCKETS],
}

/// Bucket counts that cannot be a histogram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistogramError {
    #[error("a histogram has {HISTOGRAM_BUCKETS} buckets, not {0}")]
    WrongLength(usize),
    #[error("bucket {0} holds a negative count")]
    Negative(usize),
}

impl DurationHistogram {
    /// A histogram of no durations.
    pub fn empty() -> Self {
        Self {
            counts: [0; HISTOGRAM_BUCKETS],
        }
    }

    /// Reads bucket counts as stored, bucket 0 first.
    ///
    /// # Errors
    /// [`HistogramError`] unless there are [`HISTOGRAM_BUCKETS`] counts, none negative.
    pub fn from_counts(stored: &[i64]) -> Result<Self, HistogramError> {
        if stored.len() != HISTOGRAM_BUCKETS {
            return Err(HistogramError::WrongLength(stored.len()));
        }
        let mut counts = [0; HISTOGRAM_BUCKETS];
        for (bucket, (count, stored)) in counts.iter_mut().zip(stored).enumerate() {
            *count = u64::try_from(*stored).map_err(|_| HistogramError::Negative(bucket))?;
        }
        Ok(Self { counts })
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The median, interpolated inside its bucket on the log scale the buckets follow, so
    /// it is off by less than one bucket's width: at most a factor of 2^(1/3), about 26 %,
    /// and much less when durations spread over several buckets. A median in the last
    /// bucket reads as its lower bound, 2^22 ms. `None` when empty.
    pub fn median(&self) -> Option<Duration> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // Counts fit an f64 exactly far beyond any traffic a rollup sees.
        #[allow(clippy::cast_precision_loss)]
        let half = total as f64 / 2.0;
        let mut below = 0.0;
        for (bucket, count) in self.counts.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let count = *count as f64;
            if count > 0.0 && below + count >= half {
                let fraction = (half - below) / count;
                return Some(Duration::from_secs_f64(
                    interpolate(bucket, fraction) / 1000.0,
                ));
            }
            below += count;
        }
        None
    }
}

/// The duration in milliseconds `fraction` of the way through `bucket`.
fn interpolate(bucket: usize, fraction: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let exponent = |edge: usize| (edge as f64 / BUCKETS_PER_DOUBLING).exp2();
    match bucket {
        0 => fraction,
        last if last == HISTOGRAM_BUCKETS - 1 => exponent(last - 1),
        _ => {
            let (low, high) = (exponent(bucket - 1), exponent(bucket));
            low * (high / low).powf(fraction)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(from: &str, to: &str) -> Result<StatsWindow, StatsWindowError> {
        StatsWindow::parse(Some(from), Some(to))
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_window_is_widened_to_whole_hours() {
        let window = window("2026-12-01T10:20:00Z", "2026-12-01T12:00:01+00:00").unwrap();
        assert_eq!(window.from(), at("2026-12-01T10:00:00Z"));
        assert_eq!(window.to(), at("2026-12-01T13:00:00Z"));
        let on_the_hour = self::window("2026-12-01T10:00:00Z", "2026-12-01T12:00:00Z").unwrap();
        assert_eq!(on_the_hour.to(), at("2026-12-01T12:00:00Z"));
    }

    #[test]
    fn offsets_are_read_as_the_same_instant_in_utc() {
        let window = window("2026-12-01T10:30:00+05:30", "2026-12-01T12:00:00+05:30").unwrap();
        assert_eq!(window.from(), at("2026-12-01T05:00:00Z"));
        assert_eq!(window.to(), at("2026-12-01T07:00:00Z"));
    }

    #[test]
    fn bad_windows_name_the_parameter_at_fault() {
        let cases = [
            (
                StatsWindow::parse(None, Some("2026-12-01T00:00:00Z")),
                "from",
            ),
            (StatsWindow::parse(Some("2026-12-01T00:00:00Z"), None), "to"),
            (window("yesterday", "2026-12-01T00:00:00Z"), "from"),
            (window("2026-12-01T00:00:00Z", "2026-12-02"), "to"),
            (
                window("1969-12-31T00:00:00Z", "2026-12-01T00:00:00Z"),
                "from",
            ),
            (window("2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z"), "to"),
            (window("2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z"), "to"),
            (window("2025-01-01T00:00:00Z", "2026-12-01T00:00:00Z"), "to"),
        ];
        for (result, field) in cases {
            assert_eq!(result.unwrap_err().field(), field);
        }
    }

    #[test]
    fn the_longest_window_is_accepted() {
        let longest = window("2025-01-01T00:00:00Z", "2026-02-05T00:00:00Z").unwrap();
        assert_eq!(longest.to() - longest.from(), TimeDelta::days(400));
    }

    #[test]
    fn whole_days_are_read_from_day_rows_and_the_edges_from_hours() {
        let parts = window("2026-12-01T22:00:00Z", "2026-12-04T03:00:00Z")
            .unwrap()
            .parts();
        assert_eq!(
            parts,
            WindowParts {
                hours_before: (at("2026-12-01T22:00:00Z"), at("2026-12-02T00:00:00Z")),
                days: (at("2026-12-02T00:00:00Z"), at("2026-12-04T00:00:00Z")),
                hours_after: (at("2026-12-04T00:00:00Z"), at("2026-12-04T03:00:00Z")),
            }
        );
    }

    #[test]
    fn a_window_without_a_whole_day_is_read_from_hours() {
        let window = window("2026-12-01T22:00:00Z", "2026-12-02T03:00:00Z").unwrap();
        let parts = window.parts();
        assert_eq!(parts.hours_before, (window.from(), window.to()));
        assert_eq!(parts.days.0, parts.days.1);
        assert_eq!(parts.hours_after.0, parts.hours_after.1);
    }

    #[test]
    fn group_by_reads_its_four_values_only() {
        for name in ["country", "template", "provider", "day"] {
            assert_eq!(StatsGroupBy::parse(name).unwrap().as_str(), name);
        }
        assert!(StatsGroupBy::parse("Country").is_err());
        assert!(StatsGroupBy::parse("").is_err());
    }

    fn histogram(filled: &[(usize, i64)]) -> DurationHistogram {
        let mut counts = vec![0; HISTOGRAM_BUCKETS];
        for (bucket, count) in filled {
            counts[*bucket] = *count;
        }
        DurationHistogram::from_counts(&counts).unwrap()
    }

    fn median_ms(histogram: &DurationHistogram) -> f64 {
        histogram.median().unwrap().as_secs_f64() * 1000.0
    }

    #[test]
    fn an_empty_histogram_has_no_median() {
        assert_eq!(DurationHistogram::empty().median(), None);
    }

    #[test]
    fn one_duration_reads_as_the_middle_of_its_bucket_on_the_log_scale() {
        // Bucket 31 holds [2^10, 2^(31/3)) ms: 1024 to 1290 ms.
        let one = histogram(&[(31, 1)]);
        let middle = 1024.0 * 2f64.powf(1.0 / 6.0);
        assert!(
            (median_ms(&one) - middle).abs() < 0.01,
            "{}",
            median_ms(&one)
        );
    }

    #[test]
    fn the_median_falls_in_the_bucket_holding_the_middle_duration() {
        // 3 fast, 4 around 1 s, 2 slow: the middle (4.5th) is in the 1 s bucket.
        let spread = histogram(&[(10, 3), (31, 4), (50, 2)]);
        let median = median_ms(&spread);
        assert!((1024.0..1290.2).contains(&median), "{median}");
    }

    #[test]
    fn a_median_past_the_last_bound_reads_as_that_bound() {
        let slow = histogram(&[(HISTOGRAM_BUCKETS - 1, 5)]);
        assert!((median_ms(&slow) - 2f64.powi(22)).abs() < 0.01);
    }

    #[test]
    fn durations_under_a_millisecond_interpolate_linearly() {
        assert!((median_ms(&histogram(&[(0, 2)])) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn counts_of_the_wrong_shape_are_refused() {
        assert_eq!(
            DurationHistogram::from_counts(&[1, 2]),
            Err(HistogramError::WrongLength(2))
        );
        let mut negative = vec![0; HISTOGRAM_BUCKETS];
        negative[3] = -1;
        assert_eq!(
            DurationHistogram::from_counts(&negative),
            Err(HistogramError::Negative(3))
        );
    }
}
