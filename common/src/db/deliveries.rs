//! SMS delivery rows: the worker's guarded claim, the recording of each attempt, and the
//! providers' delivery receipts (with those held until their send is recorded).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::rows::{Layout, columns, named, prefixed_columns, read_all, table_row};
use super::verifications::VerificationRecord;
use super::verifications::VerificationRow;
use super::{DbError, seconds};
use crate::domain::{
    AttemptLogEntry, DeliveryId, DeliveryStatus, MessageId, OtpCodeLength, PhoneNumber, Receipt,
    ReceiptErrorCode, ReceiptStatus, TemplateId, TemplateLocale, TraceId, Variables,
    VerificationId, VerificationStatus,
};

/// A delivery row.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub verification_id: VerificationId,
    pub send_number: i32,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub provider_message_id: Option<String>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// One entry per provider attempt, oldest first.
    pub attempt_log: Vec<AttemptLogEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// When the provider's final receipt (`delivered`/`undelivered`) was recorded.
    pub receipt_at: Option<DateTime<Utc>>,
    /// The provider's error code from an `undelivered` receipt.
    pub receipt_error_code: Option<String>,
}

table_row! {
    /// An `sms_deliveries` row as stored.
    pub(crate) struct DeliveryRow in "sms_deliveries" {
        id: uuid::Uuid,
        verification_id: uuid::Uuid,
        send_number: i32,
        status: String,
        attempts: i32,
        provider_message_id: Option<String>,
        last_error: Option<String>,
        next_attempt_at: Option<DateTime<Utc>>,
        attempt_log: serde_json::Value,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
        sent_at: Option<DateTime<Utc>>,
        receipt_at: Option<DateTime<Utc>>,
        receipt_error_code: Option<String>,
    }
    // The number is the verification's; the lease, the publish time and the relay's claim
    // are the claim's and the outbox's bookkeeping, which their own statements read, as
    // they read the trace id for the job; the provider is read by the receipt's statement,
    // for the stats.
    unread [to_number, lease_until, published_at, relayed_at, provider, trace_id]
}

impl TryFrom<DeliveryRow> for DeliveryRecord {
    type Error = DbError;

    fn try_from(row: DeliveryRow) -> Result<Self, DbError> {
        Ok(Self {
            id: DeliveryId::from_uuid(row.id),
            verification_id: VerificationId::from_uuid(row.verification_id),
            send_number: row.send_number,
            status: row.status.parse().map_err(DbError::Corrupt)?,
            attempts: row.attempts,
            provider_message_id: row.provider_message_id,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at,
            attempt_log: serde_json::from_value(row.attempt_log)
                .map_err(|e| DbError::Corrupt(format!("attempt log: {e}")))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
            sent_at: row.sent_at,
            receipt_at: row.receipt_at,
            receipt_error_code: row.receipt_error_code,
        })
    }
}

/// Every send of one verification, oldest first.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn list_deliveries(
    pool: &Pool,
    verification_id: VerificationId,
) -> Result<Vec<DeliveryRecord>, DbError> {
    static LIST: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM sms_deliveries WHERE verification_id = $1 ORDER BY send_number",
            columns::<DeliveryRow>()
        )
    });
    let client = pool.get().await?;
    let statement = client.prepare_cached(&LIST).await?;
    let rows = client
        .query(&statement, &[&verification_id.as_uuid()])
        .await?;
    read_all::<DeliveryRow>(&rows)?
        .into_iter()
        .map(DeliveryRecord::try_from)
        .collect()
}

/// What a worker needs to render and send one claimed delivery.
#[derive(Debug, Clone)]
pub struct ClaimedSend {
    pub delivery_id: DeliveryId,
    /// This attempt's number (1 for the first); finishing the attempt is guarded by it.
    pub attempt: i32,
    pub verification_id: VerificationId,
    pub verification_status: VerificationStatus,
    pub to: PhoneNumber,
    pub expires_at: DateTime<Utc>,
    pub code_nonce: Vec<u8>,
    pub code_length: OtpCodeLength,
    pub variables: Variables,
    pub template_id: Option<TemplateId>,
    /// The template's current body; `None` with a `template_id` means it was deleted.
    pub template_body: Option<String>,
    pub locale: Option<TemplateLocale>,
    pub sender: Option<String>,
    /// The trace of the request that asked for the send, if it was kept.
    pub trace_id: Option<TraceId>,
}

