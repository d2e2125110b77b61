//! A generic JSON provider: `POST {url}` with `{to, from, text}` and an optional bearer
//! token; any 2xx is success, with the message id read from `id` or `message_id`. With a
//! public URL configured, the request also carries `callback_url`, the API's generic
//! receipt route, for providers that report deliveries.

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use verify_common::config::ProviderSettings;
use verify_common::domain::receipt::HTTP_RECEIPT_PATH;

use super::error::{ProviderError, retry_after};
use super::outgoing::OutgoingSms;

/// Sends through a generic HTTP/JSON endpoint.
pub struct HttpProvider {
    client: reqwest::Client,
    url: String,
    token: Option<SecretString>,
    /// Where the provider may post receipts; `None` sends no `callback_url`.
    callback_url: Option<String>,
}

impl HttpProvider {
    pub fn new(client: reqwest::Client, settings: &ProviderSettings) -> Self {
        Self {
            client,
            url: settings.http_url.clone(),
            token: settings.http_token.clone(),
            callback_url: settings
                .public_url
                .as_ref()
                .map(|public| format!("{public}{HTTP_RECEIPT_PATH}")),
        }
    }

    pub async fn send(&self, sms: &OutgoingSms<'_>) -> Result<String, ProviderError> {
        let mut body = json!({"to": sms.to, "from": sms.from, "text": sms.body});
        if let Some(callback_url) = &self.callback_url {
            body["callback_url"] = json!(callback_url);
        }
        let mut request = self.client.post(&self.url).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(trace) = sms.trace {
            request = request.header("traceparent", trace.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        let status = response.status();
        let hint = retry_after(response.headers());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        if !status.is_success() {
            let detail: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(ProviderError::from_status(status.as_u16(), &detail, hint));
        }
        let id = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|body| {
                body.get("id")
                    .or_else(|| body.get("message_id"))
                    .and_then(|id| id.as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| format!("http-{}", uuid::Uuid::now_v7()));
        Ok(id)
    }
}
