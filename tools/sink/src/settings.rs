//! Start-up settings: command-line flags, each with an environment variable.

use std::fmt;
use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// Address the binary listens on unless told otherwise.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:9090";
/// Status a failing send answers with unless told otherwise.
pub(crate) const DEFAULT_FAILURE_STATUS: u16 = 503;
/// `Retry-After` seconds sent with injected 429s unless told otherwise.
pub(crate) const DEFAULT_RETRY_AFTER_SECS: u64 = 1;
/// How long a hanging send is held unless told otherwise; longer than any sane client timeout.
pub(crate) const DEFAULT_HANG_MS: u64 = 30_000;
/// Messages kept before the oldest are dropped unless told otherwise.
pub(crate) const DEFAULT_MAX_MESSAGES: usize = 1_000_000;
/// How long after a send its receipt leaves unless told otherwise.
pub(crate) const DEFAULT_RECEIPT_DELAY_MS: u64 = 1_000;
/// Receipts waiting to be sent before new ones are dropped unless told otherwise: at the
/// bench's 4,000 sends/s and a 1 s delay about 4,000 wait, so this leaves room for a
/// receiver that stalls for half a minute.
pub(crate) const DEFAULT_RECEIPT_QUEUE: usize = 100_000;

/// How an injected failure shows itself to the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Answer at once with the configured failure status.
    #[default]
    Status,
    /// Hold the request unanswered for the hang time, then answer 504, so clients exercise
    /// their own timeouts rather than their error handling.
    Hang,
}

impl FailureMode {
    /// The name used on the command line and in `/control`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Status => "status",
            FailureMode::Hang => "hang",
        }
    }
}

impl fmt::Display for FailureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the sink can be told at start-up.
///
/// The failure-injection fields are only the initial values: `PUT /control` changes them
/// while the sink runs. Each default is written once, in its flag's attribute; in-process
/// users build settings with [`SinkSettings::from_flags`] (usually with `--addr
/// 127.0.0.1:0`, an ephemeral port).
#[derive(Clone, Parser)]
#[command(
    name = "verify-sink",
    version,
    about = "Fake SMS provider: accepts Twilio-style and JSON sends, records them, injects failures on request",
    long_about = None
)]
pub struct SinkSettings {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "VERIFY_SINK_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,

    /// Delay before every send request is answered, in milliseconds.
    #[arg(long, env = "VERIFY_SINK_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Fraction of send requests that fail, from 0.0 to 1.0.
    #[arg(long, env = "VERIFY_SINK_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_fraction)]
    pub failure_rate: f64,

    /// HTTP status a failing send answers with (400 to 599).
    #[arg(long, env = "VERIFY_SINK_FAILURE_STATUS", default_value_t = DEFAULT_FAILURE_STATUS, value_parser = parse_failure_status)]
    pub failure_status: u16,

    /// Seconds advertised in `Retry-After` when the failure status is 429.
    #[arg(long, env = "VERIFY_SINK_RETRY_AFTER_SECS", default_value_t = DEFAULT_RETRY_AFTER_SECS)]
    pub retry_after_secs: u64,

    /// The first N send requests fail, whatever the failure rate.
    #[arg(long, env = "VERIFY_SINK_FAIL_FIRST", default_value_t = 0)]
    pub fail_first: u64,

    /// How a failing send fails: answer with the failure status, or hang then answer 504.
    #[arg(long, env = "VERIFY_SINK_FAILURE_MODE", value_enum, default_value_t = FailureMode::Status)]
    pub failure_mode: FailureMode,

    /// How long a hanging send is held before it is answered 504, in milliseconds.
    #[arg(long, env = "VERIFY_SINK_HANG_MS", default_value_t = DEFAULT_HANG_MS)]
    pub hang_ms: u64,

    /// Account SID the Twilio route insists on; any SID is accepted when unset.
    #[arg(long, env = "VERIFY_SINK_TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// Auth token the Twilio route insists on; any token is accepted when unset.
    #[arg(long, env = "VERIFY_SINK_TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,

    /// Most messages kept in memory; the oldest are dropped beyond it.
    #[arg(long, env = "VERIFY_SINK_MAX_MESSAGES", default_value_t = DEFAULT_MAX_MESSAGES, value_parser = parse_max_messages)]
    pub max_messages: usize,

    /// How long after accepting a send its delivery receipt is posted to the send's
    /// `StatusCallback` (Twilio) or `callback_url` (generic), in milliseconds.
    #[arg(long, env = "VERIFY_SINK_RECEIPT_DELAY_MS", default_value_t = DEFAULT_RECEIPT_DELAY_MS)]
    pub receipt_delay_ms: u64,

