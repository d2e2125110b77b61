//! The run's world: the private Postgres and RabbitMQ, the system's processes, and the
//! traffic source, set up once and restored to health between scenarios.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::postgres::{DATABASE, PrivatePostgres};
use crate::rabbitmq::PrivateRabbit;
use crate::settings::ChaosSettings;
use crate::stack::{Stack, StackConfig};
use crate::traffic::{NumberPlan, Traffic, TrafficShape};

/// How long a claimed send belongs to a worker in the suite (the product default is 60 s);
/// short so a killed worker's claims are recovered within a scenario.
pub const SEND_LEASE: Duration = Duration::from_secs(20);

/// The prefix of every number the fault scenarios' traffic sends to.
const FAULT_TRAFFIC_PREFIX: &str = "+1415";

/// Everything a scenario works with.
pub struct Harness {
    pub settings: ChaosSettings,
    pub postgres: PrivatePostgres,
    pub rabbit: PrivateRabbit,
    pub stack: Stack,
    postgres_up: bool,
    rabbit_up: bool,
    numbers: Arc<NumberPlan>,
    template_id: i64,
}

impl Harness {
    /// Creates the private services under the work directory and starts the whole system.
    ///
    /// # Errors
    /// When a service or process cannot be started; the message says which.
    pub async fn start(settings: ChaosSettings) -> anyhow::Result<Self> {
        let work = settings.work_dir.clone();
        prepare_work_dir(&work)?;
        let log_dir = work.join("logs");
        std::fs::create_dir_all(&log_dir)?;

        println!("private Postgres on 127.0.0.1:{}", settings.pg_port);
        let postgres = PrivatePostgres::create(
            &work.join("postgres"),
            settings.pg_port,
            settings.pg_bin.clone(),
        )
        .await?;
        postgres.start().await?;
        match Self::start_rest(&settings, &work, log_dir, &postgres).await {
            Ok((rabbit, stack, template_id)) => Ok(Self {
                settings,
                postgres,
                rabbit,
                stack,
                postgres_up: true,
                rabbit_up: true,
                numbers: Arc::new(NumberPlan::default()),
                template_id,
            }),
            Err(error) => {
                // The cluster runs detached from us; everything else dies with its handle.
                postgres.shut_down().await;
                Err(error)
            }
        }
    }

    async fn start_rest(
        settings: &ChaosSettings,
        work: &Path,
        log_dir: PathBuf,
        postgres: &PrivatePostgres,
    ) -> anyhow::Result<(PrivateRabbit, Stack, i64)> {
        println!("private RabbitMQ on 127.0.0.1:{}", settings.amqp_port);
        let mut rabbit = PrivateRabbit::prepare(
            &work.join("rabbitmq"),
            &settings.rabbitmq_bin,
            settings.amqp_port,
            settings.epmd_port,
        )?;
        rabbit.start().await?;
        let mut stack = Stack::new(StackConfig {
            bin_dir: settings.bin_dir.clone(),
            log_dir,
            database_url: postgres.url(DATABASE),
            amqp_url: rabbit.url(),
            api_port: settings.api_port,
            sink_port: settings.sink_port,
            send_lease: SEND_LEASE,
        })?;
        println!(
            "starting verify-sink, verify-api and {} workers (logs: {})",
            settings.workers,
            stack.log_dir().display()
        );
        let started = async {
            stack.start_sink().await?;
            stack.migrate().await?;
            stack.start_api().await?;
            stack.scale_workers_to(usize::from(settings.workers))?;
            // The fault scenarios send to consecutive numbers of +1415, which is what
            // pumping looks like; they test delivery, not the abuse rules, so their
            // numbers are on the allow list, as QA traffic would be.
            stack.allow_prefix(FAULT_TRAFFIC_PREFIX).await?;
            stack.create_template().await
        }
        .await;
        match started {
            Ok(template_id) => Ok((rabbit, stack, template_id)),
            Err(error) => {
                stack.shut_down().await;
                rabbit.shut_down().await;
                Err(error)
            }
        }
    }

    /// Starts traffic at the configured rate.
    pub fn traffic(&self, short_ttl_every: u32) -> Traffic {
        Traffic::start(
            self.stack.http().clone(),
            self.stack.api_url(),
            self.template_id,
            Arc::clone(&self.numbers),
            TrafficShape {
                rate: self.settings.rate,
                short_ttl_every,
            },
        )
    }

    /// The template every scenario's traffic uses.
    pub fn template_id(&self) -> i64 {
        self.template_id
    }

    /// Stops the private Postgres.
    ///
    /// # Errors
    /// When pg_ctl fails.
    pub async fn stop_postgres(&mut self) -> anyhow::Result<()> {
        self.postgres_up = false;
        self.postgres.stop().await
    }

    /// Starts the private Postgres again.
    ///
    /// # Errors
    /// When pg_ctl fails.
    pub async fn start_postgres(&mut self) -> anyhow::Result<()> {
        self.postgres.start().await?;
        self.postgres_up = true;
        Ok(())
    }

    /// Stops the private broker.
    ///
    /// # Errors
    /// When the node does not stop.
    pub async fn stop_rabbit(&mut self) -> anyhow::Result<()> {
        self.rabbit_up = false;
        self.rabbit.stop().await
    }

    /// Starts the private broker again (its durable queues and messages survive).
    ///
    /// # Errors
    /// When the node does not start.
    pub async fn start_rabbit(&mut self) -> anyhow::Result<()> {
        self.rabbit.start().await?;
        self.rabbit_up = true;
        Ok(())
    }

    /// Brings everything back to health after a scenario, whatever it left behind:
    /// both dependencies up, the API running, the full worker pool, a healthy provider.
    ///
    /// # Errors
    /// When something cannot be restored; the run stops then.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        if !self.postgres_up {
            self.start_postgres().await.context("restoring Postgres")?;
        }
        if !self.rabbit_up {
            self.start_rabbit().await.context("restoring RabbitMQ")?;
        }
        if !self.stack.api_running() {
            self.stack.start_api().await.context("restoring the API")?;
        }
        self.stack
            .scale_workers_to(usize::from(self.settings.workers))?;
        self.stack.heal_sink().await.context("healing the sink")?;
        Ok(())
    }

    /// Stops everything the run started.
    pub async fn shut_down(&mut self) {
        self.stack.shut_down().await;
        self.rabbit.shut_down().await;
        self.postgres.shut_down().await;
    }
}

/// Empties the work directory; refuses anything outside /tmp, since it is deleted.
fn prepare_work_dir(work: &Path) -> anyhow::Result<()> {
    if !work.starts_with("/tmp/") || work.components().count() < 3 {
        bail!(
            "the work directory {} must be a directory under /tmp (it is emptied)",
            work.display()
        );
    }
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("emptying {}", work.display()))?;
    }
    std::fs::create_dir_all(work)?;
    Ok(())
}
