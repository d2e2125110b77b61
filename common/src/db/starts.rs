//! New sends: starting verifications (in batches, each with its first send, some under an
//! idempotency key) and resending a verification's code, each under the per-number send
//! limit and the velocity limits. Both call one SQL function each (migration V10, and V12 and
//! V19 for `start_verifications`), and both apply the limits through the same ones,
//! `send_limit_waits` and `judge_velocity`.
//!
//! A request's velocity checks become counters (one per rule and key, shared by the
//! requests of a batch that have the same key) and checks (one per request and counter,
//! in request order), passed as arrays: `judge_velocity` counts each counter once and the
//! requests of the batch in order, so each sees the sends its batch let through before it.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::deliveries::{DeliveryRecord, DeliveryRow};
use super::idempotency::IdempotencyClaim;
use super::rows::{Layout, named, prefixed_columns};
use super::verifications::{VerificationRecord, VerificationRow};
use super::{DbError, seconds};
use crate::domain::abuse::{ClientId, VelocityCheck};
use crate::domain::otp::NONCE_LEN;
use crate::domain::{
    DeliveryId, OtpCodeLength, PhoneNumber, Sender, TemplateId, TemplateLocale, TraceParent,
    Variables, VerificationId, VerificationStatus,
};

/// Everything needed to record a new verification and its first send.
#[derive(Debug, Clone)]
pub struct NewVerification {
    pub id: VerificationId,
    pub delivery_id: DeliveryId,
    pub to: PhoneNumber,
    pub template_id: Option<TemplateId>,
    pub locale: Option<TemplateLocale>,
    pub sender: Option<Sender>,
    pub variables: Variables,
    pub code_length: OtpCodeLength,
    pub code_nonce: [u8; NONCE_LEN],
    pub max_checks: u32,
    pub ttl: Duration,
    /// The request's idempotency key: a repeat of the request replays this one's outcome.
    pub idempotency: Option<IdempotencyClaim>,
    /// What the request said about its end user.
    pub client_ip: Option<IpAddr>,
    pub client_id: Option<ClientId>,
    /// What the abuse rules made of the request (a JSON object); the velocity limits
    /// exceeded without refusing are added to it.
    pub risk: Option<serde_json::Value>,
    /// The velocity limits the request is counted under.
    pub velocity: Vec<VelocityCheck>,
    /// The trace of the request. Its id is kept with the send, so a job re-published
    /// from Postgres stays in the trace.
    pub trace: Option<TraceParent>,
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
    /// A new verification and its first send. Any earlier open verification of the number
    /// was canceled; so was this one if a later request of its batch started another for
    /// the same number (only the last stays pending).
    Created(Box<(VerificationRecord, DeliveryRecord)>),
    /// The number already had `max_sends` sends in the window; try again after this long.
    RateLimited { retry_after: Duration },
    /// The velocity check at this position of the request's refused it; the wait is the
    /// longest of its refusing checks'.
    VelocityLimited { check: usize, retry_after: Duration },
    /// The idempotency key was used before with the same body: nothing new was created.
    /// `response` is the first answer, if it was stored.
    Replayed {
        verification_id: VerificationId,
        response: Option<serde_json::Value>,
    },
    /// The idempotency key was used before with a different body.
    KeyReused,
}

/// A start request's outcome and, when its velocity checks were judged, the sends each
/// counted with it (in the order of its checks; empty when they were not judged).
#[derive(Debug, Clone)]
pub struct StartResult {
    pub outcome: CreateOutcome,
    pub velocity_counts: Vec<u64>,
}

fn retry_after_from(seconds: Option<f64>) -> Duration {
    Duration::from_secs_f64(seconds.unwrap_or(1.0).max(1.0))
}

/// The velocity checks of a batch as `judge_velocity` takes them: checks in request
/// order, each naming its counter; one counter per rule and key.
#[derive(Debug, Default)]
struct VelocityArrays {
    check_ords: Vec<i32>,
    check_counters: Vec<i32>,
    rules: Vec<String>,
    scopes: Vec<&'static str>,
    keys: Vec<String>,
    window_secs: Vec<f64>,
    limits: Vec<i64>,
    bucket_secs: Vec<Option<f64>>,
    refuses: Vec<bool>,
    hits: Vec<serde_json::Value>,
}

