//! The workers' `GET /metrics`: scraped over HTTP, parsed as Prometheus text format, and
//! checked against the sends each test runs.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use verify_common::testing::exposition::Exposition;
use verify_worker::Worker;

use crate::helpers::{
    always_failing, failing_first, phone_number, scrape, spawn_worker, spawn_worker_with,
};

const SENDS: &str = "verify_sends_total";
const DURATION: &str = "verify_provider_request_duration_seconds";

fn sends(scrape: &Exposition, status: &str) -> f64 {
    scrape.sum(SENDS, &[("provider", "twilio"), ("status", status)])
}

#[tokio::test]
async fn a_drain_counts_every_send_retry_and_provider_request() {
    // The provider fails the first two requests, so two of the three sends are retried.
    let worker = spawn_worker_with(failing_first(2, 503)).await;
    let before = worker.scrape().await;
    for n in 0..3 {
        worker.start_verification(&phone_number(n)).await;
    }

    worker.drain().await;

    let after = worker.scrape().await;
    let delta = |scraped: fn(&Exposition) -> f64| scraped(&after) - scraped(&before);
    assert_eq!(delta(|s| sends(s, "sent")), 3.0);
    assert_eq!(delta(|s| sends(s, "retrying")), 2.0);
    assert_eq!(delta(|s| sends(s, "failed")), 0.0);
    assert_eq!(
        delta(|s| s.sum("verify_send_retries_total", &[("provider", "twilio")])),
        2.0
    );
    for (outcome, requests) in [("accepted", 3.0), ("transient_error", 2.0)] {
        let labels = [("provider", "twilio"), ("outcome", outcome)];
        let count = after.sum(&format!("{DURATION}_count"), &labels)
            - before.sum(&format!("{DURATION}_count"), &labels);
        assert_eq!(count, requests, "{outcome}");
        let mut buckets: Vec<(f64, f64)> = after
            .samples(&format!("{DURATION}_bucket"), &labels)
            .map(|bucket| (bucket.labels["le"].parse().unwrap(), bucket.value))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "{outcome} buckets are not cumulative: {buckets:?}"
        );
        assert_eq!(
            buckets.last().map(|bucket| bucket.1),
            after.value(&format!("{DURATION}_count"), &labels),
            "{outcome}: the +Inf bucket is the count"
        );
    }
    assert_eq!(after.value("verify_sends_in_flight", &[]), Some(0.0));
}

#[tokio::test]
async fn a_send_the_provider_refuses_is_counted_failed_and_dead_lettered() {
    let worker = spawn_worker_with(always_failing(400)).await;
    worker.start_verification(&phone_number(1)).await;

    worker.drain().await;

    let scraped = worker.scrape().await;
    assert_eq!(sends(&scraped, "failed"), 1.0);
    assert_eq!(sends(&scraped, "sent"), 0.0);
    assert_eq!(
        scraped.value(
            "verify_dead_letters_total",
            &[("reason", "provider_rejected")]
        ),
        Some(1.0)
    );
    assert_eq!(
        scraped.sum(
            &format!("{DURATION}_count"),
            &[("outcome", "permanent_error")]
        ),
        1.0
    );
    assert_eq!(worker.dead_letter_depth().await, 1);
}

#[tokio::test]
async fn every_worker_metric_follows_the_naming_rules_and_the_pool_gauges_are_shown() {
    let worker = spawn_worker().await;
    worker.start_verification(&phone_number(1)).await;
    worker.drain().await;

    let scraped = worker.scrape().await;

    let problems = scraped.naming_problems();
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        scraped.types.keys().all(|name| name.starts_with("verify_")),
        "{:?}",
        scraped.types.keys()
    );
    for state in ["in_use", "idle"] {
        assert!(
            scraped
                .value("verify_db_pool_connections", &[("state", state)])
                .is_some(),
            "no {state} pool gauge"
        );
    }
    assert!(
        scraped
            .value("verify_db_pool_max_connections", &[])
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn a_worker_serves_its_metrics_at_the_configured_address() {
    let test = spawn_worker().await;
    let mut config = test.config.clone();
    config.worker.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let worker = Worker::build(config).await.unwrap();
    let address = worker.metrics_addr().unwrap().expect("a metrics address");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until_stopped(stop.clone()));

    let scraped = scrape(&format!("http://{address}/metrics")).await;

    assert_eq!(scraped.value("verify_sends_in_flight", &[]), Some(0.0));
    assert_eq!(sends(&scraped, "sent"), 0.0);
    stop.cancel();
    running.await.unwrap();
}
