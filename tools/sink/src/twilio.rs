//! Twilio's Messages API, `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, to the
//! extent a sender of one-time codes exercises it: Basic auth, the form fields, the error
//! codes for missing fields, and a Message resource on success.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;
use warp::http::StatusCode;
use warp::http::header::{HeaderValue, WWW_AUTHENTICATE};
use warp::reply::Response;

use crate::body::BodyError;
use crate::provider::{Api, Provider, Verdict};
use crate::receipts::Receipts;
use crate::reply;
use crate::settings::SinkSettings;
use crate::store::RecordedMessage;

const API_VERSION: &str = "2010-04-01";

/// The credentials the route insists on; each part that is unset accepts anything.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    account_sid: Option<String>,
    auth_token: Option<String>,
}

impl Credentials {
    pub(crate) fn from_settings(settings: &SinkSettings) -> Credentials {
        Credentials {
            account_sid: settings.twilio_account_sid.clone(),
            auth_token: settings.twilio_auth_token.clone(),
        }
    }

    /// Whether `authorization` is Basic auth for `path_sid` that matches what is configured.
    /// Basic auth is required even when nothing is configured, because a sender that
    /// forgets it would fail against the real Twilio.
    fn admit(&self, path_sid: &str, authorization: Option<&str>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        user == path_sid
            && self.account_sid.as_deref().is_none_or(|sid| sid == user)
            && self
                .auth_token
                .as_deref()
                .is_none_or(|token| token == password)
    }
}

// Hand-written so the auth token never reaches a log line.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("account_sid", &self.account_sid)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Handles one Twilio send; one that names a `StatusCallback` gets its receipt there,
/// signed with the auth token it was sent with.
pub(crate) async fn send(
    account_sid: String,
    provider: Arc<Provider>,
    credentials: Arc<Credentials>,
    receipts: Arc<Receipts>,
    authorization: Option<String>,
    body: Result<Bytes, BodyError>,
) -> Response {
    let received_at = provider.arrived();
    if !credentials.admit(&account_sid, authorization.as_deref()) {
        provider.refused();
        return unauthorised();
    }
    let message = match body
        .map_err(|e| Refusal::new(e.status(), e.to_string()))
        .and_then(|body| parse(&body, received_at))
    {
        Ok(message) => message,
        Err(refusal) => {
            provider.refused();
            return error_with_code(refusal.status, refusal.code, &refusal.message);
        }
    };
    let from_given = message.from_given;
    let messaging_service_sid = message.messaging_service_sid;
    let status_callback = message.status_callback;
    match provider.submit(message.recorded).await {
        Verdict::Accepted(recorded) => {
            if let Some((callback, (_, auth_token))) = status_callback
                .as_deref()
                .zip(authorization.as_deref().and_then(parse_basic))
            {
                receipts.schedule_twilio(&recorded, &account_sid, callback, &auth_token);
            }
            reply::json(
                StatusCode::CREATED,
                &message_resource(
                    &account_sid,
                    &recorded,
                    from_given,
                    messaging_service_sid.as_deref(),
                ),
            )
        }
        Verdict::Failed {
            status,
            retry_after,
        } => {
            let status = reply::status(status);
            reply::with_retry_after(
                error_with_code(status, generic_code(status), reply::reason(status)),
                retry_after,
            )
        }
    }
}

struct ParsedSend {
    recorded: RecordedMessage,
    // Twilio echoes `from: null` when only a messaging service was given.
    from_given: bool,
    messaging_service_sid: Option<String>,
    /// Where the sender wants this message's status callbacks.
    status_callback: Option<String>,
}

/// A send refused before failure injection, in Twilio's terms.
#[derive(Debug, PartialEq)]
struct Refusal {
    status: StatusCode,
    code: u32,
    message: String,
}

impl Refusal {
    /// A refusal with the generic code for its status.
    fn new(status: StatusCode, message: String) -> Refusal {
        Refusal {
            status,
            code: generic_code(status),
            message,
        }
    }

