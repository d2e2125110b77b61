//! Velocity limits: sends per scope and window refused (enforce), recorded (shadow) or
//! flagged (monitor); counted across a batch, across API processes and across resends;
//! the allow list exempting numbers, prefixes and API keys.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use verify_api::keys::create_key;
use verify_common::config::{AbuseSettings, FromFlags};

use crate::abuse::{
    add_allow, error_of, hit, hits, key_id, risk_of_start, rule, rules, set_rule, start_until,
    verifications_recorded, wait_for_count,
};
use crate::helpers::{TestApp, TestOptions, phone_number, spawn_app_with};

/// Example numbers of libphonenumber's metadata.
const GB_PREMIUM_RATE: &str = "+449012345678";
const NG_MOBILE: &str = "+2348021234567";

/// The system with the seeded velocity limits in force, under the global `mode`, and no
/// minimum interval between resends.
async fn spawn_velocity_app(mode: &str) -> TestApp {
    let mut options = TestOptions {
        abuse: AbuseSettings::from_flags(&["--abuse-mode", mode]).unwrap(),
        velocity_limits: true,
        ..TestOptions::default()
    };
    options.api.resend_interval_secs = 0;
    spawn_app_with(options).await
}

/// Velocity parameters: `limit` sends in an hour per key of `scope`.
fn per_hour(scope: &str, limit: u32, action: &str) -> Value {
    json!({"scope": scope, "window_secs": 3600, "limit": limit, "action": action})
}

/// Sets `velocity.<scope>` to `limit` an hour, blocking.
async fn limit_scope(app: &TestApp, scope: &str, limit: u32) {
    set_rule(
        app,
        &format!("velocity.{scope}"),
        &json!({"params": per_hour(scope, limit, "block")}),
    )
    .await;
}

