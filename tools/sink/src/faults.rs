//! Failure injection: deciding whether a send succeeds, fails or hangs, and how slowly.
//!
//! The decision is a pure function of the settings, the request's position in the
//! `fail_first` count and a random roll, so it can be tested without a clock or a network.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::settings::{self, FailureMode, SinkSettings};

/// The failure-injection knobs, as `GET /control` shows them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct FaultSettings {
    pub(crate) latency_ms: u64,
    pub(crate) failure_rate: f64,
    pub(crate) failure_status: u16,
    pub(crate) fail_first: u64,
    pub(crate) failure_mode: FailureMode,
    pub(crate) retry_after_secs: u64,
    pub(crate) hang_ms: u64,
}

impl From<&SinkSettings> for FaultSettings {
    fn from(s: &SinkSettings) -> Self {
        FaultSettings {
            latency_ms: s.latency_ms,
            failure_rate: s.failure_rate,
            failure_status: s.failure_status,
            fail_first: s.fail_first,
            failure_mode: s.failure_mode,
            retry_after_secs: s.retry_after_secs,
            hang_ms: s.hang_ms,
        }
    }
}

/// What happens to one send request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Wait `latency`, then accept and record the message.
    Deliver { latency: Duration },
    /// Wait `latency`, then answer `status`; `retry_after` is set for 429s.
    Fail {
        latency: Duration,
        status: u16,
        retry_after: Option<u64>,
    },
    /// Say nothing for `hold`, then answer 504.
    Hang { hold: Duration },
}

/// Decides the fate of the send with zero-based `ordinal` since the `fail_first` counter
/// was last reset, given a uniform `roll` in `[0, 1)`.
pub(crate) fn decide(settings: &FaultSettings, ordinal: u64, roll: f64) -> Outcome {
    let latency = Duration::from_millis(settings.latency_ms);
    // `roll < rate` makes 0.0 never fail and 1.0 always fail, with no special cases.
    let fails = ordinal < settings.fail_first || roll < settings.failure_rate;
    if !fails {
        return Outcome::Deliver { latency };
    }
    match settings.failure_mode {
        FailureMode::Status => Outcome::Fail {
            latency,
            status: settings.failure_status,
            retry_after: (settings.failure_status == 429).then_some(settings.retry_after_secs),
        },
        FailureMode::Hang => Outcome::Hang {
            hold: Duration::from_millis(settings.hang_ms),
        },
    }
}

/// The live failure-injection state shared by every request.
#[derive(Debug)]
pub(crate) struct Faults {
    state: Mutex<FaultState>,
}

#[derive(Debug)]
struct FaultState {
    settings: FaultSettings,
    // Sends considered since start-up or since `fail_first` was last set.
    considered: u64,
}

impl Faults {
    pub(crate) fn new(settings: FaultSettings) -> Faults {
        Faults {
            state: Mutex::new(FaultState {
                settings,
                considered: 0,
            }),
        }
    }

    /// Decides the next send. Counting and deciding happen under one lock so concurrent
    /// requests can never both claim the same `fail_first` slot.
    pub(crate) fn next_outcome(&self) -> Outcome {
        let roll: f64 = rand::random();
        let mut state = self.lock();
        let ordinal = state.considered;
        state.considered = ordinal.saturating_add(1);
        decide(&state.settings, ordinal, roll)
    }

    pub(crate) fn current(&self) -> FaultSettings {
        self.lock().settings.clone()
    }

    /// How many of the `fail_first` failures are still to come.
    pub(crate) fn fail_first_remaining(&self) -> u64 {
        let state = self.lock();
        state.settings.fail_first.saturating_sub(state.considered)
    }

    /// Applies a validated change; setting `fail_first` restarts its count, so a chaos test
    /// can open a fresh "first N fail" window at any time.
    pub(crate) fn apply(&self, update: &ControlUpdate) -> FaultSettings {
        let mut state = self.lock();
        let s = &mut state.settings;
        if let Some(v) = update.latency_ms {
            s.latency_ms = v;
        }
        if let Some(v) = update.failure_rate {
            s.failure_rate = v;
        }
        if let Some(v) = update.failure_status {
            s.failure_status = v;
        }
        if let Some(v) = update.failure_mode {
            s.failure_mode = v;
        }
        if let Some(v) = update.retry_after_secs {
            s.retry_after_secs = v;
        }
        if let Some(v) = update.hang_ms {
            s.hang_ms = v;
        }
        if let Some(v) = update.fail_first {
            s.fail_first = v;
            state.considered = 0;
        }
        state.settings.clone()
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // The state is plain data updated field by field; a panic elsewhere cannot leave it
        // half-written in a way that matters.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `PUT /control` body: every field optional, all validated before any is applied.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ControlUpdate {
    pub(crate) latency_ms: Option<u64>,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) failure_status: Option<u16>,
    pub(crate) fail_first: Option<u64>,
    pub(crate) failure_mode: Option<FailureMode>,
    pub(crate) retry_after_secs: Option<u64>,
    pub(crate) hang_ms: Option<u64>,
    /// Not a failure, but a knob of the same document: how late receipts leave.
    pub(crate) receipt_delay_ms: Option<u64>,
}

