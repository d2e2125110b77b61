//! Abuse rules: what each one is called, how strictly it applies and what it does.
//!
//! A rule has a stable id naming what it judges (`number_type.premium_rate`,
//! `country.default`, `country.NG`), a mode (`enforce`, `shadow`, `off`) and an action
//! for the requests it matches (`block`, `monitor`, `allow`). The process-wide mode
//! (`VERIFY_ABUSE_MODE`) caps every rule's: a rule applies in the weaker of the two.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::numbering::{NumberType, Region};

/// How strictly a rule (or all rules) applies, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    /// Not evaluated at all.
    Off,
    /// Evaluated and recorded (in the verification's risk and the rule's counters), but
    /// nothing is refused.
    Shadow,
    /// Evaluated and applied: a blocking rule refuses the request.
    Enforce,
}

impl RuleMode {
    /// The stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Shadow => "shadow",
            Self::Enforce => "enforce",
        }
    }

    /// The mode a rule applies in under the process-wide mode `global`: the weaker one.
    pub fn under(self, global: RuleMode) -> RuleMode {
        self.min(global)
    }
}

impl fmt::Display for RuleMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RuleMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(Self::Off),
            "shadow" => Ok(Self::Shadow),
            "enforce" => Ok(Self::Enforce),
            other => Err(format!(
                "{other:?} is not a mode; use enforce, shadow or off"
            )),
        }
    }
}

/// What a rule does to the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Nothing: the request is not restricted by this rule.
    Allow,
    /// Sent, but flagged in the verification's risk and counted.
    Monitor,
    /// Refused (in shadow mode: recorded as a would-be block).
    Block,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Monitor => "monitor",
            Self::Block => "block",
        }
    }
}

/// Which rule: the id names the rule's kind and its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleId {
    /// `number_type.<type>`: numbers of that type.
    NumberType(NumberType),
    /// `country.default`: numbers of every region without a rule of its own.
    CountryDefault,
    /// `country.<region>`: numbers of that region (`country.NG`, `country.001`).
    Country(Region),
}

/// The kinds of rules, as stored next to each rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    NumberType,
    Country,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NumberType => "number_type",
            Self::Country => "country",
        }
    }
}

/// Why a text is not a rule id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a rule id: use number_type.<type> (number_type.premium_rate), country.default or country.<region> (country.GB)"
)]
pub struct RuleIdError(pub String);

impl RuleId {
    /// Reads a rule id. Region codes may come in any letter case and are kept upper case.
    ///
    /// # Errors
    /// [`RuleIdError`] for anything but a number type, `default` or a region after the
    /// kind.
    pub fn parse(text: &str) -> Result<Self, RuleIdError> {
        let error = || RuleIdError(text.to_owned());
        let (kind, subject) = text.split_once('.').ok_or_else(error)?;
        match kind {
            "number_type" => subject.parse().map(Self::NumberType).map_err(|_| error()),
            "country" if subject == "default" => Ok(Self::CountryDefault),
            "country" => Region::parse(subject)
                .map(Self::Country)
                .map_err(|_| error()),
            _ => Err(error()),
        }
    }

    pub fn kind(self) -> RuleKind {
        match self {
            Self::NumberType(_) => RuleKind::NumberType,
            Self::CountryDefault | Self::Country(_) => RuleKind::Country,
        }
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NumberType(kind) => write!(f, "number_type.{kind}"),
            Self::CountryDefault => f.write_str("country.default"),
            Self::Country(region) => write!(f, "country.{region}"),
        }
    }
}

/// Why a rule's parameters are refused; `field` is the path of the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleParamsError {
    pub field: String,
    pub message: String,
}

/// The parameters of a rule, stored as JSON: `{"action": "block" | "monitor" | "allow"}`
/// for every kind there is today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleParams {
    pub action: RuleAction,
}

impl RuleParams {
    /// Reads a rule's parameters from JSON.
    ///
    /// # Errors
    /// [`RuleParamsError`] naming `params.<field>` when the value is not an object, a
    /// field is missing or unknown, or the action is not one of the three.
    pub fn parse(value: &serde_json::Value) -> Result<Self, RuleParamsError> {
        let Some(object) = value.as_object() else {
            return Err(RuleParamsError {
                field: "params".to_owned(),
                message: "the parameters must be a JSON object".to_owned(),
            });
        };
        if let Some(unknown) = object.keys().find(|key| key.as_str() != "action") {
            return Err(RuleParamsError {
                field: format!("params.{unknown}"),
                message: "unknown parameter; the only one is action".to_owned(),
            });
        }
        let action = object.get("action").ok_or_else(|| RuleParamsError {
            field: "params.action".to_owned(),
            message: "the action is required: block, monitor or allow".to_owned(),
        })?;
        let action = serde_json::from_value(action.clone()).map_err(|_| RuleParamsError {
            field: "params.action".to_owned(),
            message: "the action must be block, monitor or allow".to_owned(),
        })?;
        Ok(Self { action })
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "action": self.action.as_str() })
    }
}

/// A rule as it applies: its id, its own mode and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: RuleId,
    pub mode: RuleMode,
    pub params: RuleParams,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{RuleAction, RuleId, RuleMode, RuleParams};
    use crate::domain::numbering::{NumberType, Region};

    #[test]
    fn a_rule_applies_in_the_weaker_of_its_mode_and_the_global_one() {
        use RuleMode::{Enforce, Off, Shadow};
        let cases = [
            (Enforce, Enforce, Enforce),
            (Enforce, Shadow, Shadow),
            (Enforce, Off, Off),
            (Shadow, Enforce, Shadow),
            (Shadow, Off, Off),
            (Off, Enforce, Off),
        ];
        for (rule, global, expected) in cases {
            assert_eq!(rule.under(global), expected, "{rule} under {global}");
        }
    }

    #[test]
    fn rule_ids_read_back_from_their_text() {
        let ids = [
            RuleId::NumberType(NumberType::PremiumRate),
            RuleId::CountryDefault,
            RuleId::Country(Region::parse("NG").unwrap()),
            RuleId::Country(Region::parse("001").unwrap()),
        ];
        for id in ids {
            assert_eq!(RuleId::parse(&id.to_string()), Ok(id));
        }
        assert_eq!(
            RuleId::parse("country.gb").unwrap().to_string(),
            "country.GB"
        );
        for bad in [
            "",
            "country",
            "country.",
            "country.UK",
            "number_type.premium",
            "velocity.client_ip",
            "number_type.premium_rate.x",
        ] {
            assert!(RuleId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parameters_name_the_field_they_fail_on() {
        assert_eq!(
            RuleParams::parse(&json!({"action": "monitor"}))
                .unwrap()
                .action,
            RuleAction::Monitor
        );
        let cases = [
            (json!("block"), "params"),
            (json!({}), "params.action"),
            (json!({"action": "deny"}), "params.action"),
            (json!({"action": 1}), "params.action"),
            (json!({"action": "block", "limit": 3}), "params.limit"),
        ];
        for (value, field) in cases {
            assert_eq!(
                RuleParams::parse(&value).unwrap_err().field,
                field,
                "{value}"
            );
        }
    }
}
