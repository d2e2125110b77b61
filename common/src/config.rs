//! Settings, read from command-line flags or environment variables.
//!
//! Every setting has an environment variable (`DATABASE_URL`, `AMQP_URL`, the rest
//! `VERIFY_…`) and a default that works against the local services, so a bare `cargo run`
//! works. Each default is written once, in its clap attribute. Each binary flattens the
//! sections it needs into its own clap parser; tests build a section the same way with
//! [`FromFlags::from_flags`], passing only the flags they override, so the environment
//! applies to them as it does in production. Units are part of the names (`_secs`, `_ms`);
//! code reads them as `Duration`s through the accessor methods.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Command, FromArgMatches, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::abuse::RuleMode;
use crate::domain::otp::{MAX_STRONG_TTL, MIN_SECRET_LEN, MIN_STRONG_LENGTH};
use crate::domain::{CodeSecret, OtpCodeLength, OtpError, OtpPolicy, SegmentCap};

/// Builds a settings section from command-line flags, as a binary that flattens it would:
/// a flag wins over its environment variable, which wins over the default.
pub trait FromFlags: Sized {
    /// Parses `flags` (without a program name), then the environment, then the defaults.
    ///
    /// # Errors
    /// The clap error naming the flag or variable whose value is refused.
    fn from_flags(flags: &[&str]) -> Result<Self, clap::Error>;
}

impl<T: Args + FromArgMatches> FromFlags for T {
    fn from_flags(flags: &[&str]) -> Result<Self, clap::Error> {
        let command = T::augment_args(Command::new("settings").no_binary_name(true));
        let matches = command.try_get_matches_from(flags)?;
        T::from_arg_matches(&matches)
    }
}

/// The public development secret: what a development run (`--dev`) derives codes from
/// when `VERIFY_SECRET` is not set. It is in the source, so anyone can compute every code
/// made with it; without `--dev` the API and workers refuse to start on it.
pub const DEV_SECRET: &str = "insecure-development-secret-do-not-use";

/// A URL with its password replaced by `***`, for messages and logs: the password of the
/// user part (`scheme://user:password@host`) and any `password=` parameter, whether in the
/// query string or in a Postgres `key=value` connection string.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        // The user part ends at the last '@' before the path's query or fragment, so an
        // '@' inside the password or the query does not cut it short.
        let before_query = out[authority_start..]
            .find(['?', '#'])
            .map_or(out.len(), |i| authority_start + i);
        if let Some(at) = out[authority_start..before_query].rfind('@') {
            let at = authority_start + at;
            if let Some(colon) = out[authority_start..at].find(':') {
                out.replace_range(authority_start + colon + 1..at, "***");
            }
        }
    }
    redact_password_parameters(&out)
}

/// Replaces the value of every `password=` parameter (`&`-separated query or
/// whitespace-separated `key=value` pairs, quoted or not) with `***`.
fn redact_password_parameters(text: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.to_ascii_lowercase().find(KEY) {
        let starts_parameter = found == 0 || rest[..found].ends_with(['?', '&', ' ', '\t', '\n']);
        let value_start = found + KEY.len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        if !starts_parameter {
            continue;
        }
        let value_end = if let Some(quoted) = rest.strip_prefix('\'') {
            // A quoted value ends at the next quote not escaped by a backslash.
            let mut end = quoted.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = i;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            (1 + end + 1).min(rest.len())
        } else {
            rest.find(['&', '#', ' ', '\t', '\n']).unwrap_or(rest.len())
        };
        out.push_str("***");
        rest = &rest[value_end..];
    }
    out.push_str(rest);
    out
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_owned()))
}

/// Where Postgres is and how many connections to keep. `Debug` hides the URL's password.
#[derive(Clone, Args)]
pub struct DatabaseSettings {
    /// Postgres connection URL; the database is created if it does not exist.
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/verify"
    )]
    pub url: String,
    /// Connections in the pool.
    #[arg(
        long = "db-pool-size",
        env = "VERIFY_DB_POOL_SIZE",
        default_value_t = 16
    )]
    pub pool_size: usize,
    /// Longest wait for a pooled connection (or a new one) before answering 503.
    #[arg(
        long = "db-pool-timeout-ms",
        env = "VERIFY_DB_POOL_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub pool_timeout_ms: u64,
    /// How long start-up waits for Postgres to answer before giving up.
    #[arg(
        id = "db_startup_wait_secs",
        long = "db-startup-wait-secs",
        env = "VERIFY_DB_STARTUP_WAIT_SECS",
        default_value_t = 60
    )]
    pub startup_wait_secs: u64,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("pool_timeout_ms", &self.pool_timeout_ms)
            .field("startup_wait_secs", &self.startup_wait_secs)
            .finish()
    }
}

