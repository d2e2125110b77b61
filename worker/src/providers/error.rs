//! How a provider's refusal is classified: transient (retry) or permanent (give up).

use std::time::Duration;

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
