//! Abuse rules: what each one is called, how strictly it applies and what it does.
//!
//! A rule has a stable id naming what it judges (`number_type.premium_rate`,
//! `country.default`, `country.NG`, `velocity.client_ip`, `guess.number`,
//! `conversion.prefix`), a mode (`enforce`, `shadow`, `off`) and parameters: an action for
//! the requests it matches (`block`, `monitor`, `allow`), for velocity rules what they
//! count (see `velocity`), for the guess budget and the conversion breaker the thresholds
//! at which they write blocks (see `blocks`). The process-wide
//! mode (`VERIFY_ABUSE_MODE`) caps every rule's: a rule applies in the weaker of the two.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::abuse::blocks::BlockScope;
use crate::domain::numbering::{NumberType, Region};

/// How strictly a rule (or all rules) applies, weakest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
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

/// What a matching rule did to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Refused the request (enforce mode).
    Block,
    /// Would have refused it, but the rule is in shadow mode.
    ShadowBlock,
    /// Let it through, flagged.
    Monitor,
}

impl Outcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [Outcome; 3] = [Self::Block, Self::ShadowBlock, Self::Monitor];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::ShadowBlock => "shadow_block",
            Self::Monitor => "monitor",
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
    /// `velocity.<name>`: a limit on sends per scope and window (`velocity.client_ip`).
    Velocity(VelocityName),
    /// `guess.number`: wrong codes per number, across all of its verifications.
    GuessNumber,
    /// `conversion.prefix`: the share of approved verifications per prefix.
    ConversionPrefix,
    /// `conversion.country`: the share of approved verifications per country.
    ConversionCountry,
}

/// The kinds of rules, as stored next to each rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    NumberType,
    Country,
    Velocity,
    Guess,
    Conversion,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NumberType => "number_type",
            Self::Country => "country",
            Self::Velocity => "velocity",
            Self::Guess => "guess",
            Self::Conversion => "conversion",
        }
    }
}

/// Why a text is not a rule id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a rule id: use number_type.<type> (number_type.premium_rate), country.default, country.<region> (country.GB), velocity.<name> (velocity.client_ip; a-z, 0-9 and _), guess.number, conversion.prefix or conversion.country"
)]
pub struct RuleIdError(pub String);

impl RuleId {
    /// Reads a rule id. Region codes may come in any letter case and are kept upper case.
    ///
    /// # Errors
    /// [`RuleIdError`] for anything but a number type, `default`, a region or a velocity
    /// rule name after the kind.
    pub fn parse(text: &str) -> Result<Self, RuleIdError> {
        let error = || RuleIdError(text.to_owned());
        let (kind, subject) = text.split_once('.').ok_or_else(error)?;
        match kind {
            "number_type" => subject.parse().map(Self::NumberType).map_err(|_| error()),
            "country" if subject == "default" => Ok(Self::CountryDefault),
            "country" => Region::parse(subject)
                .map(Self::Country)
                .map_err(|_| error()),
            "velocity" => VelocityName::parse(subject)
                .map(Self::Velocity)
                .ok_or_else(error),
            "guess" if subject == "number" => Ok(Self::GuessNumber),
            "conversion" if subject == "prefix" => Ok(Self::ConversionPrefix),
            "conversion" if subject == "country" => Ok(Self::ConversionCountry),
            _ => Err(error()),
        }
    }