impl VelocityArrays {
    /// The arrays of `requests`' checks, the first request at position 1.
    fn new<'a>(requests: impl IntoIterator<Item = &'a [VelocityCheck]>) -> Self {
        let mut arrays = Self::default();
        let mut counters: std::collections::HashMap<(String, &'a str), i32> =
            std::collections::HashMap::new();
        for (ord, checks) in (1_i32..).zip(requests) {
            for check in checks {
                let next = i32::try_from(counters.len() + 1).unwrap_or(i32::MAX);
                let counter = *counters
                    .entry((check.rule.to_string(), check.key.as_str()))
                    .or_insert_with(|| {
                        arrays.rules.push(check.rule.to_string());
                        arrays.scopes.push(check.scope.as_str());
                        arrays.keys.push(check.key.clone());
                        arrays.window_secs.push(seconds(check.window));
                        arrays.limits.push(i64::from(check.limit));
                        arrays.bucket_secs.push(check.bucket.map(seconds));
                        arrays.refuses.push(check.refuses());
                        arrays.hits.push(check.risk_entry());
                        next
                    });
                arrays.check_ords.push(ord);
                arrays.check_counters.push(counter);
            }
        }
        arrays
    }

    /// The arrays as statement parameters, in `judge_velocity`'s order.
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 10] {
        [
            &self.check_ords,
            &self.check_counters,
            &self.rules,
            &self.scopes,
            &self.keys,
            &self.window_secs,
            &self.limits,
            &self.bucket_secs,
            &self.refuses,
            &self.hits,
        ]
    }
}

/// The figures a request's velocity checks counted, from `velocity_counted`.
fn velocity_counts(row: &Row) -> Result<Vec<u64>, DbError> {
    Ok(named::<Option<Vec<Option<i64>>>>(row, "velocity_counted")?
        .unwrap_or_default()
        .into_iter()
        .map(|count| u64::try_from(count.unwrap_or(0)).unwrap_or(0))
        .collect())
}

/// The velocity verdict of a row: the refusing check's position and the wait.
fn velocity_refusal(row: &Row) -> Result<Option<(usize, Duration)>, DbError> {
    let Some(check) = named::<Option<i32>>(row, "velocity_refused")? else {
        return Ok(None);
    };
    let index = usize::try_from(check - 1)
        .map_err(|_| DbError::Corrupt(format!("velocity check {check}")))?;
    let wait = named::<Option<f64>>(row, "velocity_retry_after_secs")?;
    Ok(Some((index, retry_after_from(wait))))
}

/// The call of the `start_verifications` function (migrations V10, V12 and V19), which writes the
/// idempotency keys, applies the send limit and the velocity limits, cancels the numbers'
/// earlier open verifications and inserts the rows of a whole batch in one statement. Its
/// rows are the request's position (`ord`), the limit's wait (`retry_after_secs`), the
/// velocity verdict (`velocity_refused`, `velocity_retry_after_secs`,
/// `velocity_counted`), the key's verdicts (`key_reused`, `replay_of`,
/// `replay_response`), then the verification's columns prefixed `v_` and the send's
/// prefixed `d_`. The verifications it created are counted in the stats rollups
/// (migration V18) by the same statement, one upsert per key for the batch.
static START_VERIFICATIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH s AS (
             SELECT * FROM start_verifications($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                                               $12, $13, $14, $15, $16, $17, $18, $19, $20,
                                               $21, $22, $23, $24, $25, $26, $27, $28, $29,
                                               $30)
         ), started AS (
             SELECT add_to_stats(array_agg(ROW(
                        (s.verification).created_at,
                        coalesce((s.verification).risk ->> 'country', 'unknown'),
                        coalesce((s.verification).template_id, 0), '', 1, 0, 0, 0, 0, NULL, NULL
                    )::stats_event))
             FROM s
             WHERE (s.verification).id IS NOT NULL
             HAVING count(*) > 0
         )
         SELECT s.ord, s.retry_after_secs, s.velocity_refused, s.velocity_retry_after_secs,
                s.velocity_counted, s.key_reused, s.replay_of, s.replay_response, {}, {}
         FROM s LEFT JOIN started ON true
         ORDER BY s.ord",
        prefixed_columns::<VerificationRow>("(s.verification)", "v_"),
        prefixed_columns::<DeliveryRow>("(s.delivery)", "d_"),
    )
});

