//! Verifications: identity, lifecycle and the result of checking a code.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Identifies one verification. Time-ordered (UUIDv7) so inserts stay index-friendly,
/// with 74 random bits so ids cannot be guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct VerificationId(Uuid);

impl VerificationId {
    /// A new random, time-ordered id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps a UUID read from storage or a URL.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for VerificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a verification stands. `Pending` is the only state in which a code can be
/// accepted; all others are final. `Expired` is never stored: a pending verification past
/// its expiry reads as expired (see [`VerificationStatus::at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    Pending,
    Approved,
    Expired,
    Canceled,
    MaxAttemptsReached,
}

impl VerificationStatus {
    /// The stored text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Expired => "expired",
            Self::Canceled => "canceled",
            Self::MaxAttemptsReached => "max_attempts_reached",
        }
    }

    /// The status as seen at `now`: a stored `pending` past `expires_at` is `Expired`.
    pub fn at(self, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        if self == Self::Pending && now >= expires_at {
            Self::Expired
        } else {
            self
        }
    }
}

impl FromStr for VerificationStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "expired" => Self::Expired,
            "canceled" => Self::Canceled,
            "max_attempts_reached" => Self::MaxAttemptsReached,
            other => return Err(format!("unknown verification status {other:?}")),
        })
    }
}

/// The result of one check of a typed code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The code was right and this check approved the verification.
    Approved,
    /// The code was wrong; this many checks are left.
    WrongCode { attempts_remaining: u32 },
    /// No check can succeed any more; the verification's final status says why.
    Closed(VerificationStatus),
}

#[cfg(test)]
mod tests {
    use super::VerificationStatus;
    use chrono::{Duration, Utc};

    #[test]
    fn statuses_round_trip_through_their_text_form() {
        for status in [
            VerificationStatus::Pending,
            VerificationStatus::Approved,
            VerificationStatus::Expired,
            VerificationStatus::Canceled,
            VerificationStatus::MaxAttemptsReached,
        ] {
            assert_eq!(status.as_str().parse::<VerificationStatus>(), Ok(status));
        }
        assert!("done".parse::<VerificationStatus>().is_err());
    }

    #[test]
    fn a_pending_verification_past_its_expiry_reads_as_expired() {
        let now = Utc::now();
        let past = now - Duration::seconds(1);
        let future = now + Duration::seconds(60);
        assert_eq!(
            VerificationStatus::Pending.at(past, now),
            VerificationStatus::Expired
        );
        assert_eq!(
            VerificationStatus::Pending.at(future, now),
            VerificationStatus::Pending
        );
        assert_eq!(
            VerificationStatus::Approved.at(past, now),
            VerificationStatus::Approved
        );
    }
}
