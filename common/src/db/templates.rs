//! Stored message templates.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::DbError;
use crate::domain::{TemplateBody, TemplateDescription, TemplateLocale, TemplateName};

/// A template row. The body was validated before it was written.
#[derive(Debug, Clone)]
pub struct TemplateRecord {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub locale: Option<String>,
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

const COLUMNS: &str = "id, name, description, locale, body, created_at, updated_at";

fn from_row(row: &Row) -> TemplateRecord {
    TemplateRecord {
        id: row.get(0),
        name: row.get(1),
        description: row.get(2),
        locale: row.get(3),
        body: row.get(4),
        created_at: row.get(5),
        updated_at: row.get(6),
    }
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
                 RETURNING {COLUMNS}"
            ),
            &[
                &fields.name.as_str(),
                &fields.description.as_str(),
                &fields.locale.as_ref().map(TemplateLocale::as_str),
                &fields.body.as_str(),
            ],
        )
        .await?;
    Ok(from_row(&row))
}

/// One template by id.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn find_template(pool: &Pool, id: i64) -> Result<Option<TemplateRecord>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!("SELECT {COLUMNS} FROM templates WHERE id = $1"))
        .await?;
    Ok(client
        .query_opt(&statement, &[&id])
        .await?
        .as_ref()
        .map(from_row))
}

/// Templates in id order, `limit` at most, after the id `after` (for paging).
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
            &format!("SELECT {COLUMNS} FROM templates WHERE id > $1 ORDER BY id LIMIT $2"),
            &[&after, &limit],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Replaces a template's fields; `None` when it does not exist.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn update_template(
    pool: &Pool,
    id: i64,
    fields: &TemplateFields,
) -> Result<Option<TemplateRecord>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE templates SET name = $2, description = $3, locale = $4, body = $5,
                        updated_at = now()
                 WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &fields.name.as_str(),
                &fields.description.as_str(),
                &fields.locale.as_ref().map(TemplateLocale::as_str),
                &fields.body.as_str(),
            ],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Deletes a template; false when it did not exist.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn delete_template(pool: &Pool, id: i64) -> Result<bool, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute("DELETE FROM templates WHERE id = $1", &[&id])
        .await?
        == 1)
}