/// Records a batch of start requests in one statement and one transaction (group commit):
/// the only way verifications are created. Outcomes are in the order of `batch`.
///
/// # Errors
/// [`DbError`] on database failure: then nothing of the batch was recorded.
pub async fn insert_verifications(
    pool: &Pool,
    batch: &[NewVerification],
    limit: SendLimit,
) -> Result<Vec<StartResult>, DbError> {
    let ids: Vec<uuid::Uuid> = batch.iter().map(|new| new.id.as_uuid()).collect();
    let tos: Vec<&str> = batch.iter().map(|new| new.to.as_str()).collect();
    let template_ids: Vec<Option<i64>> = batch
        .iter()
        .map(|new| new.template_id.map(TemplateId::get))
        .collect();
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
    let client_ips: Vec<Option<IpAddr>> = batch.iter().map(|new| new.client_ip).collect();
    let client_ids: Vec<Option<&str>> = batch
        .iter()
        .map(|new| new.client_id.as_ref().map(ClientId::as_str))
        .collect();
    let risks: Vec<Option<&serde_json::Value>> =
        batch.iter().map(|new| new.risk.as_ref()).collect();
    let claims = || batch.iter().map(|new| new.idempotency.as_ref());
    let key_scopes: Vec<Option<&[u8]>> = claims()
        .map(|claim| claim.map(|c| c.scope.as_slice()))
        .collect();
    let keys: Vec<Option<&str>> = claims()
        .map(|claim| claim.map(|c| c.key.as_str()))
        .collect();
    let request_hashes: Vec<Option<&[u8]>> = claims()
        .map(|claim| claim.map(|c| c.request_hash.as_slice()))
        .collect();
    let trace_ids: Vec<Option<Vec<u8>>> = batch
        .iter()
        .map(|new| new.trace.map(|trace| trace.trace_id().as_bytes().to_vec()))
        .collect();
    let velocity = VelocityArrays::new(batch.iter().map(|new| new.velocity.as_slice()));
    let window = seconds(limit.window);
    let max_sends = i64::from(limit.max_sends);
    let client = pool.get().await?;
    let statement = client.prepare_cached(&START_VERIFICATIONS).await?;
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
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
        &client_ips,
        &client_ids,
        &risks,
        &key_scopes,
        &keys,
        &request_hashes,
        &window,
        &max_sends,
    ];
    params.extend(velocity.params());
    params.push(&trace_ids);
    let rows = client.query(&statement, &params).await?;
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
            Ok(StartResult {
                outcome: outcome_from_row(row, &layouts)?,
                velocity_counts: velocity_counts(row)?,
            })
        })
        .collect()
}

/// Reads the outcome of one request from a `start_verifications` row.
fn outcome_from_row(
    row: &Row,
    (verification, delivery): &(Layout<VerificationRow>, Layout<DeliveryRow>),
) -> Result<CreateOutcome, DbError> {
    if let Some(wait) = named::<Option<f64>>(row, "retry_after_secs")? {
        return Ok(CreateOutcome::RateLimited {
            retry_after: retry_after_from(Some(wait)),
        });
    }
    if let Some((check, retry_after)) = velocity_refusal(row)? {
        return Ok(CreateOutcome::VelocityLimited { check, retry_after });
    }
    if named::<bool>(row, "key_reused")? {
        return Ok(CreateOutcome::KeyReused);
    }
    if let Some(id) = named::<Option<uuid::Uuid>>(row, "replay_of")? {
        return Ok(CreateOutcome::Replayed {
            verification_id: VerificationId::from_uuid(id),
            response: named(row, "replay_response")?,
        });
    }
    let verification = verification.read(row)?.try_into()?;
    let delivery = delivery.read(row)?.try_into()?;
    Ok(CreateOutcome::Created(Box::new((verification, delivery))))
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
    /// The velocity check at this position refused it.
    VelocityLimited {
        check: usize,
        retry_after: Duration,
    },
}

/// The call of the `resend_verification` function (migration V10): the send's columns are
/// prefixed `d_`.
static RESEND_VERIFICATION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT r.status, r.live, r.too_soon_secs, r.retry_after_secs, r.velocity_refused,
                r.velocity_retry_after_secs, r.velocity_counted, {}
         FROM resend_verification($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                                  $15) r",
        prefixed_columns::<DeliveryRow>("(r.delivery)", "d_"),
    )
});

