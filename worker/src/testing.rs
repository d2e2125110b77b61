//! Test support (feature `test-support`): the workers of a system under test, and a
//! drain that runs the pipeline until nothing is left to do.
//!
//! Background workers consume as in production. [`TestWorkers::drain`] stops them (each
//! finishes what it holds; what it had prefetched returns to the queue), runs every
//! remaining job through the consumer's own `settle`, one at a time, until the work queue
//! and the retry queues are empty and Postgres has no unfinished send, then starts the
//! same number of workers again. So a test can assert that something did *not* happen
//! (no second SMS, no retry) without sleeping and hoping.
//!
//! The workers of one system under test, the draining one included, count into one
//! registry, served at [`TestWorkers::metrics_url`] as a worker process serves its own.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use verify_common::db::{self, DbError, Pool, deliveries};
use verify_common::metrics::Registry;
use verify_common::queue::QueueError;

use crate::consumer::dispatcher::Dispatcher;
use crate::startup::{Worker, WorkerConfig};

/// How often a drain looks again while a job waits out its retry delay or is still
/// being published.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Why a drain did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(
        "the pipeline was not drained within {within:?}: {unfinished} sends unfinished, \
         {waiting_retries} jobs waiting to be retried"
    )]
    NotDrained {
        within: Duration,
        unfinished: i64,
        waiting_retries: u32,
    },
    #[error("building the draining worker: {0:#}")]
    Build(anyhow::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A background worker and how to stop it.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The workers of one system under test, all built from one configuration.
pub struct TestWorkers {
    config: WorkerConfig,
    shutdown: CancellationToken,
    pool: Pool,
    running: Mutex<Vec<Running>>,
    dispatcher: OnceCell<Dispatcher>,
    registry: Registry,
    metrics_url: String,
}

impl TestWorkers {
    /// No worker yet; each one started later stops when `shutdown` is cancelled.
    ///
    /// # Panics
    /// When the configured database cannot be reached: a test without it must fail.
    pub async fn new(config: WorkerConfig, shutdown: CancellationToken) -> Self {
        let pool = db::connect_pool(&config.database)
            .await
            .unwrap_or_else(|e| panic!("connecting the test workers to Postgres: {e}"));
        let registry = Registry::new();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding the test workers' metrics address: {e}"));
        let metrics_url = format!(
            "http://{}/metrics",
            listener
                .local_addr()
                .unwrap_or_else(|e| panic!("the metrics listener's address: {e}"))
        );
        tokio::spawn(crate::metrics::serve(
            listener,
            registry.clone(),
            pool.clone(),
            shutdown.clone(),
        ));
        Self {
            config,
            shutdown,
            pool,
            running: Mutex::new(Vec::new()),
            dispatcher: OnceCell::new(),
            registry,
            metrics_url,
        }
    }

    /// Where the workers' `GET /metrics` is served.
    pub fn metrics_url(&self) -> &str {
        &self.metrics_url
    }

    /// Starts one more background worker (several may share the queue).
    ///
    /// # Panics
    /// When the worker cannot be built.
    pub async fn start(&self) {
        let worker = self.spawn().await;
        self.running.lock().await.push(worker);
    }

    async fn spawn(&self) -> Running {
        let worker = Worker::build_recording_into(self.config.clone(), self.registry.clone())
            .await
            .unwrap_or_else(|e| panic!("building a worker: {e:#}"));
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(worker.run_until_stopped(stop.clone()));
        Running { stop, task }
    }

    /// Runs the pipeline until nothing is left to do: every job in the work queue and
    /// the retry queues has run to its acknowledgement and every send in Postgres is sent
    /// or failed. Returns how many jobs the drain itself ran. Background workers are
    /// stopped first and started again afterwards.
    ///
    /// # Errors
    /// [`DrainError::NotDrained`] when that does not happen `within`; the others when a
    /// dependency fails.
    ///
    /// # Panics
    /// When a background worker panicked, with its panic; or when one cannot be started
    /// again.
    pub async fn drain(&self, within: Duration) -> Result<usize, DrainError> {
        let mut running = self.running.lock().await;
        let stopped = running.len();
        for worker in running.drain(..) {
            worker.stop.cancel();
            if let Err(error) = worker.task.await
                && error.is_panic()
            {
                // A worker that panicked fails the test that drains it.
                std::panic::resume_unwind(error.into_panic());
            }
        }
        let result = self.run_until_drained(within).await;
        for _ in 0..stopped {
            running.push(self.spawn().await);
        }
        result
    }

    async fn run_until_drained(&self, within: Duration) -> Result<usize, DrainError> {
        let dispatcher = self
            .dispatcher
            .get_or_try_init(|| async {
                let worker =
                    Worker::build_recording_into(self.config.clone(), self.registry.clone())
                        .await
                        .map_err(DrainError::Build)?;
                Ok::<_, DrainError>(worker.into_dispatcher().await?)
            })
            .await?;
        let deadline = Instant::now() + within;
        let mut ran = 0;
        loop {
            if Instant::now() >= deadline {
                return Err(DrainError::NotDrained {
                    within,
                    unfinished: deliveries::count_unfinished(&self.pool).await?,
                    waiting_retries: dispatcher.waiting_retries().await?,
                });
            }
            if dispatcher.dispatch_one().await? {
                ran += 1;
                continue;
            }
            let waiting_retries = dispatcher.waiting_retries().await?;
            let unfinished = deliveries::count_unfinished(&self.pool).await?;
            if waiting_retries == 0 && unfinished == 0 {
                // A retry may have left its delay queue for the work queue between the
                // `get` above and the count: only an empty work queue after an empty
                // count means nothing is left.
                if !dispatcher.dispatch_one().await? {
                    return Ok(ran);
                }
                ran += 1;
                continue;
            }
            // A job is waiting out its retry delay, or its publish is still on its way.
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}
