//! Building and running the API: connect, migrate, bind, serve until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verify_common::config::{
    AbuseSettings, ApiSettings, DatabaseSettings, OtpSettings, RabbitSettings, ReceiptSettings,
    SecretSettings, SmsSettings, WebhookDestinationSettings, redact_url,
};
use verify_common::db::starts::SendLimit;
use verify_common::db::{self, DbError};
use verify_common::dependency::wait_for;
use verify_common::domain::new_template_engine;
use verify_common::metrics::{Registry, run_upkeep};
use verify_common::queue::{QueueError, SmsPublisher};

use crate::abuse::AbuseControls;
use crate::auth::ApiKeys;
use crate::group_commit::record_starts;
use crate::metrics::ApiMetrics;
use crate::outbox::{Outbox, OutboxTasks, RelaySchedule};
use crate::receipts::ReceiptKeys;
use crate::routes::{ENDPOINTS, routes};
use crate::server::ConnectionLimits;
use crate::state::AppState;
use crate::template_cache::TemplateCache;

/// Everything the API process is configured with.
#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub rabbit: RabbitSettings,
    #[command(flatten)]
    pub secret: SecretSettings,
    #[command(flatten)]
    pub otp: OtpSettings,
    #[command(flatten)]
    pub sms: SmsSettings,
    #[command(flatten)]
    pub api: ApiSettings,
    #[command(flatten)]
    pub abuse: AbuseSettings,
    #[command(flatten)]
    pub receipts: ReceiptSettings,
    /// The API reads only whether internal destinations are allowed; the workers deliver.
    #[command(flatten)]
    pub webhooks: WebhookDestinationSettings,
}

/// A bound, ready-to-run API.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    outbox_tasks: OutboxTasks,
    grace: std::time::Duration,
    /// Where the session that hears announcements (key revocations, rule changes) connects.
    database: DatabaseSettings,
    connection_limits: ConnectionLimits,
    abuse_refresh: std::time::Duration,
    breaker_interval: std::time::Duration,
    held_receipt_interval: std::time::Duration,
    expiry_sweep_interval: std::time::Duration,
}