/// Records another send of the same code, subject to the minimum interval between sends
/// of one verification, to the per-number send limit and to the velocity limits
/// `velocity` (those exceeded without refusing join the verification's risk). Returns the
/// outcome and the figures the velocity checks counted (empty when not judged). The check
/// counter is untouched: resending never buys more guesses. The send keeps `trace`'s
/// trace id, as a start's does, so an outbox re-publish of it still carries the trace;
/// it is written in the same transaction (one more statement, on the rare resend path,
/// rather than a new signature for `resend_verification`).
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn insert_resend(
    pool: &Pool,
    id: VerificationId,
    delivery_id: DeliveryId,
    min_interval: Duration,
    limit: SendLimit,
    velocity: &[VelocityCheck],
    trace: Option<TraceParent>,
) -> Result<(ResendOutcome, Vec<u64>), DbError> {
    let arrays = VelocityArrays::new([velocity]);
    let (id_uuid, delivery_uuid) = (id.as_uuid(), delivery_id.as_uuid());
    let (interval, window, max_sends) = (
        seconds(min_interval),
        seconds(limit.window),
        i64::from(limit.max_sends),
    );
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&id_uuid, &delivery_uuid, &interval, &window, &max_sends];
    params.extend(arrays.params());
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let Some(row) = transaction
        .query_opt(RESEND_VERIFICATION.as_str(), &params)
        .await?
    else {
        return Ok((ResendOutcome::NotFound, Vec::new()));
    };
    let counts = velocity_counts(&row)?;
    let outcome = resend_outcome(&row)?;
    if let (ResendOutcome::Created(send), Some(trace)) = (&outcome, trace) {
        transaction
            .execute(
                "UPDATE sms_deliveries SET trace_id = $2 WHERE id = $1",
                &[&send.id.as_uuid(), &trace.trace_id().as_bytes().as_slice()],
            )
            .await?;
    }
    transaction.commit().await?;
    Ok((outcome, counts))
}

