//! The webhook consume loop: its own connection, channel, prefetch and concurrency
//! limit, so an endpoint that hangs holds webhook slots only, never a send's.
//!
//! Outcomes map to acknowledgements here: `Done` → ack; `RetryLater` → publish to the
//! retry step's delay queue, wait for the confirm, then ack; a database error or a
//! failed retry publish → nack with requeue after a pause. An unreadable message is
//! logged and acked: nothing could ever deliver it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use verify_common::config::RabbitSettings;
use verify_common::queue::connect;
use verify_common::queue::webhooks::{
    DeliverWebhook, WebhookPublisher, WebhookQueueNames, declare_webhooks,
};

use crate::webhooks::{WebhookDeps, WebhookOutcome, deliver_webhook};

/// Pause before requeueing a job that could not be settled.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between reconnection attempts.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// Consumes webhook jobs until `shutdown`, reconnecting after connection losses.
pub struct WebhookConsumer {
    pub rabbit: RabbitSettings,
    pub concurrency: u16,
    pub grace: Duration,
    pub deps: Arc<WebhookDeps>,
    pub publisher: Arc<WebhookPublisher>,
}

impl WebhookConsumer {
    /// Runs consume sessions until shut down, then lets in-flight attempts finish for at
    /// most one grace period (their jobs are redelivered otherwise).
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(usize::from(self.concurrency.max(1))));
        let mut pause = Duration::from_millis(200);
        loop {
            match self.session(&shutdown, &tracker, &permits).await {
                Ok(()) => break,
                Err(reason) => {
                    tracing::warn!(%reason, "webhook consumer lost its connection; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
                }
            }
        }
        tracker.close();
        let _ = tokio::time::timeout(self.grace, tracker.wait()).await;
    }

    /// One connection's consuming; `Ok` when shutdown was asked for.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
        permits: &Arc<Semaphore>,
    ) -> Result<(), String> {
        let names = WebhookQueueNames::new(&self.rabbit.queue_prefix);
        let connection = connect(&self.rabbit.url, "verify-worker-webhooks")
            .await
            .map_err(|e| e.to_string())?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .basic_qos(self.concurrency.max(1), BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        declare_webhooks(
            &channel,
            &names,
            self.deps.retry_delays.len(),
            self.rabbit.queue_expires_secs.map(Duration::from_secs),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut consumer = channel
            .basic_consume(
                names.deliver_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let end = loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                permit = Arc::clone(permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break Ok(()),
                },
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => break Err(e.to_string()),
                None => break Err("the consumer was canceled".to_owned()),
            };
            let deps = Arc::clone(&self.deps);
            let publisher = Arc::clone(&self.publisher);
            tracker.spawn(async move {
                settle(delivery, &deps, &publisher).await;
                drop(permit);
            });
        };
        if end.is_ok() {
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            let _ = tokio::time::timeout(self.grace, async {
                tracker.close();
                tracker.wait().await;
            })
            .await;
            let _ = channel.close(200, "worker stopping".into()).await;
            let _ = connection.close(200, "worker stopping".into()).await;
        }
        end
    }
}

/// Makes one attempt and acknowledges its message according to the outcome.
async fn settle(delivery: Delivery, deps: &WebhookDeps, publisher: &WebhookPublisher) {
    let job = match DeliverWebhook::decode(&delivery.data) {
        Ok(job) => job,
        Err(error) => {
            let reason = format!("unreadable webhook job: {error}");
            match publisher.park_unreadable(&delivery.data, &reason).await {
                Ok(()) => {
                    tracing::error!(%error, queue = %publisher.names().dead_queue, "parked an unreadable webhook job");
                    ack(&delivery).await;
                }
                Err(park_error) => {
                    tracing::warn!(%error, %park_error, "could not park an unreadable webhook job; requeueing");
                    tokio::time::sleep(REQUEUE_PAUSE).await;
                    nack(&delivery).await;
                }
            }
            return;
        }
    };
    match deliver_webhook(job, deps).await {
        Ok(WebhookOutcome::Done) => ack(&delivery).await,
        Ok(WebhookOutcome::RetryLater { job, step, delay }) => {
            match publisher.publish(&job, Some((step, delay))).await {
                Ok(()) => ack(&delivery).await,
                Err(error) => {
                    tracing::warn!(webhook = %job.delivery_id, %error, "could not schedule a webhook retry; requeueing");
                    tokio::time::sleep(REQUEUE_PAUSE).await;
                    nack(&delivery).await;
                }
            }
        }
        Err(error) => {
            tracing::warn!(webhook = %job.delivery_id, %error, "could not record a webhook attempt; requeueing");
            tokio::time::sleep(REQUEUE_PAUSE).await;
            nack(&delivery).await;
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(%error, "webhook ack failed");
    }
}

async fn nack(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(error) = delivery.acker.nack(options).await {
        tracing::warn!(%error, "webhook nack failed");
    }
}
