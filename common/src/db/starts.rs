//! New sends: starting verifications (in batches, each with its first send, optionally
//! under an idempotency key) and resending a verification's code, each under the
//! per-number send limit.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::deliveries::{DeliveryRecord, DeliveryRow};
use super::idempotency::{self, IdempotencyClaim};
use super::rows::{Layout, columns, named, prefixed_columns, read_one};
use super::verifications::{VerificationRecord, VerificationRow};
use super::{DbError, seconds};
use crate::domain::otp::NONCE_LEN;
use crate::domain::{
    DeliveryId, OtpCodeLength, PhoneNumber, Sender, TemplateLocale, Variables, VerificationId,
    VerificationStatus,
};

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
/// Its rows are the request's position (`ord`), the limit's wait (`retry_after_secs`), then
/// the verification's columns prefixed `v_` and the send's prefixed `d_`.
static START_VERIFICATIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT s.ord, s.retry_after_secs, {}, {}
         FROM start_verifications($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) s",
        prefixed_columns::<VerificationRow>("(s.verification)", "v_"),
        prefixed_columns::<DeliveryRow>("(s.delivery)", "d_"),
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
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let layouts = (
        Layout::<VerificationRow>::find(first, "v_")?,
        Layout::<DeliveryRow>::find(first, "d_")?,
    );
    rows.iter()
        .enumerate()
        .map(|(index, row)| {
            let position: i64 = named(row, "ord")?;
            if usize::try_from(position).ok() != Some(index + 1) {
                return Err(DbError::Corrupt(format!(
                    "outcome {position} where {} was due",
                    index + 1
                )));
            }
            created_from_row(row, &layouts)
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
    if !idempotency::take_key(&transaction, claim, new.id).await? {
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
fn created_from_row(
    row: &Row,
    (verification, delivery): &(Layout<VerificationRow>, Layout<DeliveryRow>),
) -> Result<CreateOutcome, DbError> {
    let created: Option<uuid::Uuid> = named(row, "v_id")?;
    if created.is_none() {
        return Ok(CreateOutcome::RateLimited {
            retry_after: retry_after_from(named(row, "retry_after_secs")?),
        });
    }
    let verification = verification.read(row)?.try_into()?;
    let delivery = delivery.read(row)?.try_into()?;
    Ok(CreateOutcome::Created(Box::new((verification, delivery))))
}

/// The outcome of a request whose key an earlier request holds.
async fn replay(
    client: &deadpool_postgres::Client,
    claim: &IdempotencyClaim,
) -> Result<CreateOutcome, DbError> {
    let stored = idempotency::find_key(client, claim).await?;
    if stored.request_hash != claim.request_hash {
        return Ok(CreateOutcome::KeyReused);
    }
    Ok(CreateOutcome::Replayed {
        verification_id: VerificationId::from_uuid(stored.verification_id),
        response: stored.response,
    })
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
            "SELECT v.to_number, v.status, v.expires_at > now() AS live,
                    (SELECT max(send_number) FROM sms_deliveries WHERE verification_id = v.id)
                      AS last_send_number,
                    (SELECT extract(epoch FROM max(created_at) + make_interval(secs => $2) - now())::float8
                       FROM sms_deliveries WHERE verification_id = v.id) AS wait_secs
             FROM verifications v WHERE v.id = $1 FOR UPDATE",
            &[&id.as_uuid(), &seconds(min_interval)],
        )
        .await?
    else {
        return Ok(ResendOutcome::NotFound);
    };
    let to: String = named(&row, "to_number")?;
    let status: VerificationStatus = named::<String>(&row, "status")?
        .parse()
        .map_err(DbError::Corrupt)?;
    let live: bool = named(&row, "live")?;
    if status != VerificationStatus::Pending || !live {
        let shown = if status == VerificationStatus::Pending {
            VerificationStatus::Expired
        } else {
            status
        };
        return Ok(ResendOutcome::NotPending(shown));
    }
    let last_send_number: Option<i32> = named(&row, "last_send_number")?;
    let wait: Option<f64> = named(&row, "wait_secs")?;
    if let Some(wait) = wait.filter(|w| *w > 0.0) {
        return Ok(ResendOutcome::TooSoon {
            retry_after: retry_after_from(Some(wait)),
        });
    }
    lock_number(&transaction, &to).await?;
    let recent = transaction
        .query_one(
            "SELECT count(*) AS sends,
                    extract(epoch FROM min(created_at) + make_interval(secs => $2) - now())::float8
                      AS retry_after_secs
             FROM sms_deliveries WHERE to_number = $1 AND created_at > now() - make_interval(secs => $2)",
            &[&to, &seconds(limit.window)],
        )
        .await?;
    let sends: i64 = named(&recent, "sends")?;
    if sends >= i64::from(limit.max_sends) {
        return Ok(ResendOutcome::RateLimited {
            retry_after: retry_after_from(named(&recent, "retry_after_secs")?),
        });
    }
    let row = transaction
        .query_one(
            &format!(
                "INSERT INTO sms_deliveries (id, verification_id, send_number, to_number)
                 VALUES ($1, $2, $3, $4) RETURNING {}",
                columns::<DeliveryRow>()
            ),
            &[
                &delivery_id.as_uuid(),
                &id.as_uuid(),
                &(last_send_number.unwrap_or(0) + 1),
                &to,
            ],
        )
        .await?;
    let delivery = read_one::<DeliveryRow>(&row)?.try_into()?;
    transaction.commit().await?;
    Ok(ResendOutcome::Created(delivery))
}
