//! Webhook endpoints, the deliveries recorded for them (by `emit_webhook_event` in the
//! statements that change what an event reports, migration V15), the relay's claims on
//! unpublished deliveries, and each delivery attempt.

use std::future::Future;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::DbError;
use super::rows::{columns, named, read_all, read_one, table_row};
use crate::domain::{WebhookEvent, WebhookSecret, WebhookUrl};

table_row! {
    /// A `webhook_endpoints` row as listed.
    pub(crate) struct WebhookEndpointRow in "webhook_endpoints" {
        id: i64,
        url: String,
        events: Vec<String>,
        disabled_at: Option<DateTime<Utc>>,
        disabled_reason: Option<String>,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    }
    // Read only by the worker that signs a delivery (`find_deliveries_to_send`).
    unread [secret]
}

#[cfg(test)]
table_row! {
    /// `webhook_deliveries`: only the statements below read it.
    pub(crate) struct WebhookDeliveryRow in "webhook_deliveries" {}
    unread [id, endpoint_id, event_type, payload, verification_id, status, attempts,
            published_at, created_at, finished_at]
}

#[cfg(test)]
table_row! {
    /// `webhook_attempts`: only the statements below write it; the tests read it.
    pub(crate) struct WebhookAttemptRow in "webhook_attempts" {}
    unread [delivery_id, attempt, status_code, error, attempted_at]
}

/// An endpoint, without its secret.
#[derive(Debug, Clone)]
pub struct EndpointRecord {
    pub id: i64,
    pub url: WebhookUrl,
    pub events: Vec<WebhookEvent>,
    /// When and why deliveries stopped (the endpoint answered 410 Gone).
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<WebhookEndpointRow> for EndpointRecord {
    type Error = DbError;

    fn try_from(row: WebhookEndpointRow) -> Result<Self, DbError> {
        Ok(Self {
            id: row.id,
            url: WebhookUrl::from_trusted_storage(&row.url)
                .map_err(|e| DbError::Corrupt(e.to_string()))?,
            events: row
                .events
                .iter()
                .map(|name| WebhookEvent::parse(name))
                .collect::<Result<_, _>>()
                .map_err(|e| DbError::Corrupt(e.to_string()))?,
            disabled_at: row.disabled_at,
            disabled_reason: row.disabled_reason,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

fn event_names(events: &[WebhookEvent]) -> Vec<&'static str> {
    events.iter().map(|event| event.as_str()).collect()
}

/// Stores a new endpoint with its secret.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn insert_endpoint(
    pool: &Pool,
    url: &WebhookUrl,
    events: &[WebhookEvent],
    secret: &WebhookSecret,
) -> Result<EndpointRecord, DbError> {
    static INSERT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO webhook_endpoints (url, events, secret) VALUES ($1, $2, $3)
             RETURNING {}",
            columns::<WebhookEndpointRow>()
        )
    });
    let client = pool.get().await?;
    let row = client
        .query_one(
            INSERT.as_str(),
            &[&url.as_str(), &event_names(events), &secret.expose()],
        )
        .await?;
    read_one::<WebhookEndpointRow>(&row)?.try_into()
}

/// Every endpoint, oldest first.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn list_endpoints(pool: &Pool) -> Result<Vec<EndpointRecord>, DbError> {
    static LIST: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM webhook_endpoints ORDER BY id",
            columns::<WebhookEndpointRow>()
        )
    });
    let client = pool.get().await?;
    let rows = client.query(LIST.as_str(), &[]).await?;
    read_all::<WebhookEndpointRow>(&rows)?
        .into_iter()
        .map(TryInto::try_into)
        .collect()
}

/// One endpoint by id.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn find_endpoint(pool: &Pool, id: i64) -> Result<Option<EndpointRecord>, DbError> {
    static FIND: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM webhook_endpoints WHERE id = $1",
            columns::<WebhookEndpointRow>()
        )
    });
    let client = pool.get().await?;
    client
        .query_opt(FIND.as_str(), &[&id])
        .await?
        .map(|row| read_one::<WebhookEndpointRow>(&row)?.try_into())
        .transpose()
}

/// A change to an endpoint; what is `None` stays.
#[derive(Debug, Clone, Default)]
pub struct EndpointChange {
    pub url: Option<WebhookUrl>,
    pub events: Option<Vec<WebhookEvent>>,
    /// `Some(true)` delivers to a disabled endpoint again, `Some(false)` stops deliveries.
    pub enabled: Option<bool>,
}