/// Why a `PUT /control` body was refused; the message names the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("unknown field `{0}`")]
    UnknownField(String),
    #[error("field `{field}` {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl ControlUpdate {
    /// Parses by hand rather than with serde so every error names the field at fault, and
    /// unknown fields are refused: a misspelt knob silently doing nothing would make a
    /// chaos test pass for the wrong reason.
    pub(crate) fn parse(body: &[u8]) -> Result<ControlUpdate, ControlError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ControlError::Json(e.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(ControlError::NotAnObject);
        };
        let mut update = ControlUpdate::default();
        for (key, value) in &fields {
            // `null` means "leave as is", which is what most clients send for unset options.
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "latency_ms" => update.latency_ms = Some(whole_number("latency_ms", value)?),
                "fail_first" => update.fail_first = Some(whole_number("fail_first", value)?),
                "retry_after_secs" => {
                    update.retry_after_secs = Some(whole_number("retry_after_secs", value)?);
                }
                "hang_ms" => update.hang_ms = Some(whole_number("hang_ms", value)?),
                "receipt_delay_ms" => {
                    update.receipt_delay_ms = Some(whole_number("receipt_delay_ms", value)?);
                }
                "failure_rate" => update.failure_rate = Some(failure_rate(value)?),
                "failure_status" => update.failure_status = Some(failure_status(value)?),
                "failure_mode" => update.failure_mode = Some(failure_mode(value)?),
                other => return Err(ControlError::UnknownField(other.to_owned())),
            }
        }
        Ok(update)
    }
}

fn whole_number(field: &'static str, value: &Value) -> Result<u64, ControlError> {
    value.as_u64().ok_or_else(|| ControlError::Invalid {
        field,
        problem: "must be a non-negative whole number".to_owned(),
    })
}

fn failure_rate(value: &Value) -> Result<f64, ControlError> {
    let invalid = || ControlError::Invalid {
        field: "failure_rate",
        problem: "must be a number between 0.0 and 1.0".to_owned(),
    };
    let rate = value.as_f64().ok_or_else(invalid)?;
    settings::check_failure_rate(rate).map_err(|_| invalid())
}

fn failure_status(value: &Value) -> Result<u16, ControlError> {
    let invalid = || ControlError::Invalid {
        field: "failure_status",
        problem: "must be an HTTP status between 400 and 599".to_owned(),
    };
    let status = value
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .ok_or_else(invalid)?;
    settings::check_failure_status(status).map_err(|_| invalid())
}

