//! Command-line flags, each with a `VERIFY_LOAD_…` environment variable, and the parsing of
//! their values (durations like `30s`, URLs, the first phone number).
//!
//! Scripts and docker compose depend on these names; change them only together.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use secrecy::SecretString;

use crate::numbers::NumberSequence;

/// Requests in flight in closed-loop mode when neither `--rate` nor `--concurrency` is given.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// Everything a run can be told.
#[derive(Clone, Parser)]
#[command(
    name = "verify-load",
    version,
    about = "Load generator for Verify: POSTs verifications open loop (--rate) or closed loop \
             (--concurrency), checks that every accepted one's SMS reaches verify-sink, and \
             reports throughput and latency percentiles",
    long_about = None
)]
pub struct LoadSettings {
    /// Base URL of verify-api.
    #[arg(long, env = "VERIFY_LOAD_API", default_value = "http://127.0.0.1:8080", value_parser = parse_base_url)]
    pub api: String,

    /// API key sent as `X-Api-Key`.
    #[arg(long, env = "VERIFY_LOAD_API_KEY", default_value = "dev-api-key", value_parser = parse_secret, hide_env_values = true)]
    pub api_key: SecretString,

    /// Base URL of verify-sink, the fake SMS provider the workers send to.
    #[arg(long, env = "VERIFY_LOAD_SINK", default_value = "http://127.0.0.1:9090", value_parser = parse_base_url)]
    pub sink: String,

    /// Open loop: start this many verifications per second on a fixed schedule, whatever
    /// the answers; latency counts from each request's scheduled time.
    #[arg(long, env = "VERIFY_LOAD_RATE", conflicts_with = "concurrency", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Closed loop: keep this many requests in flight (the default, with 64).
    #[arg(long, env = "VERIFY_LOAD_CONCURRENCY", value_parser = parse_positive)]
    pub concurrency: Option<usize>,

    /// How long to send, e.g. `30s`, `2m`, `500ms`.
    #[arg(long, env = "VERIFY_LOAD_DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub duration: Duration,

    /// How long to wait after the last POST for outstanding SMS before counting them lost.
    #[arg(long, env = "VERIFY_LOAD_DRAIN", default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Read each SMS's code at the sink and check it through the API.
    #[arg(long, env = "VERIFY_LOAD_CHECK")]
    pub check: bool,

    /// Sink polls and checks in flight at once with `--check`.
    #[arg(long, env = "VERIFY_LOAD_CHECK_CONCURRENCY", default_value_t = 32, value_parser = parse_positive)]
    pub check_concurrency: usize,

    /// Write the figures as JSON to this file.
    #[arg(long, env = "VERIFY_LOAD_JSON")]
    pub json: Option<PathBuf>,

    /// Use this template instead of creating one named `load-…`.
    #[arg(long, env = "VERIFY_LOAD_TEMPLATE_ID")]
    pub template_id: Option<i64>,

    /// First phone number to send to, e.g. `+12122000000`; later ones follow it. Unset, each
    /// run starts at a random place, so repeated runs do not hit the per-number send limit.
    #[arg(long, env = "VERIFY_LOAD_NUMBERS_FROM", value_parser = parse_first_number)]
    pub numbers_from: Option<NumberSequence>,

    /// Send a `client_ip` and a `client_id` with every POST (distinct for every request), so
    /// the abuse rules that read them are evaluated. Without it the API sees no end-user
    /// signals and skips those rules.
    #[arg(long, env = "VERIFY_LOAD_CLIENT_SIGNALS")]
    pub client_signals: bool,

    /// Longest wait for one HTTP answer; a request that takes longer counts as a timeout.
    #[arg(long, env = "VERIFY_LOAD_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// Open loop only: most POSTs in flight. Beyond it sends wait for a free slot, and that
    /// wait still counts in their latency, because latency starts at the scheduled time.
    #[arg(long, env = "VERIFY_LOAD_MAX_IN_FLIGHT", default_value_t = 1_000, value_parser = parse_positive)]
    pub max_in_flight: usize,
}

// Hand-written so the API key never reaches a log line.
impl fmt::Debug for LoadSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadSettings")
            .field("api", &self.api)
            .field("api_key", &"<redacted>")
            .field("sink", &self.sink)
            .field("mode", &self.mode())
            .field("duration", &self.duration)
            .field("drain", &self.drain)
            .field("check", &self.check)
            .field("client_signals", &self.client_signals)
            .field("json", &self.json)
            .field("template_id", &self.template_id)
            .finish_non_exhaustive()
    }
}

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// A new request every `1/rate` seconds, whether or not earlier ones have been answered.
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// `concurrency` loops, each sending its next request when the previous one is answered.
    Closed {
        /// Requests in flight.
        concurrency: usize,
    },
}

impl Mode {
    /// Connections worth keeping open: one per request that can be in flight.
    pub fn connections(self, max_in_flight: usize) -> usize {
        match self {
            Mode::Open { .. } => max_in_flight,
            Mode::Closed { concurrency } => concurrency,
        }
    }
}

