//! The segment cap on rendered messages (`VERIFY_SMS_MAX_SEGMENTS`, 3 by default): a start
//! whose message would exceed it answers 422 naming the variables at fault, on the native
//! and the PortaText route, and a template that could never fit is refused when saved.
//! A GSM-7 message of several segments carries 153 characters in each, a UCS-2 one 67.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, code_in, phone_number, spawn_app};

/// A template reading three variables before the code: `{{a}}{{b}}{{c}}: {{code}}`. With
/// a six-digit code it renders to 8 characters more than the variables hold.
async fn three_variable_template(app: &TestApp) -> i64 {
    let template = app
        .create_template(&json!({"name": "long", "text": "{{a}}{{b}}{{c}}: {{code}}"}))
        .await;
    template["id"].as_i64().unwrap()
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn verification_count(app: &TestApp) -> i64 {
    app.sql("SELECT count(*) FROM verifications").await[0].get(0)
}

#[tokio::test]
async fn a_start_whose_message_exceeds_the_cap_answers_422_naming_the_longest_variable() {
    let app = spawn_app().await;
    let template_id = three_variable_template(&app).await;

    // 200 + 200 + 10 characters of Cyrillic: 418 UTF-16 units, seven UCS-2 segments.
    let response = app
        .post_verification(&json!({
            "to": phone_number(1),
            "template_id": template_id,
            "variables": {"a": "д".repeat(10), "b": "ж".repeat(200), "c": "щ".repeat(200)}
        }))
        .await;

    let (status, body) = error_of(response).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "message_too_long", "{body}");
    assert_eq!(body["error"]["field"], "variables.b", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "the message takes 7 SMS segments (UCS-2, 418 characters); the cap is 3; shorten "
        ),
        "{message}"
    );
    assert!(
        message.contains("variables.b (200 characters, not all GSM-7), variables.c (200"),
        "{message}"
    );
    assert_eq!(verification_count(&app).await, 0);
}

#[tokio::test]
async fn a_gsm7_message_of_exactly_three_segments_is_sent_whole_and_one_character_more_answers_422()
{
    let app = spawn_app().await;
    let template_id = three_variable_template(&app).await;
    let to = phone_number(2);
    // 200 + 200 + 51 + 8 = 459 characters: three segments of 153.
    let at_cap = json!({"a": "a".repeat(200), "b": "b".repeat(200), "c": "c".repeat(51)});
    let over_cap = json!({"a": "a".repeat(200), "b": "b".repeat(200), "c": "c".repeat(52)});

    app.start_verification(&json!({"to": to, "template_id": template_id, "variables": at_cap}))
        .await;
    let response = app
        .post_verification(&json!({"to": to, "template_id": template_id, "variables": over_cap}))
        .await;

    let (status, body) = error_of(response).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "message_too_long", "{body}");
    assert_eq!(body["error"]["field"], "variables.a", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4 SMS segments (GSM-7, 460 characters)"),
        "{body}"
    );
    app.drain().await;
    let sms = app.sent_sms(&to);
    assert_eq!(sms.len(), 1);
    let code = code_in(&sms[0].body);
    assert_eq!(
        sms[0].body,
        format!(
            "{}{}{}: {code}",
            "a".repeat(200),
            "b".repeat(200),
            "c".repeat(51)
        )
    );
}

#[tokio::test]
async fn one_character_outside_gsm7_makes_a_three_segment_message_ucs2_and_names_its_variable() {
    let app = spawn_app().await;
    let template_id = three_variable_template(&app).await;

    // The same 459 characters as a message at the cap, but the short variable holds one
    // Cyrillic letter: UCS-2, 67 characters a segment, seven segments.
    let response = app
        .post_verification(&json!({
            "to": phone_number(3),
            "template_id": template_id,
            "variables": {"a": "a".repeat(200), "b": "b".repeat(200), "c": format!("ж{}", "c".repeat(50))}
        }))
        .await;

    let (status, body) = error_of(response).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "variables.c", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("7 SMS segments (UCS-2, 459 characters)"),
        "{message}"
    );
    assert!(
        message.contains("variables.c (51 characters, not all GSM-7)"),
        "{message}"
    );
}

