//! `TestApp`: the whole system in one test process, against the real Postgres and
//! RabbitMQ, with a database and queue names of its own.
//!
//! `spawn_app()` starts the fake SMS provider (`verify-sink`) on port 0, the API on port
//! 0 and a worker whose Twilio provider points at the sink, all sharing one
//! cancellation token. Methods speak in the test's terms: post a verification, read the
//! SMS, check the code. [`TestApp::drain`] runs the pipeline until nothing is left to
//! do, so a test can assert what did *not* happen without sleeping.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio_util::sync::CancellationToken;
use verify_api::{ApiConfig, Application};
use verify_common::config::{
    AbuseSettings, ApiSettings, FromFlags, OtpSettings, ProviderSettings, RabbitSettings,
    ReceiptSettings, SecretSettings, SmsSettings, WebhookDestinationSettings, WebhookSettings,
    WorkerSettings,
};
use verify_common::db::Pool;
use verify_common::domain::abuse::RuleMode;
use verify_common::domain::{CodeSecret, OtpCode, OtpCodeLength};
use verify_common::telemetry::init_test_tracing;
use verify_common::testing::exposition::Exposition;
use verify_common::testing::{TestDatabase, test_rabbit_settings};
use verify_sink::{MessageLog, RecordedMessage, Sink, SinkSettings};
use verify_worker::WorkerConfig;
use verify_worker::testing::TestWorkers;
use warp::Filter;

// The check of native answers against the OpenAPI document. Named by path, so the
// binaries that include this file from elsewhere find it too.
#[path = "contract.rs"]
pub(crate) mod contract;

pub(crate) const API_KEY: &str = "test-api-key-0123456789";
pub(crate) const SECRET: &str = "test-secret-for-code-derivation";
const TWILIO_SID: &str = "ACtest0000000000000000000000000000";
pub(crate) const TWILIO_TOKEN: &str = "test-auth-token";
/// The bearer token of the generic receipt route.
pub(crate) const HTTP_RECEIPT_TOKEN: &str = "test-receipt-token";
/// How long helpers wait for asynchronous effects (an SMS arriving, a status changing).
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// A request whose answer, when it is native, must be one the OpenAPI document describes
/// (see [`contract::conforming`]); otherwise the test fails. Built like reqwest's.
pub(crate) struct CheckedRequest(reqwest::RequestBuilder);

impl CheckedRequest {
    pub(crate) fn json<T: serde::Serialize + ?Sized>(self, body: &T) -> Self {
        Self(self.0.json(body))
    }

    pub(crate) fn body(self, body: impl Into<reqwest::Body>) -> Self {
        Self(self.0.body(body))
    }

    pub(crate) fn query<T: serde::Serialize + ?Sized>(self, query: &T) -> Self {
        Self(self.0.query(query))
    }

    pub(crate) fn header<K, V>(self, name: K, value: V) -> Self
    where
        reqwest::header::HeaderName: TryFrom<K>,
        <reqwest::header::HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        reqwest::header::HeaderValue: TryFrom<V>,
        <reqwest::header::HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        Self(self.0.header(name, value))
    }

    /// Sends the request and checks its answer.
    ///
    /// # Errors
    /// When no answer came.
    pub(crate) async fn send(self) -> reqwest::Result<Response> {
        let (client, request) = self.0.build_split();
        let request = request?;
        let method = request.method().clone();
        let path = request.url().path().to_owned();
        let response = client.execute(request).await?;
        Ok(contract::conforming(&method, &path, response).await)
    }
}

