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
//!
//! Its two outside parties are traits: the [`SendLedger`] where sends are claimed and
//! attempts recorded (Postgres through the group commit in a worker), and the
//! [`SmsSender`] that reaches the provider. The unit tests below drive every outcome
//! through fakes of both, without a database, a broker or a network.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use verify_common::config::ProviderKind;
use verify_common::db::deliveries::{
    self, AttemptRecord, ClaimOutcome, ClaimedSend, FinishedAttempt, UnusableSend, UnusableValue,
};
use verify_common::db::{DbError, Pool};
use verify_common::domain::{
    AttemptLogEntry, AttemptOutcome, CodeSecret, DeliveryId, DeliveryStatus, PhoneNumber, SmsShape,
    TraceParent, VerificationStatus,
};
use verify_common::group_commit::{BatchLimits, GroupCommit};
use verify_common::queue::SendSms;

use crate::metrics::{ProviderOutcome, SendStatus, WorkerMetrics};
use crate::outcome::{DeadLetterReason, Outcome};
use crate::providers::{OutgoingSms, ProviderError, SmsProvider, SmsSender};
use crate::render::{RenderError, SmsRenderer};
use crate::retry::RetryPolicy;

/// First pause before trying again to record an outcome while Postgres is unreachable;
/// it doubles up to [`RECORD_RETRY_MAX`].
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(200);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);

/// Where sends are claimed and their attempts recorded: Postgres through the group
/// commit in a worker ([`GroupCommitLedger`]), a fake in unit tests, so every outcome of
/// [`deliver_sms`] can be shown without a database.
pub trait SendLedger: Send + Sync {
    /// Claims a send for one attempt (see [`deliveries::claim_deliveries`]).
    ///
    /// # Errors
    /// [`DbError`]: nothing was claimed.
    fn claim(&self, id: DeliveryId) -> impl Future<Output = Result<ClaimOutcome, DbError>> + Send;

    /// Records how an attempt ended; `false` when the send was taken over by another
    /// worker meanwhile (see [`deliveries::finish_attempts`]).
    ///
    /// # Errors
    /// [`DbError`]: nothing was recorded.
    fn finish(
        &self,
        attempt: FinishedAttempt,
    ) -> impl Future<Output = Result<bool, DbError>> + Send;
}

/// Claims of concurrent jobs, recorded together (see [`GroupCommit`]).
type Claims = GroupCommit<DeliveryId, ClaimOutcome>;
/// Ends of concurrent attempts, recorded together; `false` where the send was taken over.
type Finishes = GroupCommit<FinishedAttempt, bool>;

/// Up to 64 jobs per statement, two statements of each kind at once (so claims and records
/// use at most 4 of the pool's connections), each batch waiting 2 ms for company: see the
/// API's group commit for why.
pub(crate) const BATCH_LIMITS: BatchLimits = BatchLimits {
    max_batch: 64,
    in_flight: 2,
    linger: Duration::from_millis(2),
};

/// The worker's ledger: the claims of concurrent jobs are recorded together, and so are
/// the ends of their attempts, one statement per batch.
pub struct GroupCommitLedger {
    claims: Claims,
    finishes: Finishes,
}

impl GroupCommitLedger {
    /// Starts the two batchers; each claim holds its send for `lease`, and sends are
    /// recorded as accepted by `provider`.
    pub fn start(pool: Pool, lease: Duration, provider: ProviderKind) -> Self {
        let claiming = pool.clone();
        Self {
            claims: GroupCommit::start(BATCH_LIMITS, move |ids: Vec<DeliveryId>| {
                let pool = claiming.clone();
                async move { deliveries::claim_deliveries(&pool, &ids, lease).await }
            }),
            finishes: GroupCommit::start(BATCH_LIMITS, move |batch: Vec<FinishedAttempt>| {
                let pool = pool.clone();
                async move { deliveries::finish_attempts(&pool, provider.as_str(), &batch).await }
            }),
        }
    }
}

impl SendLedger for GroupCommitLedger {
    fn claim(&self, id: DeliveryId) -> impl Future<Output = Result<ClaimOutcome, DbError>> + Send {
        self.claims.submit(id)
    }

    fn finish(
        &self,
        attempt: FinishedAttempt,
    ) -> impl Future<Output = Result<bool, DbError>> + Send {
        self.finishes.submit(attempt)
    }
}

