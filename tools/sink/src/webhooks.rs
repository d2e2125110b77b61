//! A producer's webhook endpoint, for load and chaos runs that subscribe to Verify's
//! events: `POST /webhooks` takes one event, `GET /webhooks/stats` says what arrived and
//! `PUT /webhooks/control` takes the endpoint down (every event answered 503, as a producer
//! in an outage would) or gives it the endpoint's secret.
//!
//! Events are told apart by their `webhook-id`, which stays the same on every retry, so
//! `unique` counts events however often they were delivered. With a secret set, each
//! request's Standard Webhooks signature is checked and a wrong one is refused with 401
//! and counted: a run then shows that every event arrived signed, not only that it
//! arrived.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

/// The `whsec_` prefix Verify's webhook secrets carry before their base64 key.
const SECRET_PREFIX: &str = "whsec_";

/// What a `POST /webhooks` is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Taken (204).
    Accepted,
    /// The endpoint is down (503).
    Down,
    /// Headers missing, or the signature does not match the secret (401).
    BadSignature,
}

/// The headers of one delivery, as sent.
#[derive(Debug, Default)]
pub(crate) struct Delivery<'a> {
    pub(crate) id: Option<&'a str>,
    pub(crate) timestamp: Option<&'a str>,
    pub(crate) signature: Option<&'a str>,
}

/// `PUT /webhooks/control`: each field present changes that setting.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InboxControl {
    down: Option<bool>,
    /// The endpoint's `whsec_…` secret, or null to stop checking signatures.
    #[serde(default, with = "serde_with_null")]
    secret: Option<Option<String>>,
}

/// Tells an absent `secret` (leave it) from `"secret": null` (forget it).
mod serde_with_null {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(deserializer).map(Some)
    }
}

#[derive(Debug, Error)]
pub(crate) enum ControlError {
    #[error("the body is not a webhook control document: {0}")]
    Body(#[from] serde_json::Error),
    #[error("secret must be whsec_ followed by base64")]
    Secret,
}

impl InboxControl {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ControlError> {
        let control: Self = serde_json::from_slice(body)?;
        if let Some(Some(secret)) = &control.secret {
            key_of(secret).ok_or(ControlError::Secret)?;
        }
        Ok(control)
    }
}

fn key_of(secret: &str) -> Option<Vec<u8>> {
    BASE64.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()
}

/// What arrived, as `GET /webhooks/stats` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct InboxStats {
    /// Whether the endpoint is down now.
    pub(crate) down: bool,
    /// Whether signatures are checked.
    pub(crate) checking_signatures: bool,
    /// Requests taken, retries included.
    pub(crate) received: u64,
    /// Distinct events taken (by `webhook-id`).
    pub(crate) unique: u64,
    /// Requests answered 503 while down.
    pub(crate) refused: u64,
    /// Requests refused for a missing or wrong signature.
    pub(crate) bad_signatures: u64,
    /// Distinct events taken, by their `type`.
    pub(crate) by_type: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct InboxState {
    key: Option<Vec<u8>>,
    ids: HashSet<String>,
    stats: InboxStats,
}

/// The endpoint's state, shared by every request.
#[derive(Debug, Default)]
pub(crate) struct WebhookInbox {
    state: Mutex<InboxState>,
}

impl WebhookInbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // Every update leaves the state consistent, so a panic elsewhere poisons nothing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one delivery, or refuses it.
    pub(crate) fn receive(&self, delivery: &Delivery<'_>, body: &Bytes) -> Answer {
        let mut state = self.lock();
        if state.stats.down {
            state.stats.refused += 1;
            return Answer::Down;
        }
        if let Some(key) = &state.key
            && !signed_with(key, delivery, body)
        {
            state.stats.bad_signatures += 1;
            return Answer::BadSignature;
        }
        state.stats.received += 1;
        let id = delivery.id.unwrap_or_default().to_owned();
        if state.ids.insert(id) {
            state.stats.unique += 1;
            let kind = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|event| event.get("type")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unreadable".to_owned());
            *state.stats.by_type.entry(kind).or_default() += 1;
        }
        Answer::Accepted
    }