/// A send claimed for an attempt that cannot be made, because its verification holds a
/// value this build cannot use. The attempt must be ended as failed, with `problem` as the
/// reason; the other sends of its claim batch are not affected.
#[derive(Debug, Clone)]
pub struct UnusableSend {
    pub delivery_id: DeliveryId,
    /// This attempt's number, as for [`ClaimedSend::attempt`].
    pub attempt: i32,
    pub to: PhoneNumber,
    pub expires_at: DateTime<Utc>,
    pub problem: UnusableValue,
}

/// A stored value of a verification that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnusableValue {
    /// Only parsed locales are written, so this one was written by hand or by another
    /// program.
    #[error("the stored locale {0:?} is not a language tag")]
    Locale(String),
}

/// Result of trying to claim a delivery.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    Claimed(Box<ClaimedSend>),
    /// Claimed, but unusable: the attempt must be recorded as failed.
    Unusable(Box<UnusableSend>),
    /// Already sent or failed: a duplicate or redelivered job; nothing to do.
    AlreadyFinished(DeliveryStatus),
    /// Another worker holds a live claim; it may be retried once the lease runs out.
    HeldElsewhere {
        lease_remaining: Duration,
    },
    /// Another job for the same send, in the same claim batch, claimed it: this job is a
    /// duplicate (a relayed or redelivered copy) and has nothing to do. The job that
    /// claimed the send carries it to its end, so this one can be acknowledged.
    Duplicate,
    /// No such delivery (its verification was deleted).
    Missing,
}

/// Claims a batch of deliveries for sending, one statement for all. The `UPDATE` only
/// matches a delivery that is waiting (`queued`/`retrying`) or whose previous claim's lease
/// has run out (its worker died), so two workers given the same job cannot both send it.
/// Outcomes are in the order of `ids`; a delivery that could not be claimed is explained
/// by a second, read-only statement.
///
/// # Errors
/// [`DbError`] on database failure: then nothing was claimed.
pub async fn claim_deliveries(
    pool: &Pool,
    ids: &[DeliveryId],
    lease: Duration,
) -> Result<Vec<ClaimOutcome>, DbError> {
    // The claimed send's own columns, then its verification's, prefixed `v_`.
    static CLAIM: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH claimed AS (
                 UPDATE sms_deliveries d
                 SET status = 'sending', attempts = d.attempts + 1,
                     lease_until = now() + make_interval(secs => $2), updated_at = now(),
                     -- A consumed job was evidently published: this leaves the outbox.
                     published_at = coalesce(d.published_at, now())
                 FROM unnest($1::uuid[]) AS job (id)
                 WHERE d.id = job.id
                   AND (d.status = ANY($3) OR (d.status = 'sending' AND d.lease_until < now()))
                 RETURNING d.id, d.attempts, d.verification_id, d.trace_id
             )
             SELECT c.id AS delivery_id, c.attempts AS attempt, c.trace_id,
                    t.body AS template_body, {}
             FROM claimed c
             JOIN verifications v ON v.id = c.verification_id
             LEFT JOIN templates t ON t.id = v.template_id",
            prefixed_columns::<VerificationRow>("v", "v_")
        )
    });
    let uuids: Vec<uuid::Uuid> = ids.iter().map(DeliveryId::as_uuid).collect();
    let client = pool.get().await?;
    let claim = client.prepare_cached(&CLAIM).await?;
    let waiting = DeliveryStatus::Sending.allowed_previous();
    let rows = client
        .query(&claim, &[&in_lock_order(&uuids), &seconds(lease), &waiting])
        .await?;
    let mut claimed = HashMap::with_capacity(ids.len());
    if let Some(first) = rows.first() {
        let verification = Layout::<VerificationRow>::find(first, "v_")?;
        for row in &rows {
            let (id, outcome) = claimed_send(row, &verification)?;
            claimed.insert(id.as_uuid(), outcome);
        }
    }
    let unclaimed: Vec<uuid::Uuid> = uuids
        .iter()
        .filter(|id| !claimed.contains_key(*id))
        .copied()
        .collect();
    let mut current = HashMap::with_capacity(unclaimed.len());
    if !unclaimed.is_empty() {
        for row in client
            .query(
                "SELECT id, status,
                        greatest(extract(epoch FROM lease_until - now()), 0)::float8
                          AS lease_remaining_secs
                 FROM sms_deliveries WHERE id = ANY($1)",
                &[&unclaimed],
            )
            .await?
        {
            let id: uuid::Uuid = named(&row, "id")?;
            let status: DeliveryStatus = named::<String>(&row, "status")?
                .parse()
                .map_err(DbError::Corrupt)?;
            let remaining: Option<f64> = named(&row, "lease_remaining_secs")?;
            current.insert(id, (status, remaining));
        }
    }
    // The first job for a claimed send gets the claim; any other for it in this batch is
    // its duplicate (the send is not in `current`, which holds only unclaimed sends).
    let mut handed_out = HashSet::with_capacity(claimed.len());
    Ok(uuids
        .iter()
        .map(|id| {
            if let Some(outcome) = claimed.remove(id) {
                handed_out.insert(*id);
                return outcome;
            }
            if handed_out.contains(id) {
                return ClaimOutcome::Duplicate;
            }
            match current.get(id) {
                None => ClaimOutcome::Missing,
                Some((status, _)) if status.is_terminal() => ClaimOutcome::AlreadyFinished(*status),
                Some((_, remaining)) => ClaimOutcome::HeldElsewhere {
                    lease_remaining: Duration::from_secs_f64(remaining.unwrap_or(0.0)),
                },
            }
        })
        .collect())
}

