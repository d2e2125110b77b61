//! The consume loop: the only place in the worker that touches lapin.
//!
//! Jobs arrive with a prefetch equal to the concurrency limit: the broker never hands a
//! worker more than it can work on, so unstarted jobs stay in the queue where other
//! workers can take them (and a crash strands at most `concurrency` messages). Each job
//! runs in its own task, bounded by a semaphore with as many permits. Outcomes map to
//! acknowledgements in exactly one place ([`settle`]):
//!
//! - `Done` → ack;
//! - `RetryLater` → publish to a delay queue, wait for the confirm, then ack (so a crash
//!   in between duplicates the job, which the guarded claim makes harmless, rather than
//!   losing it);
//! - `DeadLetter` (and an unreadable message) → publish the message, body unchanged, to
//!   the dead-letter queue with its reason in the headers, wait for the confirm, then
//!   ack; if that publish fails, nack without requeue so RabbitMQ dead-letters it
//!   itself (without the reason, but not lost);
//! - a database error → nack with requeue after a pause: nothing was recorded.
//!
//! Each job is handled in a span of its own (`job`) carrying its trace id, verification
//! id and send id, so every line logged while handling it (the provider call and the
//! recording of the outcome included) can be found by any of them.
//!
//! A lost connection ends the session; the worker reconnects with backoff. Messages
//! in flight on the old channel are redelivered by the broker.
//!
//! With the `test-support` feature, [`dispatcher`] runs jobs one at a time on request
//! through the same [`settle`], so tests can run the pipeline until it is empty.
//!
//! [`webhooks`] is the same loop for webhook jobs, on a connection of its own.

#[cfg(feature = "test-support")]
pub mod dispatcher;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use verify_common::config::RabbitSettings;
use verify_common::domain::DeliveryId;
use verify_common::domain::TraceParent;
use verify_common::queue::headers::trace_parent;
use verify_common::queue::topology::declare;
use verify_common::queue::{
    DeadLetterNote, JobHistory, MessageError, QueueNames, SendSms, SmsPublisher, connect,
};

use crate::deliver::{Deps, deliver_sms};
use crate::outcome::{DeadLetterReason, Outcome};

/// Pause before requeueing a job whose outcome could not be recorded, so a database
/// outage does not turn into a hot redelivery loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between reconnection attempts.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// Consumes until `shutdown` is cancelled, reconnecting after connection losses.
pub struct Consumer {
    pub rabbit: RabbitSettings,
    pub concurrency: u16,
    pub grace: Duration,
    pub deps: Arc<Deps>,
    pub publisher: Arc<SmsPublisher>,
    /// Names this worker in the dead letters it writes (see [`worker_identity`]).
    pub identity: Arc<str>,
}

/// `host/pid`: which worker process dead-lettered a job, for whoever reads the
/// dead-letter queue.
pub fn worker_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host}/{}", std::process::id())
}

/// Why a consume session ended.
enum SessionEnd {
    /// Shutdown was asked for; in-flight jobs may run until `deadline`, one grace period
    /// after the request, however the remaining waits are split.
    ShutdownRequested {
        deadline: Instant,
    },
    ConnectionLost(String),
}

impl Consumer {
    /// Runs consume sessions until shut down, then waits for in-flight jobs to finish, at
    /// most one grace period after the shutdown request in all.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(usize::from(self.concurrency)));
        let mut pause = Duration::from_millis(200);
        let deadline = loop {
            match self.session(&shutdown, &tracker, &permits).await {
                SessionEnd::ShutdownRequested { deadline } => break deadline,
                SessionEnd::ConnectionLost(reason) => {
                    tracing::warn!(%reason, retry_in_ms = pause.as_millis() as u64, "consumer lost its connection; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => break Instant::now() + self.grace,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
                }
            }
        };
        tracker.close();
        if tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight sends did not finish within the grace period; their jobs will be redelivered"
            );
        }
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
        permits: &Arc<Semaphore>,
    ) -> SessionEnd {
        let names = QueueNames::new(&self.rabbit.queue_prefix);
        let connection = match connect(&self.rabbit.url, "verify-worker").await {
            Ok(connection) => connection,
            Err(e) => return SessionEnd::ConnectionLost(e.to_string()),
        };
        let setup = async {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(self.concurrency, BasicQosOptions::default())
                .await?;
            declare(
                &channel,
                &names,
                self.rabbit.queue_expires_secs.map(Duration::from_secs),
            )
            .await
            .map_err(|e| lapin::Error::from(std::io::Error::other(e.to_string())))?;
            let consumer = channel
                .basic_consume(
                    names.send_queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((channel, consumer))
        };
        let (channel, mut consumer) = match setup.await {
            Ok(pair) => pair,
            Err(e) => return SessionEnd::ConnectionLost(e.to_string()),
        };
        tracing::info!(queue = %names.send_queue, concurrency = self.concurrency, "consuming");
        let shutdown_requested = || SessionEnd::ShutdownRequested {
            deadline: Instant::now() + self.grace,
        };
        let end = loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break shutdown_requested(),
                permit = Arc::clone(permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break shutdown_requested(),
                },
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => break shutdown_requested(),
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => break SessionEnd::ConnectionLost(e.to_string()),
                None => break SessionEnd::ConnectionLost("the consumer was canceled".to_owned()),
            };
            let deps = Arc::clone(&self.deps);
            let publisher = Arc::clone(&self.publisher);
            let identity = Arc::clone(&self.identity);
            tracker.spawn(async move {
                settle(delivery, &deps, &publisher, &identity).await;
                drop(permit);
            });
        };
        if let SessionEnd::ShutdownRequested { deadline } = end {
            // Stop deliveries first so nothing new arrives while in-flight jobs finish;
            // the channel stays open so their acks can still be sent.
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            if tokio::time::timeout_at(deadline, async {
                tracker.close();
                tracker.wait().await;
            })
            .await
            .is_err()
            {
                tracing::warn!("in-flight sends did not finish within the grace period");
            }
            let _ = channel.close(200, "worker stopping".into()).await;
            let _ = connection.close(200, "worker stopping".into()).await;
        }
        end
    }
}

