//! SMS providers: the wire formats the workers speak, and how their failures are classified.
//!
//! Every failure is either transient (network errors, timeouts, 5xx, 429, 408: worth
//! retrying) or permanent (any other 4xx: the request itself is wrong and retrying would
//! only repeat it). That classification is all the retry logic needs.

mod console;
mod error;
mod http;
mod outgoing;
mod twilio;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use verify_common::config::{ProviderKind, ProviderSettings};

pub use console::ConsoleProvider;
pub use error::{ProviderError, retry_after};
pub use http::HttpProvider;
pub use outgoing::OutgoingSms;
pub use twilio::TwilioProvider;

/// Hands one message to an SMS provider and answers its message id. [`SmsProvider`]
/// is the configured one; unit tests of delivering script their own.
pub trait SmsSender: Send + Sync {
    /// Sends one message; returns the provider's message id.
    ///
    /// # Errors
    /// [`ProviderError`], classified for the retry policy.
    fn send(
        &self,
        sms: &OutgoingSms<'_>,
    ) -> impl Future<Output = Result<String, ProviderError>> + Send;
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
}

impl SmsSender for SmsProvider {
    async fn send(&self, sms: &OutgoingSms<'_>) -> Result<String, ProviderError> {
        match self {
            Self::Twilio(p) => p.send(sms).await,
            Self::Http(p) => p.send(sms).await,
            Self::Console(p) => p.send(sms),
        }
    }
}
