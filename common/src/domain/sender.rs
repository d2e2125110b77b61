//! The "from" of an SMS: a phone number or an alphanumeric sender ID.

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
        if let Some(digits) = trimmed.strip_prefix('+') {
            // A sender number only needs E.164's shape: whether the number is the caller's
            // to send from is for the provider to judge, and numbering-plan checks would
            // refuse numbers providers accept.
            let digits: String = digits.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
            let shaped = (8..=15).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0');
            return if shaped {
                Ok(Self(format!("+{digits}")))
            } else {
                Err(SenderError::Invalid)
            };
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
        for ok in [
            "+14155550100",
            "+13334445555",
            "+44 7911 123456",
            "Acme",
            "ACME Bank",
            "Shop24",
        ] {
            assert!(Sender::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn other_texts_are_not() {
        assert_eq!(Sender::parse(" "), Err(SenderError::Empty));
        for bad in [
            "+1",
            "+0123456789",
            "+1415abc0100",
            "123456",
            "A very long sender",
            "Acme!",
            "Ünïcode",
        ] {
            assert_eq!(Sender::parse(bad), Err(SenderError::Invalid), "{bad}");
        }
    }
}