/// `ids` sorted. Statements that update many deliveries take their row locks in the order
/// of their input; giving them all the same order means two of them can wait for each
/// other but never deadlock.
fn in_lock_order(ids: &[uuid::Uuid]) -> Vec<uuid::Uuid> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted
}

/// Reads a claimed send from a row of the claim statement: [`ClaimOutcome::Claimed`], or
/// [`ClaimOutcome::Unusable`] when a value of its verification cannot be used, so that one
/// bad row fails its own send rather than the whole batch.
fn claimed_send(
    row: &Row,
    verification: &Layout<VerificationRow>,
) -> Result<(DeliveryId, ClaimOutcome), DbError> {
    let delivery_id = DeliveryId::from_uuid(named(row, "delivery_id")?);
    let attempt = named(row, "attempt")?;
    let mut stored = verification.read(row)?;
    if let Some(locale) = stored
        .locale
        .take_if(|locale| TemplateLocale::parse(locale).is_err())
    {
        let unusable = UnusableSend {
            delivery_id,
            attempt,
            to: PhoneNumber::from_trusted_storage(stored.to_number),
            expires_at: stored.expires_at,
            problem: UnusableValue::Locale(locale),
        };
        return Ok((delivery_id, ClaimOutcome::Unusable(Box::new(unusable))));
    }
    let verification: VerificationRecord = stored.try_into()?;
    let send = ClaimedSend {
        delivery_id,
        attempt,
        verification_id: verification.id,
        verification_status: verification.stored_status,
        to: verification.to,
        expires_at: verification.expires_at,
        code_nonce: verification.code_nonce,
        code_length: verification.code_length,
        variables: verification.variables,
        template_id: verification.template_id,
        template_body: named(row, "template_body")?,
        locale: verification.locale,
        sender: verification.sender,
        trace_id: stored_trace_id(row)?,
    };
    Ok((delivery_id, ClaimOutcome::Claimed(Box::new(send))))
}

/// The `trace_id` column of a row. The column holds 16 bytes or nothing; an all-zero id
/// (written by hand) reads as none: a send is never failed over its trace.
fn stored_trace_id(row: &Row) -> Result<Option<TraceId>, DbError> {
    Ok(named::<Option<Vec<u8>>>(row, "trace_id")?
        .and_then(|bytes| TraceId::from_bytes(&bytes).ok()))
}

/// How one claimed attempt ended, as recorded in the row.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// `Sent`, `Retrying` or `Failed`.
    pub next: DeliveryStatus,
    pub provider_message_id: Option<String>,
    pub error: Option<String>,
    /// For `Retrying`: when the next attempt is due.
    pub retry_in: Option<Duration>,
    /// Appended to the delivery's attempt log.
    pub log_entry: AttemptLogEntry,
    /// For `Sent`: how many SMS segments the message took, for the stats.
    pub segments: Option<u32>,
}

/// The end of one claimed attempt, to be recorded.
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    pub id: DeliveryId,
    /// The attempt's number, as claimed.
    pub attempt: i32,
    pub record: AttemptRecord,
}

