//! Stored API keys (hashes only), and the announcement of their revocation to every API
//! process (`LISTEN`/`NOTIFY`), so a revoked key stops working everywhere at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use super::rows::{columns, read_all, table_row};
use super::{DbError, session_config};
use crate::config::DatabaseSettings;

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

/// Revokes a key and announces it to every [`RevocationListener`]; false when no
/// unrevoked key has this id.
///
/// One statement, so the announcement is part of the revocation's transaction: Postgres
/// delivers it when the revocation commits, never for one that rolled back, and never for
/// a key that was already revoked.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn revoke_api_key(pool: &Pool, id: Uuid) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let revoked = client
        .query(
            &format!(
                "WITH revoked AS (
                     UPDATE api_keys SET revoked_at = now()
                     WHERE id = $1 AND revoked_at IS NULL
                     RETURNING key_hash
                 )
                 SELECT pg_notify('{REVOCATIONS}', encode(key_hash, 'hex')) FROM revoked"
            ),
            &[&id],
        )
        .await?;
    Ok(revoked.len() == 1)
}

/// The channel revocations are announced on; the payload is the key's hash in hex.
const REVOCATIONS: &str = "verify_api_key_revoked";

/// The `application_name` of listener sessions, so operators (and tests) can tell them
/// apart in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "verify revocation listener";

/// How often a listener makes sure its session still answers. A session whose server
/// vanished without closing the connection would otherwise look open (and miss every
/// announcement) until TCP gives up, which takes hours.
const LISTENER_HEARTBEAT: Duration = Duration::from_secs(5);

/// An announcement heard by a [`RevocationListener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The key with this hash was revoked.
    Key([u8; 32]),
    /// Something else was sent on the channel (anyone who can connect may `NOTIFY`): it
    /// names no key, so any key may have been revoked.
    Unreadable,
}

/// A session of its own that hears every key revocation committed from now on, by any
/// process. Dropping it closes the session.
pub struct RevocationListener {
    client: tokio_postgres::Client,
    announcements: mpsc::UnboundedReceiver<String>,
    heartbeat: tokio::time::Interval,
}

/// Opens a session and listens for revocations on it. Revocations committed before this
/// returns are not announced to it: read the keys again afterwards.
///
/// # Errors
/// [`DbError`] when Postgres cannot be reached or refuses the session.
pub async fn listen_for_revocations(
    settings: &DatabaseSettings,
) -> Result<RevocationListener, DbError> {
    let mut config = session_config(settings)?;
    config.application_name(LISTENER_APPLICATION_NAME);
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, announcements) = mpsc::unbounded_channel();
    // Drives the session and hands its notifications on. It ends with the session (closed
    // by the server, broken, or dropped with the listener), which closes the channel.
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if sender.send(notification.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "the revocation listener's session failed");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {REVOCATIONS}"))
        .await?;
    let mut heartbeat = tokio::time::interval(LISTENER_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    Ok(RevocationListener {
        client,
        announcements,
        heartbeat,
    })
}

impl RevocationListener {
    /// The next revocation; `None` once the session is lost (closed, broken, or not
    /// answering its heartbeat within [`LISTENER_HEARTBEAT`]). Announcements are missed
    /// from then on, so the caller must assume any key may have been revoked.
    pub async fn next(&mut self) -> Option<Revocation> {
        loop {
            tokio::select! {
                payload = self.announcements.recv() => {
                    return Some(payload.as_deref().map(parse_hash)?.map_or(Revocation::Unreadable, Revocation::Key));
                }
                _ = self.heartbeat.tick() => {
                    let answered = tokio::time::timeout(
                        LISTENER_HEARTBEAT,
                        self.client.batch_execute("SELECT 1"),
                    )
                    .await;
                    if !matches!(answered, Ok(Ok(()))) {
                        return None;
                    }
                }
            }
        }
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
