//! The system under test as real processes: one verify-sink, one verify-api and a pool of
//! verify-worker processes, configured like `scripts/run` but pointed at the private
//! Postgres and RabbitMQ.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::process::{Process, run_checked};

/// The API key the suite's traffic uses.
pub const API_KEY: &str = "chaos-api-key";
const TWILIO_SID: &str = "ACchaos0000000000000000000000000000";
const TWILIO_TOKEN: &str = "chaos-auth-token";
/// Webhook retry delays: 1 s doubling to 15 s, then every 15 s; 106 s in all.
const WEBHOOK_RETRY_DELAYS_MS: &str = "1000,2000,4000,8000,15000,15000,15000,15000,15000,15000";
/// Every event a webhook endpoint can subscribe to.
const WEBHOOK_EVENTS: [&str; 9] = [
    "verification.approved",
    "verification.canceled",
    "verification.expired",
    "verification.max_attempts_reached",
    "send.sent",
    "send.failed",
    "send.delivered",
    "send.undelivered",
    "abuse.blocked",
];

/// How a verify-* process learns where everything is.
pub struct StackConfig {
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    pub database_url: String,
    pub amqp_url: String,
    pub api_port: u16,
    pub sink_port: u16,
    /// How long a claimed send belongs to a worker; short so the kill scenario sees a
    /// dead worker's claims recovered within its run.
    pub send_lease: Duration,
}

/// The running processes.
pub struct Stack {
    config: StackConfig,
    /// The code secret every process of this run shares (restarted ones too); random, so
    /// no code of a run can be computed from anything in the repository.
    secret: String,
    http: reqwest::Client,
    sink: Option<Process>,
    api: Option<Process>,
    workers: Vec<Process>,
    started_workers: u32,
}

impl Stack {
    /// Checks the binaries exist; starts nothing.
    ///
    /// # Errors
    /// When a binary is missing.
    pub fn new(config: StackConfig) -> anyhow::Result<Self> {
        for binary in ["verify-api", "verify-worker", "verify-sink"] {
            let path = config.bin_dir.join(binary);
            if !path.exists() {
                bail!(
                    "{} does not exist: build first (cargo build --workspace) or pass --bin-dir",
                    path.display()
                );
            }
        }
        let secret: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(Self {
            config,
            secret,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            sink: None,
            api: None,
            workers: Vec::new(),
            started_workers: 0,
        })
    }