impl DatabaseSettings {
    pub fn pool_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_timeout_ms)
    }

    pub fn startup_wait(&self) -> Duration {
        Duration::from_secs(self.startup_wait_secs)
    }
}

/// Where RabbitMQ is and how our queues are named. `Debug` hides the URL's password.
#[derive(Clone, Args)]
pub struct RabbitSettings {
    /// AMQP connection URL.
    #[arg(
        id = "amqp_url",
        long = "amqp-url",
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub url: String,
    /// Prefix of every exchange and queue name, so several deployments (or test runs) can
    /// share one broker.
    #[arg(
        long = "queue-prefix",
        env = "VERIFY_QUEUE_PREFIX",
        default_value = "verify"
    )]
    pub queue_prefix: String,
    /// Delete queues after this long unused. Only for throwaway deployments such as tests:
    /// retry queues never have consumers, so in production they must not expire.
    #[arg(long = "queue-expires-secs", env = "VERIFY_QUEUE_EXPIRES_SECS")]
    pub queue_expires_secs: Option<u64>,
    /// How long start-up waits for RabbitMQ to answer before giving up.
    #[arg(
        id = "amqp_startup_wait_secs",
        long = "amqp-startup-wait-secs",
        env = "VERIFY_AMQP_STARTUP_WAIT_SECS",
        default_value_t = 60
    )]
    pub startup_wait_secs: u64,
}

impl std::fmt::Debug for RabbitSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSettings")
            .field("url", &redact_url(&self.url))
            .field("queue_prefix", &self.queue_prefix)
            .field("queue_expires_secs", &self.queue_expires_secs)
            .field("startup_wait_secs", &self.startup_wait_secs)
            .finish()
    }
}

impl RabbitSettings {
    pub fn startup_wait(&self) -> Duration {
        Duration::from_secs(self.startup_wait_secs)
    }
}

/// Why the code secret cannot be used; each message names the setting to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "VERIFY_SECRET is not set: set it to a random value of at least {MIN_SECRET_LEN} bytes, \
         the same for the API and every worker, or pass --dev (VERIFY_DEV=true) for a \
         development run, where codes come from the public development secret"
    )]
    Missing,
    #[error(
        "VERIFY_SECRET is the public development secret, which anyone can compute codes \
         with: set a random value of your own, or pass --dev (VERIFY_DEV=true) for a \
         development run"
    )]
    PublicDevelopmentSecret,
    #[error("VERIFY_SECRET is invalid: {0}")]
    Invalid(#[source] OtpError),
}

/// The server key codes are derived from, and whether this is a development run.
#[derive(Clone, Args)]
pub struct SecretSettings {
    /// Server secret (at least 16 bytes) keying code derivation. Must be the same for the
    /// API and every worker. Required unless `--dev` is given.
    #[arg(long = "secret", env = "VERIFY_SECRET", value_parser = parse_secret, hide_env_values = true)]
    pub secret: Option<SecretString>,
    /// A development run: without VERIFY_SECRET, derive codes from the public development
    /// secret (anyone can compute them). Never in production.
    #[arg(long = "dev", env = "VERIFY_DEV")]
    pub dev: bool,
}

impl std::fmt::Debug for SecretSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSettings")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("dev", &self.dev)
            .finish()
    }
}

impl SecretSettings {
    /// The configured secret; in a development run without one, the public development
    /// secret (with a warning in the log).
    ///
    /// # Errors
    /// [`SecretError::Missing`] without a secret outside a development run,
    /// [`SecretError::PublicDevelopmentSecret`] for [`DEV_SECRET`] itself outside one, and
    /// [`SecretError::Invalid`] for a secret under 16 bytes.
    pub fn code_secret(&self) -> Result<CodeSecret, SecretError> {
        let secret = match (&self.secret, self.dev) {
            (Some(secret), false) if secret.expose_secret() == DEV_SECRET => {
                return Err(SecretError::PublicDevelopmentSecret);
            }
            (Some(secret), _) => secret.clone(),
            (None, true) => {
                tracing::warn!(
                    "development run without VERIFY_SECRET: codes come from the public \
                     development secret, so anyone can compute them. Never use --dev \
                     (VERIFY_DEV) in production."
                );
                SecretString::from(DEV_SECRET)
            }
            (None, false) => return Err(SecretError::Missing),
        };
        CodeSecret::parse(secret).map_err(SecretError::Invalid)
    }
}