    /// Applies a control document; returns the stats after it.
    pub(crate) fn apply(&self, control: InboxControl) -> InboxStats {
        let mut state = self.lock();
        if let Some(down) = control.down {
            state.stats.down = down;
        }
        if let Some(secret) = control.secret {
            state.key = secret.as_deref().and_then(key_of);
        }
        state.stats.checking_signatures = state.key.is_some();
        state.stats.clone()
    }

    pub(crate) fn stats(&self) -> InboxStats {
        self.lock().stats.clone()
    }
}

/// Whether one of the `v1,` signatures is HMAC-SHA256 of `id.timestamp.body` under `key`.
fn signed_with(key: &[u8], delivery: &Delivery<'_>, body: &[u8]) -> bool {
    let (Some(id), Some(timestamp), Some(signatures)) =
        (delivery.id, delivery.timestamp, delivery.signature)
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    signatures
        .split_whitespace()
        .filter_map(|signature| signature.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .any(|presented| presented.as_slice() == expected.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn sign(id: &str, timestamp: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key_of(SECRET).unwrap()).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    fn control(json: &str) -> InboxControl {
        InboxControl::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn retries_of_one_event_count_once_by_type() {
        let inbox = WebhookInbox::default();
        let body = Bytes::from_static(br#"{"type":"send.sent","data":{}}"#);
        let delivery = |id| Delivery {
            id: Some(id),
            ..Delivery::default()
        };

        assert_eq!(inbox.receive(&delivery("msg_1"), &body), Answer::Accepted);
        assert_eq!(inbox.receive(&delivery("msg_1"), &body), Answer::Accepted);
        assert_eq!(inbox.receive(&delivery("msg_2"), &body), Answer::Accepted);

        let stats = inbox.stats();
        assert_eq!((stats.received, stats.unique), (3, 2));
        assert_eq!(stats.by_type["send.sent"], 2);
    }

    #[test]
    fn a_down_endpoint_refuses_and_takes_nothing_until_it_is_up_again() {
        let inbox = WebhookInbox::default();
        let body = Bytes::from_static(b"{}");
        let delivery = Delivery {
            id: Some("msg_1"),
            ..Delivery::default()
        };

        inbox.apply(control(r#"{"down": true}"#));
        assert_eq!(inbox.receive(&delivery, &body), Answer::Down);
        inbox.apply(control(r#"{"down": false}"#));
        assert_eq!(inbox.receive(&delivery, &body), Answer::Accepted);

        let stats = inbox.stats();
        assert_eq!((stats.refused, stats.unique), (1, 1));
    }

    #[test]
    fn with_a_secret_only_correctly_signed_events_are_taken() {
        let inbox = WebhookInbox::default();
        inbox.apply(control(&format!(r#"{{"secret": "{SECRET}"}}"#)));
        let body = Bytes::from_static(br#"{"type":"verification.approved"}"#);
        let good = sign("msg_1", "1700000000", &body);
        let tampered = sign("msg_1", "1700000001", &body);
        let delivery = |signature| Delivery {
            id: Some("msg_1"),
            timestamp: Some("1700000000"),
            signature: Some(signature),
        };

        assert_eq!(
            inbox.receive(&delivery(&tampered), &body),
            Answer::BadSignature
        );
        assert_eq!(
            inbox.receive(&delivery(&format!("v1,bm9wZQ== {good}")), &body),
            Answer::Accepted
        );
        assert_eq!(
            inbox.receive(&Delivery::default(), &body),
            Answer::BadSignature
        );

        let stats = inbox.stats();
        assert_eq!((stats.bad_signatures, stats.unique), (2, 1));
        assert!(stats.checking_signatures);
    }

    #[test]
    fn a_secret_without_its_prefix_is_refused() {
        assert!(matches!(
            InboxControl::parse(br#"{"secret": "MfKQ9r8GKYqrTwjU"}"#),
            Err(ControlError::Secret)
        ));
        assert!(InboxControl::parse(br#"{"down": "yes"}"#).is_err());
    }
}
