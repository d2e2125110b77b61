//! Verification rows: creation (with the per-number send limit), checks, cancel, resend.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::deliveries::{DELIVERY_COLUMNS, DeliveryRecord};
use super::{DbError, seconds};
use crate::domain::otp::NONCE_LEN;
use crate::domain::{
    DeliveryId, OtpCodeLength, PhoneNumber, Sender, TemplateLocale, Variables, VerificationId,
    VerificationStatus,
};

/// A verification row, read back into domain types.
#[derive(Debug, Clone)]
pub struct VerificationRecord {
    pub id: VerificationId,
    pub to: PhoneNumber,
    pub template_id: Option<i64>,
    pub locale: Option<String>,
    pub sender: Option<String>,
    pub variables: Variables,
    pub code_length: OtpCodeLength,
    pub code_nonce: Vec<u8>,
    /// The stored status; use [`VerificationRecord::status_at`] for what callers see.
    pub stored_status: VerificationStatus,
    pub checks_made: i32,
    pub max_checks: i32,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub approved_at: Option<DateTime<Utc>>,
}

impl VerificationRecord {
    /// The status as seen at `now` (a pending verification past expiry is expired).
    pub fn status_at(&self, now: DateTime<Utc>) -> VerificationStatus {
        self.stored_status.at(self.expires_at, now)
    }

    /// Checks left before the verification closes.
    pub fn attempts_remaining(&self) -> u32 {
        u32::try_from(self.max_checks - self.checks_made).unwrap_or(0)
    }
}

pub(crate) const VERIFICATION_COLUMNS: &str = "id, to_number, template_id, locale, sender, \
    variables, code_length, code_nonce, status, checks_made, max_checks, expires_at, \
    created_at, updated_at, approved_at";

/// Reads a verification from `row`, starting at column `at`.
pub(crate) fn verification_from_row(row: &Row, at: usize) -> Result<VerificationRecord, DbError> {
    let status: String = row.get(at + 8);
    let code_length: i16 = row.get(at + 6);
    let nonce: Vec<u8> = row.get(at + 7);
    if nonce.len() != NONCE_LEN {
        return Err(DbError::Corrupt(format!("nonce of {} bytes", nonce.len())));
    }
    Ok(VerificationRecord {
        id: VerificationId::from_uuid(row.get(at)),
        to: PhoneNumber::from_trusted_storage(row.get(at + 1)),
        template_id: row.get(at + 2),
        locale: row.get(at + 3),
        sender: row.get(at + 4),
        variables: Variables::from_trusted_storage(&row.get::<_, serde_json::Value>(at + 5)),
        code_length: OtpCodeLength::parse(i64::from(code_length))
            .map_err(|e| DbError::Corrupt(e.to_string()))?,
        code_nonce: nonce,
        stored_status: status.parse().map_err(DbError::Corrupt)?,
        checks_made: row.get(at + 9),
        max_checks: row.get(at + 10),
        expires_at: row.get(at + 11),
        created_at: row.get(at + 12),
        updated_at: row.get(at + 13),
        approved_at: row.get(at + 14),
    })
}

/// Everything needed to record a new verification and its first send.
#[derive(Debug, Clone)]
pub struct NewVerification {
    pub id: VerificationId,
    pub delivery_id: DeliveryId,
    pub to: PhoneNumber,
    pub template_id: Option<i64>,
    pub locale: Option<TemplateLocale>,
    pub sender: Option<Sender>,
    pub variables: Variables,
    pub code_length: OtpCodeLength,
    pub code_nonce: [u8; NONCE_LEN],
    pub max_checks: u32,
    pub ttl: Duration,
}

/// An idempotency key presented with a request.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// Hash of the API key: keys are scoped per client.
    pub scope: [u8; 32],
    pub key: String,
    /// Hash of the route and canonical body; the same key with another body is refused.
    pub request_hash: [u8; 32],
}

/// At most `max_sends` SMS to one number per `window`.
#[derive(Debug, Clone, Copy)]
pub struct SendLimit {
    pub max_sends: u32,
    pub window: Duration,
}

/// Result of trying to create a verification.
#[derive(Debug, Clone)]
pub enum CreateOutcome {
    Created(Box<(VerificationRecord, DeliveryRecord)>),
    /// The number already had `max_sends` sends in the window; try again after this long.
    RateLimited {
        retry_after: Duration,
    },
    /// The idempotency key was used before with the same body: nothing new was created.
    Replayed {
        verification_id: VerificationId,
        response: Option<serde_json::Value>,
    },
    /// The idempotency key was used before with a different body.
    KeyReused,
}

fn retry_after_from(seconds: Option<f64>) -> Duration {
    Duration::from_secs_f64(seconds.unwrap_or(1.0).max(1.0))
}

/// Takes the per-number lock that serialises send-limit decisions for one number, so
/// concurrent requests cannot both see "4 of 5 used" and both send.
async fn lock_number(
    transaction: &deadpool_postgres::Transaction<'_>,
    to: &str,
) -> Result<(), DbError> {
    let statement = transaction
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .await?;
    transaction.execute(&statement, &[&to]).await?;
    Ok(())
}