/// Why the code defaults cannot be used; each message names the setting to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtpSettingsError {
    #[error("VERIFY_OTP_LENGTH is invalid: {0}")]
    Length(#[source] OtpError),
    #[error(
        "VERIFY_OTP_LENGTH is {0}: codes shorter than {MIN_STRONG_LENGTH} digits need \
         VERIFY_ALLOW_WEAK_CODES=true"
    )]
    WeakLength(i64),
    #[error(
        "VERIFY_OTP_TTL_SECS is {0}: lifetimes over {max} seconds need \
         VERIFY_ALLOW_WEAK_CODES=true",
        max = MAX_STRONG_TTL.as_secs()
    )]
    WeakTtl(u64),
}

/// Defaults for new verifications, and how weak a request may make its code.
#[derive(Debug, Clone, Args)]
pub struct OtpSettings {
    /// Digits in a code when the request does not say (6-10; 4 and 5 need
    /// --allow-weak-codes).
    #[arg(long = "otp-length", env = "VERIFY_OTP_LENGTH", default_value_t = 6)]
    pub code_length: i64,
    /// Lifetime of a code when the request does not say (over 600 needs
    /// --allow-weak-codes).
    #[arg(
        long = "otp-ttl-secs",
        env = "VERIFY_OTP_TTL_SECS",
        default_value_t = 600
    )]
    pub ttl_secs: u64,
    /// Wrong checks after which a verification is closed.
    #[arg(
        long = "otp-max-checks",
        env = "VERIFY_OTP_MAX_CHECKS",
        default_value_t = 5
    )]
    pub max_checks: u32,
    /// Allow codes of 4 or 5 digits and lifetimes over 10 minutes (up to a day), as
    /// defaults and in requests. Each makes a code easier to guess.
    #[arg(long = "allow-weak-codes", env = "VERIFY_ALLOW_WEAK_CODES")]
    pub allow_weak_codes: bool,
}

impl OtpSettings {
    /// The policy these settings describe.
    ///
    /// # Errors
    /// [`OtpSettingsError`] naming the key: a default length outside 4..=10, or a weak
    /// default (under 6 digits, over 600 seconds) without `VERIFY_ALLOW_WEAK_CODES`.
    pub fn policy(&self) -> Result<OtpPolicy, OtpSettingsError> {
        let code_length =
            OtpCodeLength::parse(self.code_length).map_err(OtpSettingsError::Length)?;
        let ttl = Duration::from_secs(self.ttl_secs);
        if !self.allow_weak_codes {
            if code_length.get() < MIN_STRONG_LENGTH {
                return Err(OtpSettingsError::WeakLength(self.code_length));
            }
            if ttl > MAX_STRONG_TTL {
                return Err(OtpSettingsError::WeakTtl(self.ttl_secs));
            }
        }
        Ok(OtpPolicy {
            code_length,
            ttl,
            max_checks: self.max_checks,
            allow_weak_codes: self.allow_weak_codes,
        })
    }
}

/// Limits on the SMS text itself. The API applies them when a verification starts and
/// when a template is saved, the worker once more before it sends (the setting may have
/// been lowered since the start), so both read the same section.
#[derive(Debug, Clone, Args)]
pub struct SmsSettings {
    /// Most SMS segments a rendered message may take (1-255). A GSM-7 segment holds 153
    /// characters of a longer message, a UCS-2 one 67.
    #[arg(
        long = "sms-max-segments",
        env = "VERIFY_SMS_MAX_SEGMENTS",
        default_value = "3",
        value_parser = SegmentCap::parse
    )]
    pub max_segments: SegmentCap,
}

