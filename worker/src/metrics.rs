//! The worker's metrics: their names, the handles sends record through, and the
//! `GET /metrics` endpoint a worker serves at `VERIFY_WORKER_METRICS_ADDR`.
//!
//! Every name is a constant here, so adding a metric is a constant, a line describing
//! it in [`WorkerMetrics::new`] and a call where it happens. A worker has one provider,
//! so the handles of every send status and provider outcome are taken once, at build
//! time: recording a send is an atomic add.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verify_common::config::ProviderKind;
use verify_common::db::Pool;
use verify_common::metrics::{Counter, Gauge, Histogram, PoolGauges, Registry};
use warp::Filter;
use warp::http::header::CONTENT_TYPE;
use warp::reply::Reply;

/// Sends that reached an end or a retry, by `provider` and `status`.
pub const SENDS: &str = "verify_sends_total";
/// Provider requests' duration, by `provider` and `outcome`.
pub const PROVIDER_REQUEST_DURATION: &str = "verify_provider_request_duration_seconds";
/// Retries scheduled after a transient provider error, by `provider`.
pub const SEND_RETRIES: &str = "verify_send_retries_total";
/// Jobs moved to the dead-letter queue, by `reason`.
pub const DEAD_LETTERS: &str = "verify_dead_letters_total";
/// Jobs this worker is working on now.
pub const SENDS_IN_FLIGHT: &str = "verify_sends_in_flight";
/// Webhook delivery attempts, by `outcome`.
pub const WEBHOOK_ATTEMPTS: &str = "verify_webhook_attempts_total";
/// Webhook endpoints' answer times, by `outcome`.
pub const WEBHOOK_ATTEMPT_DURATION: &str = "verify_webhook_attempt_duration_seconds";
/// Recorded webhook events this worker handed to RabbitMQ.
pub const WEBHOOKS_RELAYED: &str = "verify_webhooks_relayed_total";

/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How a provider request ended, as `verify_provider_request_duration_seconds` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderOutcome {
    /// The provider accepted the message.
    Accepted,
    /// A failure worth retrying (a timeout, a 5xx, a 429).
    TransientError,
    /// The provider refused the message for good.
    PermanentError,
}

/// How a send's attempt ended, as `verify_sends_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Handed to the provider.
    Sent,
    /// Failed for good (the provider refused it, attempts ran out, it could not be
    /// rendered).
    Failed,
    /// Failed for now; a retry is scheduled.
    Retrying,
    /// Not sent because its verification closed or its code was about to expire.
    Skipped,
}

/// How a webhook attempt ended, as `verify_webhook_attempts_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAttemptOutcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// Another answer, or none; a retry is scheduled.
    Retrying,
    /// Another answer, or none, and the retry schedule has run out.
    Failed,
    /// The endpoint answered 410 Gone and is disabled.
    Gone,
}

impl WebhookAttemptOutcome {
    const ALL: [Self; 4] = [Self::Delivered, Self::Retrying, Self::Failed, Self::Gone];

    fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Gone => "gone",
        }
    }
}

/// The handles of one webhook attempt outcome.
#[derive(Clone)]
struct WebhookAttemptHandles {
    count: Counter,
    duration: Histogram,
}

/// The worker's metrics. Cheap to clone: clones count into the same numbers.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    sent: Counter,
    failed: Counter,
    retrying: Counter,
    skipped: Counter,
    retries: Counter,
    accepted_duration: Histogram,
    transient_duration: Histogram,
    permanent_duration: Histogram,
    in_flight: Gauge,
    /// Indexed like [`WebhookAttemptOutcome::ALL`].
    webhook_attempts: [WebhookAttemptHandles; 4],
    webhooks_relayed: Counter,
}