/// What delivering needs, shared by all tasks of a worker: the ledger and the provider
/// are the worker's own ([`GroupCommitLedger`], [`SmsProvider`]) unless a test injects
/// others.
pub struct Deps<L = GroupCommitLedger, P = SmsProvider> {
    pub ledger: L,
    pub provider: P,
    pub renderer: SmsRenderer,
    pub secret: CodeSecret,
    pub retry: RetryPolicy,
    pub lease: Duration,
    pub expiry_margin: Duration,
    pub default_from: String,
    pub metrics: WorkerMetrics,
}

/// Processes one job.
///
/// # Errors
/// [`DbError`] when Postgres fails: nothing was recorded, so the job must be retried.
pub async fn deliver_sms<L: SendLedger, P: SmsSender>(
    job: &SendSms,
    deps: &Deps<L, P>,
) -> Result<Outcome, DbError> {
    let send = match deps.ledger.claim(job.delivery_id).await? {
        ClaimOutcome::Claimed(send) => {
            name_in_span(job, &send);
            send
        }
        ClaimOutcome::AlreadyFinished(status) => {
            tracing::debug!(delivery = %job.delivery_id, ?status, "duplicate job for a finished send");
            return Ok(Outcome::Done);
        }
        ClaimOutcome::Duplicate => {
            tracing::debug!(delivery = %job.delivery_id, "duplicate job for a send claimed by its twin in the same batch");
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
        ClaimOutcome::Unusable(send) => return refuse_unusable(&send, deps).await,
    };
    // The provider call is a span of this attempt's own in the send's trace.
    let trace = job
        .trace
        .map(|trace| trace.child())
        .or_else(|| send.trace_id.map(TraceParent::continuing));
    attempt(&send, trace, deps).await
}

/// Names the claimed send's verification in the current span (the consumer's `job` span)
/// and, for a job that arrived without a trace (published before traces were carried),
/// the trace kept with the send.
fn name_in_span(job: &SendSms, send: &ClaimedSend) {
    let span = tracing::Span::current();
    span.record(
        "verification_id",
        tracing::field::display(send.verification_id),
    );
    if job.trace.is_none()
        && let Some(trace_id) = send.trace_id
    {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// Ends the attempt of a send whose verification holds a value this build cannot use, and
/// has the job dead-lettered so it can be replayed once the value is put right.
async fn refuse_unusable<L: SendLedger, P: SmsSender>(
    send: &UnusableSend,
    deps: &Deps<L, P>,
) -> Result<Outcome, DbError> {
    let reason = match &send.problem {
        UnusableValue::Locale(locale) => DeadLetterReason::LocaleInvalid(locale.clone()),
    };
    dead_letter(
        &Ending::from(send),
        deps,
        reason,
        AttemptOutcome::RenderError,
    )
    .await
}

/// The attempt being ended: what recording its end needs to know of its send.
struct Ending<'a> {
    delivery_id: DeliveryId,
    attempt: i32,
    to: &'a PhoneNumber,
    expires_at: DateTime<Utc>,
}

impl<'a> From<&'a ClaimedSend> for Ending<'a> {
    fn from(send: &'a ClaimedSend) -> Self {
        Self {
            delivery_id: send.delivery_id,
            attempt: send.attempt,
            to: &send.to,
            expires_at: send.expires_at,
        }
    }
}

impl<'a> From<&'a UnusableSend> for Ending<'a> {
    fn from(send: &'a UnusableSend) -> Self {
        Self {
            delivery_id: send.delivery_id,
            attempt: send.attempt,
            to: &send.to,
            expires_at: send.expires_at,
        }
    }
}