/// The HTTP API's own settings.
#[derive(Clone, Args)]
pub struct ApiSettings {
    /// Address to listen on.
    #[arg(
        long = "addr",
        env = "VERIFY_API_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,
    /// An API key accepted in addition to the keys stored in the database (for local runs,
    /// compose and tests). Keys created with `verify-api keys create` need no restart.
    #[arg(long = "api-key", env = "VERIFY_API_KEY", value_parser = parse_secret, hide_env_values = true)]
    pub api_key: Option<SecretString>,
    /// SMS sends allowed to one phone number per window.
    #[arg(long = "send-limit", env = "VERIFY_SEND_LIMIT", default_value_t = 5)]
    pub send_limit: u32,
    /// The window of the per-number send limit.
    #[arg(
        long = "send-limit-window-secs",
        env = "VERIFY_SEND_LIMIT_WINDOW_SECS",
        default_value_t = 600
    )]
    pub send_limit_window_secs: u64,
    /// Shortest time between two sends of one verification (resend).
    #[arg(
        long = "resend-interval-secs",
        env = "VERIFY_RESEND_INTERVAL_SECS",
        default_value_t = 30
    )]
    pub resend_interval_secs: u64,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(
        long = "shutdown-grace-secs",
        env = "VERIFY_SHUTDOWN_GRACE_SECS",
        default_value_t = 20
    )]
    pub shutdown_grace_secs: u64,
    /// How often the outbox relay looks for send jobs the broker never confirmed.
    #[arg(
        long = "outbox-interval-ms",
        env = "VERIFY_OUTBOX_INTERVAL_MS",
        default_value_t = 5_000
    )]
    pub outbox_interval_ms: u64,
    /// How old an unconfirmed send must be before the relay publishes it (younger ones are
    /// probably being published right now).
    #[arg(
        long = "outbox-min-age-ms",
        env = "VERIFY_OUTBOX_MIN_AGE_MS",
        default_value_t = 10_000
    )]
    pub outbox_min_age_ms: u64,
    /// Longest a client may take to send a request's head (request line and headers),
    /// counted from when its connection was accepted, or on a kept-alive connection from
    /// the first byte of the request. A client that never finishes is disconnected.
    #[arg(
        long = "header-read-timeout-ms",
        env = "VERIFY_HEADER_READ_TIMEOUT_MS",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_read_timeout_ms: u64,
    /// Longest a kept-alive connection may wait for its next request, or take to read
    /// the answer to its last one, before it is closed.
    #[arg(
        long = "idle-timeout-secs",
        env = "VERIFY_IDLE_TIMEOUT_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub idle_timeout_secs: u64,
    /// Most client connections served at once. Further ones wait in the listen backlog,
    /// and idle kept-alive connections are closed to make room. Keep it under the
    /// process's open-file limit with room for the pool's and RabbitMQ's connections.
    #[arg(
        long = "max-connections",
        env = "VERIFY_MAX_CONNECTIONS",
        default_value_t = 512,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,
    /// How often expired verifications are looked for, to announce them
    /// (`verification.expired`) and count them. One API process sweeps at a time.
    #[arg(
        long = "expiry-sweep-interval-ms",
        env = "VERIFY_EXPIRY_SWEEP_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub expiry_sweep_interval_ms: u64,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("addr", &self.addr)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("send_limit", &self.send_limit)
            .field("send_limit_window_secs", &self.send_limit_window_secs)
            .field("resend_interval_secs", &self.resend_interval_secs)
            .field("outbox_interval_ms", &self.outbox_interval_ms)
            .field("outbox_min_age_ms", &self.outbox_min_age_ms)
            .field("header_read_timeout_ms", &self.header_read_timeout_ms)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("max_connections", &self.max_connections)
            .field("expiry_sweep_interval_ms", &self.expiry_sweep_interval_ms)
            .finish_non_exhaustive()
    }
}

impl ApiSettings {
    pub fn send_limit_window(&self) -> Duration {
        Duration::from_secs(self.send_limit_window_secs)
    }

    pub fn resend_interval(&self) -> Duration {
        Duration::from_secs(self.resend_interval_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn outbox_interval(&self) -> Duration {
        Duration::from_millis(self.outbox_interval_ms.max(1))
    }

    pub fn outbox_min_age(&self) -> Duration {
        Duration::from_millis(self.outbox_min_age_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn expiry_sweep_interval(&self) -> Duration {
        Duration::from_millis(self.expiry_sweep_interval_ms.max(1))
    }
}

/// The API's address as providers reach it, without a trailing `/`: `http://` or
/// `https://`, a host, optionally a port and a path prefix; no query or fragment, since
/// the callback paths are appended to it.
fn parse_public_url(value: &str) -> Result<String, String> {
    let url = value.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{value:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{value:?} has no host"));
    }
    if url.contains(['?', '#']) || !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{value:?} must be a plain URL: no query, fragment or spaces"
        ));
    }
    Ok(url.to_owned())
}

/// Delivery receipts: where providers reach the API, and how their callbacks prove who
/// sent them. The API reads this section; the workers read the public URL alone (in
/// [`ProviderSettings`]), from the same variable.
#[derive(Clone, Args)]
pub struct ReceiptSettings {
    /// The API's base URL as providers reach it (e.g. `https://verify.example.com`).
    /// Workers ask Twilio to call `{this}/callbacks/twilio/status`, and the API checks
    /// Twilio's signatures against that URL. Unset: the API checks against its own
    /// listening address, and workers ask for no receipts.
    #[arg(long = "public-url", env = "VERIFY_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// Twilio auth token: the key of Twilio's callback signatures (the same setting the
    /// workers send with). Unset: Twilio receipts are refused.
    #[arg(long = "twilio-auth-token", env = "VERIFY_TWILIO_AUTH_TOKEN", value_parser = parse_secret, hide_env_values = true)]
    pub twilio_auth_token: Option<SecretString>,
    /// Bearer token the generic JSON receipt route requires. Unset: generic receipts are
    /// refused.
    #[arg(long = "http-receipt-token", env = "VERIFY_HTTP_RECEIPT_TOKEN", value_parser = parse_secret, hide_env_values = true)]
    pub http_receipt_token: Option<SecretString>,
    /// How often the API looks for receipts that arrived before their send's message id
    /// was recorded, and records them.
    #[arg(
        long = "held-receipt-interval-ms",
        env = "VERIFY_HELD_RECEIPT_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub held_receipt_interval_ms: u64,
}

impl std::fmt::Debug for ReceiptSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptSettings")
            .field("public_url", &self.public_url)
            .field("held_receipt_interval_ms", &self.held_receipt_interval_ms)
            .finish_non_exhaustive()
    }
}

