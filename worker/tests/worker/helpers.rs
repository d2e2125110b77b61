//! `TestWorker`: the worker's side of the system in one test process, against the real
//! Postgres and RabbitMQ, with a database and queue names of its own.
//!
//! Verifications are recorded through `verify_common::db` and their jobs published as
//! the API publishes them; the fake SMS provider (`verify-sink`) runs in-process. No
//! worker consumes until a test starts one: [`TestWorker::drain`] runs every job to its
//! end through the consumer's own step and returns when nothing is left to do, so tests
//! assert on a settled pipeline instead of waiting for one.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use verify_common::config::{
    FromFlags, ProviderSettings, RabbitSettings, SecretSettings, SmsSettings, WebhookSettings,
    WorkerSettings,
};
use verify_common::db::deliveries::{self, DeliveryRecord};
use verify_common::db::starts::{self, CreateOutcome, NewVerification, SendLimit};
use verify_common::db::templates::{self, TemplateFields};
use verify_common::db::verifications;
use verify_common::db::{Pool, connect_pool};
use verify_common::domain::otp::generate_nonce;
use verify_common::domain::{
    DeliveryId, DeliveryStatus, OtpCodeLength, PhoneNumber, TemplateBody, TemplateDescription,
    TemplateId, TemplateName, Variables, VerificationId, new_template_engine,
};
use verify_common::queue::{QueueNames, SendSms, SmsPublisher, queue_depth};
use verify_common::telemetry::init_test_tracing;
use verify_common::testing::exposition::Exposition;
use verify_common::testing::{TestDatabase, test_rabbit_settings};
use verify_sink::{MessageLog, RecordedMessage, Sink, SinkSettings};
use verify_worker::WorkerConfig;
use verify_worker::testing::TestWorkers;

const SECRET: &str = "test-secret-for-code-derivation";
const TWILIO_SID: &str = "ACtest0000000000000000000000000000";
const TWILIO_TOKEN: &str = "test-auth-token";
/// Longest a drain may take: retries included, every test's pipeline settles well
/// within it.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// What a test may change before the worker's side starts.
pub(crate) struct TestOptions {
    pub sink: SinkSettings,
    pub worker: WorkerSettings,
    pub sms: SmsSettings,
}

impl Default for TestOptions {
    /// Each section parsed as the binaries parse it, with what tests need changed:
    /// ephemeral ports, test credentials, and millisecond retry delays so retry tests are
    /// fast while the schedule keeps its production shape.
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
            sms: SmsSettings::from_flags(&[]).expect("the SMS defaults parse"),
        }
    }
}

/// Options whose sink fails the first `count` sends with `status`.
pub(crate) fn failing_first(count: u64, status: u16) -> TestOptions {
    let mut options = TestOptions::default();
    options.sink.fail_first = count;
    options.sink.failure_status = status;
    options
}

/// Options whose sink refuses every send with `status`.
pub(crate) fn always_failing(status: u16) -> TestOptions {
    let mut options = TestOptions::default();
    options.sink.failure_rate = 1.0;
    options.sink.failure_status = status;
    options
}

/// The worker's side of the system under test.
pub(crate) struct TestWorker {
    pub pool: Pool,
    pub sink: MessageLog,
    pub rabbit: RabbitSettings,
    /// What the test's workers are built from.
    pub config: WorkerConfig,
    publisher: SmsPublisher,
    workers: TestWorkers,
    shutdown: CancellationToken,
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A verification recorded for a test, and its first send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    pub verification_id: VerificationId,
    pub delivery_id: DeliveryId,
}

/// Starts the worker's side with default options.
pub(crate) async fn spawn_worker() -> TestWorker {
    spawn_worker_with(TestOptions::default()).await
}