async fn attempt<L: SendLedger, P: SmsSender>(
    send: &ClaimedSend,
    trace: Option<TraceParent>,
    deps: &Deps<L, P>,
) -> Result<Outcome, DbError> {
    let ending = Ending::from(send);
    let now = Utc::now();
    let status = send.verification_status.at(send.expires_at, now);
    if status != VerificationStatus::Pending {
        let reason = format!("not sent: the verification is {}", status.as_str());
        if fail(&ending, deps, reason, AttemptOutcome::Skipped).await? {
            deps.metrics.send(SendStatus::Skipped);
        }
        return Ok(Outcome::Done);
    }
    let margin = chrono::Duration::from_std(deps.expiry_margin).unwrap_or_default();
    if now + margin >= send.expires_at {
        let reason = "not sent: the code expires too soon".to_owned();
        if fail(&ending, deps, reason, AttemptOutcome::Skipped).await? {
            deps.metrics.send(SendStatus::Skipped);
        }
        return Ok(Outcome::Done);
    }
    let text = match deps.renderer.render(send, &deps.secret, now) {
        Ok(text) => text,
        Err(error) => {
            let reason = match error {
                RenderError::TemplateDeleted(id) => DeadLetterReason::TemplateMissing(id),
                RenderError::UnsupportedLocale(locale) => {
                    DeadLetterReason::LocaleUnsupported(locale)
                }
                RenderError::TooLong(too_long) => DeadLetterReason::MessageTooLong(too_long),
                error => DeadLetterReason::RenderFailed(error.to_string()),
            };
            return dead_letter(&ending, deps, reason, AttemptOutcome::RenderError).await;
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
            trace,
        })
        .await;
    let elapsed = started.elapsed();
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    deps.metrics.provider_request(
        match &result {
            Ok(_) => ProviderOutcome::Accepted,
            Err(ProviderError::Transient { .. }) => ProviderOutcome::TransientError,
            Err(ProviderError::Permanent { .. }) => ProviderOutcome::PermanentError,
        },
        elapsed.as_secs_f64(),
    );
    match result {
        Ok(message_id) => {
            // Counted at the provider's answer: the message is out whatever happens to
            // the record of it.
            deps.metrics.send(SendStatus::Sent);
            let record = AttemptRecord {
                next: DeliveryStatus::Sent,
                provider_message_id: Some(message_id.clone()),
                error: None,
                retry_in: None,
                log_entry: AttemptLogEntry {
                    provider_message_id: Some(message_id.clone()),
                    duration_ms: Some(elapsed_ms),
                    ..log_entry(send.attempt, now, AttemptOutcome::Sent)
                },
                segments: Some(u32::try_from(SmsShape::of(&text).segments).unwrap_or(u32::MAX)),
            };
            finish(&ending, deps, &record).await?;
            tracing::info!(delivery = %send.delivery_id, to = %send.to, attempt = send.attempt, "SMS sent");
            Ok(Outcome::Done)
        }
        Err(ProviderError::Permanent { reason }) => {
            let reason = DeadLetterReason::ProviderRejected(reason);
            dead_letter(&ending, deps, reason, AttemptOutcome::PermanentError).await
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
                return dead_letter(&ending, deps, reason, AttemptOutcome::TransientError).await;
            }
            let delay = deps
                .retry
                .delay_for(attempt)
                .max(retry_after.unwrap_or_default());
            let next_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
            if next_at + margin >= send.expires_at {
                let reason = DeadLetterReason::ExpiresBeforeRetry(reason);
                return dead_letter(&ending, deps, reason, AttemptOutcome::TransientError).await;
            }
            let record = AttemptRecord {
                next: DeliveryStatus::Retrying,
                provider_message_id: None,
                error: Some(reason.clone()),
                retry_in: Some(delay),
                log_entry: AttemptLogEntry {
                    error: Some(reason.clone()),
                    retry_at: Some(next_at),
                    duration_ms: Some(elapsed_ms),
                    ..log_entry(send.attempt, now, AttemptOutcome::TransientError)
                },
                segments: None,
            };
            finish(&ending, deps, &record).await?;
            deps.metrics.send(SendStatus::Retrying);
            tracing::warn!(delivery = %send.delivery_id, attempt, delay_ms = delay.as_millis() as u64, %reason, "send failed; retrying");
            Ok(Outcome::RetryLater(delay))
        }
    }
}

/// An attempt log entry with nothing but the attempt, its time and its outcome.
fn log_entry(attempt: i32, at: DateTime<Utc>, outcome: AttemptOutcome) -> AttemptLogEntry {
    AttemptLogEntry {
        attempt,
        at,
        outcome,
        provider_message_id: None,
        error: None,
        retry_at: None,
        duration_ms: None,
        provider: None,
    }
}

/// Records a failure an operator can fix, then has the job dead-lettered so it can be
/// replayed. If another worker took the send over meanwhile, its result stands and this
/// job is simply finished.
async fn dead_letter<L: SendLedger, P: SmsSender>(
    ending: &Ending<'_>,
    deps: &Deps<L, P>,
    reason: DeadLetterReason,
    outcome: AttemptOutcome,
) -> Result<Outcome, DbError> {
    if fail(ending, deps, reason.to_string(), outcome).await? {
        deps.metrics.send(SendStatus::Failed);
        Ok(Outcome::DeadLetter(reason))
    } else {
        Ok(Outcome::Done)
    }
}

