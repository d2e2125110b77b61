//! Idempotency keys of start requests: a client may repeat a request safely. The key is
//! written before anything else of its request, so concurrent repeats queue on it; a
//! repeat with the same body within 24 hours is answered with the first request's
//! verification (and its stored answer), one with another body is refused.

use std::sync::LazyLock;

use deadpool_postgres::{GenericClient, Pool};

use super::DbError;
use super::rows::{columns, read_one, table_row};
use crate::domain::VerificationId;

/// An idempotency key presented with a request.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// Hash of the API key: keys are scoped per client.
    pub scope: [u8; 32],
    pub key: String,
    /// Hash of the route and canonical body; the same key with another body is refused.
    pub request_hash: [u8; 32],
}

table_row! {
    /// An `idempotency_keys` row as stored.
    pub(crate) struct IdempotencyKeyRow in "idempotency_keys" {
        request_hash: Vec<u8>,
        verification_id: uuid::Uuid,
        response: Option<serde_json::Value>,
    }
    // Looked up by scope and key; age only matters to the statements that take over or
    // delete expired keys.
    unread [scope, key, created_at]
}

/// Writes the key of `claim` for the request creating `verification`, unless an earlier
/// request holds it; returns whether it was written. Keys older than 24 hours are taken
/// over. A concurrent request with the same key waits here until this transaction ends,
/// then finds the key held (or, after a rollback, takes it itself).
///
/// # Errors
/// [`DbError`] on database failure.
pub(crate) async fn take_key(
    transaction: &deadpool_postgres::Transaction<'_>,
    claim: &IdempotencyClaim,
    verification: VerificationId,
) -> Result<bool, DbError> {
    let taken = transaction
        .query_opt(
            "INSERT INTO idempotency_keys (scope, key, request_hash, verification_id)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (scope, key) DO UPDATE
                 SET request_hash = EXCLUDED.request_hash,
                     verification_id = EXCLUDED.verification_id,
                     response = NULL, created_at = now()
                 WHERE idempotency_keys.created_at < now() - interval '24 hours'
             RETURNING 1",
            &[
                &claim.scope.as_slice(),
                &claim.key,
                &claim.request_hash.as_slice(),
                &verification.as_uuid(),
            ],
        )
        .await?;
    Ok(taken.is_some())
}

/// The stored key of `claim`.
///
/// # Errors
/// [`DbError`] on database failure, or when no such key is stored.
pub(crate) async fn find_key(
    client: &impl GenericClient,
    claim: &IdempotencyClaim,
) -> Result<IdempotencyKeyRow, DbError> {
    static FIND_KEY: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM idempotency_keys WHERE scope = $1 AND key = $2",
            columns::<IdempotencyKeyRow>()
        )
    });
    let row = client
        .query_one(FIND_KEY.as_str(), &[&claim.scope.as_slice(), &claim.key])
        .await?;
    read_one(&row)
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