/// Applies a change. `None` when there is no such endpoint.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn update_endpoint(
    pool: &Pool,
    id: i64,
    change: &EndpointChange,
) -> Result<Option<EndpointRecord>, DbError> {
    static UPDATE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE webhook_endpoints SET
                 url = coalesce($2, url),
                 events = coalesce($3, events),
                 disabled_at = CASE WHEN $4::boolean IS NULL THEN disabled_at
                                    WHEN $4 THEN NULL
                                    ELSE coalesce(disabled_at, now()) END,
                 disabled_reason = CASE WHEN $4::boolean IS NULL THEN disabled_reason
                                        WHEN $4 THEN NULL
                                        ELSE coalesce(disabled_reason, 'disabled through the API') END,
                 updated_at = now()
             WHERE id = $1
             RETURNING {}",
            columns::<WebhookEndpointRow>()
        )
    });
    let client = pool.get().await?;
    client
        .query_opt(
            UPDATE.as_str(),
            &[
                &id,
                &change.url.as_ref().map(WebhookUrl::as_str),
                &change.events.as_deref().map(event_names),
                &change.enabled,
            ],
        )
        .await?
        .map(|row| read_one::<WebhookEndpointRow>(&row)?.try_into())
        .transpose()
}

/// Deletes an endpoint and its deliveries. False when there was none.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn delete_endpoint(pool: &Pool, id: i64) -> Result<bool, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute("DELETE FROM webhook_endpoints WHERE id = $1", &[&id])
        .await?
        > 0)
}

/// Why a relay round published nothing for good.
#[derive(Debug, thiserror::Error)]
pub enum RelayError<E> {
    #[error(transparent)]
    Database(#[from] DbError),
    /// The broker did not confirm every job; none of the round is marked published.
    #[error("publishing webhook jobs failed: {0}")]
    Publish(E),
}

/// Takes up to `limit` deliveries not yet published, oldest first, hands their ids to
/// `publish`, and marks them published once it succeeded: one transaction, whose row
/// locks keep other relays off these deliveries meanwhile (they skip locked rows and take
/// the next ones). If `publish` fails or the relay dies, nothing is marked and the next
/// round publishes them again; a job published twice is harmless. One row version per
/// delivery instead of a lease and then a mark. Returns how many were published.
///
/// # Errors
/// [`RelayError`]: a database failure, or `publish`'s own error.
pub async fn relay_unpublished<F, Fut, E>(
    pool: &Pool,
    limit: i64,
    publish: F,
) -> Result<usize, RelayError<E>>
where
    F: FnOnce(Vec<Uuid>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut client = pool.get().await.map_err(DbError::from)?;
    let transaction = client.transaction().await.map_err(DbError::from)?;
    let statement = transaction
        .prepare_cached(
            "UPDATE webhook_deliveries SET published_at = now()
             WHERE id IN (
                 SELECT id FROM webhook_deliveries
                 WHERE published_at IS NULL
                 ORDER BY created_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .await
        .map_err(DbError::from)?;
    let ids: Vec<Uuid> = transaction
        .query(&statement, &[&limit])
        .await
        .map_err(DbError::from)?
        .iter()
        .map(|row| named(row, "id"))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Ok(0);
    }
    let count = ids.len();
    publish(ids).await.map_err(RelayError::Publish)?;
    transaction.commit().await.map_err(DbError::from)?;
    Ok(count)
}

/// What a worker needs to make one attempt.
#[derive(Debug, Clone)]
pub struct DeliveryToSend {
    pub id: Uuid,
    pub endpoint_id: i64,
    pub url: WebhookUrl,
    pub secret: WebhookSecret,
    /// The body, as stored.
    pub payload: serde_json::Value,
    /// Still `pending`, and its endpoint enabled.
    pub open: bool,
}

/// The deliveries with these ids and their endpoints, one answer per id in the order
/// given: `None` where the delivery or its endpoint was deleted. One statement for the
/// jobs of a whole batch.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn find_deliveries_to_send(
    pool: &Pool,
    ids: &[Uuid],
) -> Result<Vec<Option<DeliveryToSend>>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT d.id, d.endpoint_id, e.url, e.secret, d.payload,
                    d.status = 'pending' AND e.disabled_at IS NULL AS open
             FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.id = ANY($1)",
        )
        .await?;
    let corrupt = |e: crate::domain::WebhookError| DbError::Corrupt(e.to_string());
    let mut found = std::collections::HashMap::with_capacity(ids.len());
    for row in client.query(&statement, &[&ids]).await? {
        let delivery = DeliveryToSend {
            id: named(&row, "id")?,
            endpoint_id: named(&row, "endpoint_id")?,
            url: WebhookUrl::from_trusted_storage(&named::<String>(&row, "url")?)
                .map_err(corrupt)?,
            secret: WebhookSecret::parse(&named::<String>(&row, "secret")?).map_err(corrupt)?,
            payload: named(&row, "payload")?,
            open: named(&row, "open")?,
        };
        found.insert(delivery.id, delivery);
    }
    Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
}

