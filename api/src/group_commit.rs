//! Group commit for new verifications.
//!
//! Each start request needs the number's lock, the send-limit count and two inserts, in a
//! transaction that Postgres flushes to disk when it commits. Done per request, those
//! round trips, statement starts and flushes were most of Postgres' work under load, and
//! Postgres was the bottleneck. Requests are handed to [`GroupCommit`] instead, which
//! records whatever has arrived meanwhile with one statement and one commit
//! ([`verifications::insert_verifications`]) and answers each request with its own
//! outcome. Nothing waits for a batch to fill: a batch starts as soon as one of the
//! [`BATCHES_IN_FLIGHT`] slots is free, so under light load it holds a single request and
//! under heavy load batches grow by themselves while earlier ones are in Postgres.
//!
//! The jobs of the sends created are handed to the outbox here, as soon as their batch
//! commits, so a send whose requester went away meanwhile is still published at once.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use verify_common::db::verifications::{self, CreateOutcome, NewVerification, SendLimit};
use verify_common::db::{DbError, Pool};

use crate::outbox::Outbox;

/// Most requests recorded by one statement.
const MAX_BATCH: usize = 128;
/// Batches being recorded at once (each holds one pooled connection meanwhile).
const BATCHES_IN_FLIGHT: usize = 4;
/// Requests waiting for a batch; beyond this, requests wait to be queued.
const QUEUE: usize = 4_096;

/// Hands new verifications to the background batcher.
pub struct GroupCommit {
    queue: mpsc::Sender<Waiting>,
}

/// A request waiting to be recorded, and where its outcome goes.
struct Waiting {
    new: NewVerification,
    outcome: oneshot::Sender<Result<CreateOutcome, DbError>>,
}

impl GroupCommit {
    /// Starts the batcher; it stops once this handle (and every clone of the state holding
    /// it) is dropped and the last batch is recorded.
    pub fn start(pool: Pool, outbox: Arc<Outbox>, limit: SendLimit) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(record_batches(pool, outbox, limit, waiting));
        Self { queue }
    }

    /// Records a verification and its first send (in the next batch), unless the number
    /// is over its send limit; the send's job is already handed to the outbox on return.
    ///
    /// # Errors
    /// [`DbError`] when the batch could not be recorded: then nothing of it was.
    pub async fn insert(&self, new: NewVerification) -> Result<CreateOutcome, DbError> {
        let (outcome, answer) = oneshot::channel();
        self.queue
            .send(Waiting { new, outcome })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> DbError {
    DbError::Unavailable("the API is shutting down".to_owned())
}

async fn record_batches(
    pool: Pool,
    outbox: Arc<Outbox>,
    limit: SendLimit,
    mut waiting: mpsc::Receiver<Waiting>,
) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        // Take a slot first, then everything that queued up while none was free.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if waiting.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let pool = pool.clone();
        let outbox = Arc::clone(&outbox);
        tokio::spawn(async move {
            record(&pool, &outbox, limit, batch).await;
            drop(slot);
        });
    }
}

async fn record(pool: &Pool, outbox: &Outbox, limit: SendLimit, batch: Vec<Waiting>) {
    let (news, answers): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|waiting| (waiting.new, waiting.outcome))
        .unzip();
    match verifications::insert_verifications(pool, &news, limit).await {
        Ok(outcomes) => {
            for (outcome, answer) in outcomes.into_iter().zip(answers) {
                if let CreateOutcome::Created(created) = &outcome {
                    outbox.publish(created.1.id);
                }
                // A requester that went away needs no answer; its send stands.
                let _ = answer.send(Ok(outcome));
            }
        }
        Err(error) => {
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }
}