/// Records a permanent failure. Returns whether it was recorded (false: the send was
/// taken over by another worker, whose result stands).
async fn fail<L: SendLedger, P: SmsSender>(
    ending: &Ending<'_>,
    deps: &Deps<L, P>,
    reason: String,
    outcome: AttemptOutcome,
) -> Result<bool, DbError> {
    let record = AttemptRecord {
        next: DeliveryStatus::Failed,
        provider_message_id: None,
        error: Some(reason.clone()),
        retry_in: None,
        log_entry: AttemptLogEntry {
            error: Some(reason.clone()),
            ..log_entry(ending.attempt, Utc::now(), outcome)
        },
        segments: None,
    };
    let recorded = finish(ending, deps, &record).await?;
    if recorded {
        tracing::warn!(delivery = %ending.delivery_id, to = %ending.to, %reason, "send failed permanently");
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
async fn finish<L: SendLedger, P: SmsSender>(
    ending: &Ending<'_>,
    deps: &Deps<L, P>,
    record: &AttemptRecord,
) -> Result<bool, DbError> {
    let code_lifetime = (ending.expires_at - Utc::now())
        .to_std()
        .unwrap_or_default();
    let give_up_at = Instant::now() + code_lifetime.max(deps.lease);
    let mut pause = RECORD_RETRY_FIRST;
    loop {
        let finished = FinishedAttempt {
            id: ending.delivery_id,
            attempt: ending.attempt,
            record: record.clone(),
        };
        match deps.ledger.finish(finished).await {
            Ok(true) => return Ok(true),
            // Our lease ran out and another worker took the send over: its result stands.
            Ok(false) => {
                tracing::warn!(delivery = %ending.delivery_id, "send was taken over by another worker; result dropped");
                return Ok(false);
            }
            Err(DbError::Unavailable(reason)) if Instant::now() + pause < give_up_at => {
                tracing::warn!(delivery = %ending.delivery_id, %reason, retry_in_ms = pause.as_millis() as u64, "could not record the outcome; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RECORD_RETRY_MAX);
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use chrono::Utc;
    use secrecy::SecretString;
    use verify_common::db::DbError;
    use verify_common::db::deliveries::{
        ClaimOutcome, ClaimedSend, FinishedAttempt, UnusableSend, UnusableValue,
    };
    use verify_common::domain::{
        AttemptOutcome, CodeSecret, DeliveryId, DeliveryStatus, OtpCode, OtpCodeLength,
        PhoneNumber, SegmentCap, TemplateId, TemplateLocale, Variables, VerificationId,
        VerificationStatus,
    };
    use verify_common::queue::SendSms;

    use verify_common::config::ProviderKind;
    use verify_common::metrics::Registry;

    use super::{Deps, SendLedger, deliver_sms};
    use crate::metrics::WorkerMetrics;
    use crate::outcome::{DeadLetterReason, Outcome};
    use crate::providers::{OutgoingSms, ProviderError, SmsSender};
    use crate::render::SmsRenderer;
    use crate::retry::RetryPolicy;

    const SECRET: &str = "unit-test-secret-0123456789";
    const MARGIN: Duration = Duration::from_secs(15);

    /// A ledger that answers one claim as told and writes nothing down but the ends of
    /// attempts, answering each as told (recorded, unless a test says otherwise).
    struct FakeLedger {
        claim: Mutex<Option<Result<ClaimOutcome, DbError>>>,
        finish_answers: Mutex<VecDeque<Result<bool, DbError>>>,
        finished: Mutex<Vec<FinishedAttempt>>,
    }

    impl FakeLedger {
        fn claiming(outcome: ClaimOutcome) -> Self {
            Self {
                claim: Mutex::new(Some(Ok(outcome))),
                finish_answers: Mutex::new(VecDeque::new()),
                finished: Mutex::new(Vec::new()),
            }
        }

        fn finished(&self) -> Vec<FinishedAttempt> {
            self.finished.lock().unwrap().clone()
        }
    }

    impl SendLedger for FakeLedger {
        async fn claim(&self, _id: DeliveryId) -> Result<ClaimOutcome, DbError> {
            self.claim
                .lock()
                .unwrap()
                .take()
                .expect("deliver_sms claims once per job")
        }

        async fn finish(&self, attempt: FinishedAttempt) -> Result<bool, DbError> {
            let answer = self.finish_answers.lock().unwrap().pop_front();
            let answer = answer.unwrap_or(Ok(true));
            if matches!(answer, Ok(true)) {
                self.finished.lock().unwrap().push(attempt);
            }
            answer
        }
    }

    /// A provider that gives one answer to every message and keeps what it was handed.
    struct ScriptedProvider {
        answer: Result<String, ProviderError>,
        handed: Mutex<Vec<(String, String, String)>>,
    }

    impl ScriptedProvider {
        fn answering(answer: Result<String, ProviderError>) -> Self {
            Self {
                answer,
                handed: Mutex::new(Vec::new()),
            }
        }

        fn handed(&self) -> Vec<(String, String, String)> {
            self.handed.lock().unwrap().clone()
        }
    }

    impl SmsSender for ScriptedProvider {
        async fn send(&self, sms: &OutgoingSms<'_>) -> Result<String, ProviderError> {
            self.handed.lock().unwrap().push((
                sms.to.to_owned(),
                sms.from.to_owned(),
                sms.body.to_owned(),
            ));
            self.answer.clone()
        }
    }

    fn template(id: i64) -> TemplateId {
        TemplateId::try_from(id).unwrap()
    }

    fn transient(reason: &str, retry_after: Option<Duration>) -> ProviderError {
        ProviderError::Transient {
            reason: reason.to_owned(),
            retry_after,
        }
    }

    /// Attempt `attempt` of a pending verification's send with the built-in English text,
    /// its code valid for ten more minutes.
    fn claimed(attempt: i32) -> ClaimedSend {
        ClaimedSend {
            delivery_id: DeliveryId::generate(),
            attempt,
            verification_id: VerificationId::generate(),
            verification_status: VerificationStatus::Pending,
            to: PhoneNumber::parse("+14155550100").unwrap(),
            expires_at: Utc::now() + chrono::Duration::minutes(10),
            code_nonce: vec![7; 32],
            code_length: OtpCodeLength::parse(6).unwrap(),
            variables: Variables::default(),
            template_id: None,
            template_body: None,
            locale: None,
            sender: None,
            trace_id: None,
        }
    }

    fn deps(ledger: FakeLedger, provider: ScriptedProvider) -> Deps<FakeLedger, ScriptedProvider> {
        Deps {
            ledger,
            provider,
            renderer: SmsRenderer::new(SegmentCap::parse("3").unwrap()),
            secret: CodeSecret::parse(SecretString::from(SECRET)).unwrap(),
            // No jitter, so the expected delay is exact.
            retry: RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(100),
                cap: Duration::from_secs(1),
                jitter: 0.0,
            },
            lease: Duration::from_secs(60),
            expiry_margin: MARGIN,
            default_from: "Verify".to_owned(),
            metrics: WorkerMetrics::new(Registry::new(), ProviderKind::Twilio),
        }
    }

    /// Delivers the job of `send` with the provider answering `answer`.
    async fn deliver(
        send: &ClaimedSend,
        answer: Result<String, ProviderError>,
    ) -> (Outcome, Deps<FakeLedger, ScriptedProvider>) {
        let deps = deps(
            FakeLedger::claiming(ClaimOutcome::Claimed(Box::new(send.clone()))),
            ScriptedProvider::answering(answer),
        );
        let outcome = deliver_sms(&SendSms::new(send.delivery_id), &deps)
            .await
            .unwrap();
        (outcome, deps)
    }

    /// The one attempt a test recorded.
    fn only_record(deps: &Deps<FakeLedger, ScriptedProvider>) -> FinishedAttempt {
        let finished = deps.ledger.finished();
        assert_eq!(finished.len(), 1, "{finished:?}");
        finished.into_iter().next().unwrap()
    }

    #[tokio::test]
    async fn a_send_the_provider_accepts_is_recorded_as_sent_with_the_code_in_its_text() {
        let send = claimed(1);

        let (outcome, deps) = deliver(&send, Ok("SM123".to_owned())).await;

        assert_eq!(outcome, Outcome::Done);
        let code = OtpCode::derive(
            &deps.secret,
            send.verification_id.as_uuid(),
            &send.code_nonce,
            send.code_length,
        )
        .unwrap();
        assert_eq!(
            deps.provider.handed(),
            [(
                "+14155550100".to_owned(),
                "Verify".to_owned(),
                format!(
                    "Your verification code is {}. It expires in 10 minutes.",
                    code.expose()
                )
            )]
        );
        let finished = only_record(&deps);
        assert_eq!((finished.id, finished.attempt), (send.delivery_id, 1));
        assert_eq!(finished.record.next, DeliveryStatus::Sent);
        assert_eq!(
            finished.record.provider_message_id.as_deref(),
            Some("SM123")
        );
        assert_eq!(finished.record.log_entry.outcome, AttemptOutcome::Sent);
    }

    #[tokio::test]
    async fn a_transient_failure_is_recorded_as_retrying_and_retried_after_the_policy_delay() {
        for (attempt, delay_ms) in [(1, 100), (2, 200)] {
            let send = claimed(attempt);

            let (outcome, deps) =
                deliver(&send, Err(transient("provider answered 503", None))).await;

            let delay = Duration::from_millis(delay_ms);
            assert_eq!(outcome, Outcome::RetryLater(delay), "attempt {attempt}");
            let finished = only_record(&deps);
            assert_eq!(finished.record.next, DeliveryStatus::Retrying);
            assert_eq!(finished.record.retry_in, Some(delay));
            assert_eq!(
                finished.record.error.as_deref(),
                Some("provider answered 503")
            );
            assert_eq!(
                finished.record.log_entry.outcome,
                AttemptOutcome::TransientError
            );
        }
    }

    #[tokio::test]
    async fn a_retry_after_longer_than_the_policy_delay_is_waited_out() {
        let send = claimed(1);
        let asked = Duration::from_secs(3);

        let (outcome, deps) =
            deliver(&send, Err(transient("provider answered 429", Some(asked)))).await;

        assert_eq!(outcome, Outcome::RetryLater(asked));
        assert_eq!(only_record(&deps).record.retry_in, Some(asked));
    }

    /// The reasons a send is given up on, each with the attempt log's outcome and whether
    /// the provider was called.
    #[tokio::test]
    async fn each_reason_to_give_up_fails_the_send_and_dead_letters_its_job() {
        let mut template_deleted = claimed(1);
        template_deleted.template_id = Some(template(7));
        let mut variable_missing = claimed(1);
        variable_missing.template_id = Some(template(8));
        variable_missing.template_body = Some("{{shop}}: {{code}}".to_owned());
        let mut locale_unsupported = claimed(1);
        locale_unsupported.locale = Some(TemplateLocale::parse("sw-KE").unwrap());
        let mut too_long = claimed(1);
        too_long.template_id = Some(template(9));
        too_long.template_body = Some("{{brand}}: {{code}}".to_owned());
        // 208 UTF-16 units: four UCS-2 segments, over the cap of three.
        too_long.variables =
            Variables::parse(&serde_json::json!({ "brand": "ж".repeat(200) })).unwrap();
        let mut expires_soon = claimed(1);
        // Sendable now (20 s left, the margin is 15 s), but the provider asks for 10 s
        // before the next attempt, which would leave only 10.
        expires_soon.expires_at = Utc::now() + chrono::Duration::seconds(20);
        let cases = [
            (
                "provider refuses",
                claimed(1),
                Err(ProviderError::Permanent {
                    reason: "provider answered 400: bad number".to_owned(),
                }),
                "provider_rejected",
                AttemptOutcome::PermanentError,
                true,
            ),
            (
                "last attempt fails",
                claimed(3),
                Err(transient("provider answered 503", None)),
                "attempts_exhausted",
                AttemptOutcome::TransientError,
                true,
            ),
            (
                "retry too close to expiry",
                expires_soon,
                Err(transient(
                    "provider answered 429",
                    Some(Duration::from_secs(10)),
                )),
                "expires_before_retry",
                AttemptOutcome::TransientError,
                true,
            ),
            (
                "template deleted",
                template_deleted,
                Ok("never".to_owned()),
                "template_missing",
                AttemptOutcome::RenderError,
                false,
            ),
            (
                "variable missing",
                variable_missing,
                Ok("never".to_owned()),
                "render_failed",
                AttemptOutcome::RenderError,
                false,
            ),
            (
                "locale without built-in text",
                locale_unsupported,
                Ok("never".to_owned()),
                "locale_unsupported",
                AttemptOutcome::RenderError,
                false,
            ),
            (
                "message over the segment cap",
                too_long,
                Ok("never".to_owned()),
                "message_too_long",
                AttemptOutcome::RenderError,
                false,
            ),
        ];
        let mut failures = Vec::new();
        for (case, send, answer, code, logged, called) in cases {
            let (outcome, deps) = deliver(&send, answer).await;

            let Outcome::DeadLetter(reason) = &outcome else {
                failures.push(format!("{case}: {outcome:?}"));
                continue;
            };
            let finished = deps.ledger.finished();
            let recorded = match finished.as_slice() {
                [one] => one,
                _ => {
                    failures.push(format!("{case}: recorded {finished:?}"));
                    continue;
                }
            };
            let reason_text = reason.to_string();
            if reason.code() != code
                || recorded.record.next != DeliveryStatus::Failed
                || recorded.record.error.as_deref() != Some(reason_text.as_str())
                || recorded.record.log_entry.outcome != logged
                || deps.provider.handed().is_empty() == called
            {
                failures.push(format!(
                    "{case}: {} {reason_text:?}, recorded {:?} {:?} {:?}, provider called: {}",
                    reason.code(),
                    recorded.record.next,
                    recorded.record.error,
                    recorded.record.log_entry.outcome,
                    !deps.provider.handed().is_empty()
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[tokio::test]
    async fn the_reasons_name_what_went_wrong() {
        let mut template_deleted = claimed(1);
        template_deleted.template_id = Some(template(7));
        let (outcome, _) = deliver(&template_deleted, Ok("never".to_owned())).await;
        assert_eq!(
            outcome,
            Outcome::DeadLetter(DeadLetterReason::TemplateMissing(template(7)))
        );

        let (outcome, _) =
            deliver(&claimed(3), Err(transient("provider answered 503", None))).await;
        assert_eq!(
            outcome,
            Outcome::DeadLetter(DeadLetterReason::AttemptsExhausted {
                attempts: 3,
                last_error: "provider answered 503".to_owned()
            })
        );
    }

    #[tokio::test]
    async fn a_job_for_a_missing_send_is_dead_lettered_and_nothing_is_recorded() {
        let id = DeliveryId::generate();
        let deps = deps(
            FakeLedger::claiming(ClaimOutcome::Missing),
            ScriptedProvider::answering(Ok("never".to_owned())),
        );

        let outcome = deliver_sms(&SendSms::new(id), &deps).await.unwrap();

        assert_eq!(
            outcome,
            Outcome::DeadLetter(DeadLetterReason::DeliveryMissing(id))
        );
        assert!(deps.ledger.finished().is_empty());
        assert!(deps.provider.handed().is_empty());
    }

    #[tokio::test]
    async fn a_duplicate_job_for_a_finished_send_is_done_without_sending() {
        for status in [DeliveryStatus::Sent, DeliveryStatus::Failed] {
            let deps = deps(
                FakeLedger::claiming(ClaimOutcome::AlreadyFinished(status)),
                ScriptedProvider::answering(Ok("never".to_owned())),
            );

            let outcome = deliver_sms(&SendSms::new(DeliveryId::generate()), &deps)
                .await
                .unwrap();

            assert_eq!(outcome, Outcome::Done, "{status:?}");
            assert!(deps.ledger.finished().is_empty(), "{status:?}");
            assert!(deps.provider.handed().is_empty(), "{status:?}");
        }
    }

    #[tokio::test]
    async fn a_send_whose_stored_locale_does_not_parse_is_failed_and_dead_lettered_unsent() {
        let send = UnusableSend {
            delivery_id: DeliveryId::generate(),
            attempt: 1,
            to: PhoneNumber::parse("+14155550100").unwrap(),
            expires_at: Utc::now() + chrono::Duration::minutes(10),
            problem: UnusableValue::Locale("english".to_owned()),
        };
        let deps = deps(
            FakeLedger::claiming(ClaimOutcome::Unusable(Box::new(send.clone()))),
            ScriptedProvider::answering(Ok("never".to_owned())),
        );

        let outcome = deliver_sms(&SendSms::new(send.delivery_id), &deps)
            .await
            .unwrap();

        assert_eq!(
            outcome,
            Outcome::DeadLetter(DeadLetterReason::LocaleInvalid("english".to_owned()))
        );
        assert!(deps.provider.handed().is_empty());
        let finished = only_record(&deps);
        assert_eq!((finished.id, finished.attempt), (send.delivery_id, 1));
        assert_eq!(finished.record.next, DeliveryStatus::Failed);
        assert_eq!(
            finished.record.error.as_deref(),
            Some("the stored locale \"english\" is not a language tag")
        );
        assert_eq!(
            finished.record.log_entry.outcome,
            AttemptOutcome::RenderError
        );
    }

    #[tokio::test]
    async fn a_duplicate_claimed_by_its_twin_in_the_same_batch_is_done_without_sending() {
        let deps = deps(
            FakeLedger::claiming(ClaimOutcome::Duplicate),
            ScriptedProvider::answering(Ok("never".to_owned())),
        );

        let outcome = deliver_sms(&SendSms::new(DeliveryId::generate()), &deps)
            .await
            .unwrap();

        assert_eq!(outcome, Outcome::Done);
        assert!(deps.ledger.finished().is_empty());
        assert!(deps.provider.handed().is_empty());
    }

    #[tokio::test]
    async fn a_job_for_a_send_another_worker_holds_is_retried_just_after_its_lease_runs_out() {
        let deps = deps(
            FakeLedger::claiming(ClaimOutcome::HeldElsewhere {
                lease_remaining: Duration::from_secs(5),
            }),
            ScriptedProvider::answering(Ok("never".to_owned())),
        );

        let outcome = deliver_sms(&SendSms::new(DeliveryId::generate()), &deps)
            .await
            .unwrap();

        assert_eq!(outcome, Outcome::RetryLater(Duration::from_secs(6)));
        assert!(deps.ledger.finished().is_empty());
        assert!(deps.provider.handed().is_empty());
    }

    #[tokio::test]
    async fn a_send_no_longer_wanted_is_closed_as_failed_without_sending_and_not_dead_lettered() {
        let mut canceled = claimed(1);
        canceled.verification_status = VerificationStatus::Canceled;
        let mut expiring = claimed(1);
        expiring.expires_at = Utc::now() + chrono::Duration::seconds(10);
        for (case, send, why) in [
            (
                "canceled",
                canceled,
                "not sent: the verification is canceled",
            ),
            ("expiring", expiring, "not sent: the code expires too soon"),
        ] {
            let (outcome, deps) = deliver(&send, Ok("never".to_owned())).await;

            assert_eq!(outcome, Outcome::Done, "{case}");
            assert!(deps.provider.handed().is_empty(), "{case}");
            let finished = only_record(&deps);
            assert_eq!(finished.record.next, DeliveryStatus::Failed, "{case}");
            assert_eq!(finished.record.error.as_deref(), Some(why), "{case}");
            assert_eq!(
                finished.record.log_entry.outcome,
                AttemptOutcome::Skipped,
                "{case}"
            );
        }
    }

    #[tokio::test]
    async fn a_failure_on_a_send_taken_over_meanwhile_is_not_dead_lettered() {
        let send = claimed(1);
        let deps = deps(
            FakeLedger::claiming(ClaimOutcome::Claimed(Box::new(send.clone()))),
            ScriptedProvider::answering(Err(ProviderError::Permanent {
                reason: "provider answered 400".to_owned(),
            })),
        );
        deps.ledger
            .finish_answers
            .lock()
            .unwrap()
            .push_back(Ok(false));

        let outcome = deliver_sms(&SendSms::new(send.delivery_id), &deps)
            .await
            .unwrap();

        assert_eq!(outcome, Outcome::Done);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_is_recorded_once_postgres_is_back_rather_than_dropped() {
        let send = claimed(1);
        let deps = deps(
            FakeLedger::claiming(ClaimOutcome::Claimed(Box::new(send.clone()))),
            ScriptedProvider::answering(Ok("SM1".to_owned())),
        );
        for _ in 0..2 {
            deps.ledger
                .finish_answers
                .lock()
                .unwrap()
                .push_back(Err(DbError::Unavailable("connection refused".to_owned())));
        }

        let outcome = deliver_sms(&SendSms::new(send.delivery_id), &deps)
            .await
            .unwrap();

        assert_eq!(outcome, Outcome::Done);
        assert_eq!(deps.provider.handed().len(), 1, "sent once, recorded late");
        assert_eq!(only_record(&deps).record.next, DeliveryStatus::Sent);
    }

    #[tokio::test]
    async fn a_claim_that_fails_is_an_error_so_the_job_is_tried_again() {
        let deps = deps(
            FakeLedger {
                claim: Mutex::new(Some(Err(DbError::Unavailable("down".to_owned())))),
                finish_answers: Mutex::new(VecDeque::new()),
                finished: Mutex::new(Vec::new()),
            },
            ScriptedProvider::answering(Ok("never".to_owned())),
        );

        let result = deliver_sms(&SendSms::new(DeliveryId::generate()), &deps).await;

        assert!(matches!(result, Err(DbError::Unavailable(_))), "{result:?}");
        assert!(deps.provider.handed().is_empty());
    }
}