    /// Fraction of receipts that report `undelivered` (error 30003 or 30005), 0.0 to 1.0.
    #[arg(long, env = "VERIFY_SINK_RECEIPT_UNDELIVERED_RATE", default_value_t = 0.0, value_parser = parse_fraction)]
    pub receipt_undelivered_rate: f64,

    /// Fraction of receipts sent twice, 0.0 to 1.0.
    #[arg(long, env = "VERIFY_SINK_RECEIPT_DUPLICATE_RATE", default_value_t = 0.0, value_parser = parse_fraction)]
    pub receipt_duplicate_rate: f64,

    /// Fraction of receipts followed by a late, out-of-order one (a `sent` after the
    /// final status), 0.0 to 1.0.
    #[arg(long, env = "VERIFY_SINK_RECEIPT_OUT_OF_ORDER_RATE", default_value_t = 0.0, value_parser = parse_fraction)]
    pub receipt_out_of_order_rate: f64,

    /// Most receipts waiting to be sent; past it new ones are dropped and counted.
    #[arg(long, env = "VERIFY_SINK_RECEIPT_QUEUE", default_value_t = DEFAULT_RECEIPT_QUEUE, value_parser = parse_max_messages)]
    pub receipt_queue: usize,

    /// Bearer token sent with generic JSON receipts (the API's VERIFY_HTTP_RECEIPT_TOKEN).
    #[arg(long, env = "VERIFY_SINK_RECEIPT_TOKEN", hide_env_values = true)]
    pub receipt_token: Option<String>,
}