    /// A missing required field, which Twilio reports with a code of its own.
    fn missing(code: u32, message: &str) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.to_owned(),
        }
    }
}

const MISSING_TO: (u32, &str) = (21604, "A 'To' phone number is required.");
const MISSING_BODY: (u32, &str) = (21602, "Message body is required.");
const MISSING_FROM: (u32, &str) = (21603, "A 'From' phone number is required.");

fn parse(body: &[u8], received_at: DateTime<Utc>) -> Result<ParsedSend, Refusal> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("The request body is not form-encoded: {e}"),
        )
    })?;
    let missing = |(code, message): (u32, &str)| Refusal::missing(code, message);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, value)| key == name && !value.trim().is_empty())
            .map(|(_, value)| value.clone())
    };
    // Checked in the order Twilio reports them.
    let to = field("To").ok_or_else(|| missing(MISSING_TO))?;
    let text = field("Body").ok_or_else(|| missing(MISSING_BODY))?;
    let from = field("From");
    let messaging_service_sid = field("MessagingServiceSid");
    let sender = from
        .clone()
        .or_else(|| messaging_service_sid.clone())
        .ok_or_else(|| missing(MISSING_FROM))?;
    Ok(ParsedSend {
        recorded: RecordedMessage {
            id: new_sid(),
            to,
            from: sender,
            body: text,
            received_at,
            api: Api::Twilio.as_str().to_owned(),
        },
        from_given: from.is_some(),
        messaging_service_sid,
        status_callback: field("StatusCallback"),
    })
}

/// "SM" and 32 lowercase hex digits, the shape of a real Message SID.
fn new_sid() -> String {
    format!("SM{}", uuid::Uuid::new_v4().simple())
}

fn message_resource(
    account_sid: &str,
    message: &RecordedMessage,
    from_given: bool,
    messaging_service_sid: Option<&str>,
) -> serde_json::Value {
    let uri = format!(
        "/{API_VERSION}/Accounts/{account_sid}/Messages/{}",
        message.id
    );
    let created = message.received_at.to_rfc2822();
    json!({
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": message.body,
        "date_created": created,
        "date_sent": null,
        "date_updated": created,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from_given.then_some(message.from.as_str()),
        "messaging_service_sid": messaging_service_sid,
        "num_media": "0",
        "num_segments": num_segments(&message.body).to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": message.id,
        "status": "queued",
        "subresource_uris": { "media": format!("{uri}/Media.json") },
        "to": message.to,
        "uri": format!("{uri}.json"),
    })
}

fn unauthorised() -> Response {
    let mut response = error_with_code(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Twilio API\""),
    );
    response
}

/// Twilio's REST-level error codes mirror the HTTP status (20003 aside): 20404, 20429,
/// 20500, 20503 and so on.
fn generic_code(status: StatusCode) -> u32 {
    20_000 + u32::from(status.as_u16())
}

/// Twilio's error document.
fn error_with_code(status: StatusCode, code: u32, message: &str) -> Response {
    reply::json(
        status,
        &json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        }),
    )
}

/// How many SMS segments `body` occupies: GSM-7 text fits 160 septets in one segment or
/// 153 per segment when concatenated; anything else is sent as UCS-2 with 70 and 67 UTF-16
/// units. Senders watch this number because it is what they are billed for.
pub(crate) fn num_segments(body: &str) -> usize {
    let septets: Option<usize> = body.chars().map(gsm7_septets).sum();
    match septets {
        Some(septets) => segments(septets, 160, 153),
        None => segments(body.encode_utf16().count(), 70, 67),
    }
}

fn segments(units: usize, single: usize, per_part: usize) -> usize {
    if units <= single {
        1
    } else {
        units.div_ceil(per_part)
    }
}