impl ReceiptSettings {
    pub fn held_receipt_interval(&self) -> Duration {
        Duration::from_millis(self.held_receipt_interval_ms.max(1))
    }
}

/// How strictly the abuse rules apply, and how soon each API process sees a rule change.
#[derive(Debug, Clone, Args)]
pub struct AbuseSettings {
    /// How strictly every abuse rule applies: enforce, shadow (evaluate and record would-be
    /// blocks, refuse nothing) or off (evaluate nothing). Each rule applies in the weaker
    /// of this and its own mode.
    #[arg(
        long = "abuse-mode",
        env = "VERIFY_ABUSE_MODE",
        default_value = "enforce",
        value_parser = parse_rule_mode
    )]
    pub mode: RuleMode,
    /// How often the API adds its rule counters to the shared totals, and looks for rule
    /// changes while its session that hears them announced is down.
    #[arg(
        long = "abuse-refresh-ms",
        env = "VERIFY_ABUSE_REFRESH_MS",
        default_value_t = 1_000
    )]
    pub refresh_ms: u64,
    /// How often the conversion breaker is evaluated (by one API process at a time). Its
    /// blocks last hours, so a delay of seconds in tripping one costs little. Each
    /// evaluation reads every verification of the breaker's window: about 4 s of one
    /// Postgres core at a million verifications an hour, so at such volumes a minute is
    /// the better interval.
    #[arg(
        long = "abuse-breaker-interval-ms",
        env = "VERIFY_ABUSE_BREAKER_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub breaker_interval_ms: u64,
}

fn parse_rule_mode(value: &str) -> Result<RuleMode, String> {
    value.parse()
}

impl AbuseSettings {
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_millis(self.refresh_ms.max(1))
    }

    pub fn breaker_interval(&self) -> Duration {
        Duration::from_millis(self.breaker_interval_ms.max(1))
    }
}

/// Which webhook destinations are allowed: the API checks them when an endpoint is saved,
/// workers again when they deliver.
#[derive(Debug, Clone, Args)]
pub struct WebhookDestinationSettings {
    /// Accept endpoints on private, loopback and other internal addresses. Off in
    /// production, where it would let an API key reach the internal network (SSRF); on in
    /// local runs and tests, whose endpoints are on this machine.
    #[arg(long = "webhook-allow-private", env = "VERIFY_WEBHOOK_ALLOW_PRIVATE")]
    pub allow_private: bool,
}

/// How workers deliver webhooks to producers, and to which destinations.
#[derive(Debug, Clone, Args)]
pub struct WebhookSettings {
    #[command(flatten)]
    pub destinations: WebhookDestinationSettings,
    /// Webhook requests in flight at once in one worker process (also their prefetch),
    /// apart from the sends: a slow endpoint uses these, never an SMS slot.
    #[arg(
        long = "webhook-concurrency",
        env = "VERIFY_WEBHOOK_CONCURRENCY",
        default_value_t = 64
    )]
    pub delivery_concurrency: u16,
    /// How long an endpoint has to answer one request.
    #[arg(
        long = "webhook-timeout-ms",
        env = "VERIFY_WEBHOOK_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub request_timeout_ms: u64,
    /// The delays before each retry, comma-separated; after the last one the delivery
    /// fails. The default spans about a day: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    #[arg(
        long = "webhook-retry-delays-ms",
        env = "VERIFY_WEBHOOK_RETRY_DELAYS_MS",
        default_value = "5000,300000,1800000,7200000,18000000,36000000,36000000",
        value_delimiter = ','
    )]
    pub retry_delays_ms: Vec<u64>,
    /// How often each worker looks for events not yet handed to RabbitMQ.
    #[arg(
        long = "webhook-relay-interval-ms",
        env = "VERIFY_WEBHOOK_RELAY_INTERVAL_MS",
        default_value_t = 250
    )]
    pub relay_interval_ms: u64,
}

