//! `GET /metrics`: scraped over HTTP, parsed as Prometheus text format, and checked
//! against the traffic each test sends.

use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{phone_number, spawn_app, wrong_code};

const REQUESTS: &str = "verify_http_requests_total";
const DURATION: &str = "verify_http_request_duration_seconds";

#[tokio::test]
async fn starting_verifications_counts_each_one_under_its_country() {
    let app = spawn_app().await;
    let before = app.scrape().await;

    for n in 0..3 {
        app.start_verification(&json!({ "to": phone_number(n) }))
            .await;
    }
    app.start_verification(&json!({ "to": "+4915123456789" }))
        .await;

    let after = app.scrape().await;
    let started = |scrape: &verify_common::testing::exposition::Exposition, country| {
        scrape.sum(
            "verify_verifications_started_total",
            &[("country", country)],
        )
    };
    assert_eq!(started(&after, "US") - started(&before, "US"), 3.0);
    assert_eq!(started(&after, "DE") - started(&before, "DE"), 1.0);
    assert_eq!(
        after.sum(
            REQUESTS,
            &[
                ("route", "/v1/verifications"),
                ("method", "POST"),
                ("status", "202")
            ]
        ) - before.sum(
            REQUESTS,
            &[
                ("route", "/v1/verifications"),
                ("method", "POST"),
                ("status", "202")
            ]
        ),
        4.0
    );
}

#[tokio::test]
async fn a_request_for_an_unknown_id_is_counted_under_its_route_template() {
    let app = spawn_app().await;
    let id = Uuid::new_v4().to_string();

    let response = app.get(&format!("/v1/verifications/{id}")).await;
    let unknown_path = app.get("/v1/no-such-thing/12345678").await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(unknown_path.status(), StatusCode::NOT_FOUND);
    let scrape = app.scrape().await;
    let labels = [
        ("route", "/v1/verifications/{}"),
        ("method", "GET"),
        ("status", "404"),
    ];
    assert_eq!(scrape.value(REQUESTS, &labels), Some(1.0));
    assert_eq!(
        scrape.value(
            REQUESTS,
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        Some(1.0)
    );
    let leaked: Vec<_> = scrape
        .samples
        .iter()
        .filter(|sample| {
            sample
                .labels
                .values()
                .any(|value| value.contains(&id) || value.contains("12345678"))
        })
        .collect();
    assert!(leaked.is_empty(), "raw paths in labels: {leaked:?}");
}

#[tokio::test]
async fn request_durations_are_a_cumulative_histogram_counting_every_request() {
    let app = spawn_app().await;
    let before = app.scrape().await;
    let labels = [("route", "/healthz"), ("method", "GET")];

    for _ in 0..7 {
        let response = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let after = app.scrape().await;
    let count = |scrape: &verify_common::testing::exposition::Exposition| {
        scrape.sum(&format!("{DURATION}_count"), &labels)
    };
    assert_eq!(count(&after) - count(&before), 7.0);
    let mut buckets: Vec<(f64, f64)> = after
        .samples(&format!("{DURATION}_bucket"), &labels)
        .map(|bucket| (bucket.labels["le"].parse().unwrap(), bucket.value))
        .collect();
    assert!(buckets.len() > 5, "{buckets:?}");
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
        "buckets are not cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count(&after)));
    assert_eq!(after.types[DURATION], "histogram");
    assert_eq!(
        after.sum(REQUESTS, &labels) - before.sum(REQUESTS, &labels),
        7.0
    );
}

#[tokio::test]
async fn checks_are_counted_by_outcome_and_approvals_and_cancellations_by_country() {
    let app = spawn_app().await;
    let approved = app
        .start_verification(&json!({ "to": phone_number(1) }))
        .await;
    let canceled = app
        .start_verification(&json!({ "to": phone_number(2) }))
        .await;
    let id = approved["id"].as_str().unwrap();
    let code = app.wait_for_code(&phone_number(1)).await;
    let before = app.scrape().await;

    let wrong = app.check_code(id, &wrong_code(&code)).await;
    let right = app.check_code(id, &code).await;
    let again = app.check_code(id, &code).await;
    let unknown = app.check_code(&Uuid::new_v4().to_string(), &code).await;
    let cancel = app
        .request(
            Method::POST,
            &format!(
                "/v1/verifications/{}/cancel",
                canceled["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();

    for response in [wrong, right, again, unknown, cancel] {
        assert_eq!(response.status(), StatusCode::OK);
    }
    let after = app.scrape().await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    for (outcome, expected) in [
        ("wrong_code", 1.0),
        ("approved", 1.0),
        ("closed", 1.0),
        ("not_found", 1.0),
        ("expired", 0.0),
    ] {
        assert_eq!(
            delta("verify_checks_total", &[("outcome", outcome)]),
            expected,
            "{outcome}"
        );
    }
    assert_eq!(
        delta("verify_verifications_approved_total", &[("country", "US")]),
        1.0
    );
    assert_eq!(
        delta("verify_verifications_canceled_total", &[("country", "US")]),
        1.0
    );
}

#[tokio::test]
async fn a_refusal_by_an_abuse_rule_is_counted_with_its_rule_action_and_mode() {
    let app = spawn_app().await;

    // Premium-rate numbers are refused by default.
    let refused = app
        .post_verification(&json!({ "to": "+449012345678" }))
        .await;

    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.wait_for_metric(
        "verify_abuse_decisions_total",
        &[
            ("rule", "number_type.premium_rate"),
            ("action", "block"),
            ("mode", "enforce"),
        ],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn every_metric_follows_the_naming_rules_and_the_pool_and_outbox_gauges_are_shown() {
    let app = spawn_app().await;
    app.start_verification(&json!({ "to": phone_number(1) }))
        .await;
    app.drain().await;

    let scrape = app.scrape().await;

    let problems = scrape.naming_problems();
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        scrape.types.keys().all(|name| name.starts_with("verify_")),
        "{:?}",
        scrape.types.keys()
    );
    for state in ["in_use", "idle"] {
        assert!(
            scrape
                .value("verify_db_pool_connections", &[("state", state)])
                .is_some(),
            "no {state} pool gauge"
        );
    }
    assert!(scrape.value("verify_db_pool_max_connections", &[]).unwrap() >= 1.0);
    assert!(scrape.value("verify_db_pool_waiting", &[]).is_some());
    assert_eq!(scrape.value("verify_outbox_backlog", &[]), Some(0.0));
}
