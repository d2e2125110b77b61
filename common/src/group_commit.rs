//! Group commit: the writes of many concurrent callers recorded by one statement.
//!
//! Under load, Postgres' work per write is dominated by what every statement pays however
//! small it is: a round trip, starting and ending the statement, and flushing its commit to
//! disk. A [`GroupCommit`] takes single writes from any number of tasks and hands whatever
//! has queued up to one call of its `record` function (a statement over arrays), then
//! gives each caller its own result. Nothing waits for a batch to fill: a batch starts as
//! soon as one of the in-flight slots is free and its short `linger` has passed, so under
//! light load it holds one write and adds only the linger, and under heavy load batches
//! grow by themselves while earlier ones are in Postgres.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::db::DbError;

/// How big batches get and how many are recorded at once.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most writes recorded by one call.
    pub max_batch: usize,
    /// Calls running at once (each holds one pooled connection meanwhile).
    pub in_flight: usize,
    /// How long a batch that is not full waits for more writes before it is recorded.
    pub linger: Duration,
}

/// Writes waiting for a batch beyond this many make callers wait to be queued.
const QUEUE: usize = 4_096;

/// A write waiting for its batch, and where its result goes.
type Waiting<I, O> = (I, oneshot::Sender<Result<O, DbError>>);

/// Hands writes to the background batcher. Cloning it shares the batcher.
pub struct GroupCommit<I, O> {
    queue: mpsc::Sender<Waiting<I, O>>,
}

impl<I, O> Clone for GroupCommit<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Starts the batcher. `record` gets a batch and must return one result per write, in
    /// order; if it fails, every write of the batch gets its error (so it must record all
    /// of a batch or nothing, as one statement does). The batcher stops once every handle
    /// is dropped and the last batch is recorded.
    pub fn start<F, Fut>(limits: BatchLimits, record: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, DbError>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(record_batches(limits, Arc::new(record), waiting));
        Self { queue }
    }

    /// Records `write` in the next batch and returns its result.
    ///
    /// # Errors
    /// The batch's [`DbError`]; [`DbError::Unavailable`] once the batcher has stopped.
    pub async fn submit(&self, write: I) -> Result<O, DbError> {
        let (result, answer) = oneshot::channel();
        self.queue
            .send((write, result))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> DbError {
    DbError::Unavailable("the process is shutting down".to_owned())
}

async fn record_batches<I, O, F, Fut>(
    limits: BatchLimits,
    record: Arc<F>,
    mut waiting: mpsc::Receiver<Waiting<I, O>>,
) where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<O>, DbError>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    let max_batch = limits.max_batch.max(1);
    loop {
        // Take a slot first, then everything that queued up while none was free.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch);
        if waiting.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        if batch.len() < max_batch && !limits.linger.is_zero() {
            tokio::time::sleep(limits.linger).await;
            while batch.len() < max_batch {
                match waiting.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
        }
        let record = Arc::clone(&record);
        tokio::spawn(async move {
            let (writes, answers): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
            let count = writes.len();
            let recorded = record(writes).await.and_then(|results| {
                if results.len() == count {
                    Ok(results)
                } else {
                    Err(DbError::Corrupt(format!(
                        "{} results for a batch of {count}",
                        results.len()
                    )))
                }
            });
            match recorded {
                Ok(results) => {
                    for (result, answer) in results.into_iter().zip(answers) {
                        // A caller that went away needs no answer; its write stands.
                        let _ = answer.send(Ok(result));
                    }
                }
                Err(error) => {
                    for answer in answers {
                        let _ = answer.send(Err(error.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_batch: 8,
        in_flight: 1,
        linger: Duration::ZERO,
    };

    #[tokio::test]
    async fn every_caller_gets_its_own_result_and_waiting_writes_share_a_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let doubler = GroupCommit::start(LIMITS, move |batch: Vec<u32>| {
            seen.lock().unwrap().push(batch.len());
            async move {
                // Long enough for the other callers to queue up behind the first batch.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(batch.iter().map(|n| n * 2).collect())
            }
        });
        let mut callers = tokio::task::JoinSet::new();
        for n in 0..12_u32 {
            let doubler = doubler.clone();
            callers.spawn(async move { (n, doubler.submit(n).await.unwrap()) });
            tokio::task::yield_now().await;
        }
        for (n, doubled) in callers.join_all().await {
            assert_eq!(doubled, n * 2);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 12);
        assert!(sizes.len() < 12, "writes were batched: {sizes:?}");
        assert!(sizes.iter().all(|size| *size <= 8), "{sizes:?}");
    }

    #[tokio::test]
    async fn a_lingering_batch_takes_in_writes_that_arrive_just_after_the_first() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let limits = BatchLimits {
            linger: Duration::from_millis(200),
            ..LIMITS
        };
        let echo = GroupCommit::start(limits, move |batch: Vec<u32>| {
            seen.lock().unwrap().push(batch.len());
            async move { Ok(batch) }
        });
        let first = tokio::spawn({
            let echo = echo.clone();
            async move { echo.submit(1).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;

        assert_eq!(echo.submit(2).await.unwrap(), 2);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(*sizes.lock().unwrap(), [2]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_writes() {
        let failing = GroupCommit::start(LIMITS, |_batch: Vec<u32>| async {
            Err::<Vec<u32>, _>(DbError::Unavailable("down".to_owned()))
        });
        let result = failing.submit(1).await;
        assert!(matches!(result, Err(DbError::Unavailable(reason)) if reason == "down"));
    }

    #[tokio::test]
    async fn a_record_function_that_loses_results_is_reported_not_misattributed() {
        let lossy = GroupCommit::start(LIMITS, |_batch: Vec<u32>| async { Ok(Vec::<u32>::new()) });
        assert!(matches!(lossy.submit(1).await, Err(DbError::Corrupt(_))));
    }
}