/// Records the ends of a batch of attempts, one statement for all, with the `send.sent`
/// and `send.failed` webhooks of those that ended so (migration V15), and the sent ones
/// in the stats rollups under `provider` (V18). Each is guarded by status and attempt
/// number: if the lease ran out and another worker re-claimed the send meanwhile, that
/// attempt's result is not written (`false` in its place) rather than overwriting the
/// newer attempt. Results are in the order of `batch`.
///
/// # Errors
/// [`DbError`] on database failure: then nothing was recorded.
pub async fn finish_attempts(
    pool: &Pool,
    provider: &str,
    batch: &[FinishedAttempt],
) -> Result<Vec<bool>, DbError> {
    // In id order, so batches touching the same rows lock them in the same order.
    let mut rows: Vec<&FinishedAttempt> = batch.iter().collect();
    rows.sort_by_key(|f| f.id.as_uuid());
    let ids: Vec<uuid::Uuid> = rows.iter().map(|f| f.id.as_uuid()).collect();
    let attempts: Vec<i32> = rows.iter().map(|f| f.attempt).collect();
    let statuses: Vec<&str> = rows.iter().map(|f| f.record.next.as_str()).collect();
    let message_ids: Vec<Option<&str>> = rows
        .iter()
        .map(|f| f.record.provider_message_id.as_deref())
        .collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|f| f.record.error.as_deref()).collect();
    let retry_in: Vec<Option<f64>> = rows
        .iter()
        .map(|f| f.record.retry_in.map(seconds))
        .collect();
    let log_entries: Vec<Json<&AttemptLogEntry>> =
        rows.iter().map(|f| Json(&f.record.log_entry)).collect();
    let segments: Vec<Option<i32>> = rows
        .iter()
        .map(|f| {
            f.record
                .segments
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
        })
        .collect();
    // Each status's allowed sources, as one comma-separated text per row (arrays of
    // arrays must be rectangular).
    let allowed_from: Vec<String> = rows
        .iter()
        .map(|f| f.record.next.allowed_previous().join(","))
        .collect();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "WITH finished AS (
             UPDATE sms_deliveries d
             SET status = f.status,
                 provider_message_id = coalesce(f.provider_message_id, d.provider_message_id),
                 last_error = f.last_error,
                 next_attempt_at = now() + make_interval(secs => f.retry_in_secs),
                 sent_at = CASE WHEN f.status = 'sent' THEN now() ELSE d.sent_at END,
                 provider = CASE WHEN f.status = 'sent' THEN $9 ELSE d.provider END,
                 lease_until = NULL,
                 updated_at = now(),
                 attempt_log = d.attempt_log
                               || jsonb_build_array(f.log_entry || jsonb_build_object('provider', $9::text))
             FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::text[], $5::text[],
                         $6::float8[], $7::jsonb[], $8::text[], $10::integer[])
                  AS f (id, attempt, status, provider_message_id, last_error, retry_in_secs,
                        log_entry, allowed_from, segments)
             WHERE d.id = f.id AND d.attempts = f.attempt
               AND d.status = ANY (string_to_array(f.allowed_from, ','))
             RETURNING d.id, d.attempts, d.status, d.verification_id, d.to_number,
                       d.send_number, d.provider_message_id, d.last_error, f.segments
             ), sent AS (
                 -- The first send's time is its verification's start-to-SMS time.
                 SELECT add_to_stats(array_agg(ROW(
                            v.created_at, coalesce(v.risk ->> 'country', 'unknown'),
                            coalesce(v.template_id, 0), $9, 0, 1, 0, 0,
                            coalesce(s.segments, 0),
                            CASE WHEN s.send_number = 1
                                 THEN extract(epoch FROM now() - v.created_at)::float8 * 1000
                            END,
                            NULL
                        )::stats_event))
                 FROM finished s
                 JOIN verifications v ON v.id = s.verification_id
                 WHERE s.status = 'sent'
                 HAVING count(*) > 0
             ), webhooks AS (
                 INSERT INTO webhook_deliveries
                     (id, endpoint_id, event_type, payload, verification_id)
                 SELECT gen_random_uuid(), e.id, 'send.' || s.status,
                        webhook_payload('send.' || s.status, send_event_data(
                            s.id, s.verification_id, s.to_number, s.status, s.send_number,
                            s.attempts, s.provider_message_id, s.last_error, NULL)),
                        s.verification_id
                 FROM finished s
                 JOIN webhook_endpoints e
                   ON e.disabled_at IS NULL AND 'send.' || s.status = ANY (e.events)
                 WHERE s.status IN ('sent', 'failed')
             )
             SELECT f.id, f.attempts FROM finished f LEFT JOIN sent ON true",
        )
        .await?;
    let recorded: HashSet<(uuid::Uuid, i32)> = client
        .query(
            &statement,
            &[
                &ids,
                &attempts,
                &statuses,
                &message_ids,
                &errors,
                &retry_in,
                &log_entries,
                &allowed_from,
                &provider,
                &segments,
            ],
        )
        .await?
        .iter()
        .map(|row| Ok((named(row, "id")?, named(row, "attempts")?)))
        .collect::<Result<_, DbError>>()?;
    Ok(batch
        .iter()
        .map(|f| recorded.contains(&(f.id.as_uuid(), f.attempt)))
        .collect())
}