impl LoadSettings {
    /// The pacing the flags ask for; closed loop with [`DEFAULT_CONCURRENCY`] when neither
    /// `--rate` nor `--concurrency` is given.
    pub fn mode(&self) -> Mode {
        match (self.rate, self.concurrency) {
            (Some(rate), _) => Mode::Open { rate },
            (None, concurrency) => Mode::Closed {
                concurrency: concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            },
        }
    }
}

/// A duration such as `500ms`, `30s`, `2m`, `1h`, `1m30s` or `1.5s`; a bare number is
/// seconds.
///
/// # Errors
/// A message naming what could not be read.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. 30s, 2m or 500ms".to_owned());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs, raw);
    }
    let mut total = 0.0_f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{raw}` has a number without a unit at the end"))?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{raw}` is not a duration; write e.g. 30s, 2m or 500ms"))?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "`{raw}` has an unknown unit `{other}`; use ms, s, m or h"
                ));
            }
        };
        total += value * scale;
        rest = next;
    }
    seconds(total, raw)
}

fn seconds(secs: f64, raw: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{raw}` is not a usable duration"))
}

fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    let duration = parse_duration(raw)?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    let rate: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not a number of requests per second"))?;
    // A rate so low that one interval overflows a Duration is as useless as zero.
    if rate.is_finite() && rate >= 0.001 {
        Ok(rate)
    } else {
        Err(format!("{raw} is not a rate of at least 0.001 per second"))
    }
}

fn parse_positive(raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{raw}` is not a positive whole number")),
    }
}

/// Accepts `http://` and `https://` URLs and drops a trailing `/`, so paths can be appended.
fn parse_base_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{raw}` is not an http:// or https:// URL"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn parse_secret(raw: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(raw.to_owned()))
}

fn parse_first_number(raw: &str) -> Result<NumberSequence, String> {
    NumberSequence::starting_from(raw).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use clap::{CommandFactory, Parser};
    use secrecy::ExposeSecret;

    use super::{LoadSettings, Mode, parse_duration};

    fn parse(args: &[&str]) -> Result<LoadSettings, clap::Error> {
        LoadSettings::try_parse_from(std::iter::once("verify-load").chain(args.iter().copied()))
    }

    #[test]
    fn flag_definitions_are_consistent() {
        LoadSettings::command().debug_assert();
    }

    #[test]
    fn durations_read_like_people_write_them() {
        let cases = [
            ("30s", 30_000),
            ("2m", 120_000),
            ("500ms", 500),
            ("1m30s", 90_000),
            ("1.5s", 1_500),
            ("45", 45_000),
            ("1h", 3_600_000),
            (" 10 s ", 10_000),
            ("0s", 0),
        ];
        for (raw, millis) in cases {
            assert_eq!(
                parse_duration(raw),
                Ok(Duration::from_millis(millis)),
                "case {raw:?}"
            );
        }
    }

    #[test]
    fn unreadable_durations_are_refused_with_a_reason() {
        for raw in ["", "s", "10x", "ten seconds", "10s5", "-5s", "1..5s"] {
            assert!(parse_duration(raw).is_err(), "case {raw:?} was accepted");
        }
    }

    #[test]
    fn without_pacing_flags_the_run_is_closed_loop_at_64() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings.mode(), Mode::Closed { concurrency: 64 });
        assert_eq!(settings.api, "http://127.0.0.1:8080");
        assert_eq!(settings.sink, "http://127.0.0.1:9090");
        assert_eq!(settings.api_key.expose_secret(), "dev-api-key");
        assert_eq!(settings.duration, Duration::from_secs(30));
        assert_eq!(settings.drain, Duration::from_secs(30));
    }

    #[test]
    fn rate_and_concurrency_cannot_both_be_given() {
        assert!(parse(&["--rate", "100", "--concurrency", "8"]).is_err());
        assert_eq!(
            parse(&["--rate", "250"]).unwrap().mode(),
            Mode::Open { rate: 250.0 }
        );
        assert_eq!(
            parse(&["--concurrency", "8"]).unwrap().mode(),
            Mode::Closed { concurrency: 8 }
        );
    }

    #[test]
    fn nonsense_values_are_refused_naming_the_flag() {
        for args in [
            &["--rate", "0"][..],
            &["--rate", "fast"],
            &["--concurrency", "0"],
            &["--duration", "0s"],
            &["--api", "ftp://example"],
            &["--sink", "not a url"],
            &["--numbers-from", "+4420"],
        ] {
            let err = parse(args).err().unwrap();
            assert!(err.to_string().contains(args[0]), "{args:?}: {err}");
        }
    }

    #[test]
    fn base_urls_lose_their_trailing_slash() {
        let settings = parse(&["--api", "http://api:8080/", "--sink", "http://sink:9090"]).unwrap();
        assert_eq!(settings.api, "http://api:8080");
        assert_eq!(settings.sink, "http://sink:9090");
    }

    #[test]
    fn debug_output_hides_the_api_key() {
        let settings = parse(&["--api-key", "very-secret"]).unwrap();
        assert!(!format!("{settings:?}").contains("very-secret"));
    }
}
