//! Drives an in-process sink over real HTTP, the way Verify's senders and tests use it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use verify_sink::{MessageLog, Sink, SinkSettings};

const ACCOUNT: &str = "AC00000000000000000000000000000001";
const TOKEN: &str = "test-auth-token";
const TO: &str = "+14155550100";

/// Settings as `verify-sink --addr 127.0.0.1:0 FLAGS…` would have them.
fn settings(flags: &[&str]) -> SinkSettings {
    let flags: Vec<&str> = ["--addr", "127.0.0.1:0"]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    SinkSettings::from_flags(&flags).unwrap()
}

struct Running {
    url: String,
    messages: MessageLog,
    client: Client,
    shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(settings: SinkSettings) -> Running {
        let sink = Sink::bind(settings).await.unwrap();
        let url = sink.base_url();
        let messages = sink.messages();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(sink.run_until_stopped(shutdown.clone()));
        let client = Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Running {
            url,
            messages,
            client,
            shutdown,
            server,
        }
    }

    async fn quiet() -> Running {
        Running::start(settings(&[])).await
    }

    fn twilio_url(&self, account: &str) -> String {
        format!("{}/2010-04-01/Accounts/{account}/Messages.json", self.url)
    }

    async fn twilio_send_as(
        &self,
        user: &str,
        password: &str,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        self.client
            .post(self.twilio_url(user))
            .basic_auth(user, Some(password))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    async fn twilio_send(&self, to: &str) -> reqwest::Response {
        self.twilio_send_as(
            ACCOUNT,
            TOKEN,
            &[
                ("To", to),
                ("From", "+15005550006"),
                ("Body", "Your code is 123456"),
            ],
        )
        .await
    }

    async fn json_send(&self, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}/send", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    async fn put_control(&self, body: Value) -> reqwest::Response {
        self.client
            .put(format!("{}/control", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

fn ids(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_twilio_send_is_recorded_and_answered_201_with_a_message_sid() {
    let sink = Running::quiet().await;
    let response = sink.twilio_send(TO).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let resource = json_of(response).await;

    let sid = resource["sid"].as_str().unwrap();
    assert!(sid.starts_with("SM"));
    assert_eq!(sid.len(), 34);
    assert!(
        sid[2..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    assert_eq!(resource["account_sid"], ACCOUNT);
    assert_eq!(resource["to"], TO);
    assert_eq!(resource["from"], "+15005550006");
    assert_eq!(resource["body"], "Your code is 123456");
    assert_eq!(resource["status"], "queued");
    assert_eq!(resource["num_segments"], "1");
    assert_eq!(resource["direction"], "outbound-api");
    assert_eq!(resource["api_version"], "2010-04-01");
    assert!(resource["price"].is_null());
    assert!(resource["error_code"].is_null());
    assert!(resource["error_message"].is_null());
    assert_eq!(
        resource["uri"],
        format!("/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json")
    );
    assert!(
        chrono::DateTime::parse_from_rfc2822(resource["date_created"].as_str().unwrap()).is_ok()
    );

    let recorded = sink.messages.to(TO);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].id, sid);
    assert_eq!(recorded[0].api, "twilio");
    assert_eq!(recorded[0].body, "Your code is 123456");
    sink.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_refused_with_401_when_credentials_are_configured() {
    let sink = Running::start(settings(&[
        "--twilio-account-sid",
        ACCOUNT,
        "--twilio-auth-token",
        TOKEN,
    ]))
    .await;
    let form = [("To", TO), ("From", "+15005550006"), ("Body", "hi")];

    let wrong_token = sink.twilio_send_as(ACCOUNT, "not-the-token", &form).await;
    assert_eq!(wrong_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(wrong_token).await,
        json!({
            "code": 20003,
            "message": "Authenticate",
            "more_info": "https://www.twilio.com/docs/errors/20003",
            "status": 401
        })
    );

    let wrong_account = sink
        .twilio_send_as("AC99999999999999999999999999999999", TOKEN, &form)
        .await;
    assert_eq!(wrong_account.status(), StatusCode::UNAUTHORIZED);

    let no_auth = sink
        .client
        .post(sink.twilio_url(ACCOUNT))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(no_auth.status(), StatusCode::UNAUTHORIZED);

    let path_differs_from_user = sink
        .client
        .post(sink.twilio_url("AC99999999999999999999999999999999"))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(path_differs_from_user.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(
        sink.twilio_send(TO).await.status(),
        StatusCode::CREATED,
        "the right credentials still work"
    );
    assert_eq!(sink.messages.len(), 1);
    sink.stop().await;
}

#[tokio::test]
async fn without_configured_credentials_basic_auth_is_still_required() {
    let sink = Running::quiet().await;
    let no_auth = sink
        .client
        .post(sink.twilio_url(ACCOUNT))
        .form(&[("To", TO), ("From", "+15005550006"), ("Body", "hi")])
        .send()
        .await
        .unwrap();
    assert_eq!(no_auth.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(no_auth).await["code"], 20003);
    let any_auth = sink
        .twilio_send_as(
            ACCOUNT,
            "whatever",
            &[("To", TO), ("From", "+1"), ("Body", "hi")],
        )
        .await;
    assert_eq!(any_auth.status(), StatusCode::CREATED);
    sink.stop().await;
}

#[tokio::test]
async fn a_twilio_send_missing_a_field_is_refused_with_twilios_error_code() {
    let sink = Running::quiet().await;
    let cases = [
        (
            vec![("From", "+1"), ("Body", "hi")],
            21604,
            "A 'To' phone number is required.",
        ),
        (
            vec![("To", TO), ("From", "+1")],
            21602,
            "Message body is required.",
        ),
        (
            vec![("To", TO), ("Body", "hi")],
            21603,
            "A 'From' phone number is required.",
        ),
    ];
    for (form, code, message) in cases {
        let response = sink.twilio_send_as(ACCOUNT, TOKEN, &form).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let error = json_of(response).await;
        assert_eq!(error["code"], code);
        assert_eq!(error["message"], message);
        assert_eq!(error["status"], 400);
    }
    assert!(sink.messages.is_empty());
    sink.stop().await;
}

#[tokio::test]
async fn a_messaging_service_sid_can_replace_from() {
    let sink = Running::quiet().await;
    let response = sink
        .twilio_send_as(
            ACCOUNT,
            TOKEN,
            &[("To", TO), ("MessagingServiceSid", "MG123"), ("Body", "hi")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let resource = json_of(response).await;
    assert!(resource["from"].is_null());
    assert_eq!(resource["messaging_service_sid"], "MG123");
    assert_eq!(sink.messages.all()[0].from, "MG123");
    sink.stop().await;
}

#[tokio::test]
async fn the_json_api_accepts_and_records_a_send() {
    let sink = Running::quiet().await;
    let response = sink
        .json_send(json!({"to": TO, "from": "Verify", "text": "Your code is 654321"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer = json_of(response).await;
    assert_eq!(answer["status"], "accepted");
    let recorded = sink.messages.all();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].id, answer["id"].as_str().unwrap());
    assert_eq!(recorded[0].api, "json");
    assert_eq!(recorded[0].body, "Your code is 654321");
    sink.stop().await;
}

#[tokio::test]
async fn the_json_api_names_the_missing_field() {
    let sink = Running::quiet().await;
    let response = sink.json_send(json!({"to": TO, "from": "Verify"})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        json_of(response).await["error"]
            .as_str()
            .unwrap()
            .contains("`text`")
    );

    let garbage = sink
        .client
        .post(format!("{}/send", sink.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    assert!(json_of(garbage).await["error"].is_string());
    assert!(sink.messages.is_empty());
    sink.stop().await;
}

#[tokio::test]
async fn messages_can_be_listed_by_number_with_or_without_the_plus() {
    let sink = Running::quiet().await;
    sink.twilio_send(TO).await;
    sink.json_send(json!({"to": "14155550100", "from": "V", "text": "b"}))
        .await;
    sink.twilio_send("+14155550199").await;

    let all = json_of(sink.get("/messages").await).await;
    assert_eq!(all.as_array().unwrap().len(), 3);

    let encoded_plus = json_of(sink.get("/messages?to=%2B14155550100").await).await;
    let literal_plus = json_of(sink.get("/messages?to=+14155550100").await).await;
    let no_plus = json_of(sink.get("/messages?to=14155550100").await).await;
    assert_eq!(ids(&encoded_plus).len(), 2);
    assert_eq!(ids(&encoded_plus), ids(&literal_plus));
    assert_eq!(ids(&encoded_plus), ids(&no_plus));

    let first = &encoded_plus[0];
    assert_eq!(first["to"], TO);
    assert_eq!(first["api"], "twilio");
    assert_eq!(encoded_plus[1]["api"], "json");
    let received_at = first["received_at"].as_str().unwrap();
    assert!(received_at.ends_with('Z'));
    assert_eq!(
        received_at.split('.').nth(1).unwrap().len(),
        "123456Z".len()
    );

    let nobody = json_of(sink.get("/messages?to=%2B19999999999").await).await;
    assert!(nobody.as_array().unwrap().is_empty());
    sink.stop().await;
}

#[tokio::test]
async fn fail_first_two_fails_exactly_the_first_two_sends_with_the_configured_status() {
    let sink = Running::start(settings(&["--fail-first", "2", "--failure-status", "500"])).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(sink.twilio_send(TO).await.status().as_u16());
    }
    assert_eq!(statuses, [500, 500, 201, 201]);
    assert_eq!(sink.messages.len(), 2, "failed sends must not be recorded");

    let stats = json_of(sink.get("/stats").await).await;
    assert_eq!(stats["received"], 4);
    assert_eq!(stats["accepted"], 2);
    assert_eq!(stats["failed"], 2);
    sink.stop().await;
}

#[tokio::test]
async fn an_injected_failure_uses_each_apis_error_shape() {
    let sink = Running::start(settings(&["--failure-rate", "1.0"])).await;
    let twilio = sink.twilio_send(TO).await;
    assert_eq!(twilio.status(), StatusCode::SERVICE_UNAVAILABLE);
    let twilio = json_of(twilio).await;
    assert_eq!(twilio["status"], 503);
    assert!(twilio["code"].is_u64());

    let generic = sink
        .json_send(json!({"to": TO, "from": "V", "text": "x"}))
        .await;
    assert_eq!(generic.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(json_of(generic).await["error"].is_string());
    assert!(sink.messages.is_empty());
    sink.stop().await;
}

#[tokio::test]
async fn a_429_failure_carries_retry_after() {
    let sink = Running::start(settings(&[
        "--fail-first",
        "2",
        "--failure-status",
        "429",
        "--retry-after-secs",
        "7",
    ]))
    .await;
    let twilio = sink.twilio_send(TO).await;
    assert_eq!(twilio.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(twilio.headers()["retry-after"], "7");
    let generic = sink
        .json_send(json!({"to": TO, "from": "V", "text": "x"}))
        .await;
    assert_eq!(generic.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(generic.headers()["retry-after"], "7");
    let ok = sink.twilio_send(TO).await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert!(ok.headers().get("retry-after").is_none());
    sink.stop().await;
}

#[tokio::test]
async fn put_control_opens_and_closes_an_outage_at_runtime() {
    let sink = Running::quiet().await;
    assert_eq!(sink.twilio_send(TO).await.status(), StatusCode::CREATED);

    let opened = sink
        .put_control(json!({"failure_rate": 1.0, "failure_status": 502}))
        .await;
    assert_eq!(opened.status(), StatusCode::OK);
    let opened = json_of(opened).await;
    assert_eq!(opened["failure_rate"], 1.0);
    assert_eq!(opened["failure_status"], 502);
    assert_eq!(opened["failure_mode"], "status");
    assert_eq!(sink.twilio_send(TO).await.status(), StatusCode::BAD_GATEWAY);

    sink.put_control(json!({"failure_rate": 0.0})).await;
    assert_eq!(sink.twilio_send(TO).await.status(), StatusCode::CREATED);

    sink.put_control(json!({"fail_first": 1})).await;
    let control = json_of(sink.get("/control").await).await;
    assert_eq!(control["fail_first"], 1);
    assert_eq!(control["fail_first_remaining"], 1);
    assert_eq!(sink.twilio_send(TO).await.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(sink.twilio_send(TO).await.status(), StatusCode::CREATED);
    sink.stop().await;
}

#[tokio::test]
async fn put_control_refuses_invalid_values_naming_the_field() {
    let sink = Running::quiet().await;
    for (body, field) in [
        (json!({"failure_rate": 1.5}), "failure_rate"),
        (json!({"failure_status": 200}), "failure_status"),
        (json!({"failure_mode": "explode"}), "failure_mode"),
        (json!({"latency_ms": "slow"}), "latency_ms"),
        (json!({"latncy_ms": 5}), "latncy_ms"),
    ] {
        let response = sink.put_control(body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let error = json_of(response).await;
        assert!(error["error"].as_str().unwrap().contains(field), "{error}");
    }
    let unchanged = json_of(sink.get("/control").await).await;
    assert_eq!(unchanged["failure_rate"], 0.0);
    assert_eq!(unchanged["failure_status"], 503);
    sink.stop().await;
}

#[tokio::test]
async fn delete_clears_the_recorded_messages() {
    let sink = Running::quiet().await;
    sink.twilio_send(TO).await;
    let response = sink
        .client
        .delete(format!("{}/messages", sink.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(sink.messages.is_empty());
    let listed = json_of(sink.get("/messages").await).await;
    assert!(listed.as_array().unwrap().is_empty());
    sink.stop().await;
}

#[tokio::test]
async fn latency_delays_each_send_without_serialising_them() {
    let sink = Running::start(settings(&["--latency-ms", "300"])).await;
    let started = Instant::now();
    let sends = (0..20).map(|_| sink.twilio_send(TO));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED));
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(sink.messages.len(), 20);
    sink.stop().await;
}

#[tokio::test]
async fn hang_mode_holds_a_failing_send_then_answers_504() {
    let sink = Running::start(settings(&[
        "--fail-first",
        "1",
        "--failure-mode",
        "hang",
        "--hang-ms",
        "300",
    ]))
    .await;
    let started = Instant::now();
    let response = sink.twilio_send(TO).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(sink.messages.is_empty());
    sink.stop().await;
}

#[tokio::test]
async fn stopping_cuts_a_hanging_send_short() {
    let sink = Running::start(settings(&[
        "--fail-first",
        "1",
        "--failure-mode",
        "hang",
        "--hang-ms",
        "60000",
    ]))
    .await;
    let client = sink.client.clone();
    let url = sink.twilio_url(ACCOUNT);
    let hanging = tokio::spawn(async move {
        client
            .post(url)
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("To", TO), ("From", "+1"), ("Body", "hi")])
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    sink.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let answered = hanging.await.unwrap().unwrap();
    assert_eq!(answered.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn health_and_unknown_routes_answer_json() {
    let sink = Running::quiet().await;
    let health = sink.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(json_of(health).await, json!({"status": "ok"}));

    let missing = sink.get("/nope").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(json_of(missing).await["error"].is_string());

    let wrong_method = sink.get("/send").await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(json_of(wrong_method).await["error"].is_string());
    sink.stop().await;
}

#[tokio::test]
async fn a_sink_binds_to_an_ephemeral_port_and_reports_its_url() {
    let sink = Sink::bind(settings(&[])).await.unwrap();
    assert_ne!(sink.local_addr().port(), 0);
    assert_eq!(
        sink.base_url(),
        format!("http://127.0.0.1:{}", sink.local_addr().port())
    );
}

#[tokio::test]
async fn invalid_settings_are_refused_at_bind() {
    let error = Sink::bind(SinkSettings {
        failure_rate: 2.0,
        ..settings(&[])
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("--failure-rate"), "{error}");
}

#[tokio::test]
async fn receipts_beyond_the_queue_are_dropped_and_counted_without_slowing_sends() {
    let sink = Running::start(settings(&[
        "--receipt-delay-ms",
        "60000",
        "--receipt-queue",
        "2",
    ]))
    .await;
    let sends = 6;

    let started = Instant::now();
    for _ in 0..sends {
        let response = sink
            .twilio_send_as(
                ACCOUNT,
                TOKEN,
                &[
                    ("To", TO),
                    ("From", "+15005550006"),
                    ("Body", "code 123456"),
                    (
                        "StatusCallback",
                        "http://127.0.0.1:9/callbacks/twilio/status",
                    ),
                ],
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let stats = json_of(sink.get("/stats").await).await;
    let receipts = &stats["receipts"];
    let (scheduled, dropped) = (
        receipts["scheduled"].as_u64().unwrap(),
        receipts["dropped"].as_u64().unwrap(),
    );
    assert_eq!(scheduled + dropped, sends, "{stats}");
    // The queue, and the one receipt its sender holds while waiting for it to be due.
    assert!(scheduled <= 3, "{stats}");
    assert_eq!(receipts["sent"], 0, "{stats}");
    sink.stop().await;
}
