//! `GET /v1/stats`: figures of known traffic, sent through the real worker and fake
//! provider, in every grouping; windows that hold none of it; and refused queries.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Timelike, Utc};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    HTTP_RECEIPT_TOKEN, TestApp, TestOptions, phone_number, spawn_app, spawn_app_with,
};

/// A French mobile number, so the traffic spans two countries.
const FR_NUMBER: &str = "+33612345678";

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The hour around now, either side.
fn around_now() -> (String, String) {
    let now = Utc::now();
    (
        rfc3339(now - TimeDelta::hours(1)),
        rfc3339(now + TimeDelta::hours(1)),
    )
}

impl TestApp {
    /// `GET /v1/stats` with these query parameters: the status and the JSON body.
    async fn stats(&self, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let response = self
            .request(reqwest::Method::GET, "/v1/stats")
            .query(query)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// The stats of the two hours around now, grouped by `group_by` if given; must be 200.
    async fn stats_around_now(&self, group_by: Option<&str>) -> Value {
        let (from, to) = around_now();
        let mut query = vec![("from", from.as_str()), ("to", to.as_str())];
        query.extend(group_by.map(|group_by| ("group_by", group_by)));
        let (status, body) = self.stats(&query).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// The group whose `group` is `key` in a report.
fn group<'a>(report: &'a Value, key: &Value) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["group"] == *key)
        .unwrap_or_else(|| panic!("no group {key} in {report:#}"))
}

/// The counts of a report row, in the order started, sent, delivered, approved, segments.
fn counts(row: &Value) -> [i64; 5] {
    ["started", "sent", "delivered", "approved", "segments_sent"].map(|name| {
        row[name]
            .as_i64()
            .unwrap_or_else(|| panic!("{name} in {row}"))
    })
}

/// The known traffic: three starts (two to a US number with the built-in text, one to a
/// French number with a template); one US start canceled before any worker runs, so two are
/// sent; the other US send delivered by receipt and its code approved.
struct KnownTraffic {
    app: TestApp,
    template_id: i64,
    /// From before the first start to after the approval: no duration can exceed it.
    elapsed: Duration,
}