/// Reads the outcome of a resend from its `resend_verification` row.
fn resend_outcome(row: &Row) -> Result<ResendOutcome, DbError> {
    let status: VerificationStatus = named::<String>(row, "status")?
        .parse()
        .map_err(DbError::Corrupt)?;
    let live: bool = named(row, "live")?;
    if status != VerificationStatus::Pending || !live {
        let shown = if status == VerificationStatus::Pending {
            VerificationStatus::Expired
        } else {
            status
        };
        return Ok(ResendOutcome::NotPending(shown));
    }
    if let Some(wait) = named::<Option<f64>>(row, "too_soon_secs")?.filter(|w| *w > 0.0) {
        return Ok(ResendOutcome::TooSoon {
            retry_after: retry_after_from(Some(wait)),
        });
    }
    if let Some(wait) = named::<Option<f64>>(row, "retry_after_secs")? {
        return Ok(ResendOutcome::RateLimited {
            retry_after: retry_after_from(Some(wait)),
        });
    }
    if let Some((check, retry_after)) = velocity_refusal(row)? {
        return Ok(ResendOutcome::VelocityLimited { check, retry_after });
    }
    let delivery = Layout::<DeliveryRow>::find(row, "d_")?.read(row)?;
    Ok(ResendOutcome::Created(delivery.try_into()?))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{
        CreateOutcome, NewVerification, ResendOutcome, SendLimit, StartResult, insert_resend,
        insert_verifications,
    };
    use crate::db::idempotency::IdempotencyClaim;
    use crate::db::verifications::find_verification;
    use crate::db::{Pool, build_pool, migrate};
    use crate::domain::abuse::{BlockScope, ClientId, Outcome, RuleId, RuleMode, VelocityCheck};
    use crate::domain::{
        DeliveryId, OtpCodeLength, PhoneNumber, Variables, VerificationId, VerificationStatus,
    };
    use crate::testing::TestDatabase;

    const LIMIT: SendLimit = SendLimit {
        max_sends: 3,
        window: Duration::from_secs(600),
    };

    async fn database() -> Pool {
        let database = TestDatabase::create().await;
        let pool = build_pool(&database.settings).unwrap();
        migrate(&pool).await.unwrap();
        pool
    }

    fn new_start(to: &str) -> NewVerification {
        NewVerification {
            id: VerificationId::generate(),
            delivery_id: DeliveryId::generate(),
            to: PhoneNumber::parse(to).unwrap(),
            template_id: None,
            locale: None,
            sender: None,
            variables: Variables::default(),
            code_length: OtpCodeLength::parse(6).unwrap(),
            code_nonce: [7; 32],
            max_checks: 5,
            ttl: Duration::from_secs(600),
            idempotency: None,
            client_ip: None,
            client_id: None,
            risk: None,
            velocity: Vec::new(),
            trace: None,
        }
    }

    fn keyed(to: &str, key: &str, body: u8) -> NewVerification {
        NewVerification {
            idempotency: Some(IdempotencyClaim {
                scope: [1; 32],
                key: key.to_owned(),
                request_hash: [body; 32],
            }),
            ..new_start(to)
        }
    }

    async fn status_of(pool: &Pool, id: VerificationId) -> VerificationStatus {
        find_verification(pool, id)
            .await
            .unwrap()
            .unwrap()
            .stored_status
    }

    /// The outcomes as short words, for comparing whole batches at once.
    fn summary(outcomes: &[StartResult]) -> Vec<String> {
        outcomes
            .iter()
            .map(|result| match &result.outcome {
                CreateOutcome::Created(created) => {
                    format!("created {}", created.0.stored_status.as_str())
                }
                CreateOutcome::RateLimited { .. } => "rate limited".to_owned(),
                CreateOutcome::VelocityLimited { .. } => "velocity limited".to_owned(),
                CreateOutcome::Replayed { .. } => "replayed".to_owned(),
                CreateOutcome::KeyReused => "key reused".to_owned(),
            })
            .collect()
    }

    /// A velocity check of `scope` at `limit` an hour, refusing when `outcome` is a block.
    fn velocity(scope: BlockScope, key: &str, limit: u32, outcome: Outcome) -> VelocityCheck {
        let bucketed = matches!(scope, BlockScope::Global | BlockScope::Country);
        VelocityCheck {
            rule: RuleId::parse(&format!("velocity.{scope}")).unwrap(),
            scope,
            key: key.to_owned(),
            window: Duration::from_secs(3600),
            limit,
            bucket: bucketed.then(|| Duration::from_secs(300)),
            mode: if outcome == Outcome::ShadowBlock {
                RuleMode::Shadow
            } else {
                RuleMode::Enforce
            },
            outcome,
        }
    }

    fn limited(to: &str, checks: &[VelocityCheck]) -> NewVerification {
        NewVerification {
            velocity: checks.to_vec(),
            risk: Some(serde_json::json!({"decision": "allow", "rules": [], "notes": []})),
            ..new_start(to)
        }
    }

    #[tokio::test]
    async fn starts_in_one_batch_count_each_other_against_a_velocity_limit() {
        let pool = database().await;
        let session = [velocity(BlockScope::ClientId, "s-1", 3, Outcome::Block)];
        let batch: Vec<NewVerification> = (0..5)
            .map(|n| limited(&format!("+1415555010{n}"), &session))
            .collect();

        let outcomes = insert_verifications(&pool, &batch, LIMIT).await.unwrap();

        assert_eq!(
            summary(&outcomes),
            [
                "created pending",
                "created pending",
                "created pending",
                "velocity limited",
                "velocity limited"
            ]
        );
        let counts: Vec<&[u64]> = outcomes
            .iter()
            .map(|r| r.velocity_counts.as_slice())
            .collect();
        assert_eq!(counts, [[1], [2], [3], [4], [4]]);
    }

    #[tokio::test]
    async fn a_bucketed_limit_counts_earlier_batches_and_a_refused_start_adds_nothing() {
        let pool = database().await;
        let global = [velocity(BlockScope::Global, "all", 2, Outcome::Block)];
        let first = insert_verifications(
            &pool,
            &[
                limited("+14155550100", &global),
                limited("+14155550101", &global),
            ],
            LIMIT,
        )
        .await
        .unwrap();

        let second = insert_verifications(&pool, &[limited("+14155550102", &global)], LIMIT)
            .await
            .unwrap();
        let third = insert_verifications(&pool, &[limited("+14155550103", &global)], LIMIT)
            .await
            .unwrap();

        assert_eq!(summary(&first), ["created pending", "created pending"]);
        assert_eq!(summary(&second), ["velocity limited"]);
        assert_eq!(
            third[0].velocity_counts,
            [3],
            "the refused start was not counted"
        );
        let CreateOutcome::VelocityLimited { check, retry_after } = &second[0].outcome else {
            unreachable!()
        };
        assert_eq!(*check, 0);
        assert!(*retry_after <= Duration::from_secs(3600), "{retry_after:?}");
    }

    /// Counter rows stay locked until their batch commits; batches in flight at once must
    /// add to different rows, or each waits for the other's commit.
    #[tokio::test]
    async fn batches_open_at_once_add_to_one_counter_without_waiting_for_each_other() {
        let database = TestDatabase::create().await;
        let mut settings = database.settings.clone();
        // Five at once: more than the four shards by backend pid that came before.
        settings.pool_size = 6;
        let pool = build_pool(&settings).unwrap();
        migrate(&pool).await.unwrap();
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(pool.get().await.unwrap());
        }
        let mut open = Vec::new();
        for client in &mut clients {
            let transaction = client.transaction().await.unwrap();
            // A batch that waited for another's commit would wait forever here: none commits.
            transaction
                .batch_execute("SET LOCAL lock_timeout = '2s'")
                .await
                .unwrap();
            transaction
                .query_one(
                    "SELECT * FROM judge_velocity(ARRAY[true], ARRAY[1], ARRAY[1],
                         ARRAY['velocity.global'], ARRAY['global'], ARRAY['all'],
                         ARRAY[3600::float8], ARRAY[1000::bigint], ARRAY[300::float8],
                         ARRAY[true], ARRAY['{}'::jsonb])",
                    &[],
                )
                .await
                .expect("a batch adding to the counter waited for another open batch");
            open.push(transaction);
        }
        for transaction in open {
            transaction.commit().await.unwrap();
        }

        let client = pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT count(*) AS shards, sum(sends)::bigint AS sends FROM abuse_counters",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, i64>("shards"), row.get::<_, i64>("sends")),
            (5, 5)
        );
    }

    #[tokio::test]
    async fn a_limit_exceeded_in_shadow_mode_sends_and_joins_the_risk_with_its_figures() {
        let pool = database().await;
        let checks = [
            velocity(BlockScope::ClientId, "s-1", 1, Outcome::ShadowBlock),
            velocity(BlockScope::Prefix, "+1415555", 5, Outcome::Block),
        ];
        let first = limited("+14155550100", &checks);
        let second = limited("+14155550101", &checks);

        let outcomes = insert_verifications(&pool, &[first, second.clone()], LIMIT)
            .await
            .unwrap();

        assert_eq!(summary(&outcomes), ["created pending", "created pending"]);
        assert_eq!(outcomes[1].velocity_counts, [2, 2]);
        let stored = find_verification(&pool, second.id).await.unwrap().unwrap();
        assert_eq!(
            stored.risk,
            Some(serde_json::json!({
                "decision": "shadow_block",
                "rules": [{
                    "id": "velocity.client_id",
                    "mode": "shadow",
                    "outcome": "shadow_block",
                    "detail": "client_id s-1: 2 sends in the last 3600 s, limit 1",
                }],
                "notes": [],
            }))
        );
    }

    #[tokio::test]
    async fn the_client_signals_and_the_risk_are_stored_with_the_verification() {
        let pool = database().await;
        let risk = serde_json::json!({"decision": "monitor", "rules": [], "notes": []});
        let start = NewVerification {
            client_ip: Some("2001:db8::7".parse().unwrap()),
            client_id: Some(ClientId::parse("session-9").unwrap()),
            risk: Some(risk.clone()),
            ..new_start("+14155550100")
        };
        let bare = new_start("+14155550101");

        insert_verifications(&pool, &[start.clone(), bare.clone()], LIMIT)
            .await
            .unwrap();

        let stored = find_verification(&pool, start.id).await.unwrap().unwrap();
        assert_eq!(stored.client_ip, start.client_ip);
        assert_eq!(stored.client_id, start.client_id);
        assert_eq!(stored.risk, Some(risk));
        let stored = find_verification(&pool, bare.id).await.unwrap().unwrap();
        assert_eq!(
            (stored.client_ip, stored.client_id, stored.risk),
            (None, None, None)
        );
    }

    #[tokio::test]
    async fn a_starts_trace_id_is_kept_with_its_send_for_the_relay_and_the_claim() {
        let pool = database().await;
        let trace = crate::domain::TraceParent::start();
        let traced = NewVerification {
            trace: Some(trace),
            ..new_start("+14155550100")
        };
        let untraced = new_start("+14155550101");
        insert_verifications(&pool, &[traced.clone(), untraced.clone()], LIMIT)
            .await
            .unwrap();

        let mut relayed = Vec::new();
        crate::db::deliveries::relay_unpublished(&pool, Duration::ZERO, 10, |send| {
            relayed.push(send);
            async { true }
        })
        .await
        .unwrap();
        relayed.sort_by_key(|send| send.id != traced.delivery_id);
        assert_eq!(
            relayed
                .iter()
                .map(|send| (send.id, send.trace_id))
                .collect::<Vec<_>>(),
            [
                (traced.delivery_id, Some(trace.trace_id())),
                (untraced.delivery_id, None)
            ]
        );

        let claims = crate::db::deliveries::claim_deliveries(
            &pool,
            &[traced.delivery_id, untraced.delivery_id],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let claimed: Vec<_> = claims
            .iter()
            .map(|claim| match claim {
                crate::db::deliveries::ClaimOutcome::Claimed(send) => send.trace_id,
                other => panic!("not claimed: {other:?}"),
            })
            .collect();
        assert_eq!(claimed, [Some(trace.trace_id()), None]);
    }

    #[tokio::test]
    async fn a_resends_trace_id_is_kept_with_its_send_for_the_relay() {
        let pool = database().await;
        let start = new_start("+14155550100");
        insert_verifications(&pool, std::slice::from_ref(&start), LIMIT)
            .await
            .unwrap();
        crate::db::deliveries::relay_unpublished(&pool, Duration::ZERO, 10, |_| async { true })
            .await
            .unwrap();
        let trace = crate::domain::TraceParent::start();

        let resent = insert_resend(
            &pool,
            start.id,
            DeliveryId::generate(),
            Duration::ZERO,
            LIMIT,
            &[],
            Some(trace),
        )
        .await
        .unwrap()
        .0;

        let ResendOutcome::Created(send) = resent else {
            panic!("not resent: {resent:?}")
        };
        let mut relayed = Vec::new();
        crate::db::deliveries::relay_unpublished(&pool, Duration::ZERO, 10, |send| {
            relayed.push((send.id, send.trace_id));
            async { true }
        })
        .await
        .unwrap();
        assert_eq!(relayed, [(send.id, Some(trace.trace_id()))]);
    }

    #[tokio::test]
    async fn a_new_start_cancels_the_numbers_earlier_pending_verification_and_no_other() {
        let pool = database().await;
        let earlier = new_start("+14155550100");
        let other_number = new_start("+14155550101");
        insert_verifications(&pool, &[earlier.clone(), other_number.clone()], LIMIT)
            .await
            .unwrap();

        let later = new_start("+14155550100");
        let outcomes = insert_verifications(&pool, std::slice::from_ref(&later), LIMIT)
            .await
            .unwrap();

        assert_eq!(summary(&outcomes), ["created pending"]);
        assert_eq!(
            status_of(&pool, earlier.id).await,
            VerificationStatus::Canceled
        );
        assert_eq!(
            status_of(&pool, later.id).await,
            VerificationStatus::Pending
        );
        assert_eq!(
            status_of(&pool, other_number.id).await,
            VerificationStatus::Pending
        );
    }

    #[tokio::test]
    async fn of_two_starts_for_one_number_in_one_batch_the_later_one_stays_pending() {
        let pool = database().await;
        let first = new_start("+14155550100");
        let second = new_start("+14155550100");

        let outcomes = insert_verifications(&pool, &[first.clone(), second.clone()], LIMIT)
            .await
            .unwrap();

        assert_eq!(summary(&outcomes), ["created canceled", "created pending"]);
        assert_eq!(
            status_of(&pool, first.id).await,
            VerificationStatus::Canceled
        );
        assert_eq!(
            status_of(&pool, second.id).await,
            VerificationStatus::Pending
        );
    }

    #[tokio::test]
    async fn a_start_over_the_limit_cancels_nothing() {
        let pool = database().await;
        let starts: Vec<NewVerification> = (0..3).map(|_| new_start("+14155550100")).collect();
        insert_verifications(&pool, &starts, LIMIT).await.unwrap();

        let outcomes = insert_verifications(&pool, &[new_start("+14155550100")], LIMIT)
            .await
            .unwrap();

        assert_eq!(summary(&outcomes), ["rate limited"]);
        assert_eq!(
            status_of(&pool, starts[2].id).await,
            VerificationStatus::Pending
        );
    }

    #[tokio::test]
    async fn keyed_and_plain_starts_share_one_batch_and_a_repeated_key_creates_nothing() {
        let pool = database().await;
        let first = keyed("+14155550100", "k1", 1);
        insert_verifications(&pool, std::slice::from_ref(&first), LIMIT)
            .await
            .unwrap();

        let outcomes = insert_verifications(
            &pool,
            &[
                keyed("+14155550101", "k1", 1),
                new_start("+14155550102"),
                keyed("+14155550103", "k1", 2),
                keyed("+14155550104", "k2", 1),
            ],
            LIMIT,
        )
        .await
        .unwrap();

        assert_eq!(
            summary(&outcomes),
            [
                "replayed",
                "created pending",
                "key reused",
                "created pending"
            ]
        );
        let CreateOutcome::Replayed {
            verification_id, ..
        } = &outcomes[0].outcome
        else {
            unreachable!()
        };
        assert_eq!(*verification_id, first.id);
        assert_eq!(
            status_of(&pool, first.id).await,
            VerificationStatus::Pending,
            "a replay cancels nothing"
        );
    }

    #[tokio::test]
    async fn a_repeat_of_a_key_in_the_same_batch_gets_the_first_requests_outcome() {
        let pool = database().await;
        let first = keyed("+14155550100", "k1", 1);

        let outcomes = insert_verifications(
            &pool,
            &[
                first.clone(),
                keyed("+14155550100", "k1", 1),
                keyed("+14155550100", "k1", 2),
            ],
            LIMIT,
        )
        .await
        .unwrap();

        assert_eq!(
            summary(&outcomes),
            ["created pending", "replayed", "key reused"]
        );
        assert!(matches!(
            &outcomes[1].outcome,
            CreateOutcome::Replayed { verification_id, response: None } if *verification_id == first.id
        ));
    }

    #[tokio::test]
    async fn a_keyed_start_over_the_limit_gives_its_key_back() {
        let pool = database().await;
        let starts: Vec<NewVerification> = (0..3).map(|_| new_start("+14155550100")).collect();
        insert_verifications(&pool, &starts, LIMIT).await.unwrap();

        let refused = insert_verifications(&pool, &[keyed("+14155550100", "k1", 1)], LIMIT)
            .await
            .unwrap();
        let after = insert_verifications(&pool, &[keyed("+14155550101", "k1", 2)], LIMIT)
            .await
            .unwrap();

        assert_eq!(summary(&refused), ["rate limited"]);
        assert_eq!(summary(&after), ["created pending"]);
    }

    #[tokio::test]
    async fn starts_and_resends_count_against_one_send_limit() {
        let pool = database().await;
        let start = new_start("+14155550100");
        insert_verifications(&pool, std::slice::from_ref(&start), LIMIT)
            .await
            .unwrap();
        let resend = || {
            insert_resend(
                &pool,
                start.id,
                DeliveryId::generate(),
                Duration::ZERO,
                LIMIT,
                &[],
                None,
            )
        };
        assert!(matches!(
            resend().await.unwrap().0,
            ResendOutcome::Created(_)
        ));
        assert!(matches!(
            resend().await.unwrap().0,
            ResendOutcome::Created(_)
        ));

        let another_start = insert_verifications(&pool, &[new_start("+14155550100")], LIMIT)
            .await
            .unwrap();
        let another_resend = resend().await.unwrap().0;

        assert_eq!(summary(&another_start), ["rate limited"]);
        assert!(
            matches!(another_resend, ResendOutcome::RateLimited { .. }),
            "{another_resend:?}"
        );
    }

    #[tokio::test]
    async fn a_resend_keeps_its_verification_pending_and_the_numbers_other_one_canceled() {
        let pool = database().await;
        let earlier = new_start("+14155550100");
        let later = new_start("+14155550100");
        insert_verifications(&pool, std::slice::from_ref(&earlier), LIMIT)
            .await
            .unwrap();
        insert_verifications(&pool, std::slice::from_ref(&later), LIMIT)
            .await
            .unwrap();

        let resent = insert_resend(
            &pool,
            later.id,
            DeliveryId::generate(),
            Duration::ZERO,
            LIMIT,
            &[],
            None,
        )
        .await
        .unwrap()
        .0;
        let of_canceled = insert_resend(
            &pool,
            earlier.id,
            DeliveryId::generate(),
            Duration::ZERO,
            LIMIT,
            &[],
            None,
        )
        .await
        .unwrap()
        .0;

        assert!(matches!(resent, ResendOutcome::Created(_)), "{resent:?}");
        assert_eq!(
            status_of(&pool, later.id).await,
            VerificationStatus::Pending
        );
        assert!(
            matches!(
                of_canceled,
                ResendOutcome::NotPending(VerificationStatus::Canceled)
            ),
            "{of_canceled:?}"
        );
    }
}