/// Runs one job and acknowledges its message according to the outcome.
pub(crate) async fn settle(
    delivery: Delivery,
    deps: &Arc<Deps>,
    publisher: &SmsPublisher,
    identity: &str,
) {
    let trace = trace_parent(&delivery.properties);
    let decoded = SendSms::decode(&delivery.data).map(|job| job.traced(trace));
    let span = job_span(trace, decoded.as_ref().ok().map(|job| job.delivery_id));
    settle_job(delivery, decoded, deps, publisher, identity)
        .instrument(span)
        .await;
}

/// The span every log line of one job is written in: its trace (from the job's
/// `traceparent`, else from its send once claimed), its verification (once claimed) and
/// its send.
fn job_span(trace: Option<TraceParent>, delivery_id: Option<DeliveryId>) -> tracing::Span {
    let span = tracing::info_span!(
        "job",
        trace_id = tracing::field::Empty,
        verification_id = tracing::field::Empty,
        delivery_id = tracing::field::Empty,
    );
    if let Some(trace) = trace {
        span.record("trace_id", tracing::field::display(trace.trace_id()));
    }
    if let Some(id) = delivery_id {
        span.record("delivery_id", tracing::field::display(id));
    }
    span
}

async fn settle_job(
    delivery: Delivery,
    decoded: Result<SendSms, MessageError>,
    deps: &Arc<Deps>,
    publisher: &SmsPublisher,
    identity: &str,
) {
    let _in_flight = deps.metrics.in_flight();
    let job = match decoded {
        Ok(job) => job,
        Err(error) => {
            let reason = DeadLetterReason::UnreadablePayload(error.to_string());
            dead_letter(&delivery, None, deps, publisher, identity, &reason).await;
            return;
        }
    };
    match deliver_sms(&job, deps.as_ref()).await {
        Ok(Outcome::Done) => ack(&delivery).await,
        Ok(Outcome::RetryLater(delay)) => {
            let history = JobHistory::from_properties(&delivery.properties);
            match publisher.publish_delayed(&job, delay, history).await {
                Ok(()) => ack(&delivery).await,
                Err(error) => {
                    tracing::warn!(delivery = %job.delivery_id, %error, "could not schedule a retry; requeueing");
                    tokio::time::sleep(REQUEUE_PAUSE).await;
                    nack(&delivery, true).await;
                }
            }
        }
        Ok(Outcome::DeadLetter(reason)) => {
            dead_letter(
                &delivery,
                Some(job.delivery_id),
                deps,
                publisher,
                identity,
                &reason,
            )
            .await;
        }
        Err(error) => {
            tracing::warn!(delivery = %job.delivery_id, %error, "could not record the outcome; requeueing");
            tokio::time::sleep(REQUEUE_PAUSE).await;
            nack(&delivery, true).await;
        }
    }
}

/// Moves a message to the dead-letter queue with its reason: published there (confirmed)
/// before the original is acked, so a crash in between leaves a copy in both queues,
/// never in neither.
async fn dead_letter(
    delivery: &Delivery,
    delivery_id: Option<DeliveryId>,
    deps: &Deps,
    publisher: &SmsPublisher,
    identity: &str,
    reason: &DeadLetterReason,
) {
    // Counted either way below: the job reaches the dead-letter queue with its reason
    // or, failing that, through RabbitMQ's own dead-lettering.
    deps.metrics.dead_letter(reason.code());
    let reason_text = reason.to_string();
    let note = DeadLetterNote {
        reason_code: reason.code(),
        reason: &reason_text,
        dead_at: Utc::now(),
        worker: identity,
        original_exchange: delivery.exchange.as_str(),
        original_routing_key: delivery.routing_key.as_str(),
    };
    match publisher
        .publish_dead(&delivery.data, &delivery.properties, &note)
        .await
    {
        Ok(()) => {
            tracing::error!(delivery = delivery_id.map(tracing::field::display), code = reason.code(), reason = %reason_text, "dead-lettered a job");
            ack(delivery).await;
        }
        Err(error) => {
            tracing::error!(delivery = delivery_id.map(tracing::field::display), code = reason.code(), reason = %reason_text, %error, "could not publish the dead letter; letting RabbitMQ dead-letter the job without its reason");
            nack(delivery, false).await;
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone; the broker will redeliver and the guarded claim will
        // recognise the finished send.
        tracing::warn!(%error, "ack failed");
    }
}

async fn nack(delivery: &Delivery, requeue: bool) {
    let options = BasicNackOptions {
        requeue,
        ..BasicNackOptions::default()
    };
    if let Err(error) = delivery.acker.nack(options).await {
        tracing::warn!(%error, "nack failed");
    }
}
