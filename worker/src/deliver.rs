//! One send job, start to finish, without any knowledge of AMQP.
//!
//! Claim the delivery (guarded, so duplicates and redeliveries do nothing), render the
//! text, call the provider, record the result, and tell the consumer what to do with the
//! message through an [`Outcome`]. The result is always recorded in Postgres before the
//! outcome is returned, so the consumer acks only what is durable.
//!
//! A send that fails for a reason an operator can put right (a deleted or broken
//! template, a provider that refuses or stays down) is marked failed and its job
//! dead-lettered with a [`DeadLetterReason`], so it can be replayed once fixed. A send
//! that is simply no longer wanted (its verification ended or expires too soon) is
//! closed and its job acked: there is nothing to replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use verify_common::db::deliveries::{
    self, AttemptRecord, ClaimOutcome, ClaimedSend, FinishedAttempt,
};
use verify_common::db::{DbError, Pool};
use verify_common::domain::{CodeSecret, DeliveryId, DeliveryStatus, VerificationStatus};
use verify_common::group_commit::{BatchLimits, GroupCommit};
use verify_common::queue::SendSms;

use crate::outcome::{DeadLetterReason, Outcome};
use crate::providers::{OutgoingSms, ProviderError, SmsProvider};
use crate::render::{RenderError, SmsRenderer};
use crate::retry::RetryPolicy;

/// First pause before trying again to record an outcome while Postgres is unreachable;
/// it doubles up to [`RECORD_RETRY_MAX`].
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(200);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);

/// Claims of concurrent jobs, recorded together (see [`GroupCommit`]).
pub type Claims = GroupCommit<DeliveryId, ClaimOutcome>;
/// Ends of concurrent attempts, recorded together; `false` where the send was taken over.
pub type Finishes = GroupCommit<FinishedAttempt, bool>;

/// Up to 64 jobs per statement, two statements of each kind at once (so claims and records
/// use at most 4 of the pool's connections), each batch waiting 2 ms for company: see the
/// API's group commit for why.
const BATCH_LIMITS: BatchLimits = BatchLimits {
    max_batch: 64,
    in_flight: 2,
    linger: Duration::from_millis(2),
};

/// Starts the batcher of claims, each with a lease of `lease`.
pub fn record_claims(pool: Pool, lease: Duration) -> Claims {
    GroupCommit::start(BATCH_LIMITS, move |ids: Vec<DeliveryId>| {
        let pool = pool.clone();
        async move { deliveries::claim_deliveries(&pool, &ids, lease).await }
    })
}

/// Starts the batcher of attempts' ends.
pub fn record_finishes(pool: Pool) -> Finishes {
    GroupCommit::start(BATCH_LIMITS, move |batch: Vec<FinishedAttempt>| {
        let pool = pool.clone();
        async move { deliveries::finish_attempts(&pool, &batch).await }
    })
}

/// What delivering needs, shared by all tasks of a worker.
pub struct Deps {
    pub claims: Claims,
    pub finishes: Finishes,
    pub provider: SmsProvider,
    pub renderer: SmsRenderer,
    pub secret: CodeSecret,
    pub retry: RetryPolicy,
    pub lease: Duration,
    pub expiry_margin: Duration,
    pub default_from: String,
}

/// Processes one job.
///
/// # Errors
/// [`DbError`] when Postgres fails: nothing was recorded, so the job must be retried.
pub async fn deliver_sms(job: &SendSms, deps: &Arc<Deps>) -> Result<Outcome, DbError> {
    let send = match deps.claims.submit(job.delivery_id).await? {
        ClaimOutcome::Claimed(send) => send,
        ClaimOutcome::AlreadyFinished(status) => {
            tracing::debug!(delivery = %job.delivery_id, ?status, "duplicate job for a finished send");
            return Ok(Outcome::Done);
        }
        ClaimOutcome::HeldElsewhere { lease_remaining } => {
            // Its worker may have died mid-send; look again once the lease runs out.
            return Ok(Outcome::RetryLater(
                lease_remaining + Duration::from_secs(1),
            ));
        }
        ClaimOutcome::Missing => {
            return Ok(Outcome::DeadLetter(DeadLetterReason::DeliveryMissing(
                job.delivery_id,
            )));
        }
    };
    attempt(&send, deps).await
}