impl Application {
    /// Connects to Postgres (creating the database and applying migrations) and RabbitMQ,
    /// waiting for each up to its start-up patience, and binds the listening socket.
    ///
    /// # Errors
    /// When a dependency cannot be reached or the address cannot be bound; the message
    /// names which.
    pub async fn build(config: ApiConfig) -> anyhow::Result<Self> {
        let secret = config.secret.code_secret()?;
        let otp = config.otp.policy()?;
        let pool = wait_for(
            "Postgres",
            config.database.startup_wait(),
            |e| matches!(e, DbError::Unavailable(_)),
            || db::connect_pool(&config.database),
        )
        .await
        .with_context(|| {
            format!(
                "connecting to Postgres at {}",
                redact_url(&config.database.url)
            )
        })?;
        db::migrate(&pool)
            .await
            .context("applying database migrations")?;
        let metrics = Arc::new(ApiMetrics::new(
            Registry::new(),
            pool.clone(),
            ENDPOINTS.iter().map(|endpoint| endpoint.path),
        ));
        let abuse = AbuseControls::load(pool.clone(), config.abuse.mode, Arc::clone(&metrics))
            .await
            .context("loading the abuse rules")?;
        let publisher = wait_for(
            "RabbitMQ",
            config.rabbit.startup_wait(),
            QueueError::is_unreachable,
            || SmsPublisher::connect(&config.rabbit, "verify-api"),
        )
        .await
        .with_context(|| {
            format!(
                "connecting to RabbitMQ at {}",
                redact_url(&config.rabbit.url)
            )
        })?;
        let listener = TcpListener::bind(config.api.addr)
            .await
            .with_context(|| format!("binding {}", config.api.addr))?;
        // Without a public URL, Twilio's signatures are checked against the address this
        // process listens on, which is what a provider on the same host (or a test) calls.
        let public_url = match &config.receipts.public_url {
            Some(url) => url.clone(),
            None => format!(
                "http://{}",
                listener.local_addr().context("reading the bound address")?
            ),
        };
        let receipt_keys = ReceiptKeys {
            public_url,
            twilio_auth_token: config.receipts.twilio_auth_token.clone(),
            http_token: config.receipts.http_receipt_token.clone(),
        };
        if config.api.api_key.is_none() {
            tracing::warn!(
                "VERIFY_API_KEY is not set: only keys created with `verify-api keys create` are accepted"
            );
        }
        let (outbox, outbox_tasks) = Outbox::new(
            pool.clone(),
            Arc::new(publisher),
            RelaySchedule {
                interval: config.api.outbox_interval(),
                min_age: config.api.outbox_min_age(),
            },
            metrics.outbox_backlog().clone(),
        );
        let templates = Arc::new(new_template_engine());
        let outbox = Arc::new(outbox);
        let send_limit = SendLimit {
            max_sends: config.api.send_limit,
            window: config.api.send_limit_window(),
        };
        let state = AppState {
            api_keys: Arc::new(ApiKeys::new(config.api.api_key.as_ref(), pool.clone())),
            starts: record_starts(pool.clone(), Arc::clone(&outbox), send_limit),
            pool,
            outbox,
            secret,
            otp,
            max_segments: config.sms.max_segments,
            send_limit,
            api: Arc::new(config.api.clone()),
            template_cache: Arc::new(TemplateCache::new(Arc::clone(&templates))),
            templates,
            abuse: Arc::new(abuse),
            receipt_keys: Arc::new(receipt_keys),
            webhooks_allow_private: config.webhooks.allow_private,
            metrics,
        };
        Ok(Self {
            listener,
            state,
            outbox_tasks,
            grace: config.api.shutdown_grace(),
            database: config.database,
            connection_limits: ConnectionLimits {
                header_read_timeout: config.api.header_read_timeout(),
                idle_timeout: config.api.idle_timeout(),
                max_connections: usize::try_from(config.api.max_connections)
                    .expect("a u32 fits in usize on the platforms we build for"),
            },
            abuse_refresh: config.abuse.refresh_interval(),
            breaker_interval: config.abuse.breaker_interval(),
            held_receipt_interval: config.receipts.held_receipt_interval(),
            expiry_sweep_interval: config.api.expiry_sweep_interval(),
        })
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    /// When the socket has no local address (it always has once bound).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets in-flight
    /// requests finish (bounded by the configured grace period).
    ///
    /// # Errors
    /// Never in practice; kept for symmetry with other start-up steps.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // The outbox outlives the server by the time it takes to write the last marks.
        let outbox_stop = CancellationToken::new();
        let outbox = tokio::spawn(self.outbox_tasks.run(outbox_stop.clone()));
        tokio::spawn(run_upkeep(
            self.state.metrics.registry().clone(),
            shutdown.clone(),
        ));
        tokio::spawn(crate::housekeeping::run(
            self.state.pool.clone(),
            Arc::clone(&self.state.abuse),
            shutdown.clone(),
        ));
        let abuse = tokio::spawn(crate::abuse::run(
            Arc::clone(&self.state.abuse),
            self.abuse_refresh,
            shutdown.clone(),
        ));
        tokio::spawn(crate::breaker::run(
            Arc::clone(&self.state.abuse),
            self.state.pool.clone(),
            self.breaker_interval,
            shutdown.clone(),
        ));
        tokio::spawn(crate::expiry::run(
            self.state.pool.clone(),
            Arc::clone(&self.state.metrics),
            self.expiry_sweep_interval,
            shutdown.clone(),
        ));
        tokio::spawn(crate::receipts::run(
            self.state.pool.clone(),
            self.held_receipt_interval,
            shutdown.clone(),
        ));
        tokio::spawn(crate::notifications::follow(
            self.database,
            Arc::clone(&self.state.api_keys),
            Arc::clone(&self.state.abuse),
            shutdown.clone(),
        ));
        let server = crate::server::serve(
            self.listener,
            routes(self.state),
            self.connection_limits,
            shutdown.clone(),
        );
        tokio::pin!(server);
        tokio::select! {
            () = &mut server => {}
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(self.grace).await;
            } => tracing::warn!("in-flight requests did not finish within the grace period"),
        }
        outbox_stop.cancel();
        let _ = outbox.await;
        // Its last counter write, which began when the shutdown did.
        let _ = abuse.await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command};

    use super::ApiConfig;

    #[test]
    fn the_api_offers_only_the_webhook_setting_it_reads() {
        let help = ApiConfig::augment_args(Command::new("verify-api"))
            .render_long_help()
            .to_string();

        assert!(help.contains("--webhook-allow-private"), "{help}");
        for worker_only in [
            "--webhook-concurrency",
            "--webhook-timeout-ms",
            "--webhook-retry-delays-ms",
            "--webhook-relay-interval-ms",
        ] {
            assert!(!help.contains(worker_only), "{worker_only} in:\n{help}");
        }
    }
}