async fn known_traffic() -> KnownTraffic {
    let app = spawn_app_with(TestOptions {
        start_worker: false,
        ..TestOptions::default()
    })
    .await;
    let template = app
        .create_template(&json!({"name": "stats", "text": "Your code: {{code}}"}))
        .await;
    let template_id = template["id"].as_i64().unwrap();
    let began = Instant::now();
    let approved_to = phone_number(1);
    let approved = app.start_verification(&json!({ "to": approved_to })).await;
    let unsent = app
        .start_verification(&json!({ "to": phone_number(2) }))
        .await;
    let templated = app
        .start_verification(&json!({ "to": FR_NUMBER, "template_id": template_id }))
        .await;
    let canceled = app
        .post_json(
            &format!(
                "/v1/verifications/{}/cancel",
                unsent["id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;
    assert_eq!(canceled.status(), StatusCode::OK);

    app.start_worker().await;
    let approved_id = approved["id"].as_str().unwrap();
    let sent = app.wait_for_delivery_status(approved_id, "sent").await;
    app.wait_for_delivery_status(templated["id"].as_str().unwrap(), "sent")
        .await;
    app.wait_for_delivery_status(unsent["id"].as_str().unwrap(), "failed")
        .await;
    let receipt = app
        .client
        .post(app.url("/callbacks/http/status"))
        .bearer_auth(HTTP_RECEIPT_TOKEN)
        .json(&json!({
            "message_id": sent["sends"][0]["provider_message_id"],
            "status": "delivered",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(receipt.status(), StatusCode::OK);
    let code = app.wait_for_code(&approved_to).await;
    let check: Value = app
        .check_code(approved_id, &code)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(check["status"], "approved");
    KnownTraffic {
        app,
        template_id,
        elapsed: began.elapsed(),
    }
}

/// A median in milliseconds that must be present and no longer than `elapsed` allows
/// (plus the histogram's bucket width, 2^(1/3)).
fn plausible_median(row: &Value, name: &str, elapsed: Duration) {
    let median = row[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {row}"));
    let bound = elapsed.as_secs_f64() * 1000.0 * 1.26 + 1.0;
    #[allow(clippy::cast_precision_loss)]
    let median = median as f64;
    assert!(median <= bound, "{name} {median} ms over {bound} ms: {row}");
}

#[tokio::test]
async fn known_traffic_reads_back_with_exact_counts_rates_and_plausible_medians() {
    let KnownTraffic { app, elapsed, .. } = known_traffic().await;

    let report = app.stats_around_now(None).await;

    assert_eq!(report["group_by"], Value::Null);
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{report:#}");
    let all = &groups[0];
    assert_eq!(all["group"], Value::Null);
    assert_eq!(counts(all), [3, 2, 1, 1, 2]);
    assert_eq!(all["conversion_rate"], json!(1.0 / 3.0));
    assert_eq!(all["delivery_rate"], json!(0.5));
    plausible_median(all, "median_ms_to_sms", elapsed);
    plausible_median(all, "median_ms_to_approval", elapsed);
    // The window as covered: whole hours.
    let from: DateTime<Utc> = report["from"].as_str().unwrap().parse().unwrap();
    let to: DateTime<Utc> = report["to"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        (from.minute(), from.second(), to.minute(), to.second()),
        (0, 0, 0, 0)
    );
}

#[tokio::test]
async fn known_traffic_groups_by_country_template_provider_and_day() {
    let KnownTraffic {
        app,
        template_id,
        elapsed,
    } = known_traffic().await;

    let by_country = app.stats_around_now(Some("country")).await;
    assert_eq!(by_country["group_by"], "country");
    assert_eq!(by_country["groups"].as_array().unwrap().len(), 2);
    let us = group(&by_country, &json!("US"));
    assert_eq!(counts(us), [2, 1, 1, 1, 1]);
    assert_eq!(
        (&us["conversion_rate"], &us["delivery_rate"]),
        (&json!(0.5), &json!(1.0))
    );
    plausible_median(us, "median_ms_to_approval", elapsed);
    let fr = group(&by_country, &json!("FR"));
    assert_eq!(counts(fr), [1, 1, 0, 0, 1]);
    assert_eq!(
        (&fr["conversion_rate"], &fr["delivery_rate"]),
        (&json!(0.0), &json!(0.0))
    );
    plausible_median(fr, "median_ms_to_sms", elapsed);
    assert_eq!(fr["median_ms_to_approval"], Value::Null);

    let by_template = app.stats_around_now(Some("template")).await;
    assert_eq!(counts(group(&by_template, &Value::Null)), [2, 1, 1, 1, 1]);
    assert_eq!(
        counts(group(&by_template, &json!(template_id))),
        [1, 1, 0, 0, 1]
    );

    // Starts and approvals belong to no provider; the sends to the one that took them.
    let by_provider = app.stats_around_now(Some("provider")).await;
    let no_provider = group(&by_provider, &Value::Null);
    assert_eq!(counts(no_provider), [3, 0, 0, 1, 0]);
    assert_eq!(no_provider["delivery_rate"], Value::Null);
    assert_eq!(no_provider["median_ms_to_sms"], Value::Null);
    let twilio = group(&by_provider, &json!("twilio"));
    assert_eq!(counts(twilio), [0, 2, 1, 0, 2]);
    assert_eq!(
        (&twilio["conversion_rate"], &twilio["delivery_rate"]),
        (&Value::Null, &json!(0.5))
    );
    plausible_median(twilio, "median_ms_to_sms", elapsed);

    let by_day = app.stats_around_now(Some("day")).await;
    let started_on: Vec<String> = app
        .sql("SELECT DISTINCT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM verifications")
        .await
        .iter()
        .map(|row| row.get(0))
        .collect();
    let days = by_day["groups"].as_array().unwrap();
    let total: i64 = days.iter().map(|day| counts(day)[0]).sum();
    assert_eq!(total, 3);
    assert_eq!(days.len(), started_on.len(), "{by_day:#}");
    for day in &started_on {
        group(&by_day, &json!(day));
    }
}

#[tokio::test]
async fn a_window_without_traffic_reads_zeros_ungrouped_and_no_groups_grouped() {
    let KnownTraffic { app, .. } = known_traffic().await;
    let tomorrow = Utc::now() + TimeDelta::days(1);
    let (from, to) = (rfc3339(tomorrow), rfc3339(tomorrow + TimeDelta::days(3)));

    let (status, ungrouped) = app.stats(&[("from", &from), ("to", &to)]).await;
    let (_, grouped) = app
        .stats(&[("from", &from), ("to", &to), ("group_by", "country")])
        .await;

    assert_eq!(status, StatusCode::OK);
    let only = &ungrouped["groups"][0];
    assert_eq!(counts(only), [0; 5]);
    for rate_or_median in [
        "conversion_rate",
        "delivery_rate",
        "median_ms_to_sms",
        "median_ms_to_approval",
    ] {
        assert_eq!(only[rate_or_median], Value::Null, "{rate_or_median}");
    }
    assert_eq!(grouped["groups"], json!([]));
}

#[tokio::test]
async fn concurrent_starts_are_each_counted_once() {
    let app = spawn_app_with(TestOptions {
        start_worker: false,
        ..TestOptions::default()
    })
    .await;

    join_all((0..24).map(|n| {
        let app = &app;
        async move {
            app.start_verification(&json!({ "to": phone_number(100 + n) }))
                .await
        }
    }))
    .await;

    let report = app.stats_around_now(None).await;
    assert_eq!(report["groups"][0]["started"], 24);
}

/// The rollup rows by shard: (shard, rows).
async fn rollup_rows_by_shard(app: &TestApp) -> Vec<(i16, i64)> {
    app.sql("SELECT shard, count(*) FROM stats_rollups GROUP BY 1 ORDER BY 1")
        .await
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test]
async fn folding_closed_periods_keeps_every_figure_and_skips_shards_a_writer_holds() {
    let KnownTraffic { app, .. } = known_traffic().await;
    // The traffic's cohort moved two days back, so its hour and day are closed, and
    // spread over shards 1 and 2 twice over, as concurrent writers leave it.
    app.sql("UPDATE stats_rollups SET period_start = period_start - interval '2 days', shard = 2")
        .await;
    app.sql(
        "INSERT INTO stats_rollups SELECT period, period_start, country, template_id, provider,
                1, started, sent, delivered, approved, segments, start_to_sms,
                start_to_approval
         FROM stats_rollups",
    )
    .await;
    let [(_, rows_per_shard), _] = rollup_rows_by_shard(&app).await[..] else {
        panic!("two shards")
    };
    let two_days_ago = Utc::now() - TimeDelta::days(2);
    let window = (
        rfc3339(two_days_ago - TimeDelta::hours(1)),
        rfc3339(two_days_ago + TimeDelta::hours(1)),
    );
    let query = |group_by| {
        vec![
            ("from", window.0.clone()),
            ("to", window.1.clone()),
            ("group_by", group_by),
        ]
    };
    let read = |group_by: &'static str| {
        let app = &app;
        let query = query(group_by.to_owned());
        async move {
            let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, body) = app.stats(&query).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let before = (read("country").await, read("provider").await);
    assert_eq!(counts(group(&before.0, &json!("US"))), [4, 2, 2, 2, 2]);

    // A writer holds shard 1 while the rollups are folded: only shard 2 moves.
    let mut writer = app.pool.get().await.unwrap();
    let holding = writer.transaction().await.unwrap();
    holding
        .execute("SELECT pg_advisory_xact_lock(1447383625, 1)", &[])
        .await
        .unwrap();
    let folded = verify_common::db::stats::fold_closed_shards(&app.pool)
        .await
        .unwrap();
    assert_eq!(folded, u64::try_from(rows_per_shard).unwrap());
    assert_eq!(
        rollup_rows_by_shard(&app).await,
        [(0, rows_per_shard), (1, rows_per_shard)]
    );
    holding.rollback().await.unwrap();

    let folded = verify_common::db::stats::fold_closed_shards(&app.pool)
        .await
        .unwrap();

    assert_eq!(folded, u64::try_from(rows_per_shard).unwrap());
    assert_eq!(rollup_rows_by_shard(&app).await, [(0, rows_per_shard)]);
    assert_eq!((read("country").await, read("provider").await), before);
}

/// A refused query: what it is, its parameters, and the code and field of the refusal.
type Refusal<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);

#[tokio::test]
async fn bad_queries_are_refused_with_400_naming_the_parameter() {
    let app = spawn_app().await;
    let (from, to) = around_now();
    let cases: [Refusal<'_>; 9] = [
        ("no from", vec![("to", &to)], "invalid_time", "from"),
        ("no to", vec![("from", &from)], "invalid_time", "to"),
        (
            "unreadable from",
            vec![("from", "yesterday"), ("to", &to)],
            "invalid_time",
            "from",
        ),
        (
            "a date without a time",
            vec![("from", &from), ("to", "2026-12-01")],
            "invalid_time",
            "to",
        ),
        (
            "to before from",
            vec![("from", &to), ("to", &from)],
            "invalid_window",
            "to",
        ),
        (
            "over 400 days",
            vec![
                ("from", "2025-01-01T00:00:00Z"),
                ("to", "2026-02-05T01:00:00Z"),
            ],
            "invalid_window",
            "to",
        ),
        (
            "an unknown grouping",
            vec![("from", &from), ("to", &to), ("group_by", "week")],
            "invalid_group_by",
            "group_by",
        ),
        (
            "an unknown parameter",
            vec![("from", &from), ("to", &to), ("service", "x")],
            "invalid_query",
            "service",
        ),
        (
            "a repeated parameter",
            vec![("from", &from), ("from", &from), ("to", &to)],
            "invalid_query",
            "from",
        ),
    ];
    for (case, query, code, field) in cases {
        let (status, body) = app.stats(&query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
        assert_eq!(body["error"]["code"], code, "{case}: {body}");
        assert_eq!(body["error"]["field"], field, "{case}: {body}");
    }
}

#[tokio::test]
async fn the_longest_window_is_answered() {
    let app = spawn_app().await;

    let (status, body) = app
        .stats(&[
            ("from", "2025-01-01T00:00:00Z"),
            ("to", "2026-02-05T00:00:00Z"),
            ("group_by", "day"),
        ])
        .await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["groups"], json!([]));
}

#[tokio::test]
async fn stats_need_an_api_key() {
    let app = spawn_app().await;
    let (from, to) = around_now();

    let response = app
        .send(
            app.client
                .get(app.url("/v1/stats"))
                .query(&[("from", from), ("to", to)]),
        )
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
