//! The outbox: no accepted verification is lost when RabbitMQ is unreachable, and no
//! request waits for RabbitMQ.
//!
//! A send's row is committed before the request is answered, so Postgres always knows
//! what must be sent. The job is then handed to a background dispatcher, which publishes
//! it with a publisher confirm (many in flight at once) while the request returns; the
//! broker's confirm latency (it confirms a persistent message once it is on disk) never
//! reaches the producer. A worker's claim marks a send published (its job was consumed);
//! a send whose job is still waiting in the queue a little after its confirm (a backlog,
//! no worker running) is marked by the API, in batches. Waiting first means that under
//! normal flow the claim has already done it and the API writes nothing. The relay
//! periodically publishes queued sends that were never marked (the publish failed, timed
//! out, waited too long, or the process died between commit and publish); it takes them
//! in one short statement and publishes holding no lock or connection, so a worker
//! claiming one of those sends meanwhile does not wait for the broker. A crash after
//! the confirm but before the mark re-publishes a job that is already queued; the
//! worker's guarded claim makes that duplicate harmless.
//!
//! A job carries its request's trace in its `traceparent` header. The trace id is also
//! kept with the send (written by the start statement), so a job the relay publishes
//! stays in the same trace.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use verify_common::db::{Pool, deliveries};
use verify_common::domain::{DeliveryId, TraceParent};
use verify_common::metrics::Gauge;
use verify_common::queue::{QueueError, SendSms, SmsPublisher};

/// Longest the dispatcher waits for one confirm before leaving the job to the relay.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Committed sends waiting for the dispatcher; beyond this they are left to the relay.
const DISPATCH_BACKLOG: usize = 65_536;
/// Publishes awaiting their confirm at once.
const PUBLISHES_IN_FLIGHT: usize = 1_024;
/// Marks waiting to be written; beyond this, marks are dropped (the relay re-publishes
/// those jobs, harmlessly).
const MARK_BACKLOG: usize = 65_536;
/// Most marks written in one `UPDATE`.
const MARK_BATCH: usize = 1_000;
/// A confirmed job is marked published by the API no sooner than this fraction of the
/// relay's minimum age after its confirm (most are claimed by then), and so no later than
/// about twice that: well before the relay would consider it.
const MARK_DELAY_DIVISOR: u32 = 5;
/// Most sends the relay publishes per round.
const RELAY_BATCH: i64 = 500;

/// Hands committed sends to the background publisher.
pub(crate) struct Outbox {
    publisher: Arc<SmsPublisher>,
    dispatch: mpsc::Sender<Committed>,
}

/// A committed send waiting to be published, the trace its job belongs to, and since
/// when.
struct Committed {
    id: DeliveryId,
    trace: Option<TraceParent>,
    at: Instant,
}

/// The background half of the outbox: the dispatcher, the mark writer and the relay.
pub(crate) struct OutboxTasks {
    pool: Pool,
    publisher: Arc<SmsPublisher>,
    dispatch: mpsc::Receiver<Committed>,
    schedule: RelaySchedule,
    /// Set to what each relay round found overdue.
    backlog: Gauge,
}

/// How often the relay runs and how old an unconfirmed send must be to be relayed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelaySchedule {
    pub interval: Duration,
    pub min_age: Duration,
}

impl Outbox {
    pub(crate) fn new(
        pool: Pool,
        publisher: Arc<SmsPublisher>,
        schedule: RelaySchedule,
        backlog: Gauge,
    ) -> (Self, OutboxTasks) {
        let (sender, receiver) = mpsc::channel(DISPATCH_BACKLOG);
        (
            Self {
                publisher: Arc::clone(&publisher),
                dispatch: sender,
            },
            OutboxTasks {
                pool,
                publisher,
                dispatch: receiver,
                schedule,
                backlog,
            },
        )
    }

    /// Queues the job of a committed send for publishing and returns at once. A full
    /// backlog (the broker is down or slow) is not the caller's problem: the send is
    /// durable and the relay publishes it.
    pub(crate) fn publish(&self, id: DeliveryId, trace: Option<TraceParent>) {
        let committed = Committed {
            id,
            trace,
            at: Instant::now(),
        };
        if self.dispatch.try_send(committed).is_err() {
            tracing::debug!(delivery = %id, "publish backlog full; left to the outbox relay");
        }
    }

    /// The broker connection, for readiness probes.
    pub(crate) fn publisher(&self) -> &SmsPublisher {
        &self.publisher
    }
}

