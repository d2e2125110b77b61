//! Rows read by column name, from one column list per table.
//!
//! Each table's columns are declared once, with [`table_row!`]: the declaration yields a
//! struct with one field per column (the row as stored, before it becomes domain types),
//! the column list that `SELECT` and `RETURNING` clauses are built from, and a decoder that
//! finds each column in a result by its name. A statement that returns two records gives
//! each record's columns a prefix (`v_id`, `d_id`), so the names stay unique. Positions are
//! looked up once per result, not per row, so reading by name costs no more than reading
//! by index.
//!
//! A declaration names every column of its table: those it reads, and, after `unread`,
//! those it leaves in the database on purpose (a key's hash, the outbox's bookkeeping).
//! A column added to a table but not to its declaration is caught by a test that compares
//! every declaration with `information_schema.columns`.

use std::marker::PhantomData;

use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use super::DbError;

/// A table's row as stored, declared with [`table_row!`].
pub(crate) trait TableRow: Sized {
    /// The table's name.
    const TABLE: &'static str;
    /// Every column read, in declaration order.
    const COLUMNS: &'static [&'static str];
    /// The table's other columns, left unread on purpose (only the schema test needs them).
    #[cfg(test)]
    const UNREAD: &'static [&'static str];

    /// Reads the row, each column from the position `layout` found for it.
    ///
    /// # Errors
    /// [`DbError::Corrupt`] when a value does not fit its field's type.
    fn read(row: &Row, layout: &Layout<Self>) -> Result<Self, DbError>;
}

/// Declares a table's row: a struct with one field per column read, named as the column
/// (none for a table that only SQL reads), the columns left unread (`unread [a, b]`), and
/// its [`TableRow`] implementation.
macro_rules! table_row {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident in $table:literal {
            $($column:ident: $type:ty,)*
        }
        $(unread [$($unread:ident),+ $(,)?])?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $name {
            $(pub(crate) $column: $type,)*
        }

        impl $crate::db::rows::TableRow for $name {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static [&'static str] = &[$(stringify!($column)),*];
            #[cfg(test)]
            const UNREAD: &'static [&'static str] = &[$($(stringify!($unread)),+)?];

            // A table only SQL reads declares no field, and then reads nothing.
            #[allow(unused_mut, unused_variables)]
            fn read(
                row: &tokio_postgres::Row,
                layout: &$crate::db::rows::Layout<Self>,
            ) -> Result<Self, $crate::db::DbError> {
                // Fields are read in declaration order, the order of `COLUMNS`.
                let mut at = layout.positions();
                Ok(Self {
                    $($column: $crate::db::rows::column(row, at.next(), stringify!($column))?,)*
                })
            }
        }
    };
}
pub(crate) use table_row;

/// Where each column of `R` is in one statement's result.
pub(crate) struct Layout<R> {
    positions: Vec<usize>,
    row: PhantomData<fn() -> R>,
}

