//! Delivering: sends that can no longer be rendered or are no longer wanted, duplicate
//! jobs, and several workers on one queue.

use std::time::Duration;

use serde_json::json;
use verify_common::db::deliveries::{self, ClaimOutcome};
use verify_common::domain::DeliveryStatus;

use crate::helpers::{new_verification, outcomes, phone_number, spawn_worker, variables};

#[tokio::test]
async fn a_job_is_sent_once_with_the_code_and_recorded_as_sent() {
    let worker = spawn_worker().await;
    let to = phone_number(1);
    let started = worker.start_verification(&to).await;

    worker.drain().await;

    let sms = worker.sent_sms(&to);
    assert_eq!(sms.len(), 1);
    assert!(
        sms[0].body.starts_with("Your verification code is "),
        "{}",
        sms[0].body
    );
    assert_eq!(sms[0].from, "+15005550006");
    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Sent);
    assert_eq!(send.attempts, 1);
    assert_eq!(outcomes(&send), ["sent"]);
    assert_eq!(
        send.provider_message_id.as_deref(),
        send.attempt_log[0].provider_message_id.as_deref()
    );
}

#[tokio::test]
async fn a_variable_missing_at_send_time_fails_the_send_permanently() {
    let worker = spawn_worker().await;
    let template_id = worker.create_template("brand", "{{brand}} {{code}}").await;
    let mut new = new_verification(&phone_number(5));
    new.template_id = Some(template_id);
    new.variables = variables(json!({"brand": "Acme"}));
    let started = worker.start(new).await;
    worker
        .change_template(template_id, "brand", "{{shop}} {{code}}")
        .await;

    worker.drain().await;

    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);
    assert_eq!(send.attempts, 1);
    assert_eq!(outcomes(&send), ["render_error"]);
    let error = send.last_error.unwrap();
    assert!(error.contains("shop"), "{error}");
    assert!(worker.sink.is_empty());
}

#[tokio::test]
async fn a_verification_canceled_before_its_send_is_not_sent() {
    let worker = spawn_worker().await;
    let started = worker.start_verification(&phone_number(6)).await;
    worker.cancel(started.verification_id).await;

    worker.drain().await;

    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);
    let error = send.last_error.unwrap();
    assert!(error.contains("canceled"), "{error}");
    assert!(worker.sink.is_empty());
    assert_eq!(
        worker.dead_letter_depth().await,
        0,
        "a send no longer wanted has nothing to replay"
    );
}

#[tokio::test]
async fn a_duplicate_job_after_the_send_completed_does_not_send_again() {
    let worker = spawn_worker().await;
    let to = phone_number(7);
    let started = worker.start_verification(&to).await;
    worker.drain().await;
    assert_eq!(worker.sent_sms(&to).len(), 1);

    worker.publish(started.delivery_id).await;
    worker.drain().await;

    assert_eq!(worker.sent_sms(&to).len(), 1);
    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Sent);
    assert_eq!(send.attempts, 1);
    assert_eq!(outcomes(&send), ["sent"]);
}

#[tokio::test]
async fn a_duplicate_job_claimed_in_the_same_batch_as_its_original_is_a_duplicate_not_missing() {
    let worker = spawn_worker().await;
    let started = worker.start_verification(&phone_number(8)).await;

    // What a worker's group commit does when a job and its copy arrive together.
    let outcomes = deliveries::claim_deliveries(
        &worker.pool,
        &[started.delivery_id, started.delivery_id],
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    assert!(
        matches!(
            outcomes.as_slice(),
            [ClaimOutcome::Claimed(_), ClaimOutcome::Duplicate]
        ),
        "{outcomes:?}"
    );
    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Sending);
    assert_eq!(send.attempts, 1, "claimed once");
}

#[tokio::test]
async fn a_duplicate_job_queued_before_any_worker_runs_is_sent_once_by_two_workers() {
    let worker = spawn_worker().await;
    let to = phone_number(9);
    let started = worker.start_verification(&to).await;
    worker.publish(started.delivery_id).await;

    worker.start_worker().await;
    worker.start_worker().await;
    worker
        .wait_for_status(started.verification_id, DeliveryStatus::Sent)
        .await;
    worker.drain().await;

    assert_eq!(worker.sent_sms(&to).len(), 1);
    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Sent);
    assert_eq!(send.attempts, 1);
    assert_eq!(outcomes(&send), ["sent"]);
}

#[tokio::test]
async fn three_workers_share_the_queue_and_every_number_gets_exactly_one_sms() {
    let worker = spawn_worker().await;
    let numbers: Vec<String> = (100..120).map(phone_number).collect();
    let mut started = Vec::new();
    for to in &numbers {
        started.push(worker.start_verification(to).await);
    }

    for _ in 0..3 {
        worker.start_worker().await;
    }
    for verification in &started {
        worker
            .wait_for_status(verification.verification_id, DeliveryStatus::Sent)
            .await;
    }
    worker.drain().await;

    for verification in &started {
        let send = worker.newest_send(verification.verification_id).await;
        assert_eq!(send.status, DeliveryStatus::Sent);
        assert_eq!(send.attempts, 1);
    }
    for to in &numbers {
        assert_eq!(worker.sent_sms(to).len(), 1, "SMS to {to}");
    }
    assert_eq!(worker.sink.len(), 20);
}
