//! Stored API keys (hashes only).

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::DbError;
use super::rows::{columns, read_all, table_row};

/// An API key as listed: never the key itself.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

table_row! {
    /// An `api_keys` row as listed.
    pub(crate) struct ApiKeyRow in "api_keys" {
        id: Uuid,
        name: String,
        created_at: DateTime<Utc>,
        revoked_at: Option<DateTime<Utc>>,
    }
    // Only ever compared in SQL: a key's hash never leaves the database.
    unread [key_hash]
}

/// Stores a new key's hash.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn insert_api_key(
    pool: &Pool,
    id: Uuid,
    name: &str,
    key_hash: &[u8],
) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO api_keys (id, name, key_hash) VALUES ($1, $2, $3)",
            &[&id, &name, &key_hash],
        )
        .await?;
    Ok(())
}

/// True when an unrevoked key with this hash exists.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn is_active_api_key(pool: &Pool, key_hash: &[u8]) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT 1 FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
        .await?;
    Ok(client.query_opt(&statement, &[&key_hash]).await?.is_some())
}

/// All keys, newest first.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn list_api_keys(pool: &Pool) -> Result<Vec<ApiKeyRecord>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM api_keys ORDER BY created_at DESC",
                columns::<ApiKeyRow>()
            ),
            &[],
        )
        .await?;
    Ok(read_all::<ApiKeyRow>(&rows)?
        .into_iter()
        .map(|row| ApiKeyRecord {
            id: row.id,
            name: row.name,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        })
        .collect())
}

/// Revokes a key; false when no unrevoked key has this id.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn revoke_api_key(pool: &Pool, id: Uuid) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let changed = client
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(changed == 1)
}