/// What an attempt decided for its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptVerdict {
    /// 2xx: done.
    Delivered,
    /// Another attempt follows later.
    RetryLater,
    /// The last attempt failed: no more.
    Failed,
    /// 410 Gone: no more, and the endpoint is disabled.
    Gone,
}

impl AttemptVerdict {
    /// The delivery's status after this verdict.
    fn delivery_status(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::RetryLater => "pending",
            Self::Failed => "failed",
            Self::Gone => "abandoned",
        }
    }
}

/// One attempt's result.
#[derive(Debug, Clone)]
pub struct WebhookAttempt {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub verdict: AttemptVerdict,
}

/// Records attempts and what they decided, in one statement for a whole batch: the
/// attempt rows, their deliveries' status and, after a 410, the endpoint disabled. A
/// repeated attempt (a job redelivered after a crash) is recorded once; should a batch
/// hold two attempts of one delivery, the later attempt decides its status. The batch's
/// deliveries are locked in id order first, so concurrent batches never wait for each
/// other in a circle, and a delivery deleted meanwhile (its endpoint was) is skipped
/// instead of failing the batch.
///
/// # Errors
/// [`DbError`] on database failure: nothing of the batch was recorded.
pub async fn record_attempts(pool: &Pool, attempts: &[WebhookAttempt]) -> Result<(), DbError> {
    let ids: Vec<Uuid> = attempts.iter().map(|a| a.delivery_id).collect();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
    let status_codes: Vec<Option<i32>> = attempts
        .iter()
        .map(|a| a.status_code.map(i32::from))
        .collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    let statuses: Vec<&str> = attempts
        .iter()
        .map(|a| a.verdict.delivery_status())
        .collect();
    let gone: Vec<bool> = attempts
        .iter()
        .map(|a| a.verdict == AttemptVerdict::Gone)
        .collect();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::int4[], $3::int4[], $4::text[],
                                      $5::text[], $6::bool[])
                      AS i (delivery_id, attempt, status_code, error, status, gone)
             ), locked AS (
                 SELECT d.id FROM webhook_deliveries d
                 WHERE d.id = ANY($1)
                 ORDER BY d.id
                 FOR UPDATE
             ), attempt AS (
                 INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error)
                 SELECT delivery_id, attempt, status_code, error FROM input
                 WHERE delivery_id IN (SELECT id FROM locked)
                 ORDER BY delivery_id, attempt
                 ON CONFLICT (delivery_id, attempt) DO NOTHING
             ), latest AS (
                 SELECT DISTINCT ON (delivery_id) * FROM input
                 ORDER BY delivery_id, attempt DESC
             ), delivery AS (
                 UPDATE webhook_deliveries d
                 SET status = l.status, attempts = greatest(d.attempts, l.attempt),
                     finished_at = CASE WHEN l.status = 'pending' THEN NULL ELSE now() END
                 FROM latest l
                 WHERE d.id = l.delivery_id AND d.id IN (SELECT id FROM locked)
                   AND d.status = 'pending'
                 RETURNING d.endpoint_id, l.gone
             )
             UPDATE webhook_endpoints e
             SET disabled_at = now(), updated_at = now(),
                 disabled_reason = 'the endpoint answered 410 Gone'
             FROM (SELECT DISTINCT endpoint_id FROM delivery WHERE gone) g
             WHERE e.id = g.endpoint_id AND e.disabled_at IS NULL",
        )
        .await?;
    client
        .execute(
            &statement,
            &[&ids, &numbers, &status_codes, &errors, &statuses, &gone],
        )
        .await?;
    Ok(())
}

/// Ends a delivery without an attempt: its endpoint was disabled meanwhile.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn abandon_delivery(pool: &Pool, id: Uuid) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE webhook_deliveries SET status = 'abandoned', finished_at = now()
             WHERE id = $1 AND status = 'pending'",
            &[&id],
        )
        .await?;
    Ok(())
}

/// Deliveries not yet finished (pending), for the tests' drain.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn count_pending_deliveries(pool: &Pool) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) AS pending FROM webhook_deliveries WHERE status = 'pending'",
            &[],
        )
        .await?;
    named(&row, "pending")
}
