//! SMS providers: the wire formats the workers speak, and how their failures are classified.
//!
//! Every failure is either transient (network errors, timeouts, 5xx, 429, 408: worth
//! retrying) or permanent (any other 4xx: the request itself is wrong and retrying would
//! only repeat it). That classification is all the retry logic needs.

mod console;
mod http;
mod twilio;

use std::time::Duration;

use anyhow::Context;
use verify_common::config::{ProviderKind, ProviderSettings};

pub use console::ConsoleProvider;
pub use http::HttpProvider;
pub use twilio::TwilioProvider;

/// One message to hand to the provider.
#[derive(Debug, Clone)]
pub struct OutgoingSms<'a> {
    pub to: &'a str,
    pub from: &'a str,
    pub body: &'a str,
}

/// Why the provider did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying; `retry_after` is the provider's own hint, if it gave one.
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Retrying would fail the same way.
    #[error("{reason}")]
    Permanent { reason: String },
}

impl ProviderError {
    /// Classifies an HTTP error status.
    pub fn from_status(status: u16, detail: &str, retry_after: Option<Duration>) -> Self {
        let reason = format!("provider answered {status}: {detail}");
        match status {
            408 | 425 | 429 | 500..=599 => Self::Transient {
                reason,
                retry_after,
            },
            _ => Self::Permanent { reason },
        }
    }

    /// Classifies a transport error (connect, timeout, reset): always transient.
    pub fn from_transport(error: &reqwest::Error) -> Self {
        let reason = if error.is_timeout() {
            "provider timed out".to_owned()
        } else if error.is_connect() {
            format!("cannot connect to the provider: {error}")
        } else {
            format!("provider request failed: {error}")
        };
        Self::Transient {
            reason,
            retry_after: None,
        }
    }
}

/// Reads a `Retry-After` header given in seconds.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The configured provider.
pub enum SmsProvider {
    Twilio(TwilioProvider),
    Http(HttpProvider),
    Console(ConsoleProvider),
}

impl SmsProvider {
    /// Builds the provider named in the settings.
    ///
    /// # Errors
    /// When required credentials are missing or the HTTP client cannot be built.
    pub fn from_settings(settings: &ProviderSettings) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout().min(Duration::from_secs(5)))
            .pool_max_idle_per_host(256)
            .build()
            .context("building the provider HTTP client")?;
        Ok(match settings.kind {
            ProviderKind::Twilio => Self::Twilio(TwilioProvider::new(client, settings)?),
            ProviderKind::Http => Self::Http(HttpProvider::new(client, settings)),
            ProviderKind::Log => Self::Console(ConsoleProvider),
        })
    }

    /// Sends one message; returns the provider's message id.
    ///
    /// # Errors
    /// [`ProviderError`], classified for the retry policy.
    pub async fn send(&self, sms: &OutgoingSms<'_>) -> Result<String, ProviderError> {
        match self {
            Self::Twilio(p) => p.send(sms).await,
            Self::Http(p) => p.send(sms).await,
            Self::Console(p) => p.send(sms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProviderError;

    #[test]
    fn server_errors_and_throttling_are_transient_other_client_errors_permanent() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(
                    ProviderError::from_status(status, "", None),
                    ProviderError::Transient { .. }
                ),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 422] {
            assert!(
                matches!(
                    ProviderError::from_status(status, "", None),
                    ProviderError::Permanent { .. }
                ),
                "{status}"
            );
        }
    }
}
