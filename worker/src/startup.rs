//! Building and running a worker: connect, then consume until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verify_common::config::{
    DatabaseSettings, ProviderSettings, RabbitSettings, SecretSettings, SmsSettings,
    WebhookSettings, WorkerSettings, redact_url,
};
use verify_common::db::{self, DbError, Pool};
use verify_common::dependency::wait_for;
use verify_common::domain::Sender;
use verify_common::metrics::{Registry, run_upkeep};
use verify_common::queue::webhooks::WebhookPublisher;
use verify_common::queue::{QueueError, SmsPublisher};

#[cfg(feature = "test-support")]
use crate::consumer::dispatcher::Dispatcher;
use crate::consumer::webhooks::WebhookConsumer;
use crate::consumer::{Consumer, worker_identity};
use crate::deliver::{Deps, GroupCommitLedger};
use crate::metrics::WorkerMetrics;
use crate::providers::SmsProvider;
use crate::render::SmsRenderer;
use crate::retry::RetryPolicy;
use crate::webhooks::{WebhookDeps, relay};

/// Everything a worker process is configured with.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub rabbit: RabbitSettings,
    #[command(flatten)]
    pub secret: SecretSettings,
    #[command(flatten)]
    pub worker: WorkerSettings,
    #[command(flatten)]
    pub provider: ProviderSettings,
    #[command(flatten)]
    pub sms: SmsSettings,
    #[command(flatten)]
    pub webhooks: WebhookSettings,
}

/// A connected worker, ready to consume.
///
/// Webhooks are delivered by the same process, on a connection, channel and concurrency
/// limit of their own: one deployment unit less to run, while a slow endpoint can only
/// ever hold webhook slots. Each worker also relays recorded events to RabbitMQ.
pub struct Worker {
    consumer: Consumer,
    webhooks: WebhookConsumer,
    relay_interval: std::time::Duration,
    metrics: WorkerMetrics,
    /// Where `GET /metrics` is served, when `VERIFY_WORKER_METRICS_ADDR` is set.
    metrics_listener: Option<TcpListener>,
    pool: Pool,
}

impl Worker {
    /// Connects to Postgres and RabbitMQ, builds the provider client and binds the
    /// metrics address, if one is set; its metrics are its own.
    ///
    /// # Errors
    /// When settings are invalid or a dependency cannot be reached; the message says which.
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        Self::build_recording_into(config, Registry::new()).await
    }

    /// As [`Worker::build`], counting into `registry`, which several workers may share
    /// (the workers of one system under test report as one).
    ///
    /// # Errors
    /// As [`Worker::build`].
    pub async fn build_recording_into(
        config: WorkerConfig,
        registry: Registry,
    ) -> anyhow::Result<Self> {
        let secret = config.secret.code_secret()?;
        Sender::parse(&config.provider.from).map_err(|e| {
            anyhow::anyhow!("VERIFY_SMS_FROM {:?} is invalid: {e}", config.provider.from)
        })?;
        anyhow::ensure!(
            config.worker.concurrency > 0,
            "VERIFY_WORKER_CONCURRENCY must be at least 1"
        );
        // The pool is not sized to the concurrency: sends never hold a connection; their
        // claims and records are batched (at most 4 statements at once, see `deliver`),
        // so N workers stay well inside max_connections.
        let database = config.database.clone();
        let pool = wait_for(
            "Postgres",
            database.startup_wait(),
            |e| matches!(e, DbError::Unavailable(_)),
            || db::connect_pool(&database),
        )
        .await
        .with_context(|| format!("connecting to Postgres at {}", redact_url(&database.url)))?;
        let publisher = wait_for(
            "RabbitMQ",
            config.rabbit.startup_wait(),
            QueueError::is_unreachable,
            || SmsPublisher::connect(&config.rabbit, "verify-worker-publisher"),
        )
        .await
        .with_context(|| {
            format!(
                "connecting to RabbitMQ at {}",
                redact_url(&config.rabbit.url)
            )
        })?;
        let webhook_publisher =
            WebhookPublisher::connect(&config.rabbit, config.webhooks.retry_delays_ms.len())
                .await
                .context("connecting the webhook publisher to RabbitMQ")?;
        let metrics = WorkerMetrics::new(registry, config.provider.kind);
        let webhook_deps = WebhookDeps::new(pool.clone(), &config.webhooks, metrics.clone())
            .context("building the webhook HTTP client")?;
        let metrics_listener = match config.worker.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding VERIFY_WORKER_METRICS_ADDR {addr}"))?,
            ),
            None => None,
        };
        let deps = Deps {
            ledger: GroupCommitLedger::start(
                pool.clone(),
                config.worker.send_lease(),
                config.provider.kind,
            ),
            provider: SmsProvider::from_settings(&config.provider)?,
            renderer: SmsRenderer::new(config.sms.max_segments),
            secret,
            retry: RetryPolicy::from_settings(&config.worker),
            lease: config.worker.send_lease(),
            expiry_margin: config.worker.expiry_margin(),
            default_from: config.provider.from.clone(),
            metrics: metrics.clone(),
        };
        Ok(Self {
            webhooks: WebhookConsumer {
                rabbit: config.rabbit.clone(),
                concurrency: config.webhooks.delivery_concurrency,
                grace: config.worker.shutdown_grace(),
                deps: Arc::new(webhook_deps),
                publisher: Arc::new(webhook_publisher),
            },
            relay_interval: config.webhooks.relay_interval(),
            consumer: Consumer {
                rabbit: config.rabbit,
                concurrency: config.worker.concurrency,
                grace: config.worker.shutdown_grace(),
                deps: Arc::new(deps),
                publisher: Arc::new(publisher),
                identity: worker_identity().into(),
            },
            metrics,
            metrics_listener,
            pool,
        })
    }

    /// The address `GET /metrics` is served at, when one is set.
    ///
    /// # Errors
    /// When the socket has no local address (it always has once bound).
    pub fn metrics_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
    }

    /// Consumes sends and webhook jobs and relays recorded events until `shutdown` is
    /// cancelled, then finishes what is in flight. Serves `GET /metrics` meanwhile, when
    /// an address is set.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let registry = self.metrics.registry().clone();
        // Upkeep runs even when nobody scrapes: it is what keeps recorded histogram
        // samples from piling up.
        tokio::spawn(run_upkeep(registry.clone(), shutdown.clone()));
        if let Some(listener) = self.metrics_listener {
            tokio::spawn(crate::metrics::serve(
                listener,
                registry,
                self.pool,
                shutdown.clone(),
            ));
        }
        let relay = tokio::spawn(relay(
            self.webhooks.deps.pool.clone(),
            Arc::clone(&self.webhooks.publisher),
            self.metrics.clone(),
            self.relay_interval,
            shutdown.clone(),
        ));
        let webhooks = tokio::spawn(self.webhooks.run(shutdown.clone()));
        self.consumer.run(shutdown).await;
        let _ = webhooks.await;
        let _ = relay.await;
    }

    /// Instead of consuming, runs jobs one at a time on request (see [`Dispatcher`]).
    ///
    /// # Errors
    /// [`QueueError`] when RabbitMQ cannot be reached.
    #[cfg(feature = "test-support")]
    pub async fn into_dispatcher(self) -> Result<Dispatcher, QueueError> {
        Dispatcher::open(self.consumer).await
    }
}
