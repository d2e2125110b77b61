//! Expiry noticed by the background sweep: `verification.expired` once for each
//! verification that expired unused, never for one approved or canceled first, counted
//! by country, and not again after a restart.

use reqwest::StatusCode;
use serde_json::{Value, json};
use verify_common::config::{ApiSettings, FromFlags, OtpSettings};

use crate::helpers::{
    API_KEY, Answer, TestApp, TestOptions, WebhookReceiver, phone_number, spawn_app_with,
};

/// Codes live this long, so a test sees them expire; long enough to approve one first.
const LIFETIME_SECS: &str = "4";

/// The system with short-lived codes and a sweep every 100 ms.
pub(crate) async fn spawn_app_with_short_lifetimes() -> TestApp {
    spawn_app_with(TestOptions {
        otp: OtpSettings::from_flags(&["--otp-ttl-secs", LIFETIME_SECS])
            .expect("the OTP flags parse"),
        api: ApiSettings::from_flags(&[
            "--addr",
            "127.0.0.1:0",
            "--api-key",
            API_KEY,
            "--expiry-sweep-interval-ms",
            "100",
        ])
        .expect("the API flags parse"),
        ..TestOptions::default()
    })
    .await
}

async fn start(app: &TestApp, to: &str) -> String {
    app.start_verification(&json!({ "to": to })).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The ids of the verifications `verification.expired` was recorded for.
async fn expired_events(app: &TestApp) -> Vec<String> {
    app.sql(
        "SELECT verification_id::text FROM webhook_deliveries
         WHERE event_type = 'verification.expired' ORDER BY verification_id",
    )
    .await
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[tokio::test]
async fn a_verification_that_expires_unused_is_announced_once_and_counted() {
    let app = spawn_app_with_short_lifetimes().await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(204)).await;
    app.create_webhook(&receiver.url, &["verification.expired"])
        .await;

    let approved = start(&app, &phone_number(1)).await;
    let code = app.code_of(&approved).await;
    let check: Value = app.check_code(&approved, &code).await.json().await.unwrap();
    assert_eq!(check["valid"], true, "{check}");
    let canceled = start(&app, &phone_number(2)).await;
    let response = app
        .post_json(&format!("/v1/verifications/{canceled}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let expired = start(&app, &phone_number(3)).await;
    let started = app.database_now().await;

    app.wait_for_sweep_past(started).await;

    assert_eq!(expired_events(&app).await, std::slice::from_ref(&expired));
    app.wait_for_metric(
        "verify_verifications_expired_total",
        &[("country", "US")],
        1.0,
    )
    .await;
    let received = receiver.wait_for(1).await;
    assert_eq!(received.len(), 1, "{received:#?}");
    let body = received[0].json();
    assert_eq!(body["type"], "verification.expired");
    let data = &body["data"];
    assert_eq!(data["verification_id"], expired.as_str());
    assert_eq!(data["status"], "expired");
    assert_eq!(data["to"], phone_number(3));
    assert_eq!(data["checks_made"], 0);
    assert_eq!(data["max_checks"], 5);
    assert!(data["created_at"].is_string() && data["expires_at"].is_string());
    assert_eq!(app.get_verification(&expired).await["status"], "expired");
}

#[tokio::test]
async fn an_expiry_is_not_announced_again_after_a_restart() {
    let app = spawn_app_with_short_lifetimes().await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(204)).await;
    app.create_webhook(&receiver.url, &["verification.expired"])
        .await;
    let expired = start(&app, &phone_number(1)).await;
    app.wait_for_sweep_past(app.database_now().await).await;
    assert_eq!(expired_events(&app).await, std::slice::from_ref(&expired));

    app.stop();
    let _restarted = app.spawn_api_process().await;
    app.wait_for_sweep_past(app.database_now().await).await;

    assert_eq!(expired_events(&app).await, [expired]);
}

#[tokio::test]
async fn only_one_of_two_processes_sweeps_at_a_time_and_nothing_is_announced_twice() {
    let app = spawn_app_with_short_lifetimes().await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(204)).await;
    app.create_webhook(&receiver.url, &["verification.expired"])
        .await;
    let _other = app.spawn_api_process().await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(start(&app, &phone_number(n)).await);
    }

    app.wait_for_sweep_past(app.database_now().await).await;

    ids.sort();
    assert_eq!(expired_events(&app).await, ids);
}