/// Records that the jobs of these deliveries were confirmed by the broker, so the outbox
/// relay leaves them alone. Only sends still queued are written: a claimed send was marked
/// by its claim, so marks written a little after the confirm mostly find nothing to do.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn mark_published(pool: &Pool, ids: &[DeliveryId]) -> Result<(), DbError> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(DeliveryId::as_uuid).collect();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            // Joined with the ids in lock order, like claims and records (`= ANY` would let
            // the planner choose a bitmap scan, which locks rows in their physical order).
            // By primary key only: a `published_at IS NULL` condition here lets the planner
            // pick the partial outbox index, whose dead entries it would walk on every call.
            "UPDATE sms_deliveries d SET published_at = coalesce(d.published_at, now())
             FROM unnest($1::uuid[]) AS job (id)
             WHERE d.id = job.id AND d.status = 'queued'",
        )
        .await?;
    client.execute(&statement, &[&in_lock_order(&ids)]).await?;
    Ok(())
}

/// The outbox relay's step: takes up to `limit` queued deliveries older than `older_than`
/// whose job was never confirmed, calls `publish` for each and marks those it confirmed.
/// Returns how many were due and how many of those were published.
///
/// Taking is one short statement that stamps the rows' `relayed_at`; the rows' locks and
/// the connection are released before anything is published, so a worker claiming one of
/// these sends meanwhile is not kept waiting on the broker. Another relay (another API
/// replica) leaves a taken send alone until its stamp is `older_than` old, so replicas
/// relaying at once do not publish the same job twice. Sends left unpublished because the
/// broker failed are given back for the next round.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn relay_unpublished<F, Fut>(
    pool: &Pool,
    older_than: Duration,
    limit: i64,
    mut publish: F,
) -> Result<RelayRound, DbError>
where
    F: FnMut(UnpublishedSend) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let taken = take_unpublished(pool, older_than, limit).await?;
    let mut published = 0;
    for send in &taken {
        if publish(*send).await {
            published += 1;
        } else {
            // The broker is still unhappy; the rest can wait for the next round.
            break;
        }
    }
    let ids: Vec<DeliveryId> = taken.iter().map(|send| send.id).collect();
    let (confirmed, left) = ids.split_at(published);
    if !confirmed.is_empty() {
        mark_published(pool, confirmed).await?;
    }
    if !left.is_empty() {
        give_back_unpublished(pool, left).await?;
    }
    Ok(RelayRound {
        due: taken.len(),
        published,
    })
}

/// A send whose job the relay publishes: its id, and the trace its job belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpublishedSend {
    pub id: DeliveryId,
    pub trace_id: Option<TraceId>,
}

/// What one round of the outbox relay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRound {
    /// Sends found unpublished past their due time (at most the round's limit).
    pub due: usize,
    /// How many of them were published.
    pub published: usize,
}