    pub fn kind(self) -> RuleKind {
        match self {
            Self::NumberType(_) => RuleKind::NumberType,
            Self::CountryDefault | Self::Country(_) => RuleKind::Country,
            Self::Velocity(_) => RuleKind::Velocity,
            Self::GuessNumber => RuleKind::Guess,
            Self::ConversionPrefix | Self::ConversionCountry => RuleKind::Conversion,
        }
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NumberType(kind) => write!(f, "number_type.{kind}"),
            Self::CountryDefault => f.write_str("country.default"),
            Self::Country(region) => write!(f, "country.{region}"),
            Self::Velocity(name) => write!(f, "velocity.{name}"),
            Self::GuessNumber => f.write_str("guess.number"),
            Self::ConversionPrefix => f.write_str("conversion.prefix"),
            Self::ConversionCountry => f.write_str("conversion.country"),
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

/// Longest window, lock or cool-down of the guess budget and the conversion breaker:
/// guesses older than a day are deleted, and a longer block is better set by a person
/// than by a counter.
pub const MAX_RULE_SECS: u64 = 86_400;

/// The guess budget: at most `limit` wrong codes per number in `window`, across every
/// verification and resend of the number; reaching it locks the number for `lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuessBudget {
    pub window: Duration,
    pub limit: u32,
    pub lock: Duration,
}

/// The conversion breaker's thresholds: a scope (a prefix, a country) with at least
/// `min_sends` verifications in `window`, older than `grace` (people need time to type
/// the code), of which fewer than `min_conversion_pct` % were approved, gets no codes for
/// `cooldown`, renewed while the pattern lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversionBreaker {
    pub min_sends: u32,
    pub min_conversion_pct: u8,
    pub window: Duration,
    pub cooldown: Duration,
    pub grace: Duration,
}

/// The parameters of a rule, stored as JSON: `{"action": "block" | "monitor" | "allow"}`
/// for number-type and country rules, `{"scope", "window_secs", "limit", "action"}` for
/// velocity rules, `{"window_secs", "limit", "lock_secs"}` for `guess.number` and
/// `{"min_sends", "min_conversion_pct", "window_secs", "cooldown_secs", "grace_secs"}`
/// for `conversion.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleParams {
    Action(RuleAction),
    Velocity(VelocityLimit),
    GuessBudget(GuessBudget),
    Conversion(ConversionBreaker),
}

fn params_error(field: &str, message: impl Into<String>) -> RuleParamsError {
    RuleParamsError {
        field: format!("params.{field}"),
        message: message.into(),
    }
}

/// A JSON object's fields, with errors naming the field.
struct ParamFields<'a> {
    object: &'a serde_json::Map<String, serde_json::Value>,
}

impl<'a> ParamFields<'a> {
    /// The object, if it has no field but `known`.
    fn of(
        object: &'a serde_json::Map<String, serde_json::Value>,
        known: &[&str],
    ) -> Result<Self, RuleParamsError> {
        if let Some(unknown) = object.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(params_error(
                unknown,
                format!("unknown parameter; the parameters are {}", known.join(", ")),
            ));
        }
        Ok(Self { object })
    }

    /// A whole number in `min..=max`.
    fn integer(&self, name: &str, min: u64, max: u64) -> Result<u64, RuleParamsError> {
        let value = self
            .object
            .get(name)
            .ok_or_else(|| params_error(name, "this parameter is required"))?;
        value
            .as_u64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| params_error(name, format!("a whole number from {min} to {max}")))
    }

    fn seconds(&self, name: &str, min: u64) -> Result<Duration, RuleParamsError> {
        self.integer(name, min, MAX_RULE_SECS)
            .map(Duration::from_secs)
    }
}

impl GuessBudget {
    fn parse(object: &serde_json::Map<String, serde_json::Value>) -> Result<Self, RuleParamsError> {
        let fields = ParamFields::of(object, &["window_secs", "limit", "lock_secs"])?;
        Ok(Self {
            window: fields.seconds("window_secs", 1)?,
            limit: u32::try_from(fields.integer("limit", 1, 1_000)?)
                .expect("at most 1000 fits in u32"),
            lock: fields.seconds("lock_secs", 1)?,
        })
    }
}

impl ConversionBreaker {
    fn parse(object: &serde_json::Map<String, serde_json::Value>) -> Result<Self, RuleParamsError> {
        let fields = ParamFields::of(
            object,
            &[
                "min_sends",
                "min_conversion_pct",
                "window_secs",
                "cooldown_secs",
                "grace_secs",
            ],
        )?;
        let breaker = Self {
            min_sends: u32::try_from(fields.integer("min_sends", 1, 1_000_000)?)
                .expect("at most a million fits in u32"),
            min_conversion_pct: u8::try_from(fields.integer("min_conversion_pct", 0, 100)?)
                .expect("at most 100 fits in u8"),
            window: fields.seconds("window_secs", 60)?,
            cooldown: fields.seconds("cooldown_secs", 1)?,
            grace: fields.seconds("grace_secs", 0)?,
        };
        if breaker.grace >= breaker.window {
            return Err(params_error(
                "grace_secs",
                "the grace must be shorter than the window",
            ));
        }
        Ok(breaker)
    }
}

