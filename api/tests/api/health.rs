//! Health probes: `/healthz` (the process answers) and `/readyz` (Postgres and RabbitMQ
//! answer too).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

#[tokio::test]
async fn healthz_answers_200_with_status_ok() {
    let app = spawn_app().await;

    let response = app.get("/healthz").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
}

#[tokio::test]
async fn readyz_answers_200_when_postgres_and_rabbitmq_both_answer() {
    let app = spawn_app().await;

    let response = app.get("/readyz").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ready", "postgres": "ok", "rabbitmq": "ok"})
    );
}

/// A connection to the server's `postgres` database, from which this test's database can
/// be altered (Postgres refuses to lock out the database a session is connected to).
async fn admin_client(app: &TestApp) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = app.database.settings.url.parse().unwrap();
    config.dbname("postgres");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn readyz_answers_503_naming_postgres_when_the_database_refuses_connections() {
    let app = spawn_app().await;
    let admin = admin_client(&app).await;
    // Refuse new connections to this test's database, then end the open ones, waiting
    // (up to 5 s each) until they are gone.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS false",
            app.database.name
        ))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = $1",
            &[&app.database.name],
        )
        .await
        .unwrap();

    let response = app.get("/readyz").await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["rabbitmq"], "ok");
    let postgres = body["postgres"].as_str().unwrap();
    assert_ne!(postgres, "ok");
    assert!(!postgres.is_empty());
}

#[tokio::test]
async fn the_health_probes_answer_only_get() {
    let app = spawn_app().await;

    let response = app.post_json("/healthz", &json!({})).await;

    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