/// The whole seconds of a response's `Retry-After`.
fn retry_after(response: &Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After in {response:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Asserts a velocity refusal by `rule` in `scope` with a wait within the hour.
async fn assert_velocity_limited(response: Response, rule: &str, scope: &str) {
    let wait = retry_after(&response);
    assert!((1..=3600).contains(&wait), "Retry-After {wait}");
    let error = error_of(response, StatusCode::TOO_MANY_REQUESTS, "velocity_limited").await;
    assert_eq!(error["rule"], rule, "{error}");
    assert_eq!(error["scope"], scope, "{error}");
}

/// With `velocity.<scope>` at 2 an hour, the first two of `bodies` (three requests with
/// one key in the scope) are sent and the third is refused, creating nothing.
async fn a_scope_limited_to_two_refuses_the_third(scope: &str, bodies: [Value; 3]) {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, scope, 2).await;

    app.start_verification(&bodies[0]).await;
    app.start_verification(&bodies[1]).await;
    let refused = app.post_verification(&bodies[2]).await;

    assert_velocity_limited(refused, &format!("velocity.{scope}"), scope).await;
    assert_eq!(verifications_recorded(&app).await, 2, "{scope}");
    let sends: i64 = app.sql("SELECT count(*) FROM sms_deliveries").await[0].get(0);
    assert_eq!(sends, 2, "{scope}");
    wait_for_count(&app, &format!("velocity.{scope}"), "block", 1).await;
}

#[tokio::test]
async fn the_number_scope_refuses_the_send_over_its_limit() {
    let to = phone_number(1);
    let body = json!({ "to": to });
    a_scope_limited_to_two_refuses_the_third("number", [body.clone(), body.clone(), body]).await;
}

#[tokio::test]
async fn the_client_ip_scope_refuses_the_send_over_its_limit() {
    let body = |n| json!({ "to": phone_number(n), "client_ip": "203.0.113.9" });
    a_scope_limited_to_two_refuses_the_third("client_ip", [body(1), body(2), body(3)]).await;
}

#[tokio::test]
async fn the_network_scope_counts_every_address_of_a_slash_24_together() {
    let body = |n: u32| json!({ "to": phone_number(n), "client_ip": format!("198.51.100.{n}") });
    a_scope_limited_to_two_refuses_the_third("network", [body(1), body(2), body(3)]).await;
}

#[tokio::test]
async fn the_network_scope_counts_every_address_of_an_ipv6_slash_64_together() {
    let body =
        |n: u32| json!({ "to": phone_number(n), "client_ip": format!("2001:db8:7:9::{n:x}") });
    a_scope_limited_to_two_refuses_the_third("network", [body(1), body(2), body(300)]).await;
}

#[tokio::test]
async fn the_client_id_scope_refuses_the_send_over_its_limit() {
    let body = |n| json!({ "to": phone_number(n), "client_id": "session-7f3a" });
    a_scope_limited_to_two_refuses_the_third("client_id", [body(1), body(2), body(3)]).await;
}

#[tokio::test]
async fn the_prefix_scope_counts_the_numbers_of_one_range_together() {
    let body = |n| json!({ "to": phone_number(n) });
    a_scope_limited_to_two_refuses_the_third("prefix", [body(10), body(20), body(30)]).await;
}

#[tokio::test]
async fn the_country_scope_counts_the_numbers_of_one_country_together() {
    let bodies = [
        json!({ "to": "+12125550101" }),
        json!({ "to": "+13125550102" }),
        json!({ "to": "+14155550103" }),
    ];
    a_scope_limited_to_two_refuses_the_third("country", bodies).await;
}

#[tokio::test]
async fn the_api_key_scope_refuses_the_send_over_its_limit() {
    let body = |n| json!({ "to": phone_number(n) });
    a_scope_limited_to_two_refuses_the_third("api_key", [body(1), body(2), body(3)]).await;
}

#[tokio::test]
async fn the_global_scope_refuses_the_send_over_its_limit() {
    let bodies = [
        json!({ "to": phone_number(1) }),
        json!({ "to": NG_MOBILE }),
        json!({ "to": "+12125550101" }),
    ];
    a_scope_limited_to_two_refuses_the_third("global", bodies).await;
}

#[tokio::test]
async fn the_default_velocity_limits_are_seeded_in_enforce_mode_with_their_reasons() {
    let app = spawn_velocity_app("enforce").await;

    let listed = rules(&app).await;

    let expected = [
        ("number", 86_400, 10),
        ("client_ip", 3_600, 10),
        ("network", 3_600, 30),
        ("client_id", 3_600, 10),
        ("prefix", 3_600, 20),
        ("country", 3_600, 10_000),
        ("api_key", 86_400, 100_000),
        ("global", 86_400, 1_000_000),
    ];
    for (scope, window, limit) in expected {
        let rule = rule(&listed, &format!("velocity.{scope}"));
        assert_eq!(rule["kind"], "velocity");
        assert_eq!(rule["mode"], "enforce", "{rule}");
        assert_eq!(
            rule["params"],
            json!({"scope": scope, "window_secs": window, "limit": limit, "action": "block"})
        );
        assert!(!rule["reason"].as_str().unwrap().is_empty(), "{rule}");
    }
}

#[tokio::test]
async fn requests_in_one_batch_count_each_other_so_exactly_the_limit_is_sent() {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, "number", 3).await;
    let to = phone_number(5);

    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let request = app
            .request(Method::POST, "/v1/verifications")
            .json(&json!({ "to": to }));
        requests.spawn(async move { request.send().await.unwrap().status() });
    }
    let statuses = requests.join_all().await;

    let accepted = statuses
        .iter()
        .filter(|status| **status == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 3, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::ACCEPTED || *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let sends: i64 = app.sql("SELECT count(*) FROM sms_deliveries").await[0].get(0);
    assert_eq!(sends, 3);
}