impl<R: TableRow> Layout<R> {
    /// Finds every column of `R`, named `prefix` + column, among `row`'s columns.
    ///
    /// # Errors
    /// [`DbError::Corrupt`] naming a column the result lacks.
    pub(crate) fn find(row: &Row, prefix: &str) -> Result<Self, DbError> {
        let columns = row.columns();
        let positions = R::COLUMNS
            .iter()
            .map(|column| {
                columns
                    .iter()
                    .position(|found| {
                        found
                            .name()
                            .strip_prefix(prefix)
                            .is_some_and(|name| name == *column)
                    })
                    .ok_or_else(|| {
                        DbError::Corrupt(format!(
                            "the result has no column {prefix}{column} for {}",
                            R::TABLE
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            positions,
            row: PhantomData,
        })
    }

    /// Reads one `R` from `row`, a row of the result this layout was found in.
    ///
    /// # Errors
    /// [`DbError::Corrupt`] when a value does not fit its field's type.
    pub(crate) fn read(&self, row: &Row) -> Result<R, DbError> {
        R::read(row, self)
    }

    /// The positions, in the order of `R::COLUMNS`.
    pub(crate) fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.positions.iter().copied()
    }
}

/// Reads one value for [`table_row!`]'s decoders.
///
/// # Errors
/// [`DbError::Corrupt`] when the column is missing or its value does not fit `T`.
pub(crate) fn column<'a, T: FromSql<'a>>(
    row: &'a Row,
    at: Option<usize>,
    name: &str,
) -> Result<T, DbError> {
    let at = at.ok_or_else(|| DbError::Corrupt(format!("no position for column {name}")))?;
    row.try_get(at)
        .map_err(|error| DbError::Corrupt(format!("column {name}: {error}")))
}

/// Reads the value of the column called `name`, for columns outside any [`TableRow`].
///
/// # Errors
/// [`DbError::Corrupt`] when the column is missing or its value does not fit `T`.
pub(crate) fn named<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Result<T, DbError> {
    row.try_get(name)
        .map_err(|error| DbError::Corrupt(format!("column {name}: {error}")))
}

/// Reads every row of a result as an `R` whose columns are unprefixed.
///
/// # Errors
/// [`DbError::Corrupt`] when a column is missing or a value does not fit.
pub(crate) fn read_all<R: TableRow>(rows: &[Row]) -> Result<Vec<R>, DbError> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let layout = Layout::<R>::find(first, "")?;
    rows.iter().map(|row| layout.read(row)).collect()
}

/// Reads one row as an `R` whose columns are unprefixed.
///
/// # Errors
/// [`DbError::Corrupt`] when a column is missing or a value does not fit.
pub(crate) fn read_one<R: TableRow>(row: &Row) -> Result<R, DbError> {
    Layout::<R>::find(row, "")?.read(row)
}

/// The column list of `R` for a `SELECT` or `RETURNING` clause: `id, name, …`.
pub(crate) fn columns<R: TableRow>() -> String {
    R::COLUMNS.join(", ")
}

/// The column list of `R` read from `record` (a table alias or a composite value, such as
/// `(s.verification)`), each column renamed `prefix` + column: `v.id AS v_id, …`.
pub(crate) fn prefixed_columns<R: TableRow>(record: &str, prefix: &str) -> String {
    R::COLUMNS
        .iter()
        .map(|column| format!("{record}.{column} AS {prefix}{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::TableRow;
    use crate::db::abuse::{
        AbuseAllowRow, AbuseBlockRow, AbuseCounterRow, AbuseGuessRow, AbuseRuleCountRow,
        AbuseRuleRow, AbuseRulesVersionRow, AbuseSendRow,
    };
    use crate::db::api_keys::ApiKeyRow;
    use crate::db::deliveries::{DeliveryRow, HeldReceiptRow};
    use crate::db::idempotency::IdempotencyKeyRow;
    use crate::db::stats::StatsRollupRow;
    use crate::db::templates::TemplateRow;
    use crate::db::timeline::VerificationCheckRow;
    use crate::db::verifications::{ExpiryLifetimeRow, ExpirySweepRow, VerificationRow};
    use crate::db::webhooks::{WebhookAttemptRow, WebhookDeliveryRow, WebhookEndpointRow};
    use crate::db::{build_pool, migrate};
    use crate::testing::TestDatabase;

    /// A declaration's table and every column it names, read or not.
    fn declared<R: TableRow>() -> (&'static str, BTreeSet<&'static str>) {
        let names = R::COLUMNS.iter().chain(R::UNREAD).copied().collect();
        (R::TABLE, names)
    }

    #[tokio::test]
    async fn every_table_is_declared_with_exactly_the_columns_it_has_in_the_migrated_schema() {
        let database = TestDatabase::create().await;
        let pool = build_pool(&database.settings).unwrap();
        migrate(&pool).await.unwrap();
        let declarations = [
            declared::<ApiKeyRow>(),
            declared::<TemplateRow>(),
            declared::<VerificationRow>(),
            declared::<DeliveryRow>(),
            declared::<HeldReceiptRow>(),
            declared::<IdempotencyKeyRow>(),
            declared::<AbuseRuleRow>(),
            declared::<AbuseRulesVersionRow>(),
            declared::<AbuseRuleCountRow>(),
            declared::<AbuseAllowRow>(),
            declared::<AbuseBlockRow>(),
            declared::<AbuseSendRow>(),
            declared::<AbuseCounterRow>(),
            declared::<AbuseGuessRow>(),
            declared::<WebhookEndpointRow>(),
            declared::<WebhookDeliveryRow>(),
            declared::<WebhookAttemptRow>(),
            declared::<StatsRollupRow>(),
            declared::<ExpirySweepRow>(),
            declared::<ExpiryLifetimeRow>(),
            declared::<VerificationCheckRow>(),
        ];

        let client = pool.get().await.unwrap();
        let rows = client
            .query(
                "SELECT table_name::text AS table_name, column_name::text AS column_name
                 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name <> 'schema_migrations'",
                &[],
            )
            .await
            .unwrap();
        let mut schema: std::collections::BTreeMap<String, BTreeSet<String>> =
            std::collections::BTreeMap::new();
        for row in &rows {
            schema
                .entry(row.get("table_name"))
                .or_default()
                .insert(row.get("column_name"));
        }

        let mut mismatches = Vec::new();
        for (table, columns) in &declarations {
            let declared: BTreeSet<String> = columns.iter().map(|c| (*c).to_owned()).collect();
            let actual = schema.remove(*table).unwrap_or_default();
            let undeclared: Vec<_> = actual.difference(&declared).collect();
            let missing: Vec<_> = declared.difference(&actual).collect();
            if !undeclared.is_empty() || !missing.is_empty() {
                mismatches.push(format!(
                    "{table}: columns not declared {undeclared:?}, declared but absent {missing:?}"
                ));
            }
        }
        for table in schema.keys() {
            mismatches.push(format!("{table}: no row declaration"));
        }
        assert!(mismatches.is_empty(), "{mismatches:#?}");
    }
}
