//! Traffic figures read from the stats rollups (migration V18). The rollups are written
//! by the statements that cause them (starts in `starts`, sends and receipts in
//! `deliveries`, approvals in `verifications`); this module only reads them.

use std::sync::LazyLock;

use chrono::NaiveDate;
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::DbError;
use super::rows::named;
#[cfg(test)]
use super::rows::table_row;
use crate::domain::stats::HISTOGRAM_BUCKETS;
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
/// per group, and their histograms bucket by bucket, one `sum` per bucket: aggregates
/// over subscripts cost a fraction of unnesting every histogram into rows and grouping
/// those (scripts/bench-stats measured about a seventh of the time over 30 days).
fn report_statement(group_by: Option<StatsGroupBy>) -> &'static str {
    static STATEMENTS: LazyLock<[String; 5]> = LazyLock::new(|| {
        [
            "''",
            "country",
            "template_id::text",
            "provider",
            "to_char(date_trunc('day', period_start, 'UTC') AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        ]
        .map(report_sql)
    });
    let index = match group_by {
        None => 0,
        Some(StatsGroupBy::Country) => 1,
        Some(StatsGroupBy::Template) => 2,
        Some(StatsGroupBy::Provider) => 3,
        Some(StatsGroupBy::Day) => 4,
    };
    &STATEMENTS[index]
}

fn report_sql(group: &str) -> String {
    // Stored histograms start at subscript 1 (see `stats_histogram` in V18).
    let bucket_sums = |column: &str| {
        let sums: Vec<String> = (1..=HISTOGRAM_BUCKETS)
            .map(|bucket| format!("coalesce(sum({column}[{bucket}]), 0)"))
            .collect();
        format!("ARRAY[{}]::int8[] AS {column}", sums.join(", "))
    };
    format!(
        "SELECT {group} AS grp, sum(started)::int8 AS started, sum(sent)::int8 AS sent,
                sum(delivered)::int8 AS delivered, sum(approved)::int8 AS approved,
                sum(segments)::int8 AS segments, {}, {}
         FROM stats_rollups
         WHERE (period = 'day' AND period_start >= $3 AND period_start < $4)
            OR (period = 'hour' AND period_start >= $1 AND period_start < $2)
            OR (period = 'hour' AND period_start >= $5 AND period_start < $6)
         GROUP BY 1",
        bucket_sums("start_to_sms"),
        bucket_sums("start_to_approval"),
    )
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
        DurationHistogram::from_counts(&named::<Vec<i64>>(row, column)?)
            .map_err(|e| DbError::Corrupt(format!("{column}: {e}")))
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

/// Folds the rollup rows of closed hours and days into one row per key and period
/// (`fold_stats_shard`, migration V22), shard by shard, each in its own transaction so
/// that writers are kept off one shard at a time. Shards a writer holds are left for the
/// next call. Returns how many rows were folded.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn fold_closed_shards(pool: &Pool) -> Result<u64, DbError> {
    let client = pool.get().await?;
    let shards: Vec<i16> = client
        .query(
            "SELECT DISTINCT shard FROM stats_rollups WHERE shard > 0 ORDER BY shard",
            &[],
        )
        .await?
        .iter()
        .map(|row| named(row, "shard"))
        .collect::<Result<_, _>>()?;
    let mut folded = 0;
    for shard in shards {
        let row = client
            .query_one("SELECT fold_stats_shard($1, now()) AS folded", &[&shard])
            .await?;
        folded += u64::try_from(named::<i64>(&row, "folded")?).unwrap_or(0);
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use crate::db::{build_pool, migrate};
    use crate::testing::TestDatabase;

    #[tokio::test]
    async fn utc_periods_from_the_epoch_match_date_trunc_in_utc_whatever_the_session_zone() {
        let database = TestDatabase::create().await;
        let pool = build_pool(&database.settings).unwrap();
        migrate(&pool).await.unwrap();
        let client = pool.get().await.unwrap();
        client
            .batch_execute("SET TimeZone = 'Asia/Kolkata'")
            .await
            .unwrap();

        let mismatches: i64 = client
            .query_one(
                "SELECT count(*) FROM (
                     SELECT t FROM generate_series(timestamptz '2024-02-28 23:59:59.999999+00',
                                                   timestamptz '2027-01-01 00:00:00+00',
                                                   interval '7 hours 13 minutes 17.5 seconds') t
                     UNION ALL VALUES (timestamptz '2026-12-08 00:00:00+00'),
                                      (timestamptz '2026-12-08 04:00:00+00')) s (t)
                 WHERE utc_period_start(t, 3600) <> date_trunc('hour', t, 'UTC')
                    OR utc_period_start(t, 86400) <> date_trunc('day', t, 'UTC')",
                &[],
            )
            .await
            .unwrap()
            .get(0);

        assert_eq!(mismatches, 0);
    }
}
