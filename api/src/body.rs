//! Reading request bodies: bounded in size (also for chunked uploads, which carry no
//! Content-Length), and parsed as JSON with errors that name the offending field.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body accepted.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest wait for a whole body once the request's head has arrived. The head has its
/// own deadline (`VERIFY_HEADER_READ_TIMEOUT_MS`); without this one a client could send a
/// head and then trickle, or stall, its body and hold a connection and a task for as long
/// as it liked. Any working link delivers 64 KiB far sooner.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The body, read up to `limit` bytes within `deadline`; longer bodies are an error, not a
/// truncation.
///
/// # Errors
/// [`ApiError::PayloadTooLarge`] past `limit`; [`ApiError::BodyTimedOut`] when the whole
/// body has not arrived within `deadline`; [`ApiError::InvalidJson`] when the body cannot
/// be read (the client sent a broken chunked encoding, say).
pub(crate) async fn collect_limited<S, B>(
    stream: S,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    tokio::time::timeout(deadline, collect(stream, limit))
        .await
        .unwrap_or(Err(ApiError::BodyTimedOut { after: deadline }))
}

async fn collect<S, B>(stream: S, limit: usize) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    futures_util::pin_mut!(stream);
    let mut collected = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::InvalidJson {
            message: format!("the request body could not be read: {e}"),
            field: None,
        })?;
        if collected.len() + chunk.remaining() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            collected.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(collected.freeze())
}

/// Refuses bodies declared as something other than JSON. A missing Content-Type is
/// accepted: many HTTP clients omit it and the body is parsed strictly anyway.
///
/// # Errors
/// [`ApiError::UnsupportedMediaType`].
pub(crate) fn require_json(content_type: Option<&str>) -> Result<(), ApiError> {
    match content_type {
        None => Ok(()),
        Some(value) => {
            let essence = value.split(';').next().unwrap_or_default().trim();
            if essence.eq_ignore_ascii_case("application/json")
                || essence.to_ascii_lowercase().ends_with("+json")
            {
                Ok(())
            } else {
                Err(ApiError::UnsupportedMediaType)
            }
        }
    }
}

/// Parses JSON into `T`, reporting the path of the field that failed.
///
/// # Errors
/// [`ApiError::InvalidJson`] naming the field where possible.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson {
            message: "the request body is empty; send a JSON object".to_owned(),
            field: None,
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        // serde reports a missing field at its parent's path; name the field itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        let field = match (missing, path.as_str()) {
            (Some(name), "." | "") => Some(name),
            (Some(name), parent) => Some(format!("{parent}.{name}")),
            (None, "." | "") => unknown_field(&message),
            (None, path) => Some(path.to_owned()),
        };
        let message = match &field {
            Some(field) => format!("{field}: {}", strip_position(&message)),
            None => strip_position(&message).to_owned(),
        };
        ApiError::InvalidJson { message, field }
    })
}

fn unknown_field(message: &str) -> Option<String> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
}

/// serde_json appends " at line 1 column 12"; useful for humans, but the field name is
/// what clients need.
fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |i| &message[..i])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{parse_json, require_json};
    use crate::error::ApiError;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        to: String,
        code_length: Option<i64>,
    }

    fn field_of(body: &str) -> Option<String> {
        match parse_json::<Sample>(body.as_bytes()) {
            Err(ApiError::InvalidJson { field, .. }) => field,
            other => panic!("expected invalid JSON, got {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(field_of("{}"), Some("to".to_owned()));
        assert_eq!(field_of(r#"{"to": 5}"#), Some("to".to_owned()));
        assert_eq!(
            field_of(r#"{"to": "x", "code_length": "6"}"#),
            Some("code_length".to_owned())
        );
        assert_eq!(
            field_of(r#"{"to": "x", "tempalte_id": 1}"#),
            Some("tempalte_id".to_owned())
        );
        assert_eq!(field_of("not json"), None);
        assert_eq!(field_of(""), None);
    }

    #[test]
    fn only_json_content_types_are_accepted() {
        assert!(require_json(None).is_ok());
        assert!(require_json(Some("application/json; charset=utf-8")).is_ok());
        assert!(require_json(Some("application/merge-patch+json")).is_ok());
        assert!(matches!(
            require_json(Some("text/plain")),
            Err(ApiError::UnsupportedMediaType)
        ));
    }
}
