//! Delivery receipts: what a provider reports about a message it accepted earlier.
//!
//! Only the final reports are kept: the handset got the message (`delivered`), or it
//! never will (`undelivered`, with the provider's error code). Interim reports (queued,
//! sending, sent) change nothing and are not represented here. How each provider's wire
//! format maps onto these types is the API's business.

use std::fmt;

use crate::domain::delivery::DeliveryStatus;

/// The API's route for Twilio's status callbacks; workers append it to the public URL.
pub const TWILIO_RECEIPT_PATH: &str = "/callbacks/twilio/status";
/// The API's route for generic JSON receipts; workers append it to the public URL.
pub const HTTP_RECEIPT_PATH: &str = "/callbacks/http/status";

/// Longest provider message id accepted (Twilio's SIDs have 34 characters).
const MAX_MESSAGE_ID_LEN: usize = 128;
/// Longest provider error code accepted (Twilio's are five digits).
const MAX_ERROR_CODE_LEN: usize = 32;

/// Why a receipt's field cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("the message id is empty")]
    EmptyMessageId,
    #[error("the message id is longer than {MAX_MESSAGE_ID_LEN} characters")]
    MessageIdTooLong,
    #[error("the message id must be visible ASCII characters")]
    MessageIdCharacters,
    #[error("the error code is longer than {MAX_ERROR_CODE_LEN} characters")]
    ErrorCodeTooLong,
    #[error("the error code must be visible ASCII characters")]
    ErrorCodeCharacters,
}

/// A provider's id of one accepted message, as the worker recorded it. Never empty; at
/// most 128 visible ASCII characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageId(String);

impl MessageId {
    /// # Errors
    /// [`ReceiptError`] for an empty, overlong or non-ASCII id.
    pub fn parse(raw: &str) -> Result<Self, ReceiptError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(ReceiptError::EmptyMessageId);
        }
        if raw.len() > MAX_MESSAGE_ID_LEN {
            return Err(ReceiptError::MessageIdTooLong);
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ReceiptError::MessageIdCharacters);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A provider's error code for an undelivered message (Twilio's `30003`, `30005`, …).
/// Never empty; at most 32 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptErrorCode(String);

impl ReceiptErrorCode {
    /// `Ok(None)` for an empty code (providers send `ErrorCode=` on success).
    ///
    /// # Errors
    /// [`ReceiptError`] for an overlong or non-ASCII code.
    pub fn parse(raw: &str) -> Result<Option<Self>, ReceiptError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > MAX_ERROR_CODE_LEN {
            return Err(ReceiptError::ErrorCodeTooLong);
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ReceiptError::ErrorCodeCharacters);
        }
        Ok(Some(Self(raw.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The final status a receipt reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    Delivered,
    Undelivered,
}

impl ReceiptStatus {
    /// The send status this receipt moves a send to.
    pub fn delivery_status(self) -> DeliveryStatus {
        match self {
            Self::Delivered => DeliveryStatus::Delivered,
            Self::Undelivered => DeliveryStatus::Undelivered,
        }
    }

    /// The stored text form (the same as the send status's).
    pub fn as_str(self) -> &'static str {
        self.delivery_status().as_str()
    }

    /// Reads the stored text form.
    ///
    /// # Errors
    /// The text itself, when it is not `delivered` or `undelivered`.
    pub fn parse(stored: &str) -> Result<Self, String> {
        match stored {
            "delivered" => Ok(Self::Delivered),
            "undelivered" => Ok(Self::Undelivered),
            other => Err(format!("unknown receipt status {other:?}")),
        }
    }
}

/// One final delivery receipt. An `Undelivered` one may carry the provider's error code;
/// a `Delivered` one never does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    message_id: MessageId,
    status: ReceiptStatus,
    error_code: Option<ReceiptErrorCode>,
}

impl Receipt {
    /// A `delivered` receipt.
    pub fn delivered(message_id: MessageId) -> Self {
        Self {
            message_id,
            status: ReceiptStatus::Delivered,
            error_code: None,
        }
    }

    /// An `undelivered` receipt with the provider's error code, if it gave one.
    pub fn undelivered(message_id: MessageId, error_code: Option<ReceiptErrorCode>) -> Self {
        Self {
            message_id,
            status: ReceiptStatus::Undelivered,
            error_code,
        }
    }

    pub fn message_id(&self) -> &MessageId {
        &self.message_id
    }

    pub fn status(&self) -> ReceiptStatus {
        self.status
    }

    pub fn error_code(&self) -> Option<&ReceiptErrorCode> {
        self.error_code.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::{MessageId, Receipt, ReceiptError, ReceiptErrorCode, ReceiptStatus};

    #[test]
    fn message_ids_are_trimmed_and_refused_when_empty_long_or_not_ascii() {
        assert_eq!(MessageId::parse(" SM123 ").unwrap().as_str(), "SM123");
        let cases = [
            ("", ReceiptError::EmptyMessageId),
            ("   ", ReceiptError::EmptyMessageId),
            ("SM 1", ReceiptError::MessageIdCharacters),
            ("SMé", ReceiptError::MessageIdCharacters),
        ];
        for (raw, expected) in cases {
            assert_eq!(MessageId::parse(raw), Err(expected), "{raw:?}");
        }
        assert_eq!(
            MessageId::parse(&"S".repeat(129)),
            Err(ReceiptError::MessageIdTooLong)
        );
    }

    #[test]
    fn an_empty_error_code_is_no_code() {
        assert_eq!(ReceiptErrorCode::parse(""), Ok(None));
        assert_eq!(
            ReceiptErrorCode::parse("30003").unwrap().unwrap().as_str(),
            "30003"
        );
        assert!(ReceiptErrorCode::parse("30 03").is_err());
        assert!(ReceiptErrorCode::parse(&"9".repeat(33)).is_err());
    }

    #[test]
    fn receipt_statuses_round_trip_through_the_send_statuses_text() {
        for status in [ReceiptStatus::Delivered, ReceiptStatus::Undelivered] {
            assert_eq!(ReceiptStatus::parse(status.as_str()), Ok(status));
            assert!(status.delivery_status().is_final());
        }
        assert!(ReceiptStatus::parse("sent").is_err());
        let delivered = Receipt::delivered(MessageId::parse("SM1").unwrap());
        assert_eq!(delivered.error_code(), None);
    }
}
