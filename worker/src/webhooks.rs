//! Webhook deliveries: the relay that hands recorded events to RabbitMQ, and one attempt
//! start to finish (sign, POST, record, decide); knows nothing of AMQP consumers.
//!
//! An attempt's outcome: a 2xx delivers; 410 Gone abandons the delivery and disables the
//! endpoint; anything else (another status, a timeout, a refused destination) retries
//! after the next delay of the schedule, with ±10 % jitter, until the schedule runs out.
//! Destinations are checked when the request is made, not only when the endpoint was
//! saved: the resolver refuses internal addresses and the connection goes to an address
//! it allowed, so a name that later resolves inward (DNS rebinding) reaches nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use verify_common::config::WebhookSettings;
use verify_common::db::webhooks::{self, AttemptVerdict, DeliveryToSend, WebhookAttempt};
use verify_common::db::{DbError, Pool};
use verify_common::domain::webhook::{is_public_address, webhook_message_id};
use verify_common::group_commit::GroupCommit;
use verify_common::queue::webhooks::{DeliverWebhook, WebhookPublisher};

use crate::deliver::BATCH_LIMITS;
use crate::metrics::{WebhookAttemptOutcome, WorkerMetrics};

/// Deliveries a relay publishes per round.
const RELAY_BATCH: i64 = 500;

/// What an attempt decided for its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Nothing more to do (delivered, failed for good, abandoned, or gone).
    Done,
    /// Publish `job` to the delay queue of retry `step`, to run after `delay`.
    RetryLater {
        job: DeliverWebhook,
        step: usize,
        delay: Duration,
    },
}

/// The lookups of concurrent attempts, and their records, each batched into one
/// statement (see [`GroupCommit`]) with the send path's limits: the lookups and records
/// of concurrent attempts share statements and commits, which took most of an event's
/// cost in Postgres when each attempt had its own.
pub struct WebhookLedger {
    lookups: GroupCommit<Uuid, Option<DeliveryToSend>>,
    records: GroupCommit<WebhookAttempt, ()>,
}

impl WebhookLedger {
    /// Starts the two batchers on `pool`.
    pub fn start(pool: &Pool) -> Self {
        let looking = pool.clone();
        let recording = pool.clone();
        Self {
            lookups: GroupCommit::start(BATCH_LIMITS, move |ids: Vec<Uuid>| {
                let pool = looking.clone();
                async move { webhooks::find_deliveries_to_send(&pool, &ids).await }
            }),
            records: GroupCommit::start(BATCH_LIMITS, move |batch: Vec<WebhookAttempt>| {
                let pool = recording.clone();
                async move {
                    webhooks::record_attempts(&pool, &batch).await?;
                    Ok(vec![(); batch.len()])
                }
            }),
        }
    }
}

/// Everything an attempt needs.
pub struct WebhookDeps {
    pub pool: Pool,
    pub ledger: WebhookLedger,
    pub client: reqwest::Client,
    pub retry_delays: Vec<Duration>,
    pub allow_private: bool,
    pub metrics: WorkerMetrics,
}

impl WebhookDeps {
    /// The HTTP client of webhook deliveries: its timeout, no redirects (a redirect could
    /// lead anywhere), no proxy, and the resolver that refuses internal addresses unless
    /// they are allowed.
    ///
    /// # Errors
    /// When the client cannot be built.
    pub fn new(
        pool: Pool,
        settings: &WebhookSettings,
        metrics: WorkerMetrics,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout().min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent("Verify-Webhooks/1");
        if !settings.destinations.allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        Ok(Self {
            ledger: WebhookLedger::start(&pool),
            pool,
            client: builder.build()?,
            retry_delays: settings.retry_delays(),
            allow_private: settings.destinations.allow_private,
            metrics,
        })
    }
}