impl RuleParams {
    /// Reads the parameters of a rule of `kind` from JSON.
    ///
    /// # Errors
    /// [`RuleParamsError`] naming `params.<field>` when the value is not an object, a
    /// field is missing or unknown, or a value is not one the kind accepts.
    pub fn parse(kind: RuleKind, value: &serde_json::Value) -> Result<Self, RuleParamsError> {
        let Some(object) = value.as_object() else {
            return Err(RuleParamsError {
                field: "params".to_owned(),
                message: "the parameters must be a JSON object".to_owned(),
            });
        };
        match kind {
            RuleKind::Velocity => return VelocityLimit::parse(object).map(Self::Velocity),
            RuleKind::Guess => return GuessBudget::parse(object).map(Self::GuessBudget),
            RuleKind::Conversion => return ConversionBreaker::parse(object).map(Self::Conversion),
            RuleKind::NumberType | RuleKind::Country => {}
        }
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
        Ok(Self::Action(action))
    }

    /// What the rule does to the requests it matches (a velocity rule: to those over its
    /// limit; the guess budget and the conversion breaker: to those their blocks match).
    pub fn action(self) -> RuleAction {
        match self {
            Self::Action(action) => action,
            Self::Velocity(limit) => limit.action(),
            Self::GuessBudget(_) | Self::Conversion(_) => RuleAction::Block,
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        match self {
            Self::Action(action) => serde_json::json!({ "action": action.as_str() }),
            Self::Velocity(limit) => limit.to_json(),
            Self::GuessBudget(budget) => serde_json::json!({
                "window_secs": budget.window.as_secs(),
                "limit": budget.limit,
                "lock_secs": budget.lock.as_secs(),
            }),
            Self::Conversion(breaker) => serde_json::json!({
                "min_sends": breaker.min_sends,
                "min_conversion_pct": breaker.min_conversion_pct,
                "window_secs": breaker.window.as_secs(),
                "cooldown_secs": breaker.cooldown.as_secs(),
                "grace_secs": breaker.grace.as_secs(),
            }),
        }
    }
}

/// Longest velocity rule name (the part after `velocity.`).
pub const MAX_VELOCITY_NAME_LEN: usize = 40;
/// Longest window a velocity rule may count over: 30 days.
pub const MAX_WINDOW_SECS: u32 = 30 * 24 * 3600;
/// Highest limit a velocity rule may have.
pub const MAX_LIMIT: u32 = 1_000_000_000;
/// Windows of the high-volume scopes are counted in this many buckets.
const BUCKETS_PER_WINDOW: u32 = 12;

/// The name of a velocity rule (`velocity.<name>`): 1–40 of `a`–`z`, `0`–`9` and `_`.
/// Held inline so rule ids stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VelocityName {
    bytes: [u8; MAX_VELOCITY_NAME_LEN],
    len: u8,
}

impl VelocityName {
    /// `None` unless `text` is a valid name.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = (1..=MAX_VELOCITY_NAME_LEN).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return None;
        }
        let mut bytes = [0; MAX_VELOCITY_NAME_LEN];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Some(Self {
            bytes,
            len: u8::try_from(text.len()).ok()?,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `parse`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Display for VelocityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for VelocityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VelocityName({})", self.as_str())
    }
}

/// A velocity rule's parameters: `{"scope", "window_secs", "limit", "action"}`, the
/// action `block` or `monitor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VelocityLimit {
    pub scope: BlockScope,
    window_secs: u32,
    limit: u32,
    action: RuleAction,
}