/// Records a verification and its first send in one transaction, unless the number is
/// over its send limit.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn insert_verification(
    pool: &Pool,
    new: &NewVerification,
    limit: SendLimit,
    idempotency: Option<&IdempotencyClaim>,
) -> Result<CreateOutcome, DbError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    if let Some(claim) = idempotency {
        // Writing the key first serialises duplicates: a concurrent request with the same
        // key waits here until this transaction ends, then sees its row (or, after a
        // rollback, takes the key itself). Keys older than 24 hours are taken over.
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
                    &new.id.as_uuid(),
                ],
            )
            .await?;
        if taken.is_none() {
            transaction.rollback().await?;
            // Read the earlier request on this same connection: taking a second one
            // while holding this one could exhaust the pool under a burst of duplicates.
            return replay(&client, claim).await;
        }
    }
    lock_number(&transaction, new.to.as_str()).await?;
    // One statement after the lock: its snapshot is taken after the lock was granted, so
    // the count sees every send committed by earlier holders of the lock.
    let statement = transaction
        .prepare_cached(&format!(
            "WITH recent AS (
                 SELECT count(*) AS n, min(created_at) AS oldest FROM sms_deliveries
                 WHERE to_number = $2 AND created_at > now() - make_interval(secs => $11)
             ), v AS (
                 INSERT INTO verifications (id, to_number, template_id, locale, sender, variables,
                                            code_length, code_nonce, max_checks, expires_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10)
                 FROM recent WHERE recent.n < $12
                 RETURNING {VERIFICATION_COLUMNS}
             ), d AS (
                 INSERT INTO sms_deliveries (id, verification_id, send_number, to_number)
                 SELECT $13, v.id, 1, v.to_number FROM v
                 RETURNING {DELIVERY_COLUMNS}
             )
             SELECT extract(epoch FROM recent.oldest + make_interval(secs => $11) - now())::float8,
                    v.*, d.*
             FROM recent LEFT JOIN v ON true LEFT JOIN d ON true"
        ))
        .await?;
    let code_length = i16::from(new.code_length.get());
    let max_checks = i32::try_from(new.max_checks).unwrap_or(i32::MAX);
    let row = transaction
        .query_one(
            &statement,
            &[
                &new.id.as_uuid(),
                &new.to.as_str(),
                &new.template_id,
                &new.locale.as_ref().map(TemplateLocale::as_str),
                &new.sender.as_ref().map(Sender::as_str),
                &new.variables.to_json(),
                &code_length,
                &new.code_nonce.as_slice(),
                &max_checks,
                &seconds(new.ttl),
                &seconds(limit.window),
                &i64::from(limit.max_sends),
                &new.delivery_id.as_uuid(),
            ],
        )
        .await?;
    let created: Option<uuid::Uuid> = row.get(1);
    if created.is_none() {
        transaction.rollback().await?;
        return Ok(CreateOutcome::RateLimited {
            retry_after: retry_after_from(row.get(0)),
        });
    }
    let verification = verification_from_row(&row, 1)?;
    let delivery = super::deliveries::delivery_from_row(&row, 16)?;
    transaction.commit().await?;
    Ok(CreateOutcome::Created(Box::new((verification, delivery))))
}

async fn replay(
    client: &deadpool_postgres::Client,
    claim: &IdempotencyClaim,
) -> Result<CreateOutcome, DbError> {
    let row = client
        .query_one(
            "SELECT request_hash, verification_id, response FROM idempotency_keys
             WHERE scope = $1 AND key = $2",
            &[&claim.scope.as_slice(), &claim.key],
        )
        .await?;
    let request_hash: Vec<u8> = row.get(0);
    if request_hash != claim.request_hash {
        return Ok(CreateOutcome::KeyReused);
    }
    Ok(CreateOutcome::Replayed {
        verification_id: VerificationId::from_uuid(row.get(1)),
        response: row.get(2),
    })
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

/// One verification by id.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn find_verification(
    pool: &Pool,
    id: VerificationId,
) -> Result<Option<VerificationRecord>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {VERIFICATION_COLUMNS} FROM verifications WHERE id = $1"
        ))
        .await?;
    client
        .query_opt(&statement, &[&id.as_uuid()])
        .await?
        .map(|row| verification_from_row(&row, 0))
        .transpose()
}

/// The verification a check by phone number applies to: the newest one still open, or
/// else the newest one at all (so its final status can be reported).
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn find_verification_to_check(
    pool: &Pool,
    to: &PhoneNumber,
) -> Result<Option<VerificationRecord>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {VERIFICATION_COLUMNS} FROM verifications WHERE to_number = $1
             ORDER BY (status = 'pending' AND expires_at > now()) DESC, created_at DESC
             LIMIT 1"
        ))
        .await?;
    client
        .query_opt(&statement, &[&to.as_str()])
        .await?
        .map(|row| verification_from_row(&row, 0))
        .transpose()
}

/// The state of a verification right after a counted check.
#[derive(Debug, Clone, Copy)]
pub struct CheckRecord {
    pub status: VerificationStatus,
    pub checks_made: i32,
    pub max_checks: i32,
}

