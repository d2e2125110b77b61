//! `dlq replay`: what can still be sent is sent, exactly once; the rest is left in the
//! queue (or discarded on request), and a job that fails again comes back counted.

use std::collections::BTreeSet;

use verify_common::domain::{DeliveryStatus, VerificationStatus};
use verify_worker::dlq::{
    ReplayOptions, ReplaySelection, ReplayVerdict, SkipReason, list_dead_letters,
    replay_dead_letters,
};

use crate::dead_letters::{
    DeadLettered, TEMPLATE_TEXT, dead_letter_a_job_whose_template_was_deleted,
    wait_for_dead_letters,
};

pub(crate) fn replay_all() -> ReplayOptions {
    ReplayOptions {
        selection: ReplaySelection::All,
        dry_run: false,
        discard_skipped: false,
    }
}

/// Puts the deleted template back under its old id, as restoring it from a backup would.
async fn restore_template(dead: &DeadLettered) {
    dead.worker
        .sql(&format!(
            "INSERT INTO templates (id, name, body) OVERRIDING SYSTEM VALUE
             VALUES ({}, 'short-lived', '{TEMPLATE_TEXT}')",
            dead.template_id
        ))
        .await;
}

#[tokio::test]
async fn a_dry_run_replay_reports_the_re_arm_but_changes_nothing() {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;
    restore_template(&dead).await;

    let options = ReplayOptions {
        dry_run: true,
        ..replay_all()
    };
    let report = replay_dead_letters(&dead.worker.pool, &dead.worker.rabbit, &options)
        .await
        .unwrap();

    assert_eq!(
        report.verdicts,
        [ReplayVerdict::Replayed {
            delivery_id: dead.delivery_id,
            rearmed: true
        }]
    );
    wait_for_dead_letters(&dead.worker, 1).await;
    dead.worker.drain().await;
    let send = dead.worker.newest_send(dead.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);
    assert!(dead.worker.sink.is_empty());
}

#[tokio::test]
async fn replaying_after_the_template_is_restored_sends_the_sms_exactly_once_and_empties_the_queue()
{
    let dead = dead_letter_a_job_whose_template_was_deleted().await;
    restore_template(&dead).await;

    let report = replay_dead_letters(&dead.worker.pool, &dead.worker.rabbit, &replay_all())
        .await
        .unwrap();

    assert_eq!(
        report.verdicts,
        [ReplayVerdict::Replayed {
            delivery_id: dead.delivery_id,
            rearmed: true
        }]
    );
    dead.worker.drain().await;
    let send = dead.worker.newest_send(dead.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Sent);
    assert_eq!(send.attempts, 2);
    let messages = dead.worker.sent_sms(&dead.to);
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0].body.starts_with("Code "),
        "{}",
        messages[0].body
    );
    assert_eq!(dead.worker.dead_letter_depth().await, 0);
    let listing = list_dead_letters(&dead.worker.rabbit, 10).await.unwrap();
    assert!(listing.letters.is_empty());
}

#[tokio::test]
async fn a_dead_letter_whose_verification_expired_is_skipped_and_left_in_the_queue_unless_discarded()
 {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;
    restore_template(&dead).await;
    dead.worker
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

    let report = replay_dead_letters(&dead.worker.pool, &dead.worker.rabbit, &just_this_one)
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
    wait_for_dead_letters(&dead.worker, 1).await;
    let send = dead.worker.newest_send(dead.verification_id).await;
    assert_eq!(send.status, DeliveryStatus::Failed);

    let discarding = ReplayOptions {
        discard_skipped: true,
        ..just_this_one
    };
    let report = replay_dead_letters(&dead.worker.pool, &dead.worker.rabbit, &discarding)
        .await
        .unwrap();

    assert!(matches!(
        report.verdicts[..],
        [ReplayVerdict::Skipped {
            discarded: true,
            ..
        }]
    ));
    wait_for_dead_letters(&dead.worker, 0).await;
    dead.worker.drain().await;
    assert!(dead.worker.sink.is_empty());
}

#[tokio::test]
async fn a_job_replayed_before_its_cause_is_fixed_comes_back_counting_its_dead_letterings_and_replays()
 {
    let dead = dead_letter_a_job_whose_template_was_deleted().await;

    let report = replay_dead_letters(&dead.worker.pool, &dead.worker.rabbit, &replay_all())
        .await
        .unwrap();

    assert_eq!(report.replayed(), 1);
    dead.worker.drain().await;
    let listing = list_dead_letters(&dead.worker.rabbit, 10).await.unwrap();
    assert_eq!(listing.letters.len(), 1, "the job came back");
    let letter = &listing.letters[0];
    assert_eq!(letter.delivery_id, Some(dead.delivery_id));
    assert_eq!(letter.reason_code, "template_missing");
    assert_eq!((letter.dead_lettered, letter.replayed), (2, 1));
    assert!(dead.worker.sink.is_empty());
}
