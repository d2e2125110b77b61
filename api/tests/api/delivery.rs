//! The worker: retries with backoff, permanent failures, sends that can no longer be
//! rendered or are no longer wanted, duplicate jobs and several workers on one queue.

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;
use verify_common::domain::DeliveryId;
use verify_common::queue::{SendSms, SmsPublisher};

use crate::helpers::{TestApp, TestOptions, phone_number, spawn_app, spawn_app_with};

/// Options whose sink fails the first `count` sends with `status`.
fn failing_first(count: u64, status: u16) -> TestOptions {
    let mut options = TestOptions::default();
    options.sink.fail_first = count;
    options.sink.failure_status = status;
    options
}

/// Options that leave the worker stopped until the test starts it.
fn without_worker() -> TestOptions {
    TestOptions {
        start_worker: false,
        ..TestOptions::default()
    }
}

/// The id of a verification in a JSON answer.
fn id_of(verification: &Value) -> String {
    verification["id"].as_str().unwrap().to_owned()
}

/// The newest send of a verification.
fn newest_send(verification: &Value) -> &Value {
    verification["sends"]
        .as_array()
        .and_then(|sends| sends.last())
        .expect("the verification has a send")
}

/// The outcomes recorded in a send's attempt log, oldest first.
fn outcomes(send: &Value) -> Vec<String> {
    send["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["outcome"].as_str().unwrap().to_owned())
        .collect()
}

fn timestamp(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// Publishes the job of `send` once more, as a redelivery or a duplicate would.
async fn publish_duplicate(app: &TestApp, send: &Value) {
    let publisher = SmsPublisher::connect(&app.rabbit, "test").await.unwrap();
    let id = Uuid::parse_str(send["id"].as_str().unwrap()).unwrap();
    publisher
        .publish(&SendSms::new(DeliveryId::from_uuid(id)))
        .await
        .unwrap();
}

/// Sends one more verification and waits until it is sent: a job published after some
/// earlier job, so the earlier job has reached the worker by then.
async fn send_a_later_verification(app: &TestApp, n: u32) {
    let later = app
        .start_verification(&json!({ "to": phone_number(n) }))
        .await;
    app.wait_for_delivery_status(&id_of(&later), "sent").await;
}

#[tokio::test]
async fn a_transient_provider_error_is_retried_with_backoff_and_then_sent() {
    let app = spawn_app_with(failing_first(2, 503)).await;
    let to = phone_number(1);
    let created = app.start_verification(&json!({ "to": to })).await;

    let verification = app.wait_for_delivery_status(&id_of(&created), "sent").await;

    let send = newest_send(&verification);
    assert_eq!(send["attempts"], 3);
    assert_eq!(
        outcomes(send),
        ["transient_error", "transient_error", "sent"]
    );
    let log = send["attempt_log"].as_array().unwrap();
    for retried in &log[..2] {
        assert!(
            retried["error"].as_str().unwrap().contains("503"),
            "{retried}"
        );
    }
    let delays: Vec<chrono::Duration> = log[..2]
        .iter()
        .map(|retried| timestamp(&retried["retry_at"]) - timestamp(&retried["at"]))
        .collect();
    assert!(delays[0] > chrono::Duration::zero(), "{delays:?}");
    assert!(delays[1] > delays[0], "the delay grows: {delays:?}");
    assert!(send["last_error"].is_null());
    assert_eq!(app.sent_sms(&to).len(), 1);
    assert_eq!(app.sink.len(), 1);
}

#[tokio::test]
async fn a_permanent_provider_error_fails_the_send_at_once() {
    let mut options = TestOptions::default();
    options.sink.failure_rate = 1.0;
    options.sink.failure_status = 400;
    let app = spawn_app_with(options).await;
    let created = app
        .start_verification(&json!({ "to": phone_number(2) }))
        .await;

    let verification = app
        .wait_for_delivery_status(&id_of(&created), "failed")
        .await;

    let send = newest_send(&verification);
    assert_eq!(send["status"], "failed");
    assert_eq!(send["attempts"], 1);
    assert_eq!(outcomes(send), ["permanent_error"]);
    let error = send["last_error"].as_str().unwrap();
    assert!(error.contains("400"), "{error}");
    assert!(app.sink.is_empty());
}

#[tokio::test]
async fn retries_stop_after_the_maximum_number_of_attempts() {
    let mut options = failing_first(100, 503);
    options.worker.retry_max_attempts = 3;
    let app = spawn_app_with(options).await;
    let created = app
        .start_verification(&json!({ "to": phone_number(3) }))
        .await;

    let verification = app
        .wait_for_delivery_status(&id_of(&created), "failed")
        .await;

    let send = newest_send(&verification);
    assert_eq!(send["attempts"], 3);
    assert_eq!(
        outcomes(send),
        ["transient_error", "transient_error", "transient_error"]
    );
    let error = send["last_error"].as_str().unwrap();
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    assert!(app.sink.is_empty());
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_no_sooner_than_the_provider_asked() {
    let mut options = failing_first(1, 429);
    options.sink.retry_after_secs = 1;
    let app = spawn_app_with(options).await;
    let to = phone_number(4);
    let created = app.start_verification(&json!({ "to": to })).await;

    let verification = app.wait_for_delivery_status(&id_of(&created), "sent").await;

    let send = newest_send(&verification);
    assert_eq!(send["attempts"], 2);
    assert_eq!(outcomes(send), ["transient_error", "sent"]);
    let log = send["attempt_log"].as_array().unwrap();
    assert!(
        log[0]["error"].as_str().unwrap().contains("429"),
        "{}",
        log[0]
    );
    let first_at = timestamp(&log[0]["at"]);
    let scheduled = timestamp(&log[0]["retry_at"]) - first_at;
    let actual = timestamp(&log[1]["at"]) - first_at;
    assert!(
        scheduled >= chrono::Duration::seconds(1),
        "retry scheduled after {scheduled}"
    );
    assert!(
        actual >= chrono::Duration::seconds(1),
        "retried after {actual}"
    );
    assert_eq!(app.sent_sms(&to).len(), 1);
}

#[tokio::test]
async fn a_variable_missing_at_send_time_fails_the_send_permanently() {
    let app = spawn_app_with(without_worker()).await;
    let template = app
        .create_template(&json!({ "name": "brand", "text": "{{brand}} {{code}}" }))
        .await;
    let template_id = template["id"].as_i64().unwrap();
    let created = app
        .start_verification(&json!({
            "to": phone_number(5),
            "template_id": template_id,
            "variables": {"brand": "Acme"}
        }))
        .await;
    let changed = app
        .request(Method::PATCH, &format!("/v1/templates/{template_id}"))
        .json(&json!({ "text": "{{shop}} {{code}}" }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);

    app.start_worker().await;

    let verification = app
        .wait_for_delivery_status(&id_of(&created), "failed")
        .await;
    let send = newest_send(&verification);
    assert_eq!(send["attempts"], 1);
    assert_eq!(outcomes(send), ["render_error"]);
    let error = send["last_error"].as_str().unwrap();
    assert!(error.contains("shop"), "{error}");
    assert!(app.sink.is_empty());
}

#[tokio::test]
async fn a_verification_canceled_before_its_send_is_not_sent() {
    let app = spawn_app_with(without_worker()).await;
    let created = app
        .start_verification(&json!({ "to": phone_number(6) }))
        .await;
    let id = id_of(&created);
    let canceled = app
        .post_json(&format!("/v1/verifications/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(canceled.status(), StatusCode::OK);

    app.start_worker().await;

    let verification = app.wait_for_delivery_status(&id, "failed").await;
    let error = newest_send(&verification)["last_error"].as_str().unwrap();
    assert!(error.contains("canceled"), "{error}");
    assert!(app.sink.is_empty());
}

#[tokio::test]
async fn a_duplicate_job_after_the_send_completed_does_not_send_again() {
    let app = spawn_app().await;
    let to = phone_number(7);
    let created = app.start_verification(&json!({ "to": to })).await;
    let sent = app.wait_for_delivery_status(&id_of(&created), "sent").await;

    publish_duplicate(&app, newest_send(&sent)).await;
    send_a_later_verification(&app, 8).await;

    assert_eq!(app.sent_sms(&to).len(), 1);
    let verification = app.get_verification(&id_of(&created)).await;
    let send = newest_send(&verification);
    assert_eq!(send["status"], "sent");
    assert_eq!(send["attempts"], 1);
    assert_eq!(outcomes(send), ["sent"]);
}

#[tokio::test]
async fn a_duplicate_job_queued_before_any_worker_runs_is_sent_once_by_two_workers() {
    let app = spawn_app_with(without_worker()).await;
    let to = phone_number(9);
    let created = app.start_verification(&json!({ "to": to })).await;
    publish_duplicate(&app, newest_send(&created)).await;

    app.start_worker().await;
    app.start_worker().await;

    let verification = app.wait_for_delivery_status(&id_of(&created), "sent").await;
    send_a_later_verification(&app, 10).await;
    assert_eq!(app.sent_sms(&to).len(), 1);
    let send = newest_send(&verification);
    assert_eq!(send["attempts"], 1);
    assert_eq!(outcomes(send), ["sent"]);
}

#[tokio::test]
async fn three_workers_share_the_queue_and_every_number_gets_exactly_one_sms() {
    let app = spawn_app_with(without_worker()).await;
    let numbers: Vec<String> = (100..120).map(phone_number).collect();
    let mut ids = Vec::new();
    for to in &numbers {
        ids.push(id_of(&app.start_verification(&json!({ "to": to })).await));
    }

    for _ in 0..3 {
        app.start_worker().await;
    }

    for id in &ids {
        let verification = app.wait_for_delivery_status(id, "sent").await;
        assert_eq!(newest_send(&verification)["attempts"], 1);
    }
    for to in &numbers {
        assert_eq!(app.sent_sms(to).len(), 1, "SMS to {to}");
    }
    assert_eq!(app.sink.len(), 20);
}

#[tokio::test]
async fn a_send_whose_template_was_deleted_fails_naming_it_and_its_job_is_dead_lettered() {
    let app = spawn_app_with(without_worker()).await;
    let template = app
        .create_template(&json!({ "name": "short-lived", "text": "Code {{code}}" }))
        .await;
    let template_id = template["id"].as_i64().unwrap();
    let created = app
        .start_verification(&json!({ "to": phone_number(11), "template_id": template_id }))
        .await;
    let deleted = app
        .request(Method::DELETE, &format!("/v1/templates/{template_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    app.start_worker().await;

    let verification = app
        .wait_for_delivery_status(&id_of(&created), "failed")
        .await;
    let send = newest_send(&verification);
    assert_eq!(send["attempts"], 1);
    assert_eq!(outcomes(send), ["render_error"]);
    let error = send["last_error"].as_str().unwrap();
    assert!(error.contains("no longer exists"), "{error}");
    assert!(error.contains(&template_id.to_string()), "{error}");
    assert!(app.sink.is_empty());
    let dead_queue = verify_common::queue::QueueNames::new(&app.rabbit.queue_prefix).dead_queue;
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    while verify_common::queue::queue_depth(&app.rabbit.url, &dead_queue)
        .await
        .unwrap()
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never reached {dead_queue}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        verify_common::queue::queue_depth(&app.rabbit.url, &dead_queue)
            .await
            .unwrap(),
        1
    );
}
