//! The "from" of an SMS: a phone number or an alphanumeric sender ID.

use super::phone_number::PhoneNumber;

/// Why a sender is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    #[error("the sender is empty")]
    Empty,
    #[error(
        "the sender must be an E.164 phone number or 1-11 letters, digits and spaces with at least one letter"
    )]
    Invalid,
}

/// Who an SMS appears to come from: an E.164 number, or an alphanumeric sender ID of 1–11
/// ASCII letters, digits and spaces containing at least one letter (the GSM limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender(String);

impl Sender {
    /// # Errors
    /// [`SenderError`] when the text is neither form.
    pub fn parse(input: &str) -> Result<Self, SenderError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(SenderError::Empty);
        }
        if trimmed.starts_with('+') {
            return PhoneNumber::parse(trimmed)
                .map(|n| Self(n.as_str().to_owned()))
                .map_err(|_| SenderError::Invalid);
        }
        let alphanumeric = trimmed.len() <= 11
            && trimmed
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ' ')
            && trimmed.chars().any(|c| c.is_ascii_alphabetic());
        if alphanumeric {
            Ok(Self(trimmed.to_owned()))
        } else {
            Err(SenderError::Invalid)
        }
    }

    /// Wraps a sender read back from the database, where only parsed senders are written.
    pub fn from_trusted_storage(sender: String) -> Self {
        Self(sender)
    }

    /// The sender as sent to the provider.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::{Sender, SenderError};

    #[test]
    fn numbers_and_short_alphanumeric_ids_are_senders() {
        for ok in ["+14155550100", "Acme", "ACME Bank", "Shop24"] {
            assert!(Sender::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn other_texts_are_not() {
        assert_eq!(Sender::parse(" "), Err(SenderError::Empty));
        for bad in ["+1", "123456", "A very long sender", "Acme!", "Ünïcode"] {
            assert_eq!(Sender::parse(bad), Err(SenderError::Invalid), "{bad}");
        }
    }
}
