//! What the API and the workers refuse to start with. Each refusal names the setting to
//! change, and happens before anything is served or consumed.

use secrecy::SecretString;
use verify_api::{ApiConfig, Application};
use verify_common::config::{DEV_SECRET, FromFlags, OtpSettings, SecretSettings};
use verify_common::testing::{TestDatabase, test_rabbit_settings};
use verify_worker::{Worker, WorkerConfig};

/// Configurations of an API and a worker on a database and queues of their own, with
/// `secret` as their secret settings.
async fn configs(secret: SecretSettings) -> (ApiConfig, WorkerConfig) {
    let database = TestDatabase::create().await;
    let rabbit = test_rabbit_settings().await;
    let mut api = ApiConfig::from_flags(&["--addr", "127.0.0.1:0"]).unwrap();
    api.database = database.settings.clone();
    api.rabbit = rabbit.clone();
    api.secret = secret.clone();
    let mut worker = WorkerConfig::from_flags(&[]).unwrap();
    worker.database = database.settings;
    worker.rabbit = rabbit;
    worker.secret = secret;
    (api, worker)
}

/// The start-up error of each process, or `None` where it started.
async fn refusals(secret: SecretSettings) -> [Option<String>; 2] {
    let (api, worker) = configs(secret).await;
    let api = Application::build(api).await.err();
    let worker = Worker::build(worker).await.err();
    [api, worker].map(|error| error.map(|e| format!("{e:#}")))
}

#[tokio::test]
async fn without_a_secret_neither_the_api_nor_a_worker_starts_outside_a_development_run() {
    let secret = SecretSettings {
        secret: None,
        dev: false,
    };

    for refusal in refusals(secret).await {
        let message = refusal.expect("started without VERIFY_SECRET");
        assert!(message.contains("VERIFY_SECRET is not set"), "{message}");
        assert!(message.contains("VERIFY_DEV"), "{message}");
    }
}

#[tokio::test]
async fn the_public_development_secret_is_refused_outside_a_development_run() {
    let secret = SecretSettings {
        secret: Some(SecretString::from(DEV_SECRET)),
        dev: false,
    };

    for refusal in refusals(secret).await {
        let message = refusal.expect("started on the public development secret");
        assert!(message.contains("public development secret"), "{message}");
    }
}

#[tokio::test]
async fn a_development_run_starts_without_a_secret() {
    let secret = SecretSettings {
        secret: None,
        dev: true,
    };

    let refusals = refusals(secret).await;

    assert_eq!(refusals, [None, None]);
}

/// The API's start-up error with these OTP flags (and a secret), or `None` if it started.
async fn api_refusal(otp_flags: &[&str]) -> Option<String> {
    let secret = SecretSettings {
        secret: Some(SecretString::from("a-secret-for-start-up-tests")),
        dev: false,
    };
    let (mut api, _) = configs(secret).await;
    api.otp = OtpSettings::from_flags(otp_flags).unwrap();
    Application::build(api)
        .await
        .err()
        .map(|e| format!("{e:#}"))
}

#[tokio::test]
async fn weak_default_codes_are_refused_at_start_up_naming_the_key_unless_allowed() {
    let short = api_refusal(&["--otp-length", "5"]).await;
    let long = api_refusal(&["--otp-ttl-secs", "601"]).await;
    let allowed = api_refusal(&[
        "--otp-length",
        "4",
        "--otp-ttl-secs",
        "3600",
        "--allow-weak-codes",
    ])
    .await;

    let short = short.expect("started with 5-digit codes");
    assert!(short.contains("VERIFY_OTP_LENGTH"), "{short}");
    assert!(short.contains("VERIFY_ALLOW_WEAK_CODES"), "{short}");
    let long = long.expect("started with 601-second codes");
    assert!(long.contains("VERIFY_OTP_TTL_SECS"), "{long}");
    assert_eq!(allowed, None);
}

#[tokio::test]
async fn an_applied_migration_whose_file_was_edited_since_refuses_start_up_naming_it() {
    let secret = SecretSettings {
        secret: Some(SecretString::from("a-secret-for-start-up-tests")),
        dev: false,
    };
    let (api, _) = configs(secret).await;
    // The database applied V3 from a file other than the one this build carries.
    let pool = verify_common::db::connect_pool(&api.database)
        .await
        .unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text;
             UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 3;",
        )
        .await
        .unwrap();

    let refusal = Application::build(api)
        .await
        .err()
        .map(|e| format!("{e:#}"));

    let refusal = refusal.expect("started on an edited migration");
    assert!(
        refusal.contains("migration V3__verifications was edited"),
        "{refusal}"
    );
}