impl WorkerMetrics {
    /// Registers the metrics of a worker sending through `provider` in `registry`.
    pub fn new(registry: Registry, provider: ProviderKind) -> Self {
        for (name, help) in [
            (
                SENDS,
                "Sends that were sent, failed for good, scheduled a retry or were skipped.",
            ),
            (
                PROVIDER_REQUEST_DURATION,
                "Seconds a provider took to answer a send, by outcome.",
            ),
            (
                SEND_RETRIES,
                "Retries scheduled after a transient provider error.",
            ),
            (
                DEAD_LETTERS,
                "Jobs moved to the dead-letter queue, by reason.",
            ),
            (SENDS_IN_FLIGHT, "Jobs this worker is working on now."),
            (
                WEBHOOK_ATTEMPTS,
                "Webhook delivery attempts: delivered, retrying, failed for good, gone (410).",
            ),
            (
                WEBHOOK_ATTEMPT_DURATION,
                "Seconds a webhook endpoint took to answer, or to fail, by outcome.",
            ),
            (
                WEBHOOKS_RELAYED,
                "Recorded webhook events this worker published to RabbitMQ.",
            ),
        ] {
            registry.describe(name, help);
        }
        let provider = provider_label(provider);
        let send = |status| registry.counter(SENDS, &[("provider", provider), ("status", status)]);
        let duration = |outcome| {
            registry.histogram(
                PROVIDER_REQUEST_DURATION,
                &[("provider", provider), ("outcome", outcome)],
            )
        };
        Self {
            sent: send("sent"),
            failed: send("failed"),
            retrying: send("retrying"),
            skipped: send("skipped"),
            retries: registry.counter(SEND_RETRIES, &[("provider", provider)]),
            accepted_duration: duration("accepted"),
            transient_duration: duration("transient_error"),
            permanent_duration: duration("permanent_error"),
            in_flight: registry.gauge(SENDS_IN_FLIGHT, &[]),
            webhook_attempts: WebhookAttemptOutcome::ALL.map(|outcome| {
                let labels = [("outcome", outcome.as_str())];
                WebhookAttemptHandles {
                    count: registry.counter(WEBHOOK_ATTEMPTS, &labels),
                    duration: registry.histogram(WEBHOOK_ATTEMPT_DURATION, &labels),
                }
            }),
            webhooks_relayed: registry.counter(WEBHOOKS_RELAYED, &[]),
            registry,
        }
    }

    /// The registry these metrics are kept in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records how long a provider request took and how it ended.
    pub fn provider_request(&self, outcome: ProviderOutcome, seconds: f64) {
        match outcome {
            ProviderOutcome::Accepted => &self.accepted_duration,
            ProviderOutcome::TransientError => &self.transient_duration,
            ProviderOutcome::PermanentError => &self.permanent_duration,
        }
        .record(seconds);
    }

    /// Counts a send's attempt ending with `status`; a retry is also counted in
    /// `verify_send_retries_total`.
    pub fn send(&self, status: SendStatus) {
        match status {
            SendStatus::Sent => self.sent.increment(1),
            SendStatus::Failed => self.failed.increment(1),
            SendStatus::Retrying => {
                self.retrying.increment(1);
                self.retries.increment(1);
            }
            SendStatus::Skipped => self.skipped.increment(1),
        }
    }

    /// Counts a job dead-lettered for `reason` (a `DeadLetterReason` code).
    pub fn dead_letter(&self, reason: &'static str) {
        self.registry
            .counter(DEAD_LETTERS, &[("reason", reason)])
            .increment(1);
    }

    /// Counts a webhook attempt that ended with `outcome` after `seconds`.
    pub fn webhook_attempt(&self, outcome: WebhookAttemptOutcome, seconds: f64) {
        // Declaration order is `ALL`'s order, the order the handles were taken in.
        let handles = &self.webhook_attempts[outcome as usize];
        handles.count.increment(1);
        handles.duration.record(seconds);
    }

    /// Counts `count` webhook events published by the relay.
    pub fn webhooks_relayed(&self, count: usize) {
        self.webhooks_relayed
            .increment(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// Counts a job as in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }
}

/// A job counted in `verify_sends_in_flight`; dropping it ends the count, however the
/// job ends.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn provider_label(provider: ProviderKind) -> &'static str {
    match provider {
        ProviderKind::Twilio => "twilio",
        ProviderKind::Http => "http",
        ProviderKind::Log => "log",
    }
}

/// Serves `GET /metrics` from `registry` on `listener` until `shutdown`, with the pool
/// gauges of `pool` read at each scrape.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    pool: Pool,
    shutdown: CancellationToken,
) {
    let gauges = Arc::new(PoolGauges::new(&registry, pool));
    let route = warp::path!("metrics").and(warp::get()).map(move || {
        gauges.sample();
        warp::reply::with_header(registry.render(), CONTENT_TYPE, TEXT_FORMAT).into_response()
    });
    warp::serve(route)
        .incoming(listener)
        .graceful(shutdown.cancelled_owned())
        .run()
        .await;
}