// Hand-written so the auth token never reaches a log line.
impl fmt::Debug for SinkSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkSettings")
            .field("addr", &self.addr)
            .field("latency_ms", &self.latency_ms)
            .field("failure_rate", &self.failure_rate)
            .field("failure_status", &self.failure_status)
            .field("retry_after_secs", &self.retry_after_secs)
            .field("fail_first", &self.fail_first)
            .field("failure_mode", &self.failure_mode)
            .field("hang_ms", &self.hang_ms)
            .field("twilio_account_sid", &self.twilio_account_sid)
            .field(
                "twilio_auth_token",
                &self.twilio_auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_messages", &self.max_messages)
            .field("receipt_delay_ms", &self.receipt_delay_ms)
            .field("receipt_undelivered_rate", &self.receipt_undelivered_rate)
            .field("receipt_duplicate_rate", &self.receipt_duplicate_rate)
            .field("receipt_out_of_order_rate", &self.receipt_out_of_order_rate)
            .field("receipt_queue", &self.receipt_queue)
            .field(
                "receipt_token",
                &self.receipt_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A setting outside the range the sink can honour.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    /// `--failure-rate` is not a fraction.
    #[error("--failure-rate must be between 0.0 and 1.0, got {0}")]
    FailureRate(f64),
    /// `--failure-status` is not an error status.
    #[error("--failure-status must be between 400 and 599, got {0}")]
    FailureStatus(u16),
    /// `--max-messages` would keep nothing.
    #[error("--max-messages must be at least 1, got {0}")]
    MaxMessages(usize),
    /// A receipt share is not a fraction; names the flag.
    #[error("{0} must be between 0.0 and 1.0, got {1}")]
    ReceiptRate(&'static str, f64),
    /// `--receipt-queue` would hold nothing.
    #[error("--receipt-queue must be at least 1")]
    ReceiptQueue,
}

impl SinkSettings {
    /// Settings as `verify-sink FLAGS…` would have them: a flag wins over its environment
    /// variable, which wins over the default.
    ///
    /// # Errors
    /// The clap error naming the flag or variable whose value is refused.
    pub fn from_flags(flags: &[&str]) -> Result<Self, clap::Error> {
        Self::try_parse_from(std::iter::once("verify-sink").chain(flags.iter().copied()))
    }

    /// Checks the values clap cannot check when settings are built in code rather than parsed.
    pub fn validate(&self) -> Result<(), SettingsError> {
        check_failure_rate(self.failure_rate).map_err(SettingsError::FailureRate)?;
        check_failure_status(self.failure_status).map_err(SettingsError::FailureStatus)?;
        if self.max_messages == 0 {
            return Err(SettingsError::MaxMessages(self.max_messages));
        }
        for (flag, rate) in [
            ("--receipt-undelivered-rate", self.receipt_undelivered_rate),
            ("--receipt-duplicate-rate", self.receipt_duplicate_rate),
            (
                "--receipt-out-of-order-rate",
                self.receipt_out_of_order_rate,
            ),
        ] {
            check_failure_rate(rate).map_err(|rate| SettingsError::ReceiptRate(flag, rate))?;
        }
        if self.receipt_queue == 0 {
            return Err(SettingsError::ReceiptQueue);
        }
        Ok(())
    }
}

/// Accepts a failure rate only if it is a fraction; NaN is refused too.
pub(crate) fn check_failure_rate(rate: f64) -> Result<f64, f64> {
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(rate)
    }
}

/// Accepts only client and server error statuses: a "failure" answering 2xx would be recorded
/// as a failure yet look like success to the client.
pub(crate) fn check_failure_status(status: u16) -> Result<u16, u16> {
    if (400..=599).contains(&status) {
        Ok(status)
    } else {
        Err(status)
    }
}

fn parse_fraction(raw: &str) -> Result<f64, String> {
    let rate: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not a number"))?;
    check_failure_rate(rate).map_err(|rate| format!("{rate} is not between 0.0 and 1.0"))
}

fn parse_failure_status(raw: &str) -> Result<u16, String> {
    let status: u16 = raw
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not an HTTP status"))?;
    check_failure_status(status).map_err(|status| format!("{status} is not between 400 and 599"))
}

fn parse_max_messages(raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{raw}` is not a positive whole number")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::{CommandFactory, Parser};

    use super::{FailureMode, SettingsError, SinkSettings};

    #[test]
    fn flag_definitions_are_consistent() {
        SinkSettings::command().debug_assert();
    }

    #[test]
    fn flags_default_to_the_documented_values() {
        let settings = SinkSettings::try_parse_from(["verify-sink"]).unwrap();
        assert_eq!(settings.addr.to_string(), "127.0.0.1:9090");
        assert_eq!(settings.failure_status, 503);
        assert_eq!(settings.failure_mode, FailureMode::Status);
        assert_eq!(settings.max_messages, 1_000_000);
        assert_eq!(settings.hang_ms, 30_000);
    }

    #[test]
    fn from_flags_overrides_only_what_it_names() {
        let settings =
            SinkSettings::from_flags(&["--addr", "127.0.0.1:0", "--fail-first", "2"]).unwrap();
        assert_eq!(settings.addr.port(), 0);
        assert_eq!(settings.fail_first, 2);
        assert_eq!(settings.failure_status, 503);
    }

    #[test]
    fn a_failure_rate_above_one_is_refused_naming_the_flag() {
        let err = SinkSettings::try_parse_from(["verify-sink", "--failure-rate", "1.5"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("--failure-rate"), "{err}");
    }

    #[test]
    fn a_success_status_is_refused_as_failure_status() {
        let err = SinkSettings::try_parse_from(["verify-sink", "--failure-status", "200"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("--failure-status"), "{err}");
    }

    #[test]
    fn hang_mode_is_spelled_in_lowercase() {
        let settings =
            SinkSettings::try_parse_from(["verify-sink", "--failure-mode", "hang"]).unwrap();
        assert_eq!(settings.failure_mode, FailureMode::Hang);
    }

    #[test]
    fn validate_catches_values_built_in_code() {
        let defaults = SinkSettings::from_flags(&[]).unwrap();
        let settings = SinkSettings {
            failure_rate: f64::NAN,
            ..defaults.clone()
        };
        assert!(matches!(
            settings.validate(),
            Err(SettingsError::FailureRate(_))
        ));
        let settings = SinkSettings {
            failure_status: 302,
            ..defaults.clone()
        };
        assert_eq!(settings.validate(), Err(SettingsError::FailureStatus(302)));
        assert!(defaults.validate().is_ok());
    }

    #[test]
    fn receipts_leave_after_a_second_and_every_share_is_a_fraction() {
        let settings = SinkSettings::from_flags(&[]).unwrap();
        assert_eq!(settings.receipt_delay_ms, 1_000);
        assert_eq!(settings.receipt_undelivered_rate, 0.0);
        for flag in [
            "--receipt-undelivered-rate",
            "--receipt-duplicate-rate",
            "--receipt-out-of-order-rate",
        ] {
            let err = SinkSettings::from_flags(&[flag, "2"]).err().unwrap();
            assert!(err.to_string().contains(flag), "{err}");
        }
    }

    #[test]
    fn debug_output_hides_the_auth_token() {
        let settings = SinkSettings::from_flags(&["--twilio-auth-token", "very-secret"]).unwrap();
        assert!(!format!("{settings:?}").contains("very-secret"));
    }
}