/// What a test may change before the system starts.
pub(crate) struct TestOptions {
    pub sink: SinkSettings,
    pub api: ApiSettings,
    pub otp: OtpSettings,
    /// The SMS limits of the API and of the worker.
    pub sms: SmsSettings,
    pub worker: WorkerSettings,
    pub abuse: AbuseSettings,
    /// Keep the seeded velocity limits in force. Off unless a test is about them: most
    /// tests start many verifications to numbers of one prefix from one API key.
    pub velocity_limits: bool,
    /// Start the worker at once; otherwise call [`TestApp::start_worker`] later.
    pub start_worker: bool,
    /// Have the worker ask for delivery receipts (`StatusCallback`), so the sink calls the
    /// API back. Off unless a test is about receipts: a receipt arriving during another
    /// test would move its sends on from `sent`.
    pub receipts: bool,
    /// Send through the generic JSON provider (the sink's `/send`) instead of Twilio's.
    pub generic_provider: bool,
    /// The API's webhook settings (it reads whether internal destinations are allowed).
    pub api_webhooks: WebhookDestinationSettings,
    /// The worker's webhook settings: how it delivers and retries.
    pub webhooks: WebhookSettings,
}

impl Default for TestOptions {
    /// The settings every test starts from: each section parsed like the binaries parse
    /// it, with only what tests need changed (ephemeral ports, the test key and
    /// credentials, millisecond retry delays so retry tests are fast while the
    /// schedule keeps its production shape).
    fn default() -> Self {
        Self {
            sink: SinkSettings::from_flags(&[
                "--addr",
                "127.0.0.1:0",
                "--twilio-account-sid",
                TWILIO_SID,
                "--twilio-auth-token",
                TWILIO_TOKEN,
            ])
            .expect("the test sink flags parse"),
            api: ApiSettings::from_flags(&["--addr", "127.0.0.1:0", "--api-key", API_KEY])
                .expect("the test API flags parse"),
            otp: OtpSettings::from_flags(&[]).expect("the OTP defaults parse"),
            sms: SmsSettings::from_flags(&[]).expect("the SMS defaults parse"),
            worker: WorkerSettings::from_flags(&[
                "--concurrency",
                "8",
                "--retry-max-attempts",
                "4",
                "--retry-base-ms",
                "50",
                "--retry-cap-ms",
                "400",
                "--shutdown-grace-secs",
                "2",
            ])
            .expect("the test worker flags parse"),
            abuse: AbuseSettings::from_flags(&[]).expect("the abuse defaults parse"),
            velocity_limits: false,
            start_worker: true,
            receipts: false,
            generic_provider: false,
            // Test endpoints listen on this machine; retries come after milliseconds.
            api_webhooks: WebhookDestinationSettings::from_flags(&["--webhook-allow-private"])
                .expect("the test webhook flags parse"),
            webhooks: WebhookSettings::from_flags(&[
                "--webhook-allow-private",
                "--webhook-retry-delays-ms",
                "50,100,200",
                "--webhook-relay-interval-ms",
                "20",
                "--webhook-timeout-ms",
                "2000",
            ])
            .expect("the test webhook flags parse"),
        }
    }
}