fn failure_mode(value: &Value) -> Result<FailureMode, ControlError> {
    match value.as_str() {
        Some("status") => Ok(FailureMode::Status),
        Some("hang") => Ok(FailureMode::Hang),
        _ => Err(ControlError::Invalid {
            field: "failure_mode",
            problem: "must be \"status\" or \"hang\"".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use serde_json::json;

    use super::{ControlError, ControlUpdate, FaultSettings, Faults, Outcome, decide};
    use crate::settings::{FailureMode, SinkSettings};

    fn quiet() -> FaultSettings {
        FaultSettings::from(&SinkSettings::from_flags(&[]).unwrap())
    }

    fn parse(body: serde_json::Value) -> Result<ControlUpdate, ControlError> {
        ControlUpdate::parse(body.to_string().as_bytes())
    }

    #[test]
    fn with_no_faults_configured_every_send_is_delivered() {
        let settings = quiet();
        for roll in [0.0, 0.5, 0.999_999] {
            assert_eq!(
                decide(&settings, 0, roll),
                Outcome::Deliver {
                    latency: Duration::ZERO
                }
            );
        }
    }

    #[test]
    fn fail_first_fails_exactly_the_first_n_sends() {
        let settings = FaultSettings {
            fail_first: 2,
            ..quiet()
        };
        let failed: Vec<bool> = (0..5)
            .map(|n| matches!(decide(&settings, n, 0.5), Outcome::Fail { .. }))
            .collect();
        assert_eq!(failed, [true, true, false, false, false]);
    }

    #[test]
    fn a_failure_rate_of_one_fails_every_send_and_zero_none() {
        let always = FaultSettings {
            failure_rate: 1.0,
            ..quiet()
        };
        assert!(matches!(
            decide(&always, 7, 0.999_999),
            Outcome::Fail { status: 503, .. }
        ));
        assert!(matches!(decide(&quiet(), 7, 0.0), Outcome::Deliver { .. }));
    }

    #[test]
    fn a_roll_below_the_failure_rate_fails() {
        let settings = FaultSettings {
            failure_rate: 0.25,
            ..quiet()
        };
        assert!(matches!(decide(&settings, 9, 0.2), Outcome::Fail { .. }));
        assert!(matches!(
            decide(&settings, 9, 0.25),
            Outcome::Deliver { .. }
        ));
    }

    #[test]
    fn only_429_failures_carry_retry_after() {
        let throttled = FaultSettings {
            fail_first: 1,
            failure_status: 429,
            retry_after_secs: 7,
            ..quiet()
        };
        assert_eq!(
            decide(&throttled, 0, 0.5),
            Outcome::Fail {
                latency: Duration::ZERO,
                status: 429,
                retry_after: Some(7)
            }
        );
        let broken = FaultSettings {
            fail_first: 1,
            failure_status: 500,
            ..quiet()
        };
        assert!(matches!(
            decide(&broken, 0, 0.5),
            Outcome::Fail {
                retry_after: None,
                ..
            }
        ));
    }

    #[test]
    fn hang_mode_holds_failing_sends_for_the_hang_time() {
        let settings = FaultSettings {
            fail_first: 1,
            failure_mode: FailureMode::Hang,
            hang_ms: 1234,
            latency_ms: 10,
            ..quiet()
        };
        assert_eq!(
            decide(&settings, 0, 0.5),
            Outcome::Hang {
                hold: Duration::from_millis(1234)
            }
        );
        assert_eq!(
            decide(&settings, 1, 0.5),
            Outcome::Deliver {
                latency: Duration::from_millis(10)
            }
        );
    }

    #[test]
    fn setting_fail_first_restarts_its_count() {
        let faults = Faults::new(FaultSettings {
            fail_first: 1,
            ..quiet()
        });
        assert!(matches!(faults.next_outcome(), Outcome::Fail { .. }));
        assert!(matches!(faults.next_outcome(), Outcome::Deliver { .. }));
        faults.apply(&ControlUpdate {
            fail_first: Some(1),
            ..ControlUpdate::default()
        });
        assert_eq!(faults.fail_first_remaining(), 1);
        assert!(matches!(faults.next_outcome(), Outcome::Fail { .. }));
        assert_eq!(faults.fail_first_remaining(), 0);
    }

    #[test]
    fn changing_other_knobs_keeps_the_fail_first_count() {
        let faults = Faults::new(FaultSettings {
            fail_first: 1,
            ..quiet()
        });
        let _ = faults.next_outcome();
        faults.apply(&ControlUpdate {
            latency_ms: Some(5),
            ..ControlUpdate::default()
        });
        assert!(matches!(faults.next_outcome(), Outcome::Deliver { .. }));
    }

    #[test]
    fn control_updates_accept_any_subset_of_fields() {
        let update = parse(json!({
            "failure_rate": 0.5, "failure_mode": "hang", "latency_ms": null
        }))
        .unwrap();
        assert_eq!(
            update,
            ControlUpdate {
                failure_rate: Some(0.5),
                failure_mode: Some(FailureMode::Hang),
                ..ControlUpdate::default()
            }
        );
        assert_eq!(
            ControlUpdate::parse(b"{}").unwrap(),
            ControlUpdate::default()
        );
    }

    #[test]
    fn control_errors_name_the_field() {
        let cases = [
            (json!({"failure_rate": 2.0}), "failure_rate"),
            (json!({"failure_rate": "half"}), "failure_rate"),
            (json!({"failure_status": 200}), "failure_status"),
            (json!({"failure_status": 70000}), "failure_status"),
            (json!({"latency_ms": -1}), "latency_ms"),
            (json!({"failure_mode": "explode"}), "failure_mode"),
            (json!({"fail_frist": 1}), "fail_frist"),
        ];
        for (body, field) in cases {
            let err = parse(body).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn control_bodies_must_be_json_objects() {
        assert!(matches!(
            ControlUpdate::parse(b"[1]"),
            Err(ControlError::NotAnObject)
        ));
        assert!(matches!(
            ControlUpdate::parse(b"{"),
            Err(ControlError::Json(_))
        ));
    }
}
