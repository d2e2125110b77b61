//! Stored API keys (hashes only), and the announcement of their revocation to every API
//! process (`db::notifications`), so a revoked key stops working everywhere at once.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::DbError;
use super::rows::{columns, named, read_all, table_row};

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

/// The id of the unrevoked key with this hash, if there is one.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn find_active_api_key(pool: &Pool, key_hash: &[u8]) -> Result<Option<Uuid>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
        .await?;
    client
        .query_opt(&statement, &[&key_hash])
        .await?
        .map(|row| named(&row, "id"))
        .transpose()
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
/// A trigger (migration V17) announces the revocation on [`KeyRevocations`] in the
/// revocation's transaction, as it does for a key revoked or deleted by hand:
/// Postgres delivers it when the revocation commits, never for one that rolled back, and
/// never for a key that was already revoked.
///
/// [`KeyRevocations`]: super::notifications::Channel::KeyRevocations
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn revoke_api_key(pool: &Pool, id: Uuid) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let revoked = client
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(revoked == 1)
}

/// What an announcement on [`KeyRevocations`] says.
///
/// [`KeyRevocations`]: super::notifications::Channel::KeyRevocations
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The key with this hash was revoked.
    Key([u8; 32]),
    /// Something else was sent on the channel (anyone who can connect may `NOTIFY`): it
    /// names no key, so any key may have been revoked.
    Unreadable,
}

impl Revocation {
    /// Reads an announcement's payload.
    pub fn from_payload(payload: &str) -> Self {
        parse_hash(payload).map_or(Self::Unreadable, Self::Key)
    }
}

/// A key hash from its 64 hex digits.
fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let digit = |d: u8| char::from(d).to_digit(16);
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        let value = digit(pair[0])? * 16 + digit(pair[1])?;
        *byte = u8::try_from(value).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::parse_hash;

    #[test]
    fn an_announced_hash_is_read_from_hex_and_anything_else_is_not() {
        let mut hash = [0u8; 32];
        hash[0] = 0xab;
        hash[31] = 0x01;
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();

        assert_eq!(parse_hash(&hex), Some(hash));
        assert_eq!(parse_hash(&hex.to_uppercase()), Some(hash));
        assert_eq!(parse_hash(&hex[..62]), None);
        assert_eq!(parse_hash(&format!("{}zz", &hex[..62])), None);
        assert_eq!(parse_hash(&format!("{}+1", &hex[..62])), None);
        assert_eq!(parse_hash(""), None);
    }
}