/// The running system under test.
pub(crate) struct TestApp {
    pub address: String,
    pub client: Client,
    pub pool: Pool,
    pub sink: MessageLog,
    /// The fake provider's base URL, for its `/stats`.
    pub sink_url: String,
    pub database: TestDatabase,
    pub rabbit: RabbitSettings,
    workers: TestWorkers,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the whole system with default options.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

/// Starts the whole system with the given options.
pub(crate) async fn spawn_app_with(options: TestOptions) -> TestApp {
    init_test_tracing();
    let shutdown = CancellationToken::new();
    let database = TestDatabase::create().await;
    let rabbit = test_rabbit_settings().await;

    let sink = Sink::bind(options.sink)
        .await
        .expect("binding the fake SMS provider");
    let sink_url = sink.base_url();
    let sink_log = sink.messages();
    tokio::spawn(sink.run_until_stopped(shutdown.clone()));

    let pool = verify_common::db::connect_pool(&database.settings)
        .await
        .expect("connecting to the test database");
    if !options.velocity_limits {
        // As an operator would, before the API starts (the database is migrated already).
        pool.get()
            .await
            .expect("a database connection")
            .execute(
                "UPDATE abuse_rules SET mode = 'off' WHERE kind = 'velocity'",
                &[],
            )
            .await
            .expect("switching the velocity limits off");
    }
    let secret = SecretSettings::from_flags(&["--secret", SECRET]).expect("the test secret parses");
    let app = Application::build(ApiConfig {
        database: database.settings.clone(),
        rabbit: rabbit.clone(),
        secret: secret.clone(),
        otp: options.otp,
        sms: options.sms.clone(),
        api: options.api,
        abuse: options.abuse,
        // No public URL: the API checks Twilio's signatures against its own address,
        // which is where the sink calls it.
        receipts: ReceiptSettings::from_flags(&[
            "--twilio-auth-token",
            TWILIO_TOKEN,
            "--http-receipt-token",
            HTTP_RECEIPT_TOKEN,
            "--held-receipt-interval-ms",
            "50",
        ])
        .expect("the test receipt flags parse"),
        webhooks: options.api_webhooks,
    })
    .await
    .expect("building the API");
    let address = format!("http://{}", app.local_addr().expect("a bound address"));
    tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let generic_url = format!("{sink_url}/send");
    let mut provider_flags = vec![
        "--sms-provider",
        if options.generic_provider {
            "http"
        } else {
            "twilio"
        },
        "--http-provider-url",
        &generic_url,
        "--sms-from",
        "+15005550006",
        "--twilio-base-url",
        &sink_url,
        "--twilio-account-sid",
        TWILIO_SID,
        "--twilio-auth-token",
        TWILIO_TOKEN,
        "--provider-timeout-ms",
        "2000",
    ];
    if options.receipts {
        provider_flags.extend(["--public-url", address.as_str()]);
    }
    let worker_config = WorkerConfig {
        database: database.settings.clone(),
        rabbit: rabbit.clone(),
        secret,
        worker: options.worker,
        provider: ProviderSettings::from_flags(&provider_flags)
            .expect("the test provider flags parse"),
        sms: options.sms,
        webhooks: options.webhooks,
    };
    let test_app = TestApp {
        address,
        client: Client::new(),
        pool,
        sink: sink_log,
        sink_url,
        database,
        rabbit,
        workers: TestWorkers::new(worker_config, shutdown.clone()).await,
        shutdown,
    };
    if options.start_worker {
        test_app.start_worker().await;
    }
    test_app
}

impl TestApp {
    /// Starts a worker process-equivalent (several may run at once).
    pub(crate) async fn start_worker(&self) {
        self.workers.start().await;
    }

    /// Runs the pipeline until nothing is left to do: every job, retry and duplicate has
    /// run to its acknowledgement and every send is sent or failed (the API's own
    /// publishes included). Running workers are paused meanwhile. Fails the test after
    /// [`WAIT`].
    pub(crate) async fn drain(&self) {
        self.workers
            .drain(WAIT)
            .await
            .unwrap_or_else(|e| panic!("draining the pipeline: {e}"));
    }

    /// Tells the whole system to stop, as SIGTERM does in the binaries.
    pub(crate) fn stop(&self) {
        self.shutdown.cancel();
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A request with the test API key; its answer is checked when it is sent.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> CheckedRequest {
        CheckedRequest(
            self.client
                .request(method, self.url(path))
                .header("x-api-key", API_KEY),
        )
    }

    /// Sends a request built on [`TestApp::client`] (without the key, or to another API
    /// process); fails the test unless a native answer is one the OpenAPI document
    /// describes.
    ///
    /// # Errors
    /// When no answer came.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Result<Response> {
        CheckedRequest(request).send().await
    }

    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("sending a request")
    }