    /// The API's base URL.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.config.api_port)
    }

    /// The sink's base URL.
    pub fn sink_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.config.sink_port)
    }

    /// A client for talking to the stack.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn command(&self, binary: &str) -> Command {
        let c = &self.config;
        let mut command = Command::new(c.bin_dir.join(binary));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("DATABASE_URL", &c.database_url)
            .env("AMQP_URL", &c.amqp_url)
            .env("VERIFY_API_ADDR", format!("127.0.0.1:{}", c.api_port))
            .env("VERIFY_SECRET", &self.secret)
            .env("VERIFY_API_KEY", API_KEY)
            .env("VERIFY_SMS_PROVIDER", "twilio")
            .env("VERIFY_TWILIO_BASE_URL", self.sink_url())
            .env("VERIFY_TWILIO_ACCOUNT_SID", TWILIO_SID)
            .env("VERIFY_TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
            .env("VERIFY_SMS_FROM", "+15005550006")
            .env("VERIFY_SINK_ADDR", format!("127.0.0.1:{}", c.sink_port))
            .env("VERIFY_SINK_TWILIO_ACCOUNT_SID", TWILIO_SID)
            .env("VERIFY_SINK_TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
            .env("VERIFY_SEND_LEASE_SECS", c.send_lease.as_secs().to_string())
            // Sends carry a StatusCallback, so the sink's receipts reach the API, as in
            // scripts/run.
            .env("VERIFY_PUBLIC_URL", self.api_url())
            // The webhook scenario's endpoint is the sink, on this machine; its retries
            // come within seconds (about two minutes in all), so an endpoint down for a
            // minute gets every event within the scenario.
            .env("VERIFY_WEBHOOK_ALLOW_PRIVATE", "true")
            .env("VERIFY_WEBHOOK_RETRY_DELAYS_MS", WEBHOOK_RETRY_DELAYS_MS);
        command
    }

    fn log(&self, name: &str) -> PathBuf {
        self.config.log_dir.join(format!("{name}.log"))
    }

    /// Applies the migrations (`verify-api migrate`).
    ///
    /// # Errors
    /// When the migration command fails.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut command = self.command("verify-api");
        command.arg("migrate");
        run_checked(&mut command)
            .await
            .context("verify-api migrate")
    }

    /// Starts the sink and waits until it answers.
    ///
    /// # Errors
    /// When it does not answer within 30 s.
    pub async fn start_sink(&mut self) -> anyhow::Result<()> {
        let process = Process::spawn("sink", self.command("verify-sink"), &self.log("sink"))?;
        self.sink = Some(process);
        let url = format!("{}/healthz", self.sink_url());
        self.wait_until_ok(&url, "verify-sink", Duration::from_secs(30))
            .await
    }

    /// Starts the API and waits until `/readyz` says both dependencies answer.
    ///
    /// # Errors
    /// When it exits or is not ready within 30 s.
    pub async fn start_api(&mut self) -> anyhow::Result<()> {
        self.spawn_api()?;
        self.wait_for_api(Duration::from_secs(30)).await
    }

    /// Starts the API without waiting for it.
    ///
    /// # Errors
    /// When the binary cannot be started.
    pub fn spawn_api(&mut self) -> anyhow::Result<()> {
        let process = Process::spawn("api", self.command("verify-api"), &self.log("api"))?;
        self.api = Some(process);
        Ok(())
    }

    /// Waits until the API's `/readyz` says both dependencies answer.
    ///
    /// # Errors
    /// When it is not ready within `patience`.
    pub async fn wait_for_api(&self, patience: Duration) -> anyhow::Result<()> {
        self.wait_until_ok(
            &format!("{}/readyz", self.api_url()),
            "verify-api",
            patience,
        )
        .await
    }

    /// Worker processes still running.
    pub fn workers_running(&mut self) -> usize {
        self.workers.retain_mut(Process::is_running);
        self.workers.len()
    }

    /// Starts one more worker (logs go to `worker-N.log`).
    ///
    /// # Errors
    /// When the binary cannot be started.
    pub fn start_worker(&mut self) -> anyhow::Result<()> {
        self.started_workers += 1;
        let name = format!("worker-{}", self.started_workers);
        let process = Process::spawn(&name, self.command("verify-worker"), &self.log(&name))?;
        self.workers.push(process);
        Ok(())
    }

    /// Starts workers until `count` run.
    ///
    /// # Errors
    /// When one cannot be started.
    pub fn scale_workers_to(&mut self, count: usize) -> anyhow::Result<()> {
        self.workers.retain_mut(Process::is_running);
        while self.workers.len() < count {
            self.start_worker()?;
        }
        Ok(())
    }

    /// Kills the worker at `index` (modulo the pool) with SIGKILL; returns its name.
    ///
    /// # Errors
    /// When no worker runs or the kill fails.
    pub async fn kill_worker(&mut self, index: usize) -> anyhow::Result<String> {
        if self.workers.is_empty() {
            bail!("no worker to kill");
        }
        let mut worker = self.workers.remove(index % self.workers.len());
        worker.kill_hard().await?;
        Ok(worker.name().to_owned())
    }

    /// Stops every worker with SIGTERM.
    ///
    /// # Errors
    /// When one does not exit within `deadline`.
    pub async fn terminate_workers(&mut self, deadline: Duration) -> anyhow::Result<()> {
        for mut worker in std::mem::take(&mut self.workers) {
            worker.terminate(deadline).await?;
        }
        Ok(())
    }

    /// Sends SIGTERM to the oldest worker and waits for it to exit.
    ///
    /// # Errors
    /// When no worker runs or it does not exit within `deadline`.
    pub async fn terminate_worker(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        if self.workers.is_empty() {
            bail!("no worker to stop");
        }
        let mut worker = self.workers.remove(0);
        worker.terminate(deadline).await
    }

    /// True while the API process runs.
    pub fn api_running(&mut self) -> bool {
        self.api.as_mut().is_some_and(Process::is_running)
    }

    /// Kills the API with SIGKILL.
    ///
    /// # Errors
    /// When the API does not run or the kill fails.
    pub async fn kill_api(&mut self) -> anyhow::Result<()> {
        match self.api.take() {
            Some(mut api) => api.kill_hard().await,
            None => bail!("the API is not running"),
        }
    }

    /// Sends SIGTERM to the API and waits for it to exit.
    ///
    /// # Errors
    /// When the API does not run or does not exit within `deadline`.
    pub async fn terminate_api(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        match self.api.take() {
            Some(mut api) => api.terminate(deadline).await,
            None => bail!("the API is not running"),
        }
    }

    /// Sets the sink's failure injection (`PUT /control`).
    ///
    /// # Errors
    /// When the sink refuses the settings.
    pub async fn control_sink(&self, settings: Value) -> anyhow::Result<()> {
        let response = self
            .http
            .put(format!("{}/control", self.sink_url()))
            .json(&settings)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("the sink refused {settings}: {}", response.text().await?);
        }
        Ok(())
    }

    /// Makes the sink a healthy, instant provider again, with receipts on time and its
    /// webhook endpoint up.
    ///
    /// # Errors
    /// When the sink refuses the settings.
    pub async fn heal_sink(&self) -> anyhow::Result<()> {
        self.control_sink(json!({
            "latency_ms": 0, "failure_rate": 0.0, "fail_first": 0, "failure_mode": "status",
            "failure_status": 500, "receipt_delay_ms": 1000,
        }))
        .await?;
        self.control_sink_webhooks(json!({ "down": false })).await
    }

    /// Puts `prefix` on the abuse rules' allow list, so traffic to it skips the velocity
    /// and conversion rules.
    ///
    /// # Errors
    /// When the API refuses it.
    pub async fn allow_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/abuse/allow", self.api_url()))
            .header("X-Api-Key", API_KEY)
            .json(&json!({"kind": "prefix", "value": prefix, "note": "fault-injection traffic"}))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "allowing {prefix} answered {status}: {}",
                response.text().await?
            );
        }
        Ok(())
    }

    /// Creates the template the traffic uses and returns its id.
    ///
    /// # Errors
    /// When the API refuses it.
    pub async fn create_template(&self) -> anyhow::Result<i64> {
        let response = self
            .http
            .post(format!("{}/v1/templates", self.api_url()))
            .header("X-Api-Key", API_KEY)
            .json(&json!({"name": "chaos", "text": "Chaos check: your code is {{code}}."}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        match body.get("id").and_then(Value::as_i64) {
            Some(id) if status.is_success() => Ok(id),
            _ => bail!("creating the template answered {status}: {body}"),
        }
    }

    /// Subscribes the sink's webhook endpoint to every event and hands it the secret, so
    /// it checks each signature; returns the endpoint's id.
    ///
    /// # Errors
    /// When the API or the sink refuses.
    pub async fn subscribe_sink_to_every_event(&self) -> anyhow::Result<i64> {
        let response = self
            .http
            .post(format!("{}/v1/webhooks", self.api_url()))
            .header("X-Api-Key", API_KEY)
            .json(
                &json!({"url": format!("{}/webhooks", self.sink_url()), "events": WEBHOOK_EVENTS}),
            )
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        let (Some(id), Some(secret)) = (
            body.get("id").and_then(Value::as_i64),
            body.get("secret").and_then(Value::as_str),
        ) else {
            bail!("creating the webhook answered {status}: {body}");
        };
        self.control_sink_webhooks(json!({ "down": false, "secret": secret }))
            .await?;
        Ok(id)
    }

    /// Deletes webhook endpoint `id`.
    ///
    /// # Errors
    /// When the API does not answer 204.
    pub async fn delete_webhook(&self, id: i64) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/v1/webhooks/{id}", self.api_url()))
            .header("X-Api-Key", API_KEY)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("deleting webhook {id} answered {}", response.status());
        }
        Ok(())
    }

    /// Changes the sink's webhook endpoint (`PUT /webhooks/control`): down or up, secret.
    ///
    /// # Errors
    /// When the sink refuses.
    pub async fn control_sink_webhooks(&self, control: Value) -> anyhow::Result<()> {
        let response = self
            .http
            .put(format!("{}/webhooks/control", self.sink_url()))
            .json(&control)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("the sink refused {control}: {}", response.text().await?);
        }
        Ok(())
    }

    /// What the sink's webhook endpoint received (`GET /webhooks/stats`).
    ///
    /// # Errors
    /// When the sink cannot be read.
    pub async fn sink_webhook_stats(&self) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/webhooks/stats", self.sink_url()))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("the sink's webhook stats answered {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// Polls `url` until it answers 200.
    async fn wait_until_ok(&self, url: &str, what: &str, patience: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Ok(response) = self.http.get(url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{what} is not ready at {url} after {patience:?} (logs: {})",
                    self.config.log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops everything: workers and API with SIGTERM, then the sink.
    pub async fn shut_down(&mut self) {
        let grace = Duration::from_secs(30);
        for mut worker in self.workers.drain(..) {
            let _ = worker.terminate(grace).await;
        }
        if let Some(mut api) = self.api.take() {
            let _ = api.terminate(grace).await;
        }
        if let Some(mut sink) = self.sink.take() {
            let _ = sink.terminate(grace).await;
        }
    }

    /// Where the processes' logs are.
    pub fn log_dir(&self) -> &Path {
        &self.config.log_dir
    }
}
