//! The dead-letter queue: jobs the worker gives up on arrive there with their reason,
//! and `dlq list` shows them without removing them.

use std::time::Duration;

use serde_json::json;
use verify_common::config::{FromFlags, SmsSettings};
use verify_common::db::deliveries::{self, ClaimOutcome, UnusableValue};
use verify_common::domain::{
    DeliveryId, DeliveryStatus, TemplateId, TemplateLocale, VerificationId,
};
use verify_common::queue::DeadLetterBrowser;
use verify_worker::dlq::{list_dead_letters, replay_dead_letters};

use crate::helpers::{
    TestOptions, TestWorker, WAIT, always_failing, new_verification, outcomes, phone_number,
    spawn_worker, spawn_worker_with, variables,
};
use crate::replay::replay_all;

pub(crate) const TEMPLATE_TEXT: &str = "Code {{code}}";

/// A verification whose template was deleted before any worker ran, and its send.
pub(crate) struct DeadLettered {
    pub worker: TestWorker,
    pub to: String,
    pub verification_id: VerificationId,
    pub delivery_id: DeliveryId,
    pub template_id: TemplateId,
}

/// Starts a verification with a template, deletes the template, then runs the pipeline:
/// the job ends in the dead-letter queue.
pub(crate) async fn dead_letter_a_job_whose_template_was_deleted() -> DeadLettered {
    let worker = spawn_worker().await;
    let template_id = worker.create_template("short-lived", TEMPLATE_TEXT).await;
    let to = phone_number(1);
    let mut new = new_verification(&to);
    new.template_id = Some(template_id);
    let started = worker.start(new).await;
    worker.delete_template(template_id).await;

    worker.drain().await;

    DeadLettered {
        worker,
        to,
        verification_id: started.verification_id,
        delivery_id: started.delivery_id,
        template_id,
    }
}

/// Waits until the dead-letter queue holds `count` ready messages: messages a browser
/// held return to the queue as its channel closes, not at once.
pub(crate) async fn wait_for_dead_letters(worker: &TestWorker, count: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let depth = worker.dead_letter_depth().await;
        if depth == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead-letter queue holds {depth} messages, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_send_whose_template_was_deleted_fails_naming_it_and_its_job_is_dead_lettered() {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;

    let send = dead.worker.newest_send(dead.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);
    assert_eq!(send.attempts, 1);
    assert_eq!(outcomes(&send), ["render_error"]);
    let error = send.last_error.unwrap();
    assert!(error.contains("no longer exists"), "{error}");
    assert!(error.contains(&dead.template_id.to_string()), "{error}");
    assert!(dead.worker.sink.is_empty());
    assert_eq!(dead.worker.dead_letter_depth().await, 1);
}

#[tokio::test]
async fn a_dead_letter_carries_its_reason_code_reason_time_worker_and_routing_key() {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;

    let listing = list_dead_letters(&dead.worker.rabbit, 10).await.unwrap();

    assert_eq!(listing.depth, 1);
    assert_eq!(listing.letters.len(), 1);
    let letter = &listing.letters[0];
    assert_eq!(letter.delivery_id, Some(dead.delivery_id));
    assert_eq!(letter.reason_code, "template_missing");
    assert_eq!(
        letter.reason,
        format!("template {} no longer exists", dead.template_id)
    );
    assert_eq!((letter.dead_lettered, letter.replayed), (1, 0));
    assert_eq!(letter.routing_key.as_deref(), Some("send"));
    assert!(letter.worker.is_some());
    let age = chrono::Utc::now() - letter.dead_at.unwrap();
    assert!(
        age < chrono::Duration::minutes(1),
        "dead-lettered {age} ago"
    );
    assert!(dead.worker.sink.is_empty());
}

#[tokio::test]
async fn listing_the_dead_letters_leaves_them_in_the_queue() {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;

    let first = list_dead_letters(&dead.worker.rabbit, 10).await.unwrap();
    wait_for_dead_letters(&dead.worker, 1).await;
    let second = list_dead_letters(&dead.worker.rabbit, 10).await.unwrap();

    assert_eq!(first, second);
    assert_eq!(second.depth, 1);
    wait_for_dead_letters(&dead.worker, 1).await;
    let table = second.to_table();
    assert!(table.contains("template_missing"), "{table}");
    assert!(table.contains(&dead.delivery_id.to_string()), "{table}");
}

#[tokio::test]
async fn a_send_the_provider_refuses_is_dead_lettered_as_provider_rejected() {
    let worker = spawn_worker_with(always_failing(400)).await;
    let started = worker.start_verification(&phone_number(3)).await;

    worker.drain().await;

    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);
    assert_eq!(worker.dead_letter_depth().await, 1);
    let listing = list_dead_letters(&worker.rabbit, 10).await.unwrap();
    let letter = &listing.letters[0];
    assert_eq!(letter.delivery_id, Some(started.delivery_id));
    assert_eq!(letter.reason_code, "provider_rejected");
    assert!(letter.reason.contains("400"), "{}", letter.reason);
}

