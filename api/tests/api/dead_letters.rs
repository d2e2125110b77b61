//! The dead-letter queue: jobs the worker gives up on arrive there with their reason,
//! `dlq list` shows them without removing them, and `dlq replay` sends what can still be
//! sent, exactly once, and leaves the rest.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;
use verify_common::domain::{DeliveryId, VerificationStatus};
use verify_common::queue::{DeadLetterBrowser, QueueNames, SmsPublisher, queue_depth};
use verify_worker::dlq::{
    ReplayOptions, ReplaySelection, ReplayVerdict, SkipReason, list_dead_letters,
    replay_dead_letters,
};

use crate::helpers::{TestApp, TestOptions, WAIT, phone_number, spawn_app, spawn_app_with};

const TEMPLATE_TEXT: &str = "Code {{code}}";

/// A verification whose template was deleted before any worker ran, and its send.
struct DeadLettered {
    app: TestApp,
    to: String,
    verification_id: String,
    delivery_id: DeliveryId,
    template_id: i64,
}

/// Starts a verification with a template, deletes the template, then starts the worker
/// and waits until the job is in the dead-letter queue.
async fn dead_letter_a_job_whose_template_was_deleted() -> DeadLettered {
    let app = spawn_app_with(TestOptions {
        start_worker: false,
        ..TestOptions::default()
    })
    .await;
    let template = app
        .create_template(&json!({ "name": "short-lived", "text": TEMPLATE_TEXT }))
        .await;
    let template_id = template["id"].as_i64().unwrap();
    let to = phone_number(1);
    let created = app
        .start_verification(&json!({ "to": to, "template_id": template_id }))
        .await;
    let deleted = app
        .request(Method::DELETE, &format!("/v1/templates/{template_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    app.start_worker().await;
    let verification_id = created["id"].as_str().unwrap().to_owned();
    app.wait_for_delivery_status(&verification_id, "failed")
        .await;
    wait_for_dead_letters(&app, 1).await;
    DeadLettered {
        delivery_id: send_id(&created),
        app,
        to,
        verification_id,
        template_id,
    }
}

/// The id of the newest send of a verification.
fn send_id(verification: &Value) -> DeliveryId {
    let send = verification["sends"].as_array().unwrap().last().unwrap();
    DeliveryId::from_uuid(Uuid::parse_str(send["id"].as_str().unwrap()).unwrap())
}

async fn dead_letter_depth(app: &TestApp) -> u32 {
    let queue = QueueNames::new(&app.rabbit.queue_prefix).dead_queue;
    queue_depth(&app.rabbit.url, &queue).await.unwrap()
}

/// Waits until the dead-letter queue holds `count` ready messages (messages a browser
/// held return to the queue as its channel closes).
async fn wait_for_dead_letters(app: &TestApp, count: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let depth = dead_letter_depth(app).await;
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

/// Puts the deleted template back under its old id, as restoring it from a backup would.
async fn restore_template(app: &TestApp, id: i64) {
    app.sql(&format!(
        "INSERT INTO templates (id, name, body) OVERRIDING SYSTEM VALUE
         VALUES ({id}, 'short-lived', '{TEMPLATE_TEXT}')"
    ))
    .await;
}

fn replay_all() -> ReplayOptions {
    ReplayOptions {
        selection: ReplaySelection::All,
        dry_run: false,
        discard_skipped: false,
    }
}

/// Sends one more verification and waits until it is sent: a job published after the
/// replayed one, so the replayed job has reached the worker by then.
async fn send_a_later_verification(app: &TestApp) {
    let later = app
        .start_verification(&json!({ "to": phone_number(2) }))
        .await;
    app.wait_for_delivery_status(later["id"].as_str().unwrap(), "sent")
        .await;
}

#[tokio::test]
async fn a_job_whose_template_was_deleted_is_dead_lettered_with_its_reason_and_the_send_shows_the_failure()
 {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;

    let verification = dead.app.get_verification(&dead.verification_id).await;
    let send = verification["sends"].as_array().unwrap().last().unwrap();
    assert_eq!(send["status"], "failed");
    let error = send["last_error"].as_str().unwrap();
    assert!(error.contains("no longer exists"), "{error}");

    let listing = list_dead_letters(&dead.app.rabbit, 10).await.unwrap();
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
    assert!(dead.app.sink.is_empty());
}

#[tokio::test]
async fn listing_the_dead_letters_leaves_them_in_the_queue() {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;

    let first = list_dead_letters(&dead.app.rabbit, 10).await.unwrap();
    wait_for_dead_letters(&dead.app, 1).await;
    let second = list_dead_letters(&dead.app.rabbit, 10).await.unwrap();

    assert_eq!(first, second);
    assert_eq!(second.depth, 1);
    wait_for_dead_letters(&dead.app, 1).await;
    let table = second.to_table();
    assert!(table.contains("template_missing"), "{table}");
    assert!(table.contains(&dead.delivery_id.to_string()), "{table}");
}

#[tokio::test]
async fn a_dry_run_replay_reports_the_re_arm_but_changes_nothing() {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;
    restore_template(&dead.app, dead.template_id).await;

    let options = ReplayOptions {
        dry_run: true,
        ..replay_all()
    };
    let report = replay_dead_letters(&dead.app.pool, &dead.app.rabbit, &options)
        .await
        .unwrap();

    assert_eq!(
        report.verdicts,
        [ReplayVerdict::Replayed {
            delivery_id: dead.delivery_id,
            rearmed: true
        }]
    );
    wait_for_dead_letters(&dead.app, 1).await;
    let verification = dead.app.get_verification(&dead.verification_id).await;
    assert_eq!(verification["delivery_status"], "failed");
    assert!(dead.app.sink.is_empty());
}

#[tokio::test]
async fn replaying_after_the_template_is_restored_sends_the_sms_exactly_once_and_empties_the_queue()
{
    let dead = dead_letter_a_job_whose_template_was_deleted().await;
    restore_template(&dead.app, dead.template_id).await;

    let report = replay_dead_letters(&dead.app.pool, &dead.app.rabbit, &replay_all())
        .await
        .unwrap();

    assert_eq!(
        report.verdicts,
        [ReplayVerdict::Replayed {
            delivery_id: dead.delivery_id,
            rearmed: true
        }]
    );
    let verification = dead
        .app
        .wait_for_delivery_status(&dead.verification_id, "sent")
        .await;
    let send = verification["sends"].as_array().unwrap().last().unwrap();
    assert_eq!(send["attempts"], 2);
    send_a_later_verification(&dead.app).await;
    let messages = dead.app.sent_sms(&dead.to);
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0].body.starts_with("Code "),
        "{}",
        messages[0].body
    );
    assert_eq!(dead_letter_depth(&dead.app).await, 0);
    let listing = list_dead_letters(&dead.app.rabbit, 10).await.unwrap();
    assert!(listing.letters.is_empty());
}

#[tokio::test]
async fn a_dead_letter_whose_verification_expired_is_skipped_and_left_in_the_queue_unless_discarded()
 {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;
    restore_template(&dead.app, dead.template_id).await;
    dead.app
        .sql(&format!(
            "UPDATE verifications SET expires_at = now() - interval '1 second'
             WHERE id = '{}'",
            dead.verification_id
        ))
        .await;
    let just_this_one = ReplayOptions {
        selection: ReplaySelection::Deliveries(BTreeSet::from([dead.delivery_id])),
        ..replay_all()
    };

    let report = replay_dead_letters(&dead.app.pool, &dead.app.rabbit, &just_this_one)
        .await
        .unwrap();

    let skipped = ReplayVerdict::Skipped {
        delivery_id: dead.delivery_id,
        reason: SkipReason::VerificationClosed(VerificationStatus::Expired),
        discarded: false,
    };
    assert_eq!(report.verdicts, [skipped]);
    assert_eq!(report.replayed(), 0);
    assert!(report.to_string().contains("verification_expired: 1"));
    wait_for_dead_letters(&dead.app, 1).await;
    let verification = dead.app.get_verification(&dead.verification_id).await;
    assert_eq!(verification["delivery_status"], "failed");

    let discarding = ReplayOptions {
        discard_skipped: true,
        ..just_this_one
    };
    let report = replay_dead_letters(&dead.app.pool, &dead.app.rabbit, &discarding)
        .await
        .unwrap();

    assert!(matches!(
        report.verdicts[..],
        [ReplayVerdict::Skipped {
            discarded: true,
            ..
        }]
    ));
    wait_for_dead_letters(&dead.app, 0).await;
    assert!(dead.app.sink.is_empty());
}

#[tokio::test]
async fn an_unreadable_payload_is_dead_lettered_byte_for_byte_and_replay_refuses_it() {
    let app = spawn_app().await;
    let payload = b"\xff\x00not a job\n{\"v\":".to_vec();
    let publisher = SmsPublisher::connect(&app.rabbit, "test").await.unwrap();

    publisher.publish_raw(&payload).await.unwrap();

    wait_for_dead_letters(&app, 1).await;
    let browser = DeadLetterBrowser::open(&app.rabbit).await.unwrap();
    let letter = browser.next().await.unwrap().unwrap();
    assert_eq!(letter.body, payload);
    assert_eq!(letter.reason_code, "unreadable_payload");
    assert!(
        letter.reason.contains("not a valid send job"),
        "{}",
        letter.reason
    );
    browser.close().await;
    wait_for_dead_letters(&app, 1).await;
    let listing = list_dead_letters(&app.rabbit, 10).await.unwrap();
    assert_eq!(listing.letters[0].delivery_id, None);
    assert_eq!(listing.letters[0].body, r#"\xff\x00not a job\n{\"v\":"#);

    let report = replay_dead_letters(&app.pool, &app.rabbit, &replay_all())
        .await
        .unwrap();

    assert_eq!(report.replayed(), 0);
    assert_eq!(report.unreadable(), 1);
    assert!(report.to_string().contains("refused, unreadable_payload"));
    wait_for_dead_letters(&app, 1).await;
    assert!(app.sink.is_empty());
}

#[tokio::test]
async fn a_job_replayed_before_its_cause_is_fixed_comes_back_counting_its_dead_letterings_and_replays()
 {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;

    let report = replay_dead_letters(&dead.app.pool, &dead.app.rabbit, &replay_all())
        .await
        .unwrap();

    assert_eq!(report.replayed(), 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    let letter = loop {
        let listing = list_dead_letters(&dead.app.rabbit, 10).await.unwrap();
        if let Some(letter) = listing.letters.into_iter().next() {
            break letter;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never came back"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(letter.delivery_id, Some(dead.delivery_id));
    assert_eq!(letter.reason_code, "template_missing");
    assert_eq!((letter.dead_lettered, letter.replayed), (2, 1));
    assert!(dead.app.sink.is_empty());
}

#[tokio::test]
async fn a_send_the_provider_refuses_is_dead_lettered_as_provider_rejected() {
    let mut options = TestOptions::default();
    options.sink.failure_rate = 1.0;
    options.sink.failure_status = 400;
    let app = spawn_app_with(options).await;
    let created = app
        .start_verification(&json!({ "to": phone_number(3) }))
        .await;

    app.wait_for_delivery_status(created["id"].as_str().unwrap(), "failed")
        .await;

    wait_for_dead_letters(&app, 1).await;
    let listing = list_dead_letters(&app.rabbit, 10).await.unwrap();
    let letter = &listing.letters[0];
    assert_eq!(letter.delivery_id, Some(send_id(&created)));
    assert_eq!(letter.reason_code, "provider_rejected");
    assert!(letter.reason.contains("400"), "{}", letter.reason);
}