impl OutboxTasks {
    /// Runs the dispatcher, the mark writer and the relay until `shutdown`; then publishes
    /// what is still queued and writes the last marks.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let (marks_sender, marks) = mpsc::channel(MARK_BACKLOG);
        let relay = relay(
            self.pool.clone(),
            Arc::clone(&self.publisher),
            self.schedule,
            self.backlog,
            shutdown.clone(),
        );
        // Jobs older than half the relay's minimum age are left to the relay, so the two
        // never publish the same job.
        let stale_after = self.schedule.min_age / 2;
        let dispatch = dispatch(
            self.publisher,
            self.dispatch,
            marks_sender,
            stale_after,
            shutdown,
        );
        let marks = write_marks(self.pool, marks, self.schedule.min_age / MARK_DELAY_DIVISOR);
        tokio::join!(relay, dispatch, marks);
    }
}

async fn dispatch(
    publisher: Arc<SmsPublisher>,
    mut queued: mpsc::Receiver<Committed>,
    marks: mpsc::Sender<Confirmed>,
    stale_after: Duration,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(PUBLISHES_IN_FLIGHT));
    let mut publishing = JoinSet::new();
    loop {
        let committed = tokio::select! {
            committed = queued.recv() => committed,
            () = shutdown.cancelled() => {
                // No request is running any more: publish what is left, then stop.
                queued.close();
                queued.recv().await
            }
        };
        let Some(committed) = committed else {
            break;
        };
        if committed.at.elapsed() > stale_after {
            tracing::debug!(delivery = %committed.id, "publish waited too long; left to the outbox relay");
            continue;
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let publisher = Arc::clone(&publisher);
        let marks = marks.clone();
        publishing.spawn(async move {
            let job = SendSms::new(committed.id).traced(committed.trace);
            match publish_confirmed(&publisher, &job).await {
                Ok(()) => {
                    let confirmed = Confirmed {
                        id: committed.id,
                        at: Instant::now(),
                    };
                    if marks.try_send(confirmed).is_err() {
                        tracing::debug!(delivery = %committed.id, "mark backlog full; the relay will re-publish this job");
                    }
                }
                Err(error) => {
                    let trace_id = committed.trace.map(|trace| trace.trace_id().to_string());
                    tracing::warn!(delivery = %committed.id, trace_id, %error, "job not confirmed; left to the outbox relay");
                }
            }
            drop(slot);
        });
        while publishing.try_join_next().is_some() {}
    }
    while publishing.join_next().await.is_some() {}
}

async fn publish_confirmed(publisher: &SmsPublisher, job: &SendSms) -> Result<(), QueueError> {
    tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(job))
        .await
        .map_err(|_| QueueError::Timeout(PUBLISH_TIMEOUT))?
}

/// A job the broker confirmed, and when.
struct Confirmed {
    id: DeliveryId,
    at: Instant,
}

/// Writes marks in batches, each once its newest mark is `delay` old, until every sender is
/// gone and the backlog is empty (then without waiting: the process is stopping).
async fn write_marks(pool: Pool, mut marks: mpsc::Receiver<Confirmed>, delay: Duration) {
    let mut batch = Vec::with_capacity(MARK_BATCH);
    while marks.recv_many(&mut batch, MARK_BATCH).await > 0 {
        if let Some(newest) = batch.last()
            && !marks.is_closed()
        {
            tokio::time::sleep_until(newest.at + delay).await;
        }
        flush(&pool, &mut batch).await;
    }
}

async fn flush(pool: &Pool, batch: &mut Vec<Confirmed>) {
    let ids: Vec<DeliveryId> = batch.iter().map(|confirmed| confirmed.id).collect();
    if let Err(error) = deliveries::mark_published(pool, &ids).await {
        tracing::warn!(%error, count = batch.len(), "could not mark jobs published; the relay will re-publish them");
    }
    batch.clear();
}

async fn relay(
    pool: Pool,
    publisher: Arc<SmsPublisher>,
    schedule: RelaySchedule,
    backlog: Gauge,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(schedule.interval) => {}
        }
        let result = deliveries::relay_unpublished(&pool, schedule.min_age, RELAY_BATCH, |send| {
            let publisher = Arc::clone(&publisher);
            // The request's span is not known any more, only its trace: the relay's
            // publish is a span of its own in that trace.
            let job = SendSms::new(send.id).traced(send.trace_id.map(TraceParent::continuing));
            async move {
                match publisher.publish(&job).await {
                    Ok(()) => true,
                    Err(error) => {
                        let trace_id = send.trace_id.map(|id| id.to_string());
                        tracing::warn!(delivery = %send.id, trace_id, %error, "relay could not publish");
                        false
                    }
                }
            }
        })
        .await;
        match result {
            Ok(round) => {
                // The round's count stands for the backlog: the relay takes every overdue
                // send up to its batch size, so no scrape needs a query of its own.
                backlog.set(round.due as f64);
                if round.published > 0 {
                    tracing::info!(count = round.published, "relayed unpublished send jobs");
                }
            }
            Err(error) => tracing::warn!(%error, "outbox relay failed"),
        }
    }
}