#[tokio::test]
async fn a_ucs2_message_of_exactly_201_units_is_accepted_and_one_more_answers_422() {
    let app = spawn_app().await;
    let template_id = three_variable_template(&app).await;
    let start = |a: usize| {
        json!({
            "to": phone_number(4),
            "template_id": template_id,
            "variables": {"a": "ж".repeat(a), "b": "", "c": ""}
        })
    };

    // 193 + 8 = 201 UTF-16 units: three UCS-2 segments of 67.
    let accepted = app.post_verification(&start(193)).await;
    let refused = app.post_verification(&start(194)).await;

    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let (status, body) = error_of(refused).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "variables.a", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4 SMS segments (UCS-2, 202 characters)"),
        "{body}"
    );
}

#[tokio::test]
async fn a_longer_code_can_take_a_template_at_the_cap_over_it_which_names_the_template() {
    let app = spawn_app().await;
    // 453 characters and a six-digit code: 459, three segments; ten digits make 463.
    let template = app
        .create_template(
            &json!({"name": "at-cap", "text": format!("{}{{{{code}}}}", "x".repeat(453))}),
        )
        .await;

    let response = app
        .post_verification(&json!({
            "to": phone_number(5),
            "template_id": template["id"],
            "code_length": 10
        }))
        .await;

    let (status, body) = error_of(response).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "template_id", "{body}");
    assert_eq!(
        body["error"]["message"],
        "the message takes 4 SMS segments (GSM-7, 463 characters); the cap is 3, and no \
         variable adds to it: shorten the template"
    );
}

#[tokio::test]
async fn a_start_over_the_cap_on_the_portatext_route_answers_in_its_shape_naming_the_variable() {
    let app = spawn_app().await;
    let template_id = three_variable_template(&app).await;

    let response = app
        .request(Method::POST, "/number_verify/14155550100")
        .header("content-type", "application/json")
        .body(
            json!({
                "template_id": template_id,
                "variables": {"a": "😀".repeat(200), "b": "x", "c": "y"}
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();

    let (status, body) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error_code"], "message_too_long", "{body}");
    assert_eq!(body["field"], "variables.a", "{body}");
    assert_eq!(verification_count(&app).await, 0);
}

#[tokio::test]
async fn saving_a_template_that_cannot_fit_even_with_empty_variables_answers_422_naming_text() {
    let app = spawn_app().await;
    // 453 characters and a six-digit code: 459, three segments. One more is four.
    let at_cap = format!("{{{{brand}}}}{}{{{{code}}}}", "x".repeat(453));
    let over_cap = format!("{{{{brand}}}}{}{{{{code}}}}", "x".repeat(454));

    let created = app
        .create_template(&json!({"name": "at-cap", "text": at_cap}))
        .await;
    let refused = app
        .post_json(
            "/v1/templates",
            &json!({"name": "over-cap", "text": over_cap}),
        )
        .await;
    let changed = app
        .request(
            Method::PATCH,
            &format!("/v1/templates/{}", created["id"].as_i64().unwrap()),
        )
        .json(&json!({"text": over_cap}))
        .send()
        .await
        .unwrap();

    for (what, response) in [("create", refused), ("change", changed)] {
        let (status, body) = error_of(response).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert_eq!(body["error"]["code"], "message_too_long", "{what}: {body}");
        assert_eq!(body["error"]["field"], "text", "{what}: {body}");
        assert_eq!(
            body["error"]["message"],
            "with every variable empty and a 6-digit code, the message takes 4 SMS segments \
             (GSM-7, 460 characters); the cap is 3",
            "{what}"
        );
    }
    let count: i64 = app.sql("SELECT count(*) FROM templates").await[0].get(0);
    assert_eq!(count, 1);
}