/// Stamps up to `limit` sends due for the relay as taken and returns them, oldest first.
/// `SKIP LOCKED`: a row another statement holds at this moment (a claim, another relay) is
/// not waited for.
async fn take_unpublished(
    pool: &Pool,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<UnpublishedSend>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE sms_deliveries d SET relayed_at = now()
             FROM (SELECT id FROM sms_deliveries
                   WHERE published_at IS NULL AND status = 'queued'
                     AND created_at < now() - make_interval(secs => $1)
                     AND (relayed_at IS NULL
                          OR relayed_at < now() - make_interval(secs => $1))
                   ORDER BY created_at LIMIT $2
                   FOR UPDATE SKIP LOCKED) AS due
             WHERE d.id = due.id
             RETURNING d.id, d.created_at, d.trace_id",
        )
        .await?;
    let mut taken = client
        .query(&statement, &[&seconds(older_than), &limit])
        .await?
        .iter()
        .map(|row| {
            let id: uuid::Uuid = named(row, "id")?;
            let created_at: DateTime<Utc> = named(row, "created_at")?;
            let send = UnpublishedSend {
                id: DeliveryId::from_uuid(id),
                trace_id: stored_trace_id(row)?,
            };
            Ok((created_at, send))
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    taken.sort_unstable_by_key(|(created_at, _)| *created_at);
    Ok(taken.into_iter().map(|(_, send)| send).collect())
}

/// Clears the relay's stamp on sends it took but did not publish, so the next round takes
/// them again instead of waiting for the stamp to age.
async fn give_back_unpublished(pool: &Pool, ids: &[DeliveryId]) -> Result<(), DbError> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(DeliveryId::as_uuid).collect();
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE sms_deliveries d SET relayed_at = NULL
             FROM unnest($1::uuid[]) AS job (id)
             WHERE d.id = job.id AND d.published_at IS NULL",
            &[&in_lock_order(&ids)],
        )
        .await?;
    Ok(())
}

/// Where a send stands when its dead-lettered job is considered for a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayCheck {
    /// Failed, and its verification is still pending and unexpired: [`rearm_delivery`]
    /// can queue it again.
    Rearmable,
    /// Not finished (queued, sending or retrying): its job can be replayed as it is.
    Waiting,
    /// Already sent (its receipt may have come too): replaying would do nothing.
    Sent,
    /// Failed, and its verification is over; the status is as seen now, so a pending
    /// verification past its expiry reads `Expired`.
    VerificationClosed(VerificationStatus),
    /// No such delivery (its verification was deleted).
    Missing,
}

/// Reads whether a send could be replayed, changing nothing (a dry run, or the
/// explanation when [`rearm_delivery`] is rejected).
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn check_replay(pool: &Pool, id: DeliveryId) -> Result<ReplayCheck, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT d.status AS delivery_status, v.status AS verification_status,
                    v.expires_at, now() AS now
             FROM sms_deliveries d JOIN verifications v ON v.id = d.verification_id
             WHERE d.id = $1",
        )
        .await?;
    let Some(row) = client.query_opt(&statement, &[&id.as_uuid()]).await? else {
        return Ok(ReplayCheck::Missing);
    };
    let delivery: DeliveryStatus = named::<String>(&row, "delivery_status")?
        .parse()
        .map_err(DbError::Corrupt)?;
    let stored: VerificationStatus = named::<String>(&row, "verification_status")?
        .parse()
        .map_err(DbError::Corrupt)?;
    // The database's clock, as in the guard of `rearm_delivery`, so both agree on expiry.
    let verification = stored.at(named(&row, "expires_at")?, named(&row, "now")?);
    Ok(match delivery {
        DeliveryStatus::Sent | DeliveryStatus::Delivered | DeliveryStatus::Undelivered => {
            ReplayCheck::Sent
        }
        DeliveryStatus::Failed if verification == VerificationStatus::Pending => {
            ReplayCheck::Rearmable
        }
        DeliveryStatus::Failed => ReplayCheck::VerificationClosed(verification),
        DeliveryStatus::Queued | DeliveryStatus::Sending | DeliveryStatus::Retrying => {
            ReplayCheck::Waiting
        }
    })
}

/// Moves a failed send back to `queued` so a replayed job can send it. Guarded: only a
/// `failed` send whose verification is still pending and unexpired is re-armed, so a
/// replay can never deliver a code nobody can use any more. The attempt count is kept,
/// so the retry budget is not renewed: a send that exhausted its retries gets one more
/// attempt.
///
/// # Errors
/// [`DbError::TransitionRejected`] when the guard does not hold ([`check_replay`] says
/// why); other [`DbError`]s on failure.
pub async fn rearm_delivery(pool: &Pool, id: DeliveryId) -> Result<(), DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE sms_deliveries d
             SET status = 'queued', lease_until = NULL, next_attempt_at = NULL,
                 updated_at = now()
             FROM verifications v
             WHERE d.id = $1 AND d.status = ANY($2)
               AND v.id = d.verification_id AND v.status = 'pending' AND v.expires_at > now()",
        )
        .await?;
    let changed = client
        .execute(
            &statement,
            &[&id.as_uuid(), &DeliveryStatus::Queued.allowed_previous()],
        )
        .await?;
    if changed == 0 {
        return Err(DbError::TransitionRejected);
    }
    Ok(())
}