#[tokio::test]
async fn an_unreadable_payload_is_dead_lettered_byte_for_byte_and_replay_refuses_it() {
    let worker = spawn_worker().await;
    let payload = b"\xff\x00not a job\n{\"v\":".to_vec();

    worker.publish_raw(&payload).await;
    worker.drain().await;

    assert_eq!(worker.dead_letter_depth().await, 1);
    let browser = DeadLetterBrowser::open(&worker.rabbit).await.unwrap();
    let letter = browser.next().await.unwrap().unwrap();
    assert_eq!(letter.body, payload);
    assert_eq!(letter.reason_code, "unreadable_payload");
    assert!(
        letter.reason.contains("not a valid send job"),
        "{}",
        letter.reason
    );
    browser.close().await;
    wait_for_dead_letters(&worker, 1).await;
    let listing = list_dead_letters(&worker.rabbit, 10).await.unwrap();
    assert_eq!(listing.letters[0].delivery_id, None);
    assert_eq!(listing.letters[0].body, r#"\xff\x00not a job\n{\"v\":"#);

    let report = replay_dead_letters(&worker.pool, &worker.rabbit, &replay_all())
        .await
        .unwrap();

    assert_eq!(report.replayed(), 0);
    assert_eq!(report.unreadable(), 1);
    assert!(report.to_string().contains("refused, unreadable_payload"));
    wait_for_dead_letters(&worker, 1).await;
    assert!(worker.sink.is_empty());
}

#[tokio::test]
async fn a_locale_without_built_in_text_fails_the_send_instead_of_sending_english() {
    let worker = spawn_worker().await;
    let mut new = new_verification(&phone_number(4));
    // Accepted when it was recorded; this build has no text for it.
    new.locale = Some(TemplateLocale::parse("sw-KE").unwrap());
    let started = worker.start(new).await;

    worker.drain().await;

    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);
    assert_eq!(outcomes(&send), ["render_error"]);
    assert_eq!(
        send.last_error.as_deref(),
        Some("there is no built-in text for locale sw-KE")
    );
    assert!(worker.sink.is_empty(), "{:?}", worker.sink.all());
    let listing = list_dead_letters(&worker.rabbit, 10).await.unwrap();
    assert_eq!(listing.letters.len(), 1);
    assert_eq!(listing.letters[0].delivery_id, Some(started.delivery_id));
    assert_eq!(listing.letters[0].reason_code, "locale_unsupported");
}

#[tokio::test]
async fn a_stored_locale_that_does_not_parse_fails_its_own_send_and_no_other() {
    let worker = spawn_worker().await;
    let broken = worker.start_verification(&phone_number(6)).await;
    let sound = phone_number(7);
    let fine = worker.start_verification(&sound).await;
    // Written by hand: the API stores only parsed locales.
    worker
        .sql(&format!(
            "UPDATE verifications SET locale = 'english' WHERE id = '{}'",
            broken.verification_id
        ))
        .await;

    worker.drain().await;

    let send = worker.newest_send(broken.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);
    assert_eq!(outcomes(&send), ["render_error"]);
    assert_eq!(
        send.last_error.as_deref(),
        Some("the stored locale \"english\" is not a language tag")
    );
    let listing = list_dead_letters(&worker.rabbit, 10).await.unwrap();
    assert_eq!(listing.letters.len(), 1);
    assert_eq!(listing.letters[0].delivery_id, Some(broken.delivery_id));
    assert_eq!(listing.letters[0].reason_code, "locale_invalid");
    assert_eq!(worker.sent_sms(&sound).len(), 1);
    let fine = worker.newest_send(fine.verification_id).await;
    assert_eq!(fine.status, DeliveryStatus::Sent);
}

#[tokio::test]
async fn a_claim_batch_reads_an_unusable_locale_as_that_sends_outcome_and_claims_the_rest() {
    let worker = spawn_worker().await;
    let broken = worker.start_verification(&phone_number(8)).await;
    let fine = worker.start_verification(&phone_number(9)).await;
    worker
        .sql(&format!(
            "UPDATE verifications SET locale = 'english' WHERE id = '{}'",
            broken.verification_id
        ))
        .await;

    let outcomes = deliveries::claim_deliveries(
        &worker.pool,
        &[broken.delivery_id, fine.delivery_id],
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    match outcomes.as_slice() {
        [
            ClaimOutcome::Unusable(unusable),
            ClaimOutcome::Claimed(claimed),
        ] => {
            assert_eq!(unusable.delivery_id, broken.delivery_id);
            assert_eq!(unusable.attempt, 1);
            assert_eq!(
                unusable.problem,
                UnusableValue::Locale("english".to_owned())
            );
            assert_eq!(claimed.delivery_id, fine.delivery_id);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_send_over_a_segment_cap_lowered_since_the_start_fails_unsent_and_is_dead_lettered() {
    let worker = spawn_worker_with(TestOptions {
        sms: SmsSettings::from_flags(&["--sms-max-segments", "1"]).unwrap(),
        ..TestOptions::default()
    })
    .await;
    let template_id = worker.create_template("brand", "{{brand}}: {{code}}").await;
    let to = phone_number(5);
    let mut new = new_verification(&to);
    // 200 + 8 = 208 characters: two segments, within the default cap of three the API
    // checked at the start, over the single segment this worker now allows.
    new.template_id = Some(template_id);
    new.variables = variables(json!({ "brand": "a".repeat(200) }));
    let started = worker.start(new).await;

    worker.drain().await;

    let send = worker.newest_send(started.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);
    assert_eq!(outcomes(&send), ["render_error"]);
    assert_eq!(
        send.last_error.as_deref(),
        Some(
            "not sent: the message takes 2 SMS segments (GSM-7, 208 characters); the cap is 1 \
             (VERIFY_SMS_MAX_SEGMENTS)"
        )
    );
    assert!(worker.sent_sms(&to).is_empty(), "{:?}", worker.sink.all());
    let listing = list_dead_letters(&worker.rabbit, 10).await.unwrap();
    assert_eq!(listing.letters.len(), 1);
    assert_eq!(listing.letters[0].delivery_id, Some(started.delivery_id));
    assert_eq!(listing.letters[0].reason_code, "message_too_long");
}