/// Starts the worker's side with the given options: the sink, a database and queue
/// names of the test's own, and a publisher. No worker consumes yet.
pub(crate) async fn spawn_worker_with(options: TestOptions) -> TestWorker {
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

    let config = WorkerConfig {
        database: database.settings.clone(),
        rabbit: rabbit.clone(),
        secret: SecretSettings::from_flags(&["--secret", SECRET]).expect("the test secret parses"),
        worker: options.worker,
        provider: ProviderSettings::from_flags(&[
            "--sms-provider",
            "twilio",
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
        ])
        .expect("the test provider flags parse"),
        sms: options.sms,
        webhooks: WebhookSettings::from_flags(&["--webhook-allow-private"])
            .expect("the test webhook flags parse"),
    };
    let pool = connect_pool(&database.settings)
        .await
        .expect("connecting to the test database");
    let publisher = SmsPublisher::connect(&rabbit, "test-publisher")
        .await
        .expect("connecting the test publisher");
    TestWorker {
        pool,
        sink: sink_log,
        rabbit,
        publisher,
        workers: TestWorkers::new(config.clone(), shutdown.clone()).await,
        config,
        shutdown,
    }
}

/// Scrapes `url` and parses the answer; fails the test unless it is text format.
pub(crate) async fn scrape(url: &str) -> Exposition {
    let response = reqwest::get(url).await.expect("scraping /metrics");
    assert_eq!(response.status(), reqwest::StatusCode::OK, "{url}");
    let text = response.text().await.expect("a metrics body");
    Exposition::parse(&text).unwrap_or_else(|e| panic!("{url} is not text format: {e}\n{text}"))
}

/// A new verification of `to` with the built-in text and the production defaults (six
/// digits, ten minutes, five checks), for a test to adjust before [`TestWorker::start`].
pub(crate) fn new_verification(to: &str) -> NewVerification {
    NewVerification {
        id: VerificationId::generate(),
        delivery_id: DeliveryId::generate(),
        to: PhoneNumber::parse(to).expect("a valid test number"),
        template_id: None,
        locale: None,
        sender: None,
        variables: Variables::default(),
        code_length: OtpCodeLength::parse(6).expect("6 is a valid code length"),
        code_nonce: generate_nonce().expect("the OS random generator works"),
        max_checks: 5,
        ttl: Duration::from_secs(600),
        idempotency: None,
        client_ip: None,
        client_id: None,
        risk: None,
        velocity: Vec::new(),
        trace: None,
    }
}

/// Template variables from a JSON object.
pub(crate) fn variables(value: serde_json::Value) -> Variables {
    Variables::parse(&value).expect("valid test variables")
}

impl TestWorker {
    /// Starts a background worker (several may share the queue).
    pub(crate) async fn start_worker(&self) {
        self.workers.start().await;
    }

    /// Runs the pipeline until nothing is left to do: every job, retry and duplicate has
    /// run to its acknowledgement and every send is sent or failed. Fails the test after
    /// [`WAIT`].
    pub(crate) async fn drain(&self) {
        self.workers
            .drain(WAIT)
            .await
            .unwrap_or_else(|e| panic!("draining the pipeline: {e}"));
    }

    /// The workers' metrics, scraped over HTTP as a Prometheus server does, and parsed;
    /// fails the test unless the answer is valid text format.
    pub(crate) async fn scrape(&self) -> Exposition {
        scrape(self.workers.metrics_url()).await
    }

    /// Records `new` and publishes its job, as the API does for a start request.
    pub(crate) async fn start(&self, new: NewVerification) -> Started {
        let started = Started {
            verification_id: new.id,
            delivery_id: new.delivery_id,
        };
        let limit = SendLimit {
            max_sends: 1_000,
            window: Duration::from_secs(600),
        };
        let outcomes = starts::insert_verifications(&self.pool, &[new], limit)
            .await
            .expect("recording a verification");
        assert!(
            matches!(
                outcomes.as_slice(),
                [starts::StartResult {
                    outcome: CreateOutcome::Created(_),
                    ..
                }]
            ),
            "{outcomes:?}"
        );
        self.publish(started.delivery_id).await;
        started
    }

    /// Records a verification of `to` with the built-in text and publishes its job.
    pub(crate) async fn start_verification(&self, to: &str) -> Started {
        self.start(new_verification(to)).await
    }

