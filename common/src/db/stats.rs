//! Traffic figures read from the stats rollups (migration V18). The rollups are written
//! by the statements that cause them (starts in `starts`, sends and receipts in
//! `deliveries`, approvals in `verifications`); this module only reads them.

use chrono::NaiveDate;
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::DbError;
use super::rows::named;
#[cfg(test)]
use super::rows::table_row;
use crate::domain::{DurationHistogram, StatsGroupBy, StatsWindow, TemplateId};

#[cfg(test)]
table_row! {
    /// A `stats_rollups` row: only SQL reads it, summed by [`read_stats`].
    pub(crate) struct StatsRollupRow in "stats_rollups" {}
    unread [period, period_start, country, template_id, provider, shard, started, sent,
            delivered, approved, segments, start_to_sms, start_to_approval]
}

/// Which group a row of figures is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatsGroup {
    /// The whole window, when nothing groups it.
    All,
    /// The number's region (`GB`, `001`), or `unknown`.
    Country(String),
    /// The template, or `None` for the built-in text.
    Template(Option<TemplateId>),
    /// The provider that accepted the sends, or `None` for what no provider has a part
    /// in: starts and approvals.
    Provider(Option<String>),
    /// The UTC day the verifications started on.
    Day(NaiveDate),
}

/// The figures of one group, of the verifications started in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsFigures {
    pub group: StatsGroup,
    pub started: i64,
    /// Sends a provider accepted (first sends and resends).
    pub sent: i64,
    /// Sends whose provider reported them delivered.
    pub delivered: i64,
    pub approved: i64,
    /// SMS segments of the sends a provider accepted.
    pub segments: i64,
    /// From start to the provider accepting the first send.
    pub start_to_sms: DurationHistogram,
    /// From start to approval.
    pub start_to_approval: DurationHistogram,
}

/// Sums the rollups of `window`, one row per group of `group_by` that has figures (a
/// single row, possibly of zeros, without one), sorted by group.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn read_stats(
    pool: &Pool,
    window: &StatsWindow,
    group_by: Option<StatsGroupBy>,
) -> Result<Vec<StatsFigures>, DbError> {
    let parts = window.parts();
    let client = pool.get().await?;
    let statement = client.prepare_cached(report_statement(group_by)).await?;
    let rows = client
        .query(
            &statement,
            &[
                &parts.hours_before.0,
                &parts.hours_before.1,
                &parts.days.0,
                &parts.days.1,
                &parts.hours_after.0,
                &parts.hours_after.1,
            ],
        )
        .await?;
    let mut figures = rows
        .iter()
        .map(|row| figures_from_row(row, group_by))
        .collect::<Result<Vec<_>, DbError>>()?;
    if figures.is_empty() && group_by.is_none() {
        figures.push(StatsFigures {
            group: StatsGroup::All,
            started: 0,
            sent: 0,
            delivered: 0,
            approved: 0,
            segments: 0,
            start_to_sms: DurationHistogram::empty(),
            start_to_approval: DurationHistogram::empty(),
        });
    }
    figures.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(figures)
}

/// The report's statement for a grouping. The rows of the window are picked once: day
/// rows for its whole days, hour rows for the hours around them. Their counts are summed
/// per group, and their histograms bucket by bucket.
fn report_statement(group_by: Option<StatsGroupBy>) -> &'static str {
    macro_rules! report {
        ($group:literal) => {
            concat!(
                "WITH picked AS MATERIALIZED (
                     SELECT ",
                $group,
                " AS grp, started, sent, delivered, approved, segments,
                            start_to_sms, start_to_approval
                     FROM stats_rollups
                     WHERE (period = 'day' AND period_start >= $3 AND period_start < $4)
                        OR (period = 'hour' AND period_start >= $1 AND period_start < $2)
                        OR (period = 'hour' AND period_start >= $5 AND period_start < $6)
                 ), counts AS (
                     SELECT grp, sum(started)::int8 AS started, sum(sent)::int8 AS sent,
                            sum(delivered)::int8 AS delivered, sum(approved)::int8 AS approved,
                            sum(segments)::int8 AS segments
                     FROM picked GROUP BY grp
                 ), to_sms AS (
                     SELECT b.grp, array_agg(b.n ORDER BY b.i) AS histogram
                     FROM (SELECT p.grp, h.i, sum(h.n)::int8 AS n
                           FROM picked p, unnest(p.start_to_sms) WITH ORDINALITY AS h (n, i)
                           GROUP BY 1, 2) b
                     GROUP BY b.grp
                 ), to_approval AS (
                     SELECT b.grp, array_agg(b.n ORDER BY b.i) AS histogram
                     FROM (SELECT p.grp, h.i, sum(h.n)::int8 AS n
                           FROM picked p,
                                unnest(p.start_to_approval) WITH ORDINALITY AS h (n, i)
                           GROUP BY 1, 2) b
                     GROUP BY b.grp
                 )
                 SELECT c.grp, c.started, c.sent, c.delivered, c.approved, c.segments,
                        s.histogram AS start_to_sms, a.histogram AS start_to_approval
                 FROM counts c
                 LEFT JOIN to_sms s ON s.grp = c.grp
                 LEFT JOIN to_approval a ON a.grp = c.grp"
            )
        };
    }
    match group_by {
        None => report!("''"),
        Some(StatsGroupBy::Country) => report!("country"),
        Some(StatsGroupBy::Template) => report!("template_id::text"),
        Some(StatsGroupBy::Provider) => report!("provider"),
        Some(StatsGroupBy::Day) => {
            report!(
                "to_char(date_trunc('day', period_start, 'UTC') AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            )
        }
    }
}

fn figures_from_row(row: &Row, group_by: Option<StatsGroupBy>) -> Result<StatsFigures, DbError> {
    let key: String = named(row, "grp")?;
    let corrupt = |what: &str| DbError::Corrupt(format!("stats {what} {key:?}"));
    let group = match group_by {
        None => StatsGroup::All,
        Some(StatsGroupBy::Country) => StatsGroup::Country(key.clone()),
        Some(StatsGroupBy::Template) => match key.parse::<i64>() {
            Ok(0) => StatsGroup::Template(None),
            Ok(id) => StatsGroup::Template(Some(
                TemplateId::try_from(id).map_err(|_| corrupt("template"))?,
            )),
            Err(_) => return Err(corrupt("template")),
        },
        Some(StatsGroupBy::Provider) => {
            StatsGroup::Provider(Some(key.clone()).filter(|name| !name.is_empty()))
        }
        Some(StatsGroupBy::Day) => StatsGroup::Day(
            NaiveDate::parse_from_str(&key, "%Y-%m-%d").map_err(|_| corrupt("day"))?,
        ),
    };
    let histogram = |column: &str| -> Result<DurationHistogram, DbError> {
        match named::<Option<Vec<i64>>>(row, column)? {
            None => Ok(DurationHistogram::empty()),
            Some(counts) => DurationHistogram::from_counts(&counts)
                .map_err(|e| DbError::Corrupt(format!("{column}: {e}"))),
        }
    };
    Ok(StatsFigures {
        started: named(row, "started")?,
        sent: named(row, "sent")?,
        delivered: named(row, "delivered")?,
        approved: named(row, "approved")?,
        segments: named(row, "segments")?,
        start_to_sms: histogram("start_to_sms")?,
        start_to_approval: histogram("start_to_approval")?,
        group,
    })
}
