//! Twilio's Messages API: `POST /2010-04-01/Accounts/{sid}/Messages.json`, form-encoded,
//! Basic auth; 201 with the message `sid`. `verify-sink` speaks the same format. With a
//! public URL configured, each message asks for delivery receipts at the API's
//! `/callbacks/twilio/status` (Twilio's `StatusCallback` parameter).

use anyhow::ensure;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use verify_common::config::ProviderSettings;
use verify_common::domain::receipt::TWILIO_RECEIPT_PATH;

use super::error::{ProviderError, retry_after};
use super::outgoing::OutgoingSms;

/// Sends through a Twilio-compatible API.
pub struct TwilioProvider {
    client: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: SecretString,
    /// Where Twilio posts this message's status changes; `None` asks for none.
    status_callback: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    sid: String,
}

#[derive(Deserialize)]
struct TwilioError {
    code: Option<i64>,
    message: Option<String>,
}

impl TwilioProvider {
    /// # Errors
    /// When the account SID or auth token is missing.
    pub fn new(client: reqwest::Client, settings: &ProviderSettings) -> anyhow::Result<Self> {
        ensure!(
            !settings.twilio_account_sid.is_empty(),
            "VERIFY_TWILIO_ACCOUNT_SID is required for the twilio provider"
        );
        let auth_token = settings.twilio_auth_token.clone().ok_or_else(|| {
            anyhow::anyhow!("VERIFY_TWILIO_AUTH_TOKEN is required for the twilio provider")
        })?;
        let base = settings.twilio_base_url.trim_end_matches('/');
        Ok(Self {
            client,
            url: format!(
                "{base}/2010-04-01/Accounts/{}/Messages.json",
                settings.twilio_account_sid
            ),
            account_sid: settings.twilio_account_sid.clone(),
            auth_token,
            status_callback: settings
                .public_url
                .as_ref()
                .map(|public| format!("{public}{TWILIO_RECEIPT_PATH}")),
        })
    }

    /// The form fields of one message.
    fn form<'a>(&'a self, sms: &OutgoingSms<'a>) -> Vec<(&'static str, &'a str)> {
        let mut form = vec![("To", sms.to), ("From", sms.from), ("Body", sms.body)];
        if let Some(callback) = &self.status_callback {
            form.push(("StatusCallback", callback));
        }
        form
    }

    pub async fn send(&self, sms: &OutgoingSms<'_>) -> Result<String, ProviderError> {
        let response = self
            .client
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&self.form(sms))
            .send()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        let status = response.status();
        let hint = retry_after(response.headers());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        if status.is_success() {
            return serde_json::from_slice::<Created>(&bytes)
                .map(|created| created.sid)
                .map_err(|e| ProviderError::Transient {
                    reason: format!("provider answered {status} with an unreadable body: {e}"),
                    retry_after: None,
                });
        }
        let detail = serde_json::from_slice::<TwilioError>(&bytes)
            .ok()
            .map(|e| {
                format!(
                    "{} (code {})",
                    e.message.unwrap_or_default(),
                    e.code.map_or_else(|| "none".to_owned(), |c| c.to_string())
                )
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        Err(ProviderError::from_status(status.as_u16(), &detail, hint))
    }
}
