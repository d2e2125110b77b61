//! Stored message templates.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

use super::DbError;
use super::rows::{columns, read_all, read_one, table_row};
use crate::domain::{TemplateBody, TemplateDescription, TemplateId, TemplateLocale, TemplateName};

/// A template row. The body was validated before it was written.
#[derive(Debug, Clone)]
pub struct TemplateRecord {
    pub id: TemplateId,
    pub name: String,
    pub description: String,
    pub locale: Option<TemplateLocale>,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The validated parts of a new or replaced template.
#[derive(Debug, Clone)]
pub struct TemplateFields {
    pub name: TemplateName,
    pub description: TemplateDescription,
    pub locale: Option<TemplateLocale>,
    pub body: TemplateBody,
}

table_row! {
    /// A `templates` row as stored.
    pub(crate) struct TemplateRow in "templates" {
        id: i64,
        name: String,
        description: String,
        locale: Option<String>,
        body: String,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    }
}

impl TryFrom<TemplateRow> for TemplateRecord {
    type Error = DbError;

    fn try_from(row: TemplateRow) -> Result<Self, DbError> {
        Ok(Self {
            id: TemplateId::try_from(row.id).map_err(|e| DbError::Corrupt(e.to_string()))?,
            name: row.name,
            description: row.description,
            locale: row.locale.as_deref().map(read_locale).transpose()?,
            body: row.body,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A stored locale, parsed again: only parsed ones are written, so one that does not parse
/// was written by hand or by another program.
///
/// # Errors
/// [`DbError::Corrupt`] naming the value.
pub(crate) fn read_locale(stored: &str) -> Result<TemplateLocale, DbError> {
    TemplateLocale::parse(stored).map_err(|_| {
        DbError::Corrupt(format!(
            "the stored locale {stored:?} is not a language tag"
        ))
    })
}

/// Every column of [`TemplateRow`], for `SELECT` and `RETURNING`.
static COLUMNS: LazyLock<String> = LazyLock::new(columns::<TemplateRow>);

fn read_template(row: &tokio_postgres::Row) -> Result<TemplateRecord, DbError> {
    read_one::<TemplateRow>(row)?.try_into()
}

/// Stores a new template.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn insert_template(
    pool: &Pool,
    fields: &TemplateFields,
) -> Result<TemplateRecord, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO templates (name, description, locale, body) VALUES ($1, $2, $3, $4)
                 RETURNING {}",
                *COLUMNS
            ),
            &[
                &fields.name.as_str(),
                &fields.description.as_str(),
                &fields.locale.as_ref().map(TemplateLocale::as_str),
                &fields.body.as_str(),
            ],
        )
        .await?;
    read_template(&row)
}

/// One template by id.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn find_template(pool: &Pool, id: TemplateId) -> Result<Option<TemplateRecord>, DbError> {
    static FIND: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {} FROM templates WHERE id = $1", *COLUMNS));
    let client = pool.get().await?;
    let statement = client.prepare_cached(&FIND).await?;
    client
        .query_opt(&statement, &[&id.get()])
        .await?
        .as_ref()
        .map(read_template)
        .transpose()
}

/// Templates in id order, `limit` at most, with ids above `after` (for paging: the last id
/// seen, or 0 for the first page).
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn list_templates(
    pool: &Pool,
    after: i64,
    limit: i64,
) -> Result<Vec<TemplateRecord>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM templates WHERE id > $1 ORDER BY id LIMIT $2",
                *COLUMNS
            ),
            &[&after, &limit],
        )
        .await?;
    read_all::<TemplateRow>(&rows)?
        .into_iter()
        .map(TemplateRecord::try_from)
        .collect()
}

/// Replaces a template's fields; `None` when it does not exist.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn update_template(
    pool: &Pool,
    id: TemplateId,
    fields: &TemplateFields,
) -> Result<Option<TemplateRecord>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE templates SET name = $2, description = $3, locale = $4, body = $5,
                        updated_at = now()
                 WHERE id = $1 RETURNING {}",
                *COLUMNS
            ),
            &[
                &id.get(),
                &fields.name.as_str(),
                &fields.description.as_str(),
                &fields.locale.as_ref().map(TemplateLocale::as_str),
                &fields.body.as_str(),
            ],
        )
        .await?;
    row.as_ref().map(read_template).transpose()
}

/// Deletes a template; false when it did not exist.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn delete_template(pool: &Pool, id: TemplateId) -> Result<bool, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute("DELETE FROM templates WHERE id = $1", &[&id.get()])
        .await?
        == 1)
}
