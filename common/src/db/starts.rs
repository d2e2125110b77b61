//! New sends: starting verifications (in batches, each with its first send, some under an
//! idempotency key) and resending a verification's code, each under the per-number send
//! limit. Both call one SQL function each (migrations V7 and V9), and both apply the limit
//! through the same one, `send_limit_waits`.

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
use crate::domain::abuse::ClientId;
use crate::domain::otp::NONCE_LEN;
use crate::domain::{
    DeliveryId, OtpCodeLength, PhoneNumber, Sender, TemplateId, TemplateLocale, Variables,
    VerificationId, VerificationStatus,
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
    /// What the abuse rules made of the request (a JSON object).
    pub risk: Option<serde_json::Value>,
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
    /// The idempotency key was used before with the same body: nothing new was created.
    /// `response` is the first answer, if it was stored.
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

/// The call of the `start_verifications` function (migration V9), which writes the
/// idempotency keys, applies the send limit, cancels the numbers' earlier open
/// verifications and inserts the rows of a whole batch in one statement. Its rows are the
/// request's position (`ord`), the limit's wait (`retry_after_secs`), the key's verdicts
/// (`key_reused`, `replay_of`, `replay_response`), then the verification's columns
/// prefixed `v_` and the send's prefixed `d_`.
static START_VERIFICATIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT s.ord, s.retry_after_secs, s.key_reused, s.replay_of, s.replay_response, {}, {}
         FROM start_verifications($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                                  $15, $16, $17, $18, $19) s",
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
) -> Result<Vec<CreateOutcome>, DbError> {
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
    let client = pool.get().await?;
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
                &client_ips,
                &client_ids,
                &risks,
                &key_scopes,
                &keys,
                &request_hashes,
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
            outcome_from_row(row, &layouts)
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
}

/// The call of the `resend_verification` function (migration V7): the send's columns are
/// prefixed `d_`.
static RESEND_VERIFICATION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT r.status, r.live, r.too_soon_secs, r.retry_after_secs, {}
         FROM resend_verification($1, $2, $3, $4, $5) r",
        prefixed_columns::<DeliveryRow>("(r.delivery)", "d_"),
    )
});

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
    let client = pool.get().await?;
    let Some(row) = client
        .query_opt(
            RESEND_VERIFICATION.as_str(),
            &[
                &id.as_uuid(),
                &delivery_id.as_uuid(),
                &seconds(min_interval),
                &seconds(limit.window),
                &i64::from(limit.max_sends),
            ],
        )
        .await?
    else {
        return Ok(ResendOutcome::NotFound);
    };
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
    if let Some(wait) = named::<Option<f64>>(&row, "too_soon_secs")?.filter(|w| *w > 0.0) {
        return Ok(ResendOutcome::TooSoon {
            retry_after: retry_after_from(Some(wait)),
        });
    }
    if let Some(wait) = named::<Option<f64>>(&row, "retry_after_secs")? {
        return Ok(ResendOutcome::RateLimited {
            retry_after: retry_after_from(Some(wait)),
        });
    }
    let delivery = Layout::<DeliveryRow>::find(&row, "d_")?.read(&row)?;
    Ok(ResendOutcome::Created(delivery.try_into()?))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{
        CreateOutcome, NewVerification, ResendOutcome, SendLimit, insert_resend,
        insert_verifications,
    };
    use crate::db::idempotency::IdempotencyClaim;
    use crate::db::verifications::find_verification;
    use crate::db::{Pool, build_pool, migrate};
    use crate::domain::abuse::ClientId;
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
    fn summary(outcomes: &[CreateOutcome]) -> Vec<String> {
        outcomes
            .iter()
            .map(|outcome| match outcome {
                CreateOutcome::Created(created) => {
                    format!("created {}", created.0.stored_status.as_str())
                }
                CreateOutcome::RateLimited { .. } => "rate limited".to_owned(),
                CreateOutcome::Replayed { .. } => "replayed".to_owned(),
                CreateOutcome::KeyReused => "key reused".to_owned(),
            })
            .collect()
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
        } = &outcomes[0]
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
            &outcomes[1],
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
            )
        };
        assert!(matches!(resend().await.unwrap(), ResendOutcome::Created(_)));
        assert!(matches!(resend().await.unwrap(), ResendOutcome::Created(_)));

        let another_start = insert_verifications(&pool, &[new_start("+14155550100")], LIMIT)
            .await
            .unwrap();
        let another_resend = resend().await.unwrap();

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
        )
        .await
        .unwrap();
        let of_canceled = insert_resend(
            &pool,
            earlier.id,
            DeliveryId::generate(),
            Duration::ZERO,
            LIMIT,
        )
        .await
        .unwrap();

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