impl WebhookSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }

    pub fn retry_delays(&self) -> Vec<Duration> {
        self.retry_delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect()
    }

    pub fn relay_interval(&self) -> Duration {
        Duration::from_millis(self.relay_interval_ms.max(1))
    }
}

/// How a worker consumes and retries.
#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    /// Sends in flight at once in one worker process (also the AMQP prefetch).
    #[arg(
        long = "concurrency",
        env = "VERIFY_WORKER_CONCURRENCY",
        default_value_t = 1024
    )]
    pub concurrency: u16,
    /// Provider attempts per send before it is marked failed. Transient failures are
    /// retried until the code is about to expire; this only bounds a pathological case
    /// (with the default delays, 25 attempts span about ten minutes, the default lifetime).
    #[arg(
        long = "retry-max-attempts",
        env = "VERIFY_RETRY_MAX_ATTEMPTS",
        default_value_t = 25
    )]
    pub retry_max_attempts: u32,
    /// Delay before the first retry; each later one doubles.
    #[arg(
        long = "retry-base-ms",
        env = "VERIFY_RETRY_BASE_MS",
        default_value_t = 1_000
    )]
    pub retry_base_ms: u64,
    /// Longest delay between two attempts.
    #[arg(
        long = "retry-cap-ms",
        env = "VERIFY_RETRY_CAP_MS",
        default_value_t = 30_000
    )]
    pub retry_cap_ms: u64,
    /// Random spread of each delay, as a fraction (0.2 = ±20 %).
    #[arg(
        long = "retry-jitter",
        env = "VERIFY_RETRY_JITTER",
        default_value_t = 0.2
    )]
    pub retry_jitter: f64,
    /// How long a claimed send belongs to its worker before another may take it over.
    #[arg(
        long = "send-lease-secs",
        env = "VERIFY_SEND_LEASE_SECS",
        default_value_t = 60
    )]
    pub send_lease_secs: u64,
    /// Never hand a code to the provider with less than this much lifetime left.
    #[arg(
        long = "expiry-margin-secs",
        env = "VERIFY_EXPIRY_MARGIN_SECS",
        default_value_t = 15
    )]
    pub expiry_margin_secs: u64,
    /// How long in-flight sends may take to finish after SIGTERM.
    #[arg(
        long = "shutdown-grace-secs",
        env = "VERIFY_SHUTDOWN_GRACE_SECS",
        default_value_t = 20
    )]
    pub shutdown_grace_secs: u64,
    /// Where the worker serves `GET /metrics` (Prometheus text format); not served when
    /// unset. Each worker on one host needs a port of its own.
    #[arg(long = "metrics-addr", env = "VERIFY_WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl WorkerSettings {
    pub fn send_lease(&self) -> Duration {
        Duration::from_secs(self.send_lease_secs)
    }

    pub fn expiry_margin(&self) -> Duration {
        Duration::from_secs(self.expiry_margin_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Which SMS provider wire format the workers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Twilio's Messages API (also what `verify-sink` serves).
    Twilio,
    /// A generic JSON endpoint: `POST {to, from, text}`.
    Http,
    /// Log a masked line instead of sending (development only).
    Log,
}

impl ProviderKind {
    /// The name sends are recorded under (`twilio`, `http`, `log`), as in the stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Twilio => "twilio",
            Self::Http => "http",
            Self::Log => "log",
        }
    }
}

/// The SMS provider and its credentials.
#[derive(Clone, Args)]
pub struct ProviderSettings {
    /// Provider wire format.
    #[arg(
        long = "sms-provider",
        env = "VERIFY_SMS_PROVIDER",
        value_enum,
        default_value = "log"
    )]
    pub kind: ProviderKind,
    /// Sender used when a verification names none (E.164 number or alphanumeric ID).
    #[arg(long = "sms-from", env = "VERIFY_SMS_FROM", default_value = "Verify")]
    pub from: String,
    /// Base URL of the Twilio API.
    #[arg(
        long = "twilio-base-url",
        env = "VERIFY_TWILIO_BASE_URL",
        default_value = "https://api.twilio.com"
    )]
    pub twilio_base_url: String,
    /// Twilio account SID (`AC…`).
    #[arg(
        long = "twilio-account-sid",
        env = "VERIFY_TWILIO_ACCOUNT_SID",
        default_value = ""
    )]
    pub twilio_account_sid: String,
    /// Twilio auth token.
    #[arg(long = "twilio-auth-token", env = "VERIFY_TWILIO_AUTH_TOKEN", value_parser = parse_secret, hide_env_values = true)]
    pub twilio_auth_token: Option<SecretString>,
    /// URL the generic JSON provider posts to.
    #[arg(
        long = "http-provider-url",
        env = "VERIFY_HTTP_PROVIDER_URL",
        default_value = "http://127.0.0.1:9090/send"
    )]
    pub http_url: String,
    /// Bearer token for the generic JSON provider.
    #[arg(long = "http-provider-token", env = "VERIFY_HTTP_PROVIDER_TOKEN", value_parser = parse_secret, hide_env_values = true)]
    pub http_token: Option<SecretString>,
    /// The API's base URL as providers reach it (see [`ReceiptSettings::public_url`]).
    /// Set: every send asks the provider for delivery receipts at the API's callback route.
    #[arg(long = "public-url", env = "VERIFY_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// Timeout of one provider request; a timeout is a transient error and is retried.
    #[arg(
        long = "provider-timeout-ms",
        env = "VERIFY_PROVIDER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub timeout_ms: u64,
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("kind", &self.kind)
            .field("from", &self.from)
            .field("twilio_base_url", &self.twilio_base_url)
            .field("twilio_account_sid", &self.twilio_account_sid)
            .field("http_url", &self.http_url)
            .field("public_url", &self.public_url)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl ProviderSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging settings; the level filter comes from `RUST_LOG`.
