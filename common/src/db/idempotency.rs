//! Idempotency keys of start requests: a client may repeat a request safely. The key is
//! written before anything else of its request, in the start batch's statement
//! ([`super::starts`]), so concurrent repeats queue on it; a repeat with the same body
//! within 24 hours is answered with the first request's verification (and its stored
//! answer, written here), one with another body is refused.

use deadpool_postgres::Pool;

use super::DbError;
#[cfg(test)]
use super::rows::table_row;

/// An idempotency key presented with a request.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// Hash of the API key: keys are scoped per client.
    pub scope: [u8; 32],
    pub key: String,
    /// Hash of the route and canonical body; the same key with another body is refused.
    pub request_hash: [u8; 32],
}

// Only SQL reads this table: the start batch's statement writes a key and reads the one it
// finds held (migration V7). The declaration is there for the test that holds every table
// to its declared columns.
#[cfg(test)]
table_row! {
    /// An `idempotency_keys` row.
    pub(crate) struct IdempotencyKeyRow in "idempotency_keys" {}
    unread [scope, key, request_hash, verification_id, response, created_at]
}

/// Stores the first answer to an idempotent request, for replay to its duplicates.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn store_idempotent_response(
    pool: &Pool,
    claim: &IdempotencyClaim,
    response: &serde_json::Value,
) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE idempotency_keys SET response = $3 WHERE scope = $1 AND key = $2",
            &[&claim.scope.as_slice(), &claim.key, response],
        )
        .await?;
    Ok(())
}

/// Deletes idempotency keys older than 24 hours; returns how many.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn delete_expired_idempotency_keys(pool: &Pool) -> Result<u64, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'",
            &[],
        )
        .await?)
}