#[tokio::test]
async fn two_api_processes_on_one_database_enforce_one_limit_in_total() {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, "client_id", 3).await;
    let key = create_key(&app.database.settings, "replica").await.unwrap();
    let other = app.spawn_api_process().await;

    let mut statuses = Vec::new();
    for n in 0..8 {
        let body = json!({ "to": phone_number(n), "client_id": "shared-session" });
        let response = if n % 2 == 0 {
            app.post_verification(&body).await
        } else {
            app.send(
                app.client
                    .post(other.url("/v1/verifications"))
                    .header("x-api-key", &key)
                    .json(&body),
            )
            .await
            .unwrap()
        };
        statuses.push(response.status());
    }

    assert_eq!(
        statuses,
        [
            [StatusCode::ACCEPTED; 3].as_slice(),
            [StatusCode::TOO_MANY_REQUESTS; 5].as_slice()
        ]
        .concat(),
        "{}",
        other.logged()
    );
}

#[tokio::test]
async fn a_velocity_rule_in_shadow_mode_sends_and_records_the_would_be_block() {
    let app = spawn_velocity_app("enforce").await;
    set_rule(
        &app,
        "velocity.client_id",
        &json!({"mode": "shadow", "params": per_hour("client_id", 1, "block")}),
    )
    .await;
    let body = |n| json!({ "to": phone_number(n), "client_id": "session-1" });

    let first = risk_of_start(&app, &body(1)).await;
    let second = risk_of_start(&app, &body(2)).await;

    assert_eq!(first["decision"], "allow");
    assert_eq!(second["decision"], "shadow_block");
    assert_eq!(
        hits(&second),
        [hit("velocity.client_id", "shadow", "shadow_block")]
    );
    let detail = second["rules"][0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("client_id session-1: ")
            && detail.contains("2 sends in the last 3600 s, limit 1"),
        "{detail}"
    );
    app.wait_for_sms(&phone_number(2), 1).await;
    wait_for_count(&app, "velocity.client_id", "shadow_block", 1).await;
}

#[tokio::test]
async fn under_the_global_shadow_mode_the_default_limits_only_record() {
    let app = spawn_velocity_app("shadow").await;

    let mut last = Value::Null;
    for n in 0..11 {
        last = risk_of_start(
            &app,
            &json!({ "to": phone_number(n), "client_ip": "203.0.113.50" }),
        )
        .await;
    }

    assert_eq!(last["decision"], "shadow_block");
    assert_eq!(
        hits(&last),
        [hit("velocity.client_ip", "shadow", "shadow_block")]
    );
    assert_eq!(verifications_recorded(&app).await, 11);
    wait_for_count(&app, "velocity.client_ip", "shadow_block", 1).await;
}

#[tokio::test]
async fn a_monitoring_velocity_rule_sends_and_flags() {
    let app = spawn_velocity_app("enforce").await;
    set_rule(
        &app,
        "velocity.client_ip",
        &json!({"params": per_hour("client_ip", 1, "monitor")}),
    )
    .await;
    let body = |n| json!({ "to": phone_number(n), "client_ip": "203.0.113.9" });

    risk_of_start(&app, &body(1)).await;
    let flagged = risk_of_start(&app, &body(2)).await;

    assert_eq!(flagged["decision"], "monitor");
    assert_eq!(
        hits(&flagged),
        [hit("velocity.client_ip", "enforce", "monitor")]
    );
    wait_for_count(&app, "velocity.client_ip", "monitor", 1).await;
}

#[tokio::test]
async fn with_the_global_mode_off_velocity_limits_are_neither_judged_nor_recorded() {
    let app = spawn_velocity_app("off").await;
    limit_scope(&app, "client_id", 1).await;

    for n in 0..3 {
        let risk = risk_of_start(
            &app,
            &json!({ "to": phone_number(n), "client_id": "session-1" }),
        )
        .await;
        assert_eq!(risk["rules"], json!([]));
    }

    let recorded: i64 = app
        .sql("SELECT (SELECT count(*) FROM abuse_sends) + (SELECT count(*) FROM abuse_counters)")
        .await[0]
        .get(0);
    assert_eq!(recorded, 0);
}

