//! The generic JSON API, `POST /send` with `{"to", "from", "text"}` and an optional
//! `callback_url` for a delivery receipt, for senders that are not tied to any real
//! provider's wire format.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use warp::http::StatusCode;
use warp::reply::Response;

use crate::body::BodyError;
use crate::provider::{Api, Provider, Verdict};
use crate::receipts::Receipts;
use crate::reply;
use crate::store::RecordedMessage;

/// Handles one generic send.
pub(crate) async fn send(
    provider: Arc<Provider>,
    receipts: Arc<Receipts>,
    body: Result<Bytes, BodyError>,
) -> Response {
    let received_at = provider.arrived();
    let parsed = match body
        .map_err(|e| (e.status(), e.to_string()))
        .and_then(|body| parse(&body, received_at))
    {
        Ok(parsed) => parsed,
        Err((status, error)) => {
            provider.refused();
            return reply::error(status, error);
        }
    };
    match provider.submit(parsed.message).await {
        Verdict::Accepted(recorded) => {
            if let Some(callback_url) = &parsed.callback_url {
                receipts.schedule_json(&recorded, callback_url);
            }
            reply::json(
                StatusCode::OK,
                &json!({ "id": recorded.id, "status": "accepted" }),
            )
        }
        Verdict::Failed {
            status,
            retry_after,
        } => {
            let status = reply::status(status);
            reply::with_retry_after(
                reply::error(
                    status,
                    format!("injected failure: {}", reply::reason(status)),
                ),
                retry_after,
            )
        }
    }
}

/// A valid generic send.
#[derive(Debug)]
struct ParsedSend {
    message: RecordedMessage,
    /// Where the sender wants the delivery receipt.
    callback_url: Option<String>,
}

fn parse(body: &[u8], received_at: DateTime<Utc>) -> Result<ParsedSend, (StatusCode, String)> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(bad("the body must be a JSON object".to_owned()));
    };
    let message = RecordedMessage {
        id: uuid::Uuid::new_v4().to_string(),
        to: required(&fields, "to").map_err(bad)?,
        from: required(&fields, "from").map_err(bad)?,
        body: required(&fields, "text").map_err(bad)?,
        received_at,
        api: Api::Json.as_str().to_owned(),
    };
    let callback_url = match fields.get("callback_url") {
        None | Some(Value::Null) => None,
        Some(_) => Some(required(&fields, "callback_url").map_err(bad)?),
    };
    Ok(ParsedSend {
        message,
        callback_url,
    })
}

fn required(fields: &Map<String, Value>, name: &str) -> Result<String, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(format!("missing field `{name}`")),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(_) => Err(format!("field `{name}` must be a non-empty string")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::Utc;
    use warp::http::StatusCode;

    use super::parse;

    fn error(body: &str) -> String {
        let (status, message) = parse(body.as_bytes(), Utc::now()).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        message
    }

    #[test]
    fn a_complete_request_parses() {
        let parsed = parse(
            br#"{"to": "+14155550100", "from": "Verify", "text": "123456",
                 "callback_url": "http://127.0.0.1:8080/callbacks/http/status"}"#,
            Utc::now(),
        )
        .unwrap();
        let message = parsed.message;
        assert_eq!(
            parsed.callback_url.as_deref(),
            Some("http://127.0.0.1:8080/callbacks/http/status")
        );
        assert_eq!(message.to, "+14155550100");
        assert_eq!(message.from, "Verify");
        assert_eq!(message.body, "123456");
        assert_eq!(message.api, "json");
    }

    #[test]
    fn each_missing_field_is_named() {
        assert!(error(r#"{"from": "V", "text": "x"}"#).contains("`to`"));
        assert!(error(r#"{"to": "+1", "text": "x"}"#).contains("`from`"));
        assert!(error(r#"{"to": "+1", "from": "V"}"#).contains("`text`"));
        assert!(error(r#"{"to": 1, "from": "V", "text": "x"}"#).contains("`to`"));
        assert!(error(r#"{"to": "", "from": "V", "text": "x"}"#).contains("`to`"));
    }

    #[test]
    fn malformed_json_is_refused() {
        assert!(error("{").starts_with("invalid JSON"));
        assert!(error("[]").contains("object"));
        assert!(error("").starts_with("invalid JSON"));
    }
}
