//! Verification rows: creation (with the per-number send limit), checks, cancel, resend.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
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

/// The call of the `start_verifications` function (migration V6), which takes the numbers'
/// locks, applies the send limit and inserts the rows of a whole batch in one statement.
/// Its rows are the request's position, the limit's wait, then the verification's and the
/// send's columns, in the order [`verification_from_row`] and `delivery_from_row` read them.
static START_VERIFICATIONS: LazyLock<String> = LazyLock::new(|| {
    let fields = |record: &str, columns: &str| {
        columns
            .split(", ")
            .map(|column| format!("({record}).{column}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "SELECT s.ord, s.retry_after_secs, {}, {}
         FROM start_verifications($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) s",
        fields("s.verification", VERIFICATION_COLUMNS),
        fields("s.delivery", DELIVERY_COLUMNS),
    )
});

/// Records a batch of verifications, each with its first send, in one statement; a
/// request whose number is over its send limit gets [`CreateOutcome::RateLimited`] and
/// creates nothing. The outcomes are in the order of `batch`. Runs in the transaction of
/// `client` if it is one, else in its own.
async fn start_batch(
    client: &impl GenericClient,
    batch: &[NewVerification],
    limit: SendLimit,
) -> Result<Vec<CreateOutcome>, DbError> {
    let ids: Vec<uuid::Uuid> = batch.iter().map(|new| new.id.as_uuid()).collect();
    let tos: Vec<&str> = batch.iter().map(|new| new.to.as_str()).collect();
    let template_ids: Vec<Option<i64>> = batch.iter().map(|new| new.template_id).collect();
    let locales: Vec<Option<&str>> = batch
        .iter()
        .map(|new| new.locale.as_ref().map(TemplateLocale::as_str))
        .collect();
    let senders: Vec<Option<&str>> = batch
        .iter()
        .map(|new| new.sender.as_ref().map(Sender::as_str))
        .collect();
    let variables: Vec<serde_json::Value> =
        batch.iter().map(|new| new.variables.to_json()).collect();
    let code_lengths: Vec<i16> = batch
        .iter()
        .map(|new| i16::from(new.code_length.get()))
        .collect();
    let nonces: Vec<&[u8]> = batch.iter().map(|new| new.code_nonce.as_slice()).collect();
    let max_checks: Vec<i32> = batch
        .iter()
        .map(|new| i32::try_from(new.max_checks).unwrap_or(i32::MAX))
        .collect();
    let ttls: Vec<f64> = batch.iter().map(|new| seconds(new.ttl)).collect();
    let delivery_ids: Vec<uuid::Uuid> = batch.iter().map(|new| new.delivery_id.as_uuid()).collect();
    let statement = client.prepare_cached(&START_VERIFICATIONS).await?;
    let rows = client
        .query(
            &statement,
            &[
                &ids,
                &tos,
                &template_ids,
                &locales,
                &senders,
                &variables,
                &code_lengths,
                &nonces,
                &max_checks,
                &ttls,
                &delivery_ids,
                &seconds(limit.window),
                &i64::from(limit.max_sends),
            ],
        )
        .await?;
    if rows.len() != batch.len() {
        return Err(DbError::Corrupt(format!(
            "{} outcomes for a batch of {}",
            rows.len(),
            batch.len()
        )));
    }
    rows.iter()
        .enumerate()
        .map(|(index, row)| {
            let position: i64 = row.get(0);
            if usize::try_from(position).ok() != Some(index + 1) {
                return Err(DbError::Corrupt(format!(
                    "outcome {position} where {} was due",
                    index + 1
                )));
            }
            created_from_row(row)
        })
        .collect()
}

/// Records a batch of verifications, each with its first send, in one statement and one
/// transaction (group commit). Outcomes are [`CreateOutcome::Created`] or
/// [`CreateOutcome::RateLimited`], in the order of `batch`.
///
/// # Errors
/// [`DbError`] on database failure: then nothing of the batch was recorded.
pub async fn insert_verifications(
    pool: &Pool,
    batch: &[NewVerification],
    limit: SendLimit,
) -> Result<Vec<CreateOutcome>, DbError> {
    let client = pool.get().await?;
    start_batch(&client, batch, limit).await
}

/// Records one verification and its first send under an idempotency key: the key is
/// written first, in the same transaction, so a repeat of the request replays the first
/// one's outcome instead of creating another.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn insert_idempotent_verification(
    pool: &Pool,
    new: &NewVerification,
    limit: SendLimit,
    claim: &IdempotencyClaim,
) -> Result<CreateOutcome, DbError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
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
    let outcome = start_batch(&transaction, std::slice::from_ref(new), limit)
        .await?
        .pop()
        .ok_or_else(|| DbError::Corrupt("no outcome for the request".to_owned()))?;
    match outcome {
        // The key must not outlive a request that created nothing.
        CreateOutcome::RateLimited { .. } => transaction.rollback().await?,
        _ => transaction.commit().await?,
    }
    Ok(outcome)
}

/// Reads the outcome of one request from a `start_verifications` row.
fn created_from_row(row: &Row) -> Result<CreateOutcome, DbError> {
    let created: Option<uuid::Uuid> = row.get(2);
    if created.is_none() {
        return Ok(CreateOutcome::RateLimited {
            retry_after: retry_after_from(row.get(1)),
        });
    }
    let verification = verification_from_row(row, 2)?;
    let delivery = super::deliveries::delivery_from_row(row, 17)?;
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