#[tokio::test]
async fn a_retry_of_a_velocity_refused_request_with_its_key_is_refused_the_same_way() {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, "client_id", 1).await;
    app.start_verification(&json!({ "to": phone_number(1), "client_id": "session-1" }))
        .await;
    let send = || {
        app.request(Method::POST, "/v1/verifications")
            .header("idempotency-key", "signup-9")
            .json(&json!({ "to": phone_number(2), "client_id": "session-1" }))
            .send()
    };

    let first = send().await.unwrap();
    let retry = send().await.unwrap();

    assert_velocity_limited(first, "velocity.client_id", "client_id").await;
    assert_velocity_limited(retry, "velocity.client_id", "client_id").await;
    let keys: i64 = app.sql("SELECT count(*) FROM idempotency_keys").await[0].get(0);
    assert_eq!((keys, verifications_recorded(&app).await), (0, 1));
}

#[tokio::test]
async fn the_portatext_route_answers_a_velocity_refusal_with_429_naming_the_rule() {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, "client_id", 1).await;
    let start = |number: &'static str| {
        app.request(Method::POST, &format!("/number_verify/{number}"))
            .json(&json!({ "client_id": "device-2" }))
            .send()
    };

    let sent = start("14155550101").await.unwrap();
    let refused = start("14155550102").await.unwrap();

    assert_eq!(sent.status(), StatusCode::OK);
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error_code"], "velocity_limited", "{body}");
    assert_eq!(body["rule"], "velocity.client_id", "{body}");
}

#[tokio::test]
async fn resends_are_counted_by_the_velocity_limits() {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, "number", 2).await;
    let started = app
        .start_verification(&json!({ "to": phone_number(1) }))
        .await;
    let resend = format!(
        "/v1/verifications/{}/resend",
        started["id"].as_str().unwrap()
    );

    let second = app.post_json(&resend, &json!({})).await;
    let third = app.post_json(&resend, &json!({})).await;

    assert_eq!(second.status(), StatusCode::ACCEPTED);
    assert_velocity_limited(third, "velocity.number", "number").await;
    let sends: i64 = app.sql("SELECT count(*) FROM sms_deliveries").await[0].get(0);
    assert_eq!(sends, 2);
}

#[tokio::test]
async fn a_resend_counts_under_the_client_signals_of_its_verification() {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, "client_ip", 2).await;
    let started = app
        .start_verification(&json!({ "to": phone_number(1), "client_ip": "203.0.113.9" }))
        .await;
    app.post_json(
        &format!(
            "/v1/verifications/{}/resend",
            started["id"].as_str().unwrap()
        ),
        &json!({}),
    )
    .await;

    let refused = app
        .post_verification(&json!({ "to": phone_number(2), "client_ip": "203.0.113.9" }))
        .await;

    assert_velocity_limited(refused, "velocity.client_ip", "client_ip").await;
}