/// Counts one check and applies its result atomically: a right code approves, the last
/// allowed wrong code closes. Only a pending, unexpired verification with checks left is
/// touched, so concurrent checks can neither approve twice nor exceed the budget (each
/// `UPDATE` re-reads the row after the previous one commits). `None` means no check was
/// counted because the verification is no longer open.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn record_check(
    pool: &Pool,
    id: VerificationId,
    code_matched: bool,
) -> Result<Option<CheckRecord>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE verifications
             SET checks_made = checks_made + 1,
                 status = CASE WHEN $2 THEN 'approved'
                               WHEN checks_made + 1 >= max_checks THEN 'max_attempts_reached'
                               ELSE status END,
                 approved_at = CASE WHEN $2 THEN now() ELSE approved_at END,
                 updated_at = now()
             WHERE id = $1 AND status = 'pending' AND expires_at > now()
                   AND checks_made < max_checks
             RETURNING status, checks_made, max_checks",
        )
        .await?;
    let Some(row) = client
        .query_opt(&statement, &[&id.as_uuid(), &code_matched])
        .await?
    else {
        return Ok(None);
    };
    let status: String = row.get(0);
    Ok(Some(CheckRecord {
        status: status.parse().map_err(DbError::Corrupt)?,
        checks_made: row.get(1),
        max_checks: row.get(2),
    }))
}

/// Cancels an open verification. `None` when it does not exist or is not open.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn cancel_verification(
    pool: &Pool,
    id: VerificationId,
) -> Result<Option<VerificationRecord>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE verifications SET status = 'canceled', updated_at = now()
                 WHERE id = $1 AND status = 'pending' AND expires_at > now()
                 RETURNING {VERIFICATION_COLUMNS}"
            ),
            &[&id.as_uuid()],
        )
        .await?;
    row.map(|row| verification_from_row(&row, 0)).transpose()
}

/// Result of asking for another send of a verification's code.
#[derive(Debug, Clone)]
pub enum ResendOutcome {
    Created(DeliveryRecord),
    NotFound,
    /// The verification is closed; resending makes no sense.
    NotPending(VerificationStatus),
    /// The previous send was too recent.
    TooSoon {
        retry_after: Duration,
    },
    /// The number is over its send limit.
    RateLimited {
        retry_after: Duration,
    },
}

/// Records another send of the same code, subject to the minimum interval between sends
/// of one verification and to the per-number send limit. The check counter is untouched:
/// resending never buys more guesses.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn insert_resend(
    pool: &Pool,
    id: VerificationId,
    delivery_id: DeliveryId,
    min_interval: Duration,
    limit: SendLimit,
) -> Result<ResendOutcome, DbError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let Some(row) = transaction
        .query_opt(
            "SELECT v.to_number, v.status, v.expires_at > now(),
                    (SELECT max(send_number) FROM sms_deliveries WHERE verification_id = v.id),
                    (SELECT extract(epoch FROM max(created_at) + make_interval(secs => $2) - now())::float8
                       FROM sms_deliveries WHERE verification_id = v.id)
             FROM verifications v WHERE v.id = $1 FOR UPDATE",
            &[&id.as_uuid(), &seconds(min_interval)],
        )
        .await?
    else {
        return Ok(ResendOutcome::NotFound);
    };
    let to: String = row.get(0);
    let status: VerificationStatus = row.get::<_, String>(1).parse().map_err(DbError::Corrupt)?;
    let live: bool = row.get(2);
    if status != VerificationStatus::Pending || !live {
        let shown = if status == VerificationStatus::Pending {
            VerificationStatus::Expired
        } else {
            status
        };
        return Ok(ResendOutcome::NotPending(shown));
    }
    let last_send_number: Option<i32> = row.get(3);
    let wait: Option<f64> = row.get(4);
    if let Some(wait) = wait.filter(|w| *w > 0.0) {
        return Ok(ResendOutcome::TooSoon {
            retry_after: retry_after_from(Some(wait)),
        });
    }
    lock_number(&transaction, &to).await?;
    let recent = transaction
        .query_one(
            "SELECT count(*), extract(epoch FROM min(created_at) + make_interval(secs => $2) - now())::float8
             FROM sms_deliveries WHERE to_number = $1 AND created_at > now() - make_interval(secs => $2)",
            &[&to, &seconds(limit.window)],
        )
        .await?;
    let sends: i64 = recent.get(0);
    if sends >= i64::from(limit.max_sends) {
        return Ok(ResendOutcome::RateLimited {
            retry_after: retry_after_from(recent.get(1)),
        });
    }
    let row = transaction
        .query_one(
            &format!(
                "INSERT INTO sms_deliveries (id, verification_id, send_number, to_number)
                 VALUES ($1, $2, $3, $4) RETURNING {DELIVERY_COLUMNS}"
            ),
            &[
                &delivery_id.as_uuid(),
                &id.as_uuid(),
                &(last_send_number.unwrap_or(0) + 1),
                &to,
            ],
        )
        .await?;
    let delivery = super::deliveries::delivery_from_row(&row, 0)?;
    transaction.commit().await?;
    Ok(ResendOutcome::Created(delivery))
}
