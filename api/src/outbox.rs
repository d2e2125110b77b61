//! The outbox: no accepted verification is lost when RabbitMQ is unreachable.
//!
//! A send's row is committed before its job is published, so Postgres always knows what
//! must be sent. After the broker confirms a job, the send is marked published; marks are
//! batched by a background task so the hot path pays one channel send, not one `UPDATE`.
//! The relay periodically publishes queued sends that were never marked (the publish
//! failed, timed out, or the process died between commit and publish). A crash after the
//! confirm but before the mark re-publishes a job that is already queued; the worker's
//! guarded claim makes that duplicate harmless.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use verify_common::db::{Pool, deliveries};
use verify_common::domain::DeliveryId;
use verify_common::queue::{QueueError, SendSms, SmsPublisher};

/// Longest a request waits for the broker's confirm before leaving the job to the relay.
/// A confirm normally takes milliseconds; this only matters while the broker is shutting
/// down or unreachable, and keeps the whole request within the 2 s the API promises then.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Marks waiting to be written; beyond this, marks are dropped (the relay re-publishes
/// those jobs, harmlessly).
const MARK_BACKLOG: usize = 65_536;
/// Most marks written in one `UPDATE`.
const MARK_BATCH: usize = 1_000;
/// Most sends the relay publishes per round.
const RELAY_BATCH: i64 = 500;

/// Publishes send jobs and remembers which were confirmed.
pub struct Outbox {
    publisher: Arc<SmsPublisher>,
    marks: mpsc::Sender<DeliveryId>,
}

/// The background half of the outbox: the mark writer and the relay.
pub struct OutboxTasks {
    pool: Pool,
    publisher: Arc<SmsPublisher>,
    marks: mpsc::Receiver<DeliveryId>,
    schedule: RelaySchedule,
}

/// How often the relay runs and how old an unconfirmed send must be to be relayed.
#[derive(Debug, Clone, Copy)]
pub struct RelaySchedule {
    pub interval: Duration,
    pub min_age: Duration,
}

impl Outbox {
    pub fn new(
        pool: Pool,
        publisher: Arc<SmsPublisher>,
        schedule: RelaySchedule,
    ) -> (Self, OutboxTasks) {
        let (sender, receiver) = mpsc::channel(MARK_BACKLOG);
        (
            Self {
                publisher: Arc::clone(&publisher),
                marks: sender,
            },
            OutboxTasks {
                pool,
                publisher,
                marks: receiver,
                schedule,
            },
        )
    }

    /// Publishes the job of a committed send.
    ///
    /// # Errors
    /// [`QueueError`] when the broker did not confirm in time; the send stays in the
    /// outbox and the relay publishes it later.
    pub async fn publish(&self, id: DeliveryId) -> Result<(), QueueError> {
        tokio::time::timeout(PUBLISH_TIMEOUT, self.publisher.publish(&SendSms::new(id)))
            .await
            .map_err(|_| QueueError::Timeout(PUBLISH_TIMEOUT))??;
        if self.marks.try_send(id).is_err() {
            tracing::debug!(delivery = %id, "mark backlog full; the relay will re-publish this job");
        }
        Ok(())
    }

    /// The broker connection, for readiness probes.
    pub fn publisher(&self) -> &SmsPublisher {
        &self.publisher
    }
}

impl OutboxTasks {
    /// Runs the mark writer and the relay until `shutdown`, then writes the marks still
    /// waiting.
    pub async fn run(self, shutdown: CancellationToken) {
        let relay = relay(
            self.pool.clone(),
            self.publisher,
            self.schedule,
            shutdown.clone(),
        );
        let marks = write_marks(self.pool, self.marks, shutdown);
        tokio::join!(relay, marks);
    }
}

async fn write_marks(
    pool: Pool,
    mut marks: mpsc::Receiver<DeliveryId>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MARK_BATCH);
    loop {
        let received = tokio::select! {
            received = marks.recv_many(&mut batch, MARK_BATCH) => received,
            () = shutdown.cancelled() => {
                marks.close();
                while marks.recv_many(&mut batch, MARK_BATCH).await > 0 {
                    flush(&pool, &mut batch).await;
                }
                return;
            }
        };
        if received == 0 {
            return;
        }
        flush(&pool, &mut batch).await;
    }
}

async fn flush(pool: &Pool, batch: &mut Vec<DeliveryId>) {
    if let Err(error) = deliveries::mark_published(pool, batch).await {
        tracing::warn!(%error, count = batch.len(), "could not mark jobs published; the relay will re-publish them");
    }
    batch.clear();
}

async fn relay(
    pool: Pool,
    publisher: Arc<SmsPublisher>,
    schedule: RelaySchedule,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(schedule.interval) => {}
        }
        let result = deliveries::relay_unpublished(&pool, schedule.min_age, RELAY_BATCH, |id| {
            let publisher = Arc::clone(&publisher);
            async move {
                match publisher.publish(&SendSms::new(id)).await {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::warn!(delivery = %id, %error, "relay could not publish");
                        false
                    }
                }
            }
        })
        .await;
        match result {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "relayed unpublished send jobs"),
            Err(error) => tracing::warn!(%error, "outbox relay failed"),
        }
    }
}