#[tokio::test]
async fn a_resend_is_judged_by_the_country_rules_in_force_now() {
    let app = spawn_velocity_app("enforce").await;
    let started = app.start_verification(&json!({ "to": NG_MOBILE })).await;
    set_rule(&app, "country.NG", &json!({"params": {"action": "block"}})).await;

    let response = app
        .post_json(
            &format!(
                "/v1/verifications/{}/resend",
                started["id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;

    let error = error_of(response, StatusCode::FORBIDDEN, "country_blocked").await;
    assert_eq!(error["rule"], "country.NG");
    let sends: i64 = app.sql("SELECT count(*) FROM sms_deliveries").await[0].get(0);
    assert_eq!(sends, 1);
}

/// Adds an allow-list entry that must be accepted.
async fn allow(app: &TestApp, kind: &str, value: &str) {
    let response = add_allow(app, &json!({"kind": kind, "value": value})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// The notes' codes of a risk.
fn note_codes(risk: &Value) -> Vec<&str> {
    risk["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|note| note["code"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn an_allow_listed_number_skips_the_velocity_limits() {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, "client_id", 1).await;
    allow(&app, "number", &phone_number(2)).await;
    let body = |n| json!({ "to": phone_number(n), "client_id": "qa-session" });
    app.start_verification(&body(1)).await;

    let allowed = risk_of_start(&app, &body(2)).await;
    let other = app.post_verification(&body(3)).await;

    assert_eq!(note_codes(&allowed), ["allow_listed"]);
    assert_eq!(allowed["rules"], json!([]));
    assert_velocity_limited(other, "velocity.client_id", "client_id").await;
}

#[tokio::test]
async fn an_allow_listed_prefix_skips_the_velocity_limits_but_not_the_number_types() {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, "prefix", 1).await;
    allow(&app, "prefix", "+1415555").await;
    allow(&app, "prefix", "+4490").await;

    for n in 0..3 {
        let risk = risk_of_start(&app, &json!({ "to": phone_number(n) })).await;
        assert_eq!(note_codes(&risk), ["allow_listed"]);
    }
    let premium = app
        .post_verification(&json!({ "to": GB_PREMIUM_RATE }))
        .await;

    error_of(
        premium,
        StatusCode::UNPROCESSABLE_ENTITY,
        "number_type_blocked",
    )
    .await;
}

#[tokio::test]
async fn an_allow_listed_api_key_skips_the_velocity_limits() {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, "global", 1).await;
    let key = create_key(&app.database.settings, "qa").await.unwrap();
    allow(&app, "api_key", &key_id(&app, "qa").await).await;
    let start_with_qa_key = |n| {
        app.send(
            app.client
                .post(app.url("/v1/verifications"))
                .header("x-api-key", &key)
                .json(&json!({ "to": phone_number(n) })),
        )
    };

    for n in 0..3 {
        let response = start_with_qa_key(n).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    app.start_verification(&json!({ "to": phone_number(10) }))
        .await;
    let refused = app
        .post_verification(&json!({ "to": phone_number(11) }))
        .await;

    assert_velocity_limited(refused, "velocity.global", "global").await;
}

#[tokio::test]
async fn an_allow_list_entry_added_through_one_api_applies_in_another_process_within_two_seconds() {
    let app = spawn_velocity_app("enforce").await;
    limit_scope(&app, "client_id", 1).await;
    let key = create_key(&app.database.settings, "replica").await.unwrap();
    let other = app.spawn_api_process().await;
    let start_in_other = |n: u32| {
        app.send(
            app.client
                .post(other.url("/v1/verifications"))
                .header("x-api-key", &key)
                .json(&json!({ "to": phone_number(n), "client_id": "qa-session" })),
        )
    };
    let first = start_in_other(0).await.unwrap().status();
    assert_eq!(first, StatusCode::ACCEPTED, "{}", other.logged());

    allow(&app, "prefix", "+1415555").await;
    let changed = tokio::time::Instant::now();

    start_until(
        1,
        start_in_other,
        StatusCode::ACCEPTED,
        StatusCode::TOO_MANY_REQUESTS,
        changed,
    )
    .await;
}

#[tokio::test]
async fn a_velocity_rule_changed_through_one_api_applies_in_another_process_within_two_seconds() {
    let app = spawn_velocity_app("enforce").await;
    // Only the changed rule may refuse: the loop below sends many times to one range.
    limit_scope(&app, "client_id", 1_000).await;
    set_rule(&app, "velocity.prefix", &json!({"mode": "off"})).await;
    let key = create_key(&app.database.settings, "replica").await.unwrap();
    let other = app.spawn_api_process().await;
    let start_in_other = |n: u32| {
        app.send(
            app.client
                .post(other.url("/v1/verifications"))
                .header("x-api-key", &key)
                .json(&json!({ "to": phone_number(n), "client_id": "session-2" })),
        )
    };
    let first = start_in_other(0).await.unwrap().status();
    assert_eq!(first, StatusCode::ACCEPTED, "{}", other.logged());

    limit_scope(&app, "client_id", 1).await;
    let changed = tokio::time::Instant::now();

    let refused = start_until(
        1,
        start_in_other,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::ACCEPTED,
        changed,
    )
    .await;
    assert_velocity_limited(refused, "velocity.client_id", "client_id").await;
}