#[derive(Debug, Clone, Args)]
pub struct LogSettings {
    #[arg(
        long = "log-format",
        env = "VERIFY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub format: LogFormat,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use super::{
        AbuseSettings, ApiSettings, DEV_SECRET, DatabaseSettings, FromFlags, OtpSettings,
        OtpSettingsError, RabbitSettings, ReceiptSettings, SecretError, SecretSettings,
        SmsSettings, WorkerSettings, redact_url,
    };

    #[test]
    fn a_public_url_loses_its_trailing_slash_and_must_be_plain_http() {
        let settings =
            ReceiptSettings::from_flags(&["--public-url", "https://verify.example.com/"]).unwrap();
        assert_eq!(
            settings.public_url.as_deref(),
            Some("https://verify.example.com")
        );
        for bad in [
            "verify.example.com",
            "ftp://x",
            "http://",
            "http://x/?a=1",
            "http://x/#y",
        ] {
            let error = ReceiptSettings::from_flags(&["--public-url", bad])
                .err()
                .unwrap();
            assert!(error.to_string().contains("--public-url"), "{bad}: {error}");
        }
        let printed = format!(
            "{:?}",
            ReceiptSettings::from_flags(&["--http-receipt-token", "receipt-secret"]).unwrap()
        );
        assert!(!printed.contains("receipt-secret"), "{printed}");
    }

    #[test]
    fn a_section_without_flags_takes_the_defaults_of_its_attributes() {
        let worker = WorkerSettings::from_flags(&[]).unwrap();
        assert_eq!(worker.concurrency, 1024);
        assert_eq!(worker.retry_max_attempts, 25);
        assert_eq!(worker.send_lease(), Duration::from_secs(60));
        let otp = OtpSettings::from_flags(&[]).unwrap();
        assert_eq!((otp.code_length, otp.ttl_secs, otp.max_checks), (6, 600, 5));
        let sms = SmsSettings::from_flags(&[]).unwrap();
        assert_eq!(sms.max_segments.get(), 3);
    }

    #[test]
    fn flags_override_only_what_they_name() {
        let api = ApiSettings::from_flags(&["--addr", "127.0.0.1:0", "--send-limit", "9"]).unwrap();
        assert_eq!(api.addr.port(), 0);
        assert_eq!(api.send_limit, 9);
        assert_eq!(api.resend_interval(), Duration::from_secs(30));
    }

    #[test]
    fn abuse_rules_are_enforced_unless_the_mode_says_otherwise() {
        use crate::domain::abuse::RuleMode;
        let default = AbuseSettings::from_flags(&[]).unwrap();
        assert_eq!(default.mode, RuleMode::Enforce);
        assert_eq!(default.refresh_interval(), Duration::from_secs(1));
        let shadow = AbuseSettings::from_flags(&["--abuse-mode", "shadow"]).unwrap();
        assert_eq!(shadow.mode, RuleMode::Shadow);
        let error = AbuseSettings::from_flags(&["--abuse-mode", "strict"])
            .err()
            .unwrap();
        assert!(error.to_string().contains("--abuse-mode"), "{error}");
    }

    #[test]
    fn a_refused_value_names_its_flag() {
        let error = WorkerSettings::from_flags(&["--concurrency", "many"])
            .err()
            .unwrap();
        assert!(error.to_string().contains("--concurrency"), "{error}");
        for cap in ["0", "256"] {
            let error = SmsSettings::from_flags(&["--sms-max-segments", cap])
                .err()
                .unwrap();
            assert!(error.to_string().contains("--sms-max-segments"), "{error}");
        }
    }

    #[test]
    fn without_a_secret_only_a_development_run_starts() {
        let missing = SecretSettings::from_flags(&[]).unwrap().code_secret();
        assert_eq!(missing.err(), Some(SecretError::Missing));
        let dev = SecretSettings::from_flags(&["--dev"]).unwrap();
        assert!(dev.code_secret().is_ok());
    }

    #[test]
    fn the_public_development_secret_is_refused_outside_a_development_run() {
        let public = SecretSettings::from_flags(&["--secret", DEV_SECRET]).unwrap();
        assert_eq!(
            public.code_secret().err(),
            Some(SecretError::PublicDevelopmentSecret)
        );
        let dev = SecretSettings::from_flags(&["--secret", DEV_SECRET, "--dev"]).unwrap();
        assert!(dev.code_secret().is_ok());
    }

    #[test]
    fn a_configured_secret_is_used_and_a_short_one_refused() {
        let own = SecretSettings::from_flags(&["--secret", "an-operator-chosen-secret"]).unwrap();
        assert!(own.code_secret().is_ok());
        assert_eq!(
            own.secret.as_ref().map(|s| s.expose_secret().to_owned()),
            Some("an-operator-chosen-secret".to_owned())
        );
        let short = SecretSettings::from_flags(&["--secret", "short"]).unwrap();
        assert!(matches!(short.code_secret(), Err(SecretError::Invalid(_))));
        assert!(!format!("{own:?}").contains("an-operator-chosen-secret"));
    }

    #[test]
    fn redact_url_hides_every_password_and_keeps_the_rest() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "postgres://verify:s3cr%40t@db:5432/verify?sslmode=require",
                "postgres://verify:***@db:5432/verify?sslmode=require",
            ),
            ("postgres://u:p@ss@db/verify", "postgres://u:***@db/verify"),
            (
                "postgres://u:pw@db/verify?options=-c%20x%3D1&application_name=a@b",
                "postgres://u:***@db/verify?options=-c%20x%3D1&application_name=a@b",
            ),
            (
                "postgres://u@db/verify?password=pw&sslmode=disable",
                "postgres://u@db/verify?password=***&sslmode=disable",
            ),
            (
                "host=db user=verify PASSWORD=pw dbname=verify",
                "host=db user=verify PASSWORD=*** dbname=verify",
            ),
            (
                "host=db password='a b\\' c' dbname=verify",
                "host=db password=*** dbname=verify",
            ),
            (
                "postgres://postgres@127.0.0.1:5432/verify",
                "postgres://postgres@127.0.0.1:5432/verify",
            ),
            ("not a url", "not a url"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    #[test]
    fn settings_debug_never_prints_a_url_password() {
        let database =
            DatabaseSettings::from_flags(&["--database-url", "postgres://u:dbpass@db/verify"])
                .unwrap();
        let rabbit =
            RabbitSettings::from_flags(&["--amqp-url", "amqp://u:mqpass@mq:5672/%2f"]).unwrap();
        let printed = format!("{database:?} {rabbit:?}");
        assert!(!printed.contains("dbpass"), "{printed}");
        assert!(!printed.contains("mqpass"), "{printed}");
        assert!(printed.contains("postgres://u:***@db/verify"), "{printed}");
    }

    #[test]
    fn weak_code_defaults_are_refused_naming_the_key_unless_allowed() {
        let policy = |flags: &[&str]| OtpSettings::from_flags(flags).unwrap().policy();
        let short = policy(&["--otp-length", "4"]).unwrap_err();
        assert_eq!(short, OtpSettingsError::WeakLength(4));
        assert!(short.to_string().contains("VERIFY_OTP_LENGTH"), "{short}");
        let long = policy(&["--otp-ttl-secs", "601"]).unwrap_err();
        assert_eq!(long, OtpSettingsError::WeakTtl(601));
        assert!(long.to_string().contains("VERIFY_OTP_TTL_SECS"), "{long}");
        let invalid = policy(&["--otp-length", "11", "--allow-weak-codes"]).unwrap_err();
        assert!(
            invalid.to_string().contains("VERIFY_OTP_LENGTH"),
            "{invalid}"
        );
        let weak = policy(&[
            "--otp-length",
            "4",
            "--otp-ttl-secs",
            "3600",
            "--allow-weak-codes",
        ])
        .unwrap();
        assert_eq!(weak.code_length.get(), 4);
        assert_eq!(weak.ttl, Duration::from_secs(3600));
        assert!(weak.allow_weak_codes);
        assert!(!policy(&[]).unwrap().allow_weak_codes);
    }
}