    pub(crate) async fn get(&self, path: &str) -> Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("sending a request")
    }

    pub(crate) async fn post_verification(&self, body: &Value) -> Response {
        self.post_json("/v1/verifications", body).await
    }

    /// Posts a verification that must be accepted; returns its JSON.
    pub(crate) async fn start_verification(&self, body: &Value) -> Value {
        let response = self.post_verification(body).await;
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "{}",
            response.text().await.unwrap_or_default()
        );
        response.json().await.expect("a JSON verification")
    }

    pub(crate) async fn get_verification(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/verifications/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("a JSON verification")
    }

    pub(crate) async fn check_code(&self, id: &str, code: &str) -> Response {
        self.post_json(
            &format!("/v1/verifications/{id}/check"),
            &json!({ "code": code }),
        )
        .await
    }

    pub(crate) async fn create_template(&self, body: &Value) -> Value {
        let response = self.post_json("/v1/templates", body).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap_or_default()
        );
        response.json().await.expect("a JSON template")
    }

    /// Every SMS the provider received for `to`, oldest first.
    pub(crate) fn sent_sms(&self, to: &str) -> Vec<RecordedMessage> {
        self.sink.to(to)
    }

    /// Waits until `count` SMS reached `to`; fails the test after [`WAIT`].
    pub(crate) async fn wait_for_sms(&self, to: &str, count: usize) -> Vec<RecordedMessage> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let messages = self.sink.to(to);
            if messages.len() >= count {
                return messages;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {count} SMS to {to}, got {}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the code SMS of a new verification and returns the code in it.
    pub(crate) async fn wait_for_code(&self, to: &str) -> String {
        let messages = self.wait_for_sms(to, 1).await;
        code_in(&messages.last().expect("at least one message").body)
    }

    /// Waits until the newest send of a verification has `status`; returns the verification.
    pub(crate) async fn wait_for_delivery_status(&self, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let verification = self.get_verification(id).await;
            if verification["delivery_status"] == status {
                return verification;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "delivery of {id} never reached {status}: {verification:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts another API as a process of its own (the built `verify-api` binary) on this
    /// test's database and queues, as a second replica runs in production; waits until it
    /// listens. The process is killed when the returned value is dropped.
    pub(crate) async fn spawn_api_process(&self) -> ApiProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_verify-api"))
            .args([
                "--addr",
                "127.0.0.1:0",
                "--database-url",
                &self.database.settings.url,
                "--amqp-url",
                &self.rabbit.url,
                "--queue-prefix",
                &self.rabbit.queue_prefix,
                "--queue-expires-secs",
                "600",
                "--secret",
                SECRET,
                "--log-format",
                "json",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the verify-api binary");
        let stderr = child.stderr.take().expect("a piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let address = tokio::time::timeout(WAIT, listening_address(stderr, Arc::clone(&log)))
            .await
            .unwrap_or_else(|_| panic!("verify-api did not listen within {WAIT:?}: {log:?}"))
            .unwrap_or_else(|| panic!("verify-api exited before listening: {log:?}"));
        ApiProcess {
            address,
            log,
            _child: child,
        }
    }

    /// Evaluates the conversion breaker once, as the API does every
    /// `VERIFY_ABUSE_BREAKER_INTERVAL_MS`, and returns how many blocks it wrote or renewed.
    /// Waits its turn while the API's own evaluation runs; fails the test after [`WAIT`].
    pub(crate) async fn evaluate_breaker(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let evaluated = verify_api::breaker::evaluate(&self.pool, RuleMode::Enforce)
                .await
                .expect("evaluating the conversion breaker");
            if let Some(written) = evaluated {
                return written;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the conversion breaker was never free to evaluate"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Subscribes `url` to `events`; returns the created endpoint, secret included.
    pub(crate) async fn create_webhook(&self, url: &str, events: &[&str]) -> Value {
        let response = self
            .post_json("/v1/webhooks", &json!({ "url": url, "events": events }))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap_or_default()
        );
        response.json().await.expect("a JSON webhook")
    }

    /// The API's metrics, scraped over HTTP without a key as a Prometheus server does,
    /// and parsed; fails the test unless the answer is valid text format.
    pub(crate) async fn scrape(&self) -> Exposition {
        self.scrape_url(&self.url("/metrics")).await
    }

    /// The workers' metrics, scraped and parsed like [`TestApp::scrape`]'s.
    pub(crate) async fn scrape_workers(&self) -> Exposition {
        self.scrape_url(self.workers.metrics_url()).await
    }

    async fn scrape_url(&self, url: &str) -> Exposition {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .expect("scraping /metrics");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE].clone();
        assert!(
            content_type
                .to_str()
                .unwrap_or_default()
                .starts_with("text/plain; version=0.0.4"),
            "{content_type:?}"
        );
        let text = response.text().await.expect("a metrics body");
        Exposition::parse(&text)
            .unwrap_or_else(|e| panic!("/metrics is not text format: {e}\n{text}"))
    }

    /// Runs SQL against the test's own database (to move a clock or count rows).
    pub(crate) async fn sql(&self, statement: &str) -> Vec<tokio_postgres::Row> {
        let client = self.pool.get().await.expect("a database connection");
        client.query(statement, &[]).await.expect("test SQL runs")
    }

    /// Scrapes until `name` with `labels` reaches `wanted`; for counts an API process adds
    /// on a schedule. Fails the test after [`WAIT`], or at once if it goes past `wanted`.
    pub(crate) async fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], wanted: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let value = self.scrape().await.sum(name, labels);
            if value == wanted {
                return;
            }
            assert!(value < wanted, "{name}{labels:?} is {value}, past {wanted}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}{labels:?} never reached {wanted}: {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The code of verification `id`, derived as the worker derives it, without waiting
    /// for its SMS (for codes that live only seconds).
    pub(crate) async fn code_of(&self, id: &str) -> String {
        let rows = self
            .sql(&format!(
                "SELECT code_nonce, code_length::bigint FROM verifications WHERE id = '{id}'"
            ))
            .await;
        let row = rows.first().expect("the verification exists");
        let secret = CodeSecret::parse(SECRET.to_owned().into()).expect("the test secret");
        let length = OtpCodeLength::parse(row.get(1)).expect("a stored length");
        let id = uuid::Uuid::parse_str(id).expect("a verification id");
        OtpCode::derive(&secret, id, row.get(0), length)
            .expect("a stored nonce")
            .expose()
            .to_owned()
    }

    /// Waits until an expiry sweep has covered every verification's expiry and then
    /// `after` (a moment in Postgres' clock); fails the test after [`WAIT`].
    pub(crate) async fn wait_for_sweep_past(&self, after: chrono::DateTime<chrono::Utc>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rows = self
                .sql(
                    "SELECT s.swept_until FROM expiry_sweeps s
                     WHERE s.swept_until >= (SELECT coalesce(max(expires_at), '-infinity')
                                             FROM verifications)",
                )
                .await;
            if let Some(row) = rows.first()
                && row.get::<_, chrono::DateTime<chrono::Utc>>(0) >= after
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no expiry sweep got past every expiry and {after}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Postgres' clock now.
    pub(crate) async fn database_now(&self) -> chrono::DateTime<chrono::Utc> {
        self.sql("SELECT now()").await[0].get(0)
    }
}

/// A `verify-api` process started by [`TestApp::spawn_api_process`].
pub(crate) struct ApiProcess {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    /// Every line the process logged so far (JSON), for failure messages.
    pub log: Arc<Mutex<Vec<String>>>,
    _child: Child,
}

impl ApiProcess {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The lines logged so far, one per line.
    pub(crate) fn logged(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }
}

/// Reads the process's log lines into `log` until the one saying where it listens, and
/// returns that address; keeps reading afterwards (a full pipe would stall the process).
/// `None` when the process exits first.
async fn listening_address(stderr: ChildStderr, log: Arc<Mutex<Vec<String>>>) -> Option<String> {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let address = serde_json::from_str::<Value>(&line)
            .ok()
            .filter(|entry| entry["fields"]["message"] == "verify-api listening")
            .and_then(|entry| Some(format!("http://{}", entry["fields"]["addr"].as_str()?)));
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
        if address.is_some() {
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            });
            return address;
        }
    }
    None
}

/// Polls `probe` until it finds something and returns it; fails the test after `limit`,
/// saying what never happened.
pub(crate) async fn eventually<T, F, Fut>(what: &str, limit: Duration, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` until it holds; fails the test after `limit`.
pub(crate) async fn wait_until<F, Fut>(what: &str, limit: Duration, condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, limit, || async { condition().await.then_some(()) }).await;
}

/// The first run of 4–10 digits in an SMS body: the code.
pub(crate) fn code_in(body: &str) -> String {
    body.split(|c: char| !c.is_ascii_digit())
        .find(|run| (4..=10).contains(&run.len()))
        .unwrap_or_else(|| panic!("no code in {body:?}"))
        .to_owned()
}

/// A code that differs from `code` in every digit.
pub(crate) fn wrong_code(code: &str) -> String {
    code.bytes()
        .map(|b| char::from(b'0' + (b - b'0' + 1) % 10))
        .collect()
}

/// A distinct valid US number per call within a test.
pub(crate) fn phone_number(n: u32) -> String {
    format!("+1415555{:04}", n % 10_000)
}

/// How a [`WebhookReceiver`] answers one request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    Status(u16),
    /// Never answers (the request stays open until the sender gives up).
    Hang,
}

/// One request a [`WebhookReceiver`] received.
#[derive(Debug, Clone)]
pub(crate) struct ReceivedWebhook {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
}

impl ReceivedWebhook {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON webhook body")
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<ReceivedWebhook>>,
    answers: Mutex<VecDeque<Answer>>,
}

/// A producer's endpoint: an HTTP server on port 0 that records every request it gets and
/// answers them with a given sequence of answers, then with `then`.
pub(crate) struct WebhookReceiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

impl WebhookReceiver {
    pub(crate) async fn start(answers: &[Answer], then: Answer) -> Self {
        let state = Arc::new(ReceiverState {
            received: Mutex::default(),
            answers: Mutex::new(answers.iter().copied().collect()),
        });
        let shared = Arc::clone(&state);
        let route = warp::post()
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(move |headers: warp::http::HeaderMap, body: bytes::Bytes| {
                let state = Arc::clone(&shared);
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    state
                        .received
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(ReceivedWebhook {
                            id: header("webhook-id"),
                            timestamp: header("webhook-timestamp"),
                            signature: header("webhook-signature"),
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                    let answer = state
                        .answers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop_front()
                        .unwrap_or(then);
                    match answer {
                        Answer::Status(code) => {
                            warp::http::StatusCode::from_u16(code).expect("a valid status code")
                        }
                        Answer::Hang => std::future::pending().await,
                    }
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the webhook receiver");
        let url = format!(
            "http://{}/hooks",
            listener.local_addr().expect("a bound address")
        );
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Self { url, state }
    }

    /// Every request received so far, oldest first.
    pub(crate) fn received(&self) -> Vec<ReceivedWebhook> {
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `count` requests arrived; fails the test after [`WAIT`].
    pub(crate) async fn wait_for(&self, count: usize) -> Vec<ReceivedWebhook> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {count} webhook requests, got {}: {received:#?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks a received webhook's signature with PyPI's `standardwebhooks`, an
/// implementation independent of ours (`scripts/test` installs it).
pub(crate) async fn verify_with_standardwebhooks(
    secret: &str,
    webhook: &ReceivedWebhook,
) -> Result<(), String> {
    let pydeps = std::env::var("VERIFY_TEST_PYDEPS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/pydeps").to_owned());
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/api/verify_webhook.py"
        ))
        .env("PYTHONPATH", &pydeps)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting python3");
    let input = json!({
        "secret": secret,
        "headers": {
            "webhook-id": webhook.id,
            "webhook-timestamp": webhook.timestamp,
            "webhook-signature": webhook.signature,
        },
        "body": webhook.body,
    });
    let mut stdin = child.stdin.take().expect("a piped stdin");
    stdin
        .write_all(input.to_string().as_bytes())
        .await
        .expect("writing to python3");
    drop(stdin);
    let output = child.wait_with_output().await.expect("running python3");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}