async fn attempt(send: &ClaimedSend, deps: &Deps) -> Result<Outcome, DbError> {
    let now = Utc::now();
    let status = send.verification_status.at(send.expires_at, now);
    if status != VerificationStatus::Pending {
        let reason = format!("not sent: the verification is {}", status.as_str());
        fail(send, deps, reason, "skipped").await?;
        return Ok(Outcome::Done);
    }
    let margin = chrono::Duration::from_std(deps.expiry_margin).unwrap_or_default();
    if now + margin >= send.expires_at {
        let reason = "not sent: the code expires too soon".to_owned();
        fail(send, deps, reason, "skipped").await?;
        return Ok(Outcome::Done);
    }
    let text = match deps.renderer.render(send, &deps.secret, now) {
        Ok(text) => text,
        Err(RenderError::TemplateDeleted(id)) => {
            return dead_letter(
                send,
                deps,
                DeadLetterReason::TemplateMissing(id),
                "render_error",
            )
            .await;
        }
        Err(error) => {
            let reason = DeadLetterReason::RenderFailed(error.to_string());
            return dead_letter(send, deps, reason, "render_error").await;
        }
    };
    let from = send.sender.as_deref().unwrap_or(&deps.default_from);
    let started = Instant::now();
    let result = deps
        .provider
        .send(&OutgoingSms {
            to: send.to.as_str(),
            from,
            body: &text,
        })
        .await;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(message_id) => {
            let record = AttemptRecord {
                next: DeliveryStatus::Sent,
                provider_message_id: Some(message_id.clone()),
                error: None,
                retry_in: None,
                log_entry: json!({
                    "attempt": send.attempt, "at": now, "outcome": "sent",
                    "provider_message_id": message_id, "duration_ms": elapsed_ms,
                }),
            };
            finish(send, deps, &record).await?;
            tracing::info!(delivery = %send.delivery_id, to = %send.to, attempt = send.attempt, "SMS sent");
            Ok(Outcome::Done)
        }
        Err(ProviderError::Permanent { reason }) => {
            let reason = DeadLetterReason::ProviderRejected(reason);
            dead_letter(send, deps, reason, "permanent_error").await
        }
        Err(ProviderError::Transient {
            reason,
            retry_after,
        }) => {
            let attempt = u32::try_from(send.attempt).unwrap_or(u32::MAX);
            if deps.retry.exhausted(attempt) {
                let reason = DeadLetterReason::AttemptsExhausted {
                    attempts: attempt,
                    last_error: reason,
                };
                return dead_letter(send, deps, reason, "transient_error").await;
            }
            let delay = deps
                .retry
                .delay_for(attempt)
                .max(retry_after.unwrap_or_default());
            let next_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
            if next_at + margin >= send.expires_at {
                let reason = DeadLetterReason::ExpiresBeforeRetry(reason);
                return dead_letter(send, deps, reason, "transient_error").await;
            }
            let record = AttemptRecord {
                next: DeliveryStatus::Retrying,
                provider_message_id: None,
                error: Some(reason.clone()),
                retry_in: Some(delay),
                log_entry: json!({
                    "attempt": send.attempt, "at": now, "outcome": "transient_error",
                    "error": reason, "retry_at": next_at, "duration_ms": elapsed_ms,
                }),
            };
            finish(send, deps, &record).await?;
            tracing::warn!(delivery = %send.delivery_id, attempt, delay_ms = delay.as_millis() as u64, %reason, "send failed; retrying");
            Ok(Outcome::RetryLater(delay))
        }
    }
}

/// Records a failure an operator can fix, then has the job dead-lettered so it can be
/// replayed. If another worker took the send over meanwhile, its result stands and this
/// job is simply finished.
async fn dead_letter(
    send: &ClaimedSend,
    deps: &Deps,
    reason: DeadLetterReason,
    outcome: &str,
) -> Result<Outcome, DbError> {
    if fail(send, deps, reason.to_string(), outcome).await? {
        Ok(Outcome::DeadLetter(reason))
    } else {
        Ok(Outcome::Done)
    }
}

/// Records a permanent failure. Returns whether it was recorded (false: the send was
/// taken over by another worker, whose result stands).
async fn fail(
    send: &ClaimedSend,
    deps: &Deps,
    reason: String,
    outcome: &str,
) -> Result<bool, DbError> {
    let record = AttemptRecord {
        next: DeliveryStatus::Failed,
        provider_message_id: None,
        error: Some(reason.clone()),
        retry_in: None,
        log_entry: json!({
            "attempt": send.attempt, "at": Utc::now(), "outcome": outcome, "error": reason,
        }),
    };
    let recorded = finish(send, deps, &record).await?;
    if recorded {
        tracing::warn!(delivery = %send.delivery_id, to = %send.to, %reason, "send failed permanently");
    }
    Ok(recorded)
}

/// Records an attempt's outcome. Returns whether it was recorded.
///
/// Once the provider has been called, the outcome must be written down: giving up because
/// Postgres is down would let the job run again and the person get the code twice. So
/// while Postgres is unreachable this keeps trying until the code expires (after which
/// no worker would send it again anyway). The job stays unacknowledged meanwhile, so no
/// other worker gets it; if one does take the send over through a duplicate job, the
/// guarded update refuses our late result.
async fn finish(send: &ClaimedSend, deps: &Deps, record: &AttemptRecord) -> Result<bool, DbError> {
    let code_lifetime = (send.expires_at - Utc::now()).to_std().unwrap_or_default();
    let give_up_at = Instant::now() + code_lifetime.max(deps.lease);
    let mut pause = RECORD_RETRY_FIRST;
    loop {
        let finished = FinishedAttempt {
            id: send.delivery_id,
            attempt: send.attempt,
            record: record.clone(),
        };
        match deps.finishes.submit(finished).await {
            Ok(true) => return Ok(true),
            // Our lease ran out and another worker took the send over: its result stands.
            Ok(false) => {
                tracing::warn!(delivery = %send.delivery_id, "send was taken over by another worker; result dropped");
                return Ok(false);
            }
            Err(DbError::Unavailable(reason)) if Instant::now() + pause < give_up_at => {
                tracing::warn!(delivery = %send.delivery_id, %reason, retry_in_ms = pause.as_millis() as u64, "could not record the outcome; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RECORD_RETRY_MAX);
            }
            Err(error) => return Err(error),
        }
    }
}