/// Resolves names and keeps only public addresses; fails when none is left, so the
/// request never connects inward.
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found
                .into_iter()
                .filter(|address| is_public_address(address.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} resolves only to internal addresses").into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Makes one attempt of a delivery and records it.
///
/// # Errors
/// [`DbError`] when the delivery cannot be read or the attempt recorded: the job should
/// be retried as it is.
pub async fn deliver_webhook(
    job: DeliverWebhook,
    deps: &WebhookDeps,
) -> Result<WebhookOutcome, DbError> {
    let Some(delivery) = deps.ledger.lookups.submit(job.delivery_id).await? else {
        // The endpoint was deleted, and its deliveries with it.
        return Ok(WebhookOutcome::Done);
    };
    if !delivery.open {
        webhooks::abandon_delivery(&deps.pool, delivery.id).await?;
        return Ok(WebhookOutcome::Done);
    }
    let started = std::time::Instant::now();
    let (status_code, error) = match post(&delivery, deps).await {
        Ok(status) => (Some(status), None),
        Err(error) => (None, Some(error)),
    };
    let answered_in = started.elapsed().as_secs_f64();
    let step = usize::try_from(job.attempt).unwrap_or(usize::MAX);
    let retry_delay = deps.retry_delays.get(step.saturating_sub(1)).copied();
    let verdict = match status_code {
        Some(code) if (200..300).contains(&code) => AttemptVerdict::Delivered,
        Some(410) => AttemptVerdict::Gone,
        _ if retry_delay.is_some() => AttemptVerdict::RetryLater,
        _ => AttemptVerdict::Failed,
    };
    deps.ledger
        .records
        .submit(WebhookAttempt {
            delivery_id: delivery.id,
            attempt: i32::try_from(job.attempt).unwrap_or(i32::MAX),
            status_code,
            error: error.clone(),
            verdict,
        })
        .await?;
    deps.metrics.webhook_attempt(
        match verdict {
            AttemptVerdict::Delivered => WebhookAttemptOutcome::Delivered,
            AttemptVerdict::RetryLater => WebhookAttemptOutcome::Retrying,
            AttemptVerdict::Failed => WebhookAttemptOutcome::Failed,
            AttemptVerdict::Gone => WebhookAttemptOutcome::Gone,
        },
        answered_in,
    );
    tracing::info!(
        webhook = %delivery.id,
        endpoint = delivery.endpoint_id,
        attempt = job.attempt,
        status = status_code,
        error = error.as_deref(),
        verdict = ?verdict,
        "webhook attempt"
    );
    Ok(match (verdict, retry_delay) {
        (AttemptVerdict::RetryLater, Some(delay)) => WebhookOutcome::RetryLater {
            job: job.next(),
            step,
            delay: jittered(delay),
        },
        _ => WebhookOutcome::Done,
    })
}

/// `delay` spread by ±10 %, so endpoints that failed together are not retried together.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// POSTs the signed payload; the status, or why no answer came.
async fn post(delivery: &DeliveryToSend, deps: &WebhookDeps) -> Result<u16, String> {
    if !deps.allow_private
        && let Some(ip) = delivery.url.literal_ip()
        && !is_public_address(ip)
    {
        return Err(refused(ip));
    }
    let body = serde_json::to_vec(&delivery.payload)
        .map_err(|e| format!("the payload cannot be serialised: {e}"))?;
    let id = message_id(delivery);
    let timestamp = chrono::Utc::now().timestamp();
    let signature = delivery.secret.sign(&id, timestamp, &body);
    let response = deps
        .client
        .post(delivery.url.as_url().clone())
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    Ok(response.status().as_u16())
}

/// The `webhook-id` of every attempt of a delivery.
pub fn message_id(delivery: &DeliveryToSend) -> String {
    webhook_message_id(delivery.id)
}

fn refused(ip: IpAddr) -> String {
    format!("refused: {ip} is an internal address")
}

/// A request error without its URL (which may carry a producer's token in its query).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Publishes recorded deliveries until `shutdown`: every `interval`, takes those not yet
/// published, publishes their first jobs (waiting for the confirms) and marks them, in
/// one transaction. Several workers can relay at once; the transaction's row locks keep
/// them from publishing one delivery together, and a job published twice is harmless
/// (the second finds it finished or delivers it again with the same `webhook-id`).
pub async fn relay(
    pool: Pool,
    publisher: Arc<WebhookPublisher>,
    metrics: WorkerMetrics,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match relay_once(&pool, &publisher).await {
            Ok(published) => {
                metrics.webhooks_relayed(published);
                // A full batch: more may be waiting.
                if published as i64 >= RELAY_BATCH {
                    continue;
                }
            }
            Err(error) => tracing::warn!(%error, "could not relay webhook events"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One round of [`relay`]; how many deliveries it published.
///
/// # Errors
/// When Postgres or the broker fails; nothing of the round is marked published then, so
/// the next round publishes it again.
pub async fn relay_once(pool: &Pool, publisher: &WebhookPublisher) -> anyhow::Result<usize> {
    Ok(
        webhooks::relay_unpublished(pool, RELAY_BATCH, |ids| async move {
            let jobs: Vec<DeliverWebhook> = ids.into_iter().map(DeliverWebhook::first).collect();
            futures_util::future::try_join_all(jobs.iter().map(|job| publisher.publish(job, None)))
                .await
                .map(drop)
        })
        .await?,
    )
}
