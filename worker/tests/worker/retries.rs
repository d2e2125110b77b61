//! Provider failures: transient ones retried with backoff, bounded by the attempt budget
//! and the provider's own `Retry-After`; permanent ones failed at once.

use verify_common::domain::DeliveryStatus;

use crate::helpers::{always_failing, failing_first, outcomes, phone_number, spawn_worker_with};

#[tokio::test]
async fn a_transient_provider_error_is_retried_with_backoff_and_then_sent() {
    let worker = spawn_worker_with(failing_first(2, 503)).await;
    let to = phone_number(1);
    let started = worker.start_verification(&to).await;

    worker.drain().await;

    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Sent);
    assert_eq!(send.attempts, 3);
    assert_eq!(
        outcomes(&send),
        ["transient_error", "transient_error", "sent"]
    );
    let log = &send.attempt_log;
    for retried in &log[..2] {
        assert!(
            retried.error.as_deref().unwrap().contains("503"),
            "{retried:?}"
        );
    }
    let delays: Vec<chrono::Duration> = log[..2]
        .iter()
        .map(|retried| retried.retry_at.unwrap() - retried.at)
        .collect();
    assert!(delays[0] > chrono::Duration::zero(), "{delays:?}");
    assert!(delays[1] > delays[0], "the delay grows: {delays:?}");
    assert!(send.last_error.is_none());
    assert_eq!(worker.sent_sms(&to).len(), 1);
    assert_eq!(worker.sink.len(), 1);
}

#[tokio::test]
async fn a_permanent_provider_error_fails_the_send_at_once() {
    let worker = spawn_worker_with(always_failing(400)).await;
    let started = worker.start_verification(&phone_number(2)).await;

    worker.drain().await;

    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);
    assert_eq!(send.attempts, 1);
    assert_eq!(outcomes(&send), ["permanent_error"]);
    let error = send.last_error.unwrap();
    assert!(error.contains("400"), "{error}");
    assert!(worker.sink.is_empty());
}

#[tokio::test]
async fn retries_stop_after_the_maximum_number_of_attempts() {
    let mut options = failing_first(100, 503);
    options.worker.retry_max_attempts = 3;
    let worker = spawn_worker_with(options).await;
    let started = worker.start_verification(&phone_number(3)).await;

    worker.drain().await;

    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);
    assert_eq!(send.attempts, 3);
    assert_eq!(
        outcomes(&send),
        ["transient_error", "transient_error", "transient_error"]
    );
    let error = send.last_error.unwrap();
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    assert!(worker.sink.is_empty());
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_no_sooner_than_the_provider_asked() {
    let mut options = failing_first(1, 429);
    options.sink.retry_after_secs = 1;
    let worker = spawn_worker_with(options).await;
    let to = phone_number(4);
    let started = worker.start_verification(&to).await;

    worker.drain().await;

    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Sent);
    assert_eq!(send.attempts, 2);
    assert_eq!(outcomes(&send), ["transient_error", "sent"]);
    let log = &send.attempt_log;
    assert!(
        log[0].error.as_deref().unwrap().contains("429"),
        "{:?}",
        log[0]
    );
    let first_at = log[0].at;
    let scheduled = log[0].retry_at.unwrap() - first_at;
    let actual = log[1].at - first_at;
    assert!(
        scheduled >= chrono::Duration::seconds(1),
        "retry scheduled after {scheduled}"
    );
    assert!(
        actual >= chrono::Duration::seconds(1),
        "retried after {actual}"
    );
    assert_eq!(worker.sent_sms(&to).len(), 1);
}
