//! The outbox: a committed send whose job the broker never confirmed is still sent, once.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{TestApp, TestOptions, WAIT, phone_number, spawn_app_with};

async fn wait_until_published(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = app
            .sql("SELECT count(*) FROM sms_deliveries WHERE published_at IS NULL")
            .await;
        if rows[0].get::<_, i64>(0) == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the send was never marked published"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
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
