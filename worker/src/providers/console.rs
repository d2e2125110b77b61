//! Development provider: logs that a message would be sent, without its text (which holds
//! the code) and with the number masked.

use verify_common::domain::phone_number::mask;

use super::error::ProviderError;
use super::outgoing::OutgoingSms;

/// Logs instead of sending.
pub struct ConsoleProvider;

impl ConsoleProvider {
    pub fn send(&self, sms: &OutgoingSms<'_>) -> Result<String, ProviderError> {
        let id = format!("log-{}", uuid::Uuid::now_v7());
        tracing::info!(to = %mask(sms.to), from = sms.from, chars = sms.body.chars().count(), %id, "SMS (log provider, not sent)");
        Ok(id)
    }
}
