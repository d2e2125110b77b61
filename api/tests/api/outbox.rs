//! The outbox: a committed send whose job the broker never confirmed is still sent, once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use verify_common::db::deliveries::{self, ClaimOutcome};

use crate::helpers::{TestApp, TestOptions, WAIT, phone_number, spawn_app_with, wait_until};

async fn wait_until_published(app: &TestApp) {
    wait_until("the send is marked published", WAIT, || async {
        let rows = app
            .sql("SELECT count(*) FROM sms_deliveries WHERE published_at IS NULL")
            .await;
        rows[0].get::<_, i64>(0) == 0
    })
    .await;
}

#[tokio::test]
async fn a_send_whose_publish_was_never_confirmed_is_relayed_and_sent_exactly_once() {
    let mut options = TestOptions {
        start_worker: false,
        ..TestOptions::default()
    };
    options.api.outbox_interval_ms = 100;
    options.api.outbox_min_age_ms = 300;
    let app = spawn_app_with(options).await;
    let to = phone_number(1);
    let created = app.start_verification(&json!({ "to": to })).await;
    wait_until_published(&app).await;

    // As if the API had died between the commit and the broker's confirm.
    app.sql("UPDATE sms_deliveries SET published_at = NULL")
        .await;
    wait_until_published(&app).await;
    app.start_worker().await;

    // The relayed copy and the original job are both in the queue: run both.
    app.drain().await;

    let id = created["id"].as_str().unwrap();
    let verification = app.get_verification(id).await;
    assert_eq!(verification["delivery_status"], "sent");
    assert_eq!(app.sent_sms(&to).len(), 1);
    assert_eq!(verification["sends"][0]["attempts"], 1);
}

#[tokio::test]
async fn a_send_taken_by_a_worker_has_left_the_outbox_whether_or_not_the_api_marked_it() {
    let app = spawn_app_with(TestOptions::default()).await;
    let created = app
        .start_verification(&json!({ "to": phone_number(2) }))
        .await;

    app.wait_for_delivery_status(created["id"].as_str().unwrap(), "sent")
        .await;

    // The claim records the publish itself, so the relay's index never keeps sent rows.
    let rows = app
        .sql("SELECT count(*) FROM sms_deliveries WHERE published_at IS NULL")
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 0);
}

/// An app whose own relay stays out of the way (the test runs the relay's step itself),
/// with no worker, and one send whose publish was, as far as Postgres knows, never
/// confirmed, committed a minute ago.
async fn app_with_an_unconfirmed_send() -> TestApp {
    let mut options = TestOptions {
        start_worker: false,
        ..TestOptions::default()
    };
    options.api.outbox_interval_ms = 3_600_000;
    options.api.outbox_min_age_ms = 2_000;
    let app = spawn_app_with(options).await;
    app.start_verification(&json!({ "to": phone_number(3) }))
        .await;
    wait_until_published(&app).await;
    app.sql(
        "UPDATE sms_deliveries SET published_at = NULL, created_at = now() - interval '1 minute'",
    )
    .await;
    app
}

/// The relay's minimum age in these tests: the send above is older.
const RELAY_AGE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_worker_claims_a_send_while_the_relay_is_publishing_its_job() {
    let app = app_with_an_unconfirmed_send().await;
    let claims = Arc::new(Mutex::new(Vec::new()));

    // The relay's publish of the job does not return until a claim of its send has.
    let relayed = deliveries::relay_unpublished(&app.pool, RELAY_AGE, 10, |send| {
        let id = send.id;
        let pool = app.pool.clone();
        let claims = Arc::clone(&claims);
        async move {
            let claim = tokio::time::timeout(
                Duration::from_secs(5),
                deliveries::claim_deliveries(&pool, &[id], Duration::from_secs(60)),
            )
            .await;
            let claimed = matches!(
                &claim,
                Ok(Ok(outcomes)) if matches!(outcomes.as_slice(), [ClaimOutcome::Claimed(_)])
            );
            claims.lock().unwrap().push(claimed);
            true
        }
    })
    .await
    .unwrap();

    assert_eq!(relayed.published, 1);
    assert_eq!(
        *claims.lock().unwrap(),
        [true],
        "the claim went through while the relay was publishing"
    );
}

#[tokio::test]
async fn a_send_taken_by_one_relay_is_left_alone_by_another_relaying_at_the_same_time() {
    let app = app_with_an_unconfirmed_send().await;
    let published_by_the_other = Arc::new(Mutex::new(0_usize));

    let relayed = deliveries::relay_unpublished(&app.pool, RELAY_AGE, 10, |_| {
        let pool = app.pool.clone();
        let published_by_the_other = Arc::clone(&published_by_the_other);
        async move {
            // Another replica's relay runs while this one publishes.
            let other = deliveries::relay_unpublished(&pool, RELAY_AGE, 10, |_| async { true })
                .await
                .unwrap();
            *published_by_the_other.lock().unwrap() += other.published;
            true
        }
    })
    .await
    .unwrap();

    assert_eq!(relayed.published, 1);
    assert_eq!(*published_by_the_other.lock().unwrap(), 0);
    let unpublished = app
        .sql("SELECT count(*) FROM sms_deliveries WHERE published_at IS NULL")
        .await;
    assert_eq!(unpublished[0].get::<_, i64>(0), 0, "marked once published");
}

#[tokio::test]
async fn a_send_the_relay_could_not_publish_is_taken_again_at_its_next_round() {
    let app = app_with_an_unconfirmed_send().await;

    let failed = deliveries::relay_unpublished(&app.pool, RELAY_AGE, 10, |_| async { false })
        .await
        .unwrap();
    let next_round = deliveries::relay_unpublished(&app.pool, RELAY_AGE, 10, |_| async { true })
        .await
        .unwrap();

    assert_eq!((failed.due, failed.published), (1, 0));
    assert_eq!((next_round.due, next_round.published), (1, 1));
}
