//! SMS deliveries (one per send of a verification's code), their status machine and the
//! log of their attempts.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Identifies one send of a code.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct DeliveryId(Uuid);

impl DeliveryId {
    /// A new time-ordered id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps a UUID read from storage or a job message.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Status of one send.
///
/// ```text
/// queued ──► sending ──► sent ──► delivered | undelivered   (the provider's receipt)
///  ▲ │         │  ▲
///  │ │         ▼  │
///  │ │      retrying ──► failed
///  │ └─────────┴────────► failed
///  └──── (replay) ───────── failed
/// ```
/// `Sent` and `Failed` are terminal for workers: only an operator's replay of a
/// dead-lettered job moves a `Failed` send back to `Queued`, and only a delivery receipt
/// moves a `Sent` one on. `Delivered` and `Undelivered` are final: a receipt that arrives
/// after either (a duplicate, or an earlier status delivered late) changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Queued,
    Sending,
    Retrying,
    Sent,
    Failed,
    /// The provider's receipt says the handset got the message.
    Delivered,
    /// The provider's receipt says the message could not be delivered (or the provider
    /// failed it after accepting it).
    Undelivered,
}

impl DeliveryStatus {
    /// Every status, for exhaustive tests and SQL `CHECK`s.
    pub const ALL: [Self; 7] = [
        Self::Queued,
        Self::Sending,
        Self::Retrying,
        Self::Sent,
        Self::Failed,
        Self::Delivered,
        Self::Undelivered,
    ];

    /// The single source of truth for which moves are allowed. The database enforces the
    /// same rule under concurrency by guarding each `UPDATE` with [`Self::allowed_previous`].
    pub fn can_transition_to(self, next: Self) -> bool {
        use DeliveryStatus::{Delivered, Failed, Queued, Retrying, Sending, Sent, Undelivered};
        matches!(
            (self, next),
            (Queued | Retrying, Sending)
                // Only from `Sent`: a receipt names the provider's message id, which is
                // recorded together with `sent`. A receipt that beats that record is held
                // until it is written (see `db::deliveries::record_receipt`), so `Sending`
                // never needs to move straight to a receipt's status.
                | (Sent, Delivered | Undelivered)
                | (Sending, Sent | Retrying | Failed)
                // A send whose verification ended (approved, canceled, expired) while it
                // waited is closed without being attempted.
                | (Queued | Retrying, Failed)
                // Replaying a dead-lettered job re-arms its failed send once what made it
                // fail (a deleted template, a provider outage) has been put right.
                | (Failed, Queued)
        )
    }

    /// Statuses from which `self` may be reached, as text for a SQL `= ANY($n)` guard.
    pub fn allowed_previous(self) -> Vec<&'static str> {
        Self::ALL
            .into_iter()
            .filter(|from| from.can_transition_to(self))
            .map(Self::as_str)
            .collect()
    }

    /// True for `Sent`, `Failed` and the receipts' statuses: no worker moves a send out of
    /// them (see [`Self::can_transition_to`] for the operator's replay and the receipts).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Sent | Self::Failed | Self::Delivered | Self::Undelivered
        )
    }

    /// True for the statuses a provider's delivery receipt sets; nothing moves a send
    /// out of them.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Undelivered)
    }

    /// The stored text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Retrying => "retrying",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
        }
    }
}

/// One entry of a send's attempt log: a provider attempt, or the decision not to make
/// one. Stored as JSON in the send's row, oldest first, and shown as it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttemptLogEntry {
    /// The attempt's number (1 for the first).
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// After a transient error: when the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// How long the provider took, for attempts that called it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The provider the attempt went to. Added by the statement that logs the attempt
    /// (`finish_attempts`), which knows the worker's provider; entries logged before
    /// providers were recorded have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The provider accepted the message.
    Sent,
    /// The provider failed in a way worth retrying.
    TransientError,
    /// The provider refused the message for good.
    PermanentError,
    /// The message could not be made (template, locale, variables, segment cap).
    RenderError,
    /// Not attempted: the verification had ended or its code was about to expire.
    Skipped,
}

impl AttemptOutcome {
    /// The stored text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::TransientError => "transient_error",
            Self::PermanentError => "permanent_error",
            Self::RenderError => "render_error",
            Self::Skipped => "skipped",
        }
    }
}

impl FromStr for DeliveryStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown delivery status {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::{
        self, Delivered, Failed, Queued, Retrying, Sending, Sent, Undelivered,
    };

    #[test]
    fn every_pair_of_statuses_follows_the_transition_table() {
        let allowed = [
            (Queued, Sending),
            (Queued, Failed),
            (Retrying, Sending),
            (Retrying, Failed),
            (Sending, Sent),
            (Sending, Retrying),
            (Sending, Failed),
            (Failed, Queued),
            (Sent, Delivered),
            (Sent, Undelivered),
        ];
        for from in DeliveryStatus::ALL {
            for to in DeliveryStatus::ALL {
                assert_eq!(
                    from.can_transition_to(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn a_sent_send_moves_only_on_a_receipt_and_a_failed_one_only_on_a_replay() {
        for to in DeliveryStatus::ALL {
            assert_eq!(Sent.can_transition_to(to), to.is_final(), "sent -> {to:?}");
            assert_eq!(
                Failed.can_transition_to(to),
                to == Queued,
                "failed -> {to:?}"
            );
        }
        assert!(Sent.is_terminal() && Failed.is_terminal() && !Retrying.is_terminal());
    }

    #[test]
    fn a_receipt_status_is_final_and_never_moves_back() {
        for from in [Delivered, Undelivered] {
            assert!(from.is_terminal() && from.is_final(), "{from:?}");
            for to in DeliveryStatus::ALL {
                assert!(!from.can_transition_to(to), "{from:?} -> {to:?}");
            }
        }
        // A receipt cannot beat the worker's own record of the send.
        assert!(!Sending.can_transition_to(Delivered));
        assert!(!Sending.can_transition_to(Undelivered));
    }

    #[test]
    fn allowed_previous_lists_the_sources_of_a_move() {
        assert_eq!(Sending.allowed_previous(), ["queued", "retrying"]);
        assert_eq!(Sent.allowed_previous(), ["sending"]);
        assert_eq!(Queued.allowed_previous(), ["failed"]);
        assert_eq!(Delivered.allowed_previous(), ["sent"]);
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in DeliveryStatus::ALL {
            assert_eq!(status.as_str().parse::<DeliveryStatus>(), Ok(status));
        }
        assert!("read".parse::<DeliveryStatus>().is_err());
    }

    #[test]
    fn an_attempt_log_entry_is_stored_as_the_json_the_api_has_always_shown() {
        use super::{AttemptLogEntry, AttemptOutcome};

        let stored = serde_json::json!({
            "attempt": 2, "at": "2026-11-26T02:48:35.123456789Z", "outcome": "transient_error",
            "error": "provider answered 503", "retry_at": "2026-11-26T02:48:37Z",
            "duration_ms": 41,
        });

        let entry: AttemptLogEntry = serde_json::from_value(stored.clone()).unwrap();

        assert_eq!(entry.outcome, AttemptOutcome::TransientError);
        assert_eq!(entry.provider_message_id, None);
        assert_eq!(serde_json::to_value(&entry).unwrap(), stored);
    }
}