    /// Publishes the job of a send (once more, for a duplicate or a redelivery).
    pub(crate) async fn publish(&self, delivery_id: DeliveryId) {
        self.publisher
            .publish(&SendSms::new(delivery_id))
            .await
            .expect("publishing a job");
    }

    /// Publishes `body` to the work queue as it is, as a broken producer would.
    pub(crate) async fn publish_raw(&self, body: &[u8]) {
        self.publisher
            .publish_raw(body)
            .await
            .expect("publishing a raw message");
    }

    /// Stores a template; returns its id.
    pub(crate) async fn create_template(&self, name: &str, text: &str) -> TemplateId {
        templates::insert_template(&self.pool, &template_fields(name, text))
            .await
            .expect("storing a template")
            .id
    }

    /// Replaces a template's text.
    pub(crate) async fn change_template(&self, id: TemplateId, name: &str, text: &str) {
        let changed = templates::update_template(&self.pool, id, &template_fields(name, text))
            .await
            .expect("changing a template");
        assert!(changed.is_some(), "template {id} exists");
    }

    /// Deletes a template.
    pub(crate) async fn delete_template(&self, id: TemplateId) {
        let deleted = templates::delete_template(&self.pool, id)
            .await
            .expect("deleting a template");
        assert!(deleted, "template {id} existed");
    }

    /// Cancels a verification, as `POST /v1/verifications/{id}/cancel` does.
    pub(crate) async fn cancel(&self, id: VerificationId) {
        let canceled = verifications::cancel_verification(&self.pool, id)
            .await
            .expect("canceling a verification");
        assert!(canceled.is_some(), "verification {id} was open");
    }

    /// The newest send of a verification, as recorded in Postgres.
    pub(crate) async fn newest_send(&self, id: VerificationId) -> DeliveryRecord {
        deliveries::list_deliveries(&self.pool, id)
            .await
            .expect("reading the sends")
            .pop()
            .expect("the verification has a send")
    }

    /// Waits until the newest send of a verification has `status` (the background
    /// workers at work); returns it. Fails the test after [`WAIT`].
    pub(crate) async fn wait_for_status(
        &self,
        id: VerificationId,
        status: DeliveryStatus,
    ) -> DeliveryRecord {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let send = self.newest_send(id).await;
            if send.status == status {
                return send;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the send of {id} never reached {status:?}: {send:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every SMS the provider accepted for `to`, oldest first.
    pub(crate) fn sent_sms(&self, to: &str) -> Vec<RecordedMessage> {
        self.sink.to(to)
    }

    /// Messages ready in the dead-letter queue.
    pub(crate) async fn dead_letter_depth(&self) -> u32 {
        let queue = QueueNames::new(&self.rabbit.queue_prefix).dead_queue;
        queue_depth(&self.rabbit.url, &queue)
            .await
            .expect("reading the dead-letter queue's depth")
    }

    /// Runs SQL against the test's own database (to move a clock or restore a row).
    pub(crate) async fn sql(&self, statement: &str) -> Vec<tokio_postgres::Row> {
        let client = self.pool.get().await.expect("a database connection");
        client.query(statement, &[]).await.expect("test SQL runs")
    }
}

fn template_fields(name: &str, text: &str) -> TemplateFields {
    TemplateFields {
        name: TemplateName::parse(name).expect("a valid template name"),
        description: TemplateDescription::parse("").expect("an empty description is valid"),
        locale: None,
        body: TemplateBody::parse(&new_template_engine(), text).expect("a valid template"),
    }
}

/// The outcomes recorded in a send's attempt log, oldest first, as stored.
pub(crate) fn outcomes(send: &DeliveryRecord) -> Vec<&'static str> {
    send.attempt_log
        .iter()
        .map(|entry| entry.outcome.as_str())
        .collect()
}

/// A distinct valid US number per call within a test.
pub(crate) fn phone_number(n: u32) -> String {
    format!("+1415555{:04}", n % 10_000)
}