/// What recording a delivery receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptRecorded {
    /// The send moved to the receipt's status: the only way a receipt changes a send, so
    /// whatever must follow a delivery (or its failure) follows this.
    Changed {
        delivery_id: DeliveryId,
        verification_id: VerificationId,
        status: DeliveryStatus,
    },
    /// The send is known but the receipt changes nothing: it already has a final status
    /// (a duplicate, or a receipt that lost the race to another). `status` is the send's
    /// status as the statement found it.
    Unchanged {
        delivery_id: DeliveryId,
        verification_id: VerificationId,
        status: DeliveryStatus,
    },
    /// No send has this message id yet: the provider reported before the worker recorded
    /// the id it was given. The receipt is held, and [`matched_held_receipts`] hands it
    /// back once the id is recorded; a receipt already held for the id is kept instead.
    Held,
}

/// Records a final delivery receipt, one statement: a `sent` send with the receipt's
/// message id moves to `delivered` or `undelivered` (with the provider's error code, and
/// the `send.delivered` or `send.undelivered` webhooks of subscribed endpoints; a
/// delivery also counts in the stats rollups, migration V18), a
/// send already past `sent` is left alone, and a receipt for an id no send has is held.
/// Guarded by [`DeliveryStatus::can_transition_to`], so a duplicate or late receipt never
/// moves a send backwards and two replicas recording the same receipt change it once.
///
/// # Errors
/// [`DbError`] on database failure: then nothing was recorded.
pub async fn record_receipt(pool: &Pool, receipt: &Receipt) -> Result<ReceiptRecorded, DbError> {
    let next = receipt.status().delivery_status();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "WITH changed AS (
                 UPDATE sms_deliveries
                 SET status = $2, receipt_at = now(), receipt_error_code = $3,
                     updated_at = now()
                 WHERE provider_message_id = $1 AND status = ANY ($4)
                 RETURNING id, verification_id, status, to_number, send_number, attempts,
                           provider_message_id, last_error, receipt_error_code, provider
             ), delivered AS (
                 -- Sends recorded before migration V18 named no provider.
                 SELECT add_to_stats(array_agg(ROW(
                            v.created_at, coalesce(v.risk ->> 'country', 'unknown'),
                            coalesce(v.template_id, 0), coalesce(c.provider, 'unknown'),
                            0, 0, 1, 0, 0, NULL, NULL
                        )::stats_event))
                 FROM changed c
                 JOIN verifications v ON v.id = c.verification_id
                 WHERE c.status = 'delivered'
                 HAVING count(*) > 0
             ), webhooks AS (
                 INSERT INTO webhook_deliveries
                     (id, endpoint_id, event_type, payload, verification_id)
                 SELECT gen_random_uuid(), e.id, 'send.' || c.status,
                        webhook_payload('send.' || c.status, send_event_data(
                            c.id, c.verification_id, c.to_number, c.status, c.send_number,
                            c.attempts, c.provider_message_id, c.last_error,
                            c.receipt_error_code)),
                        c.verification_id
                 FROM changed c
                 JOIN webhook_endpoints e
                   ON e.disabled_at IS NULL AND 'send.' || c.status = ANY (e.events)
             ), known AS (
                 SELECT id, verification_id, status FROM sms_deliveries
                 WHERE provider_message_id = $1 AND NOT EXISTS (SELECT FROM changed)
                 LIMIT 1
             ), held AS (
                 INSERT INTO held_receipts (provider_message_id, status, error_code)
                 SELECT $1, $2, $3
                 WHERE NOT EXISTS (SELECT FROM changed) AND NOT EXISTS (SELECT FROM known)
                 ON CONFLICT (provider_message_id) DO NOTHING
             )
             SELECT true AS changed, c.id, c.verification_id, c.status
             FROM changed c LEFT JOIN delivered ON true
             UNION ALL
             SELECT false, id, verification_id, status FROM known",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &receipt.message_id().as_str(),
                &next.as_str(),
                &receipt.error_code().map(ReceiptErrorCode::as_str),
                &next.allowed_previous(),
            ],
        )
        .await?;
    // Provider message ids are unique per provider, so at most one send answers.
    let Some(row) = rows.first() else {
        return Ok(ReceiptRecorded::Held);
    };
    let delivery_id = DeliveryId::from_uuid(named(row, "id")?);
    let verification_id = VerificationId::from_uuid(named(row, "verification_id")?);
    let status: DeliveryStatus = named::<String>(row, "status")?
        .parse()
        .map_err(DbError::Corrupt)?;
    Ok(if named(row, "changed")? {
        ReceiptRecorded::Changed {
            delivery_id,
            verification_id,
            status,
        }
    } else {
        ReceiptRecorded::Unchanged {
            delivery_id,
            verification_id,
            status,
        }
    })
}