/// Septets `c` takes in the GSM 03.38 alphabet, or `None` if it forces UCS-2.
fn gsm7_septets(c: char) -> Option<usize> {
    // The non-ASCII part of the basic table.
    const BASIC_NON_ASCII: &str = "£¥èéùìòÇØøÅåΔΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà";
    match c {
        // The extension table, reached through an escape septet.
        '^' | '{' | '}' | '\\' | '[' | ']' | '~' | '|' | '€' | '\u{0C}' => Some(2),
        '`' => None,
        ' '..='~' | '\n' | '\r' => Some(1),
        _ if BASIC_NON_ASCII.contains(c) => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use chrono::Utc;
    use warp::http::StatusCode;

    use super::{Credentials, num_segments, parse};

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
    }

    #[test]
    fn a_short_ascii_code_is_one_segment() {
        assert_eq!(num_segments("Your Verify code is 123456"), 1);
        assert_eq!(num_segments(""), 1);
    }

    #[test]
    fn gsm_text_splits_at_160_then_153() {
        assert_eq!(num_segments(&"a".repeat(160)), 1);
        assert_eq!(num_segments(&"a".repeat(161)), 2);
        assert_eq!(num_segments(&"a".repeat(306)), 2);
        assert_eq!(num_segments(&"a".repeat(307)), 3);
    }

    #[test]
    fn extension_characters_count_twice() {
        assert_eq!(num_segments(&"€".repeat(80)), 1);
        assert_eq!(num_segments(&"€".repeat(81)), 2);
    }

    #[test]
    fn accented_gsm_letters_stay_gsm() {
        assert_eq!(num_segments(&"é".repeat(160)), 1);
    }

    #[test]
    fn non_gsm_text_is_ucs2_with_70_then_67() {
        assert_eq!(num_segments(&"ж".repeat(70)), 1);
        assert_eq!(num_segments(&"ж".repeat(71)), 2);
        assert_eq!(num_segments(&"ж".repeat(135)), 3);
        // An emoji is two UTF-16 units.
        assert_eq!(num_segments(&"😀".repeat(35)), 1);
        assert_eq!(num_segments(&"😀".repeat(36)), 2);
    }

    #[test]
    fn unconfigured_credentials_accept_any_basic_auth_for_the_path_account() {
        let creds = Credentials::default();
        assert!(creds.admit("AC1", Some(&basic("AC1", "anything"))));
        assert!(!creds.admit("AC1", Some(&basic("AC2", "anything"))));
        assert!(!creds.admit("AC1", None));
        assert!(!creds.admit("AC1", Some("Bearer abc")));
        assert!(!creds.admit("AC1", Some("Basic !!!not-base64")));
    }

    #[test]
    fn configured_credentials_must_match() {
        let creds = Credentials {
            account_sid: Some("AC1".to_owned()),
            auth_token: Some("secret".to_owned()),
        };
        assert!(creds.admit("AC1", Some(&basic("AC1", "secret"))));
        assert!(!creds.admit("AC1", Some(&basic("AC1", "wrong"))));
        assert!(!creds.admit("AC2", Some(&basic("AC2", "secret"))));
        assert!(creds.admit(
            "AC1",
            Some(&format!("basic  {}", BASE64.encode("AC1:secret")))
        ));
    }

    #[test]
    fn missing_fields_are_reported_in_twilio_order() {
        let now = Utc::now();
        let err = |body: &str| parse(body.as_bytes(), now).err().unwrap();
        assert_eq!(err("Body=hi&From=%2B1").code, 21604);
        assert_eq!(err("To=%2B1&From=%2B1").code, 21602);
        assert_eq!(err("To=%2B1&Body=hi").code, 21603);
        assert_eq!(err("Body=hi").code, 21604);
        let empty_to = err("To=&Body=hi&From=%2B1");
        assert_eq!(empty_to.status, StatusCode::BAD_REQUEST);
        assert_eq!(empty_to.message, "A 'To' phone number is required.");
    }

    #[test]
    fn a_messaging_service_stands_in_for_from() {
        let parsed = parse(b"To=%2B1&Body=hi&MessagingServiceSid=MG1", Utc::now()).unwrap();
        assert_eq!(parsed.recorded.from, "MG1");
        assert!(!parsed.from_given);
        assert!(parsed.recorded.id.starts_with("SM"));
        assert_eq!(parsed.recorded.id.len(), 34);
    }
}