impl VelocityLimit {
    /// Reads the parameters of a velocity rule from a JSON object.
    ///
    /// # Errors
    /// [`RuleParamsError`] naming `params.<field>` for a missing, unknown or invalid one.
    pub fn parse(
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, RuleParamsError> {
        let error = |field: &str, message: &str| RuleParamsError {
            field: format!("params.{field}"),
            message: message.to_owned(),
        };
        const FIELDS: [&str; 4] = ["scope", "window_secs", "limit", "action"];
        if let Some(unknown) = object.keys().find(|key| !FIELDS.contains(&key.as_str())) {
            return Err(error(
                unknown.as_str(),
                "unknown parameter; a velocity rule has scope, window_secs, limit and action",
            ));
        }
        let scope_message = "the scope must be one of number, client_ip, network, client_id, \
                             prefix, country, api_key, global";
        let scope = object
            .get("scope")
            .ok_or_else(|| error("scope", scope_message))?
            .as_str()
            .and_then(|text| text.parse::<BlockScope>().ok())
            .ok_or_else(|| error("scope", scope_message))?;
        let window_message =
            format!("the window is a whole number of seconds, 1 to {MAX_WINDOW_SECS}");
        let window_secs = object
            .get("window_secs")
            .and_then(serde_json::Value::as_u64)
            .and_then(|secs| u32::try_from(secs).ok())
            .filter(|secs| (1..=MAX_WINDOW_SECS).contains(secs))
            .ok_or_else(|| error("window_secs", window_message.as_str()))?;
        let limit_message = format!("the limit is a whole number of sends, 1 to {MAX_LIMIT}");
        let limit = object
            .get("limit")
            .and_then(serde_json::Value::as_u64)
            .and_then(|limit| u32::try_from(limit).ok())
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| error("limit", limit_message.as_str()))?;
        let action_message = "the action must be block or monitor (turn a rule off with its mode)";
        let action = match object.get("action").and_then(serde_json::Value::as_str) {
            Some("block") => RuleAction::Block,
            Some("monitor") => RuleAction::Monitor,
            _ => return Err(error("action", action_message)),
        };
        Ok(Self {
            scope,
            window_secs,
            limit,
            action,
        })
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.window_secs))
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn action(&self) -> RuleAction {
        self.action
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "scope": self.scope.as_str(),
            "window_secs": self.window_secs,
            "limit": self.limit,
            "action": self.action.as_str(),
        })
    }

    /// The width of the time buckets this rule is counted in, for the scopes with too
    /// many sends per key to count one by one (country, API key, global); `None` for the
    /// others. A twelfth of the window: such a count is off by at most that much.
    pub fn bucket(&self) -> Option<Duration> {
        matches!(
            self.scope,
            BlockScope::Country | BlockScope::ApiKey | BlockScope::Global
        )
        .then(|| Duration::from_secs(u64::from(self.window_secs.div_ceil(BUCKETS_PER_WINDOW))))
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

    use super::{RuleAction, RuleId, RuleKind, RuleMode, RuleParams, VelocityLimit, VelocityName};
    use crate::domain::abuse::BlockScope;
    use crate::domain::numbering::{NumberType, Region};

    fn limit(value: serde_json::Value) -> Result<VelocityLimit, String> {
        VelocityLimit::parse(value.as_object().unwrap()).map_err(|e| e.field)
    }

    #[test]
    fn velocity_parameters_name_the_field_they_fail_on() {
        let good =
            json!({"scope": "client_ip", "window_secs": 3600, "limit": 10, "action": "block"});
        let parsed = limit(good.clone()).unwrap();
        assert_eq!(parsed.scope, BlockScope::ClientIp);
        assert_eq!(parsed.to_json(), good);
        let cases = [
            (
                json!({"window_secs": 60, "limit": 1, "action": "block"}),
                "params.scope",
            ),
            (
                json!({"scope": "ip", "window_secs": 60, "limit": 1, "action": "block"}),
                "params.scope",
            ),
            (
                json!({"scope": "number", "limit": 1, "action": "block"}),
                "params.window_secs",
            ),
            (
                json!({"scope": "number", "window_secs": 0, "limit": 1, "action": "block"}),
                "params.window_secs",
            ),
            (
                json!({"scope": "number", "window_secs": 2_592_001, "limit": 1, "action": "block"}),
                "params.window_secs",
            ),
            (
                json!({"scope": "number", "window_secs": 1.5, "limit": 1, "action": "block"}),
                "params.window_secs",
            ),
            (
                json!({"scope": "number", "window_secs": 60, "limit": 0, "action": "block"}),
                "params.limit",
            ),
            (
                json!({"scope": "number", "window_secs": 60, "limit": -3, "action": "block"}),
                "params.limit",
            ),
            (
                json!({"scope": "number", "window_secs": 60, "limit": "5", "action": "block"}),
                "params.limit",
            ),
            (
                json!({"scope": "number", "window_secs": 60, "limit": 5, "action": "allow"}),
                "params.action",
            ),
            (
                json!({"scope": "number", "window_secs": 60, "limit": 5}),
                "params.action",
            ),
            (
                json!({"scope": "number", "window_secs": 60, "limit": 5, "action": "block", "burst": 2}),
                "params.burst",
            ),
        ];
        for (value, field) in cases {
            assert_eq!(limit(value.clone()).unwrap_err(), field, "{value}");
        }
    }

    #[test]
    fn names_are_short_lower_case_words() {
        assert_eq!(
            VelocityName::parse("client_ip_day").unwrap().as_str(),
            "client_ip_day"
        );
        for bad in ["", "Client", "with-dash", "a.b", &"x".repeat(41)] {
            assert!(VelocityName::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn high_volume_scopes_are_counted_in_twelve_buckets_per_window() {
        let of = |scope: &str| {
            limit(json!({"scope": scope, "window_secs": 3600, "limit": 5, "action": "block"}))
                .unwrap()
                .bucket()
                .map(|width| width.as_secs())
        };
        assert_eq!(of("country"), Some(300));
        assert_eq!(of("global"), Some(300));
        assert_eq!(of("api_key"), Some(300));
        assert_eq!(of("prefix"), None);
        assert_eq!(of("number"), None);
    }

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
            RuleId::parse("velocity.client_ip").unwrap(),
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
            "velocity.Client",
            "velocity.",
            "number_type.premium_rate.x",
        ] {
            assert!(RuleId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parameters_name_the_field_they_fail_on() {
        assert_eq!(
            RuleParams::parse(RuleKind::Country, &json!({"action": "monitor"}))
                .unwrap()
                .action(),
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
                RuleParams::parse(RuleKind::NumberType, &value)
                    .unwrap_err()
                    .field,
                field,
                "{value}"
            );
        }
    }

    #[test]
    fn guess_and_conversion_rule_ids_read_back_from_their_text() {
        for id in [
            RuleId::GuessNumber,
            RuleId::ConversionPrefix,
            RuleId::ConversionCountry,
        ] {
            assert_eq!(RuleId::parse(&id.to_string()), Ok(id));
        }
        for bad in ["guess.prefix", "conversion.number", "guess."] {
            assert!(RuleId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn guess_and_conversion_parameters_read_back_and_name_the_field_they_fail_on() {
        let guess = json!({"window_secs": 3600, "limit": 10, "lock_secs": 3600});
        let conversion = json!({"min_sends": 50, "min_conversion_pct": 20, "window_secs": 3600,
                                "cooldown_secs": 43_200, "grace_secs": 120});
        for (kind, value) in [(RuleKind::Guess, guess), (RuleKind::Conversion, conversion)] {
            assert_eq!(RuleParams::parse(kind, &value).unwrap().to_json(), value);
        }
        let cases = [
            (RuleKind::Guess, json!({"action": "block"}), "params.action"),
            (
                RuleKind::Guess,
                json!({"limit": 3, "lock_secs": 60}),
                "params.window_secs",
            ),
            (
                RuleKind::Guess,
                json!({"window_secs": 60, "limit": 0, "lock_secs": 60}),
                "params.limit",
            ),
            (
                RuleKind::Guess,
                json!({"window_secs": 86_401, "limit": 3, "lock_secs": 60}),
                "params.window_secs",
            ),
            (
                RuleKind::Conversion,
                json!({"min_sends": 5, "min_conversion_pct": 101, "window_secs": 3600,
                       "cooldown_secs": 60, "grace_secs": 0}),
                "params.min_conversion_pct",
            ),
            (
                RuleKind::Conversion,
                json!({"min_sends": 5, "min_conversion_pct": 20, "window_secs": 3600,
                       "cooldown_secs": 60, "grace_secs": 3600}),
                "params.grace_secs",
            ),
        ];
        for (kind, value, field) in cases {
            assert_eq!(
                RuleParams::parse(kind, &value).unwrap_err().field,
                field,
                "{kind:?} {value}"
            );
        }
    }
}