table_row! {
    /// A `held_receipts` row: a receipt whose message id no send had when it arrived.
    pub(crate) struct HeldReceiptRow in "held_receipts" {
        provider_message_id: String,
        status: String,
        error_code: Option<String>,
    }
    // Only the statement that deletes stale receipts reads the arrival time.
    unread [received_at]
}

impl TryFrom<HeldReceiptRow> for Receipt {
    type Error = DbError;

    fn try_from(row: HeldReceiptRow) -> Result<Self, DbError> {
        let corrupt =
            |e: crate::domain::ReceiptError| DbError::Corrupt(format!("held receipt: {e}"));
        let message_id = MessageId::parse(&row.provider_message_id).map_err(corrupt)?;
        Ok(
            match ReceiptStatus::parse(&row.status).map_err(DbError::Corrupt)? {
                ReceiptStatus::Delivered => Receipt::delivered(message_id),
                ReceiptStatus::Undelivered => Receipt::undelivered(
                    message_id,
                    row.error_code
                        .as_deref()
                        .map(ReceiptErrorCode::parse)
                        .transpose()
                        .map_err(corrupt)?
                        .flatten(),
                ),
            },
        )
    }
}

/// Up to `limit` held receipts whose message id a send now has, oldest first: each is to
/// be recorded with [`record_receipt`], then released with [`release_held_receipt`].
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn matched_held_receipts(pool: &Pool, limit: i64) -> Result<Vec<Receipt>, DbError> {
    static MATCHED: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM held_receipts h
             WHERE EXISTS (SELECT FROM sms_deliveries d
                           WHERE d.provider_message_id = h.provider_message_id)
             ORDER BY h.received_at LIMIT $1",
            prefixed_columns::<HeldReceiptRow>("h", "")
        )
    });
    let client = pool.get().await?;
    let statement = client.prepare_cached(&MATCHED).await?;
    let rows = client.query(&statement, &[&limit]).await?;
    read_all::<HeldReceiptRow>(&rows)?
        .into_iter()
        .map(Receipt::try_from)
        .collect()
}

/// Deletes the held receipt for `message_id`, once [`record_receipt`] has recorded it on
/// its send. Recording first makes a crash between the two harmless: the receipt is
/// recorded again, and changes nothing the second time.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn release_held_receipt(pool: &Pool, message_id: &MessageId) -> Result<(), DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("DELETE FROM held_receipts WHERE provider_message_id = $1")
        .await?;
    client.execute(&statement, &[&message_id.as_str()]).await?;
    Ok(())
}

/// Deletes held receipts older than `older_than` (their message id was never recorded:
/// a message another system sent through the same provider account, or a send whose
/// record was lost). Returns how many.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn delete_stale_held_receipts(pool: &Pool, older_than: Duration) -> Result<u64, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM held_receipts WHERE received_at < now() - make_interval(secs => $1)",
            &[&seconds(older_than)],
        )
        .await?)
}

/// How many sends are not finished: waiting to be claimed, being sent, or waiting to be
/// retried. Zero means no send is waiting for a worker (a drained pipeline).
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn count_unfinished(pool: &Pool) -> Result<i64, DbError> {
    let unfinished: Vec<&str> = DeliveryStatus::ALL
        .into_iter()
        .filter(|status| !status.is_terminal())
        .map(DeliveryStatus::as_str)
        .collect();
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FROM sms_deliveries WHERE status = ANY($1)",
            &[&unfinished],
        )
        .await?;
    Ok(row.get(0))
}
