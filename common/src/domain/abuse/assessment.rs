//! Judging a start request by the rules that need no counters (number type, country):
//! in memory, from a snapshot of the rules, with no database round trip. The same
//! snapshot says which velocity limits a request is counted under (judged where sends
//! are recorded) and whether the allow list exempts it from them.
//!
//! The result is a [`Risk`] (the decision, every rule that matched with its mode and
//! outcome, and notes about signals that could not be used) and, when an enforced rule
//! blocks, the [`Refusal`] to answer with. Rules in shadow mode are evaluated the same
//! way; their blocks are recorded as `shadow_block` and refuse nothing.

use std::collections::HashMap;

use serde::Serialize;

use crate::domain::abuse::allow::{AllowKind, AllowList};
use crate::domain::abuse::blocks::BlockScope;
use crate::domain::abuse::client::ClientSignals;
use crate::domain::abuse::rules::{
    Outcome, Rule, RuleAction, RuleId, RuleMode, RuleParams, VelocityLimit,
};
use crate::domain::abuse::velocity::{Requester, VelocityCheck};
use crate::domain::numbering::{NumberClass, NumberType, Region};
use crate::domain::phone_number::PhoneNumber;

/// The overall decision about an accepted request, strongest outcome first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// No rule flagged it.
    Allow,
    /// At least one rule flagged it for monitoring.
    Monitor,
    /// At least one rule in shadow mode would have refused it.
    ShadowBlock,
}

/// One rule that matched a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleHit {
    /// The rule's id (`number_type.premium_rate`).
    pub id: String,
    /// The mode the rule applied in (its own, capped by the global mode).
    pub mode: RuleMode,
    pub outcome: Outcome,
    /// What matched, for people (`number type premium_rate`).
    pub detail: String,
}

/// A remark about the request's signals, such as a `client_ip` that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RiskNote {
    /// Stable machine code (`client_ip_unreadable`).
    pub code: String,
    pub message: String,
}

/// What the rules made of a request, as stored with its verification and shown in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Risk {
    pub decision: Decision,
    /// The process-wide mode the rules were judged under (`off`: none was evaluated).
    pub mode: RuleMode,
    /// The number's type and region, as the rules saw them.
    pub number_type: NumberType,
    pub country: Region,
    /// The rules that matched (rules that did not match are not listed).
    pub rules: Vec<RuleHit>,
    pub notes: Vec<RiskNote>,
}

/// Why an enforced rule refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The number's type is blocked.
    NumberType(NumberType),
    /// The number's country is blocked.
    Country(Region),
}

impl RefusalReason {
    /// What the rule judged, for people (`number type premium_rate`, `country NG`).
    fn subject(self) -> String {
        match self {
            Self::NumberType(kind) => format!("number type {kind}"),
            Self::Country(region) => format!("country {region}"),
        }
    }
}

/// An enforced rule's refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(*.rule, *.reason))]
pub struct Refusal {
    pub rule: RuleId,
    pub reason: RefusalReason,
}

fn describe(rule: RuleId, reason: RefusalReason) -> String {
    match reason {
        RefusalReason::NumberType(kind) => {
            format!("codes are not sent to {kind} numbers (rule {rule})")
        }
        RefusalReason::Country(region) => {
            format!("codes are not sent to numbers of {region} (rule {rule})")
        }
    }
}

/// The result of judging one request: its risk (every matching rule, the refusing one
/// included) and, if an enforced rule blocked it, the refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub risk: Risk,
    pub refusal: Option<Refusal>,
}

/// The rules in force at one moment, with the process-wide mode; judging a request reads
/// only this.
#[derive(Debug, Clone)]
pub struct RuleSet {
    global: RuleMode,
    number_types: HashMap<NumberType, Rule>,
    country_default: Option<Rule>,
    countries: HashMap<Region, Rule>,
    /// Velocity rules in force (not off), in id order.
    velocity: Vec<(RuleId, RuleMode, VelocityLimit)>,
    allow: AllowList,
}

impl RuleSet {
    /// The set of `rules` and the allow list `allow` under the process-wide mode `global`.
    pub fn new(global: RuleMode, rules: impl IntoIterator<Item = Rule>, allow: AllowList) -> Self {
        let mut set = Self {
            global,
            number_types: HashMap::new(),
            country_default: None,
            countries: HashMap::new(),
            velocity: Vec::new(),
            allow,
        };
        for rule in rules {
            if let (RuleId::Velocity(_), RuleParams::Velocity(limit)) = (rule.id, rule.params) {
                let mode = rule.mode.under(global);
                if mode != RuleMode::Off {
                    set.velocity.push((rule.id, mode, limit));
                }
                continue;
            }
            match rule.id {
                RuleId::NumberType(kind) => {
                    set.number_types.insert(kind, rule);
                }
                RuleId::CountryDefault => set.country_default = Some(rule),
                RuleId::Country(region) => {
                    set.countries.insert(region, rule);
                }
                // Parameters of another kind: not written by the API, judged by nothing.
                RuleId::Velocity(_) => {}
            }
        }
        set.velocity.sort_by_key(|(id, _, _)| *id);
        set
    }

    /// The allow-list entry kind that exempts a request to `to` made with `api_key`
    /// from the counting rules (velocity limits, the conversion breaker), if any.
    pub fn allowed(&self, to: &PhoneNumber, api_key: &str) -> Option<AllowKind> {
        self.allow.allows(to, api_key)
    }

    /// The velocity limits a request is counted under: every rule in force whose scope
    /// the request has a key in. None for an allow-listed request.
    pub fn velocity_checks(&self, requester: &Requester<'_>) -> Vec<VelocityCheck> {
        if self.velocity.is_empty() || self.allowed(requester.to, requester.api_key).is_some() {
            return Vec::new();
        }
        self.velocity
            .iter()
            .filter_map(|(id, mode, limit)| VelocityCheck::new(*id, *mode, limit, requester))
            .collect()
    }

    /// How long the velocity rules in force need their records: the longest window of
    /// those counted one row per send (number excepted: sends count for it), and of those
    /// counted in buckets. Zero where no rule needs any.
    pub fn velocity_retention(&self) -> (std::time::Duration, std::time::Duration) {
        let longest = |buckets: bool| {
            self.velocity
                .iter()
                .filter(|(_, _, limit)| {
                    limit.bucket().is_some() == buckets && limit.scope != BlockScope::Number
                })
                .map(|(_, _, limit)| limit.window())
                .max()
                .unwrap_or_default()
        };
        (longest(false), longest(true))
    }

    /// Judges a request to `class` (the number's type and region) from a client with
    /// `client`'s signals. Rules are evaluated number type first, then country; an
    /// enforced block ends the evaluation (later rules would not change the answer).
    pub fn assess(&self, class: NumberClass, client: &ClientSignals) -> Assessment {
        let mut hits = Vec::new();
        let mut refusal = None;
        let country_rule = self
            .countries
            .get(&class.region)
            .or(self.country_default.as_ref());
        let candidates = [
            self.number_types
                .get(&class.number_type)
                .map(|rule| (rule, RefusalReason::NumberType(class.number_type))),
            country_rule.map(|rule| (rule, RefusalReason::Country(class.region))),
        ];
        for (rule, reason) in candidates.into_iter().flatten() {
            let mode = rule.mode.under(self.global);
            let outcome = match (mode, rule.params.action()) {
                (RuleMode::Off, _) | (_, RuleAction::Allow) => continue,
                (_, RuleAction::Monitor) => Outcome::Monitor,
                (RuleMode::Shadow, RuleAction::Block) => Outcome::ShadowBlock,
                (RuleMode::Enforce, RuleAction::Block) => Outcome::Block,
            };
            hits.push(RuleHit {
                id: rule.id.to_string(),
                mode,
                outcome,
                detail: reason.subject(),
            });
            if outcome == Outcome::Block {
                refusal = Some(Refusal {
                    rule: rule.id,
                    reason,
                });
                break;
            }
        }
        let decision = if hits.iter().any(|hit| hit.outcome == Outcome::ShadowBlock) {
            Decision::ShadowBlock
        } else if hits.iter().any(|hit| hit.outcome == Outcome::Monitor) {
            Decision::Monitor
        } else {
            Decision::Allow
        };
        let mut notes = Vec::new();
        if client.unreadable_ip {
            notes.push(RiskNote {
                code: "client_ip_unreadable".to_owned(),
                message: "client_ip is not an IPv4 or IPv6 address; it was ignored".to_owned(),
            });
        }
        Assessment {
            risk: Risk {
                decision,
                mode: self.global,
                number_type: class.number_type,
                country: class.region,
                rules: hits,
                notes,
            },
            refusal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Decision, RefusalReason, RuleSet};
    use crate::domain::abuse::allow::AllowList;
    use crate::domain::abuse::client::ClientSignals;
    use crate::domain::abuse::rules::{Outcome, Rule, RuleAction, RuleId, RuleMode, RuleParams};
    use crate::domain::numbering::{NumberClass, NumberType, Region};

    fn rule(id: &str, mode: RuleMode, action: RuleAction) -> Rule {
        Rule {
            id: RuleId::parse(id).unwrap(),
            mode,
            params: RuleParams::Action(action),
        }
    }

    fn class(number_type: NumberType, region: &str) -> NumberClass {
        NumberClass {
            number_type,
            region: Region::parse(region).unwrap(),
        }
    }

    fn defaults(global: RuleMode) -> RuleSet {
        RuleSet::new(
            global,
            [
                rule(
                    "number_type.premium_rate",
                    RuleMode::Enforce,
                    RuleAction::Block,
                ),
                rule("number_type.voip", RuleMode::Enforce, RuleAction::Allow),
                rule("country.default", RuleMode::Enforce, RuleAction::Allow),
                rule("country.NG", RuleMode::Enforce, RuleAction::Block),
                rule("country.FR", RuleMode::Shadow, RuleAction::Block),
                rule("country.DE", RuleMode::Enforce, RuleAction::Monitor),
            ],
            AllowList::default(),
        )
    }

    #[test]
    fn an_enforced_block_refuses_and_names_its_rule() {
        let assessment = defaults(RuleMode::Enforce).assess(
            class(NumberType::PremiumRate, "GB"),
            &ClientSignals::default(),
        );
        let refusal = assessment.refusal.unwrap();
        assert_eq!(refusal.rule.to_string(), "number_type.premium_rate");
        assert_eq!(
            refusal.reason,
            RefusalReason::NumberType(NumberType::PremiumRate)
        );
        assert_eq!(assessment.risk.rules.len(), 1);
        assert_eq!(assessment.risk.rules[0].outcome, Outcome::Block);

        let country = defaults(RuleMode::Enforce)
            .assess(class(NumberType::Mobile, "NG"), &ClientSignals::default());
        assert_eq!(country.refusal.unwrap().rule.to_string(), "country.NG");
    }

    #[test]
    fn under_a_global_shadow_mode_nothing_is_refused_and_would_be_blocks_are_recorded() {
        let assessment = defaults(RuleMode::Shadow).assess(
            class(NumberType::PremiumRate, "NG"),
            &ClientSignals::default(),
        );
        assert_eq!(assessment.refusal, None);
        assert_eq!(assessment.risk.decision, Decision::ShadowBlock);
        let outcomes: Vec<_> = assessment
            .risk
            .rules
            .iter()
            .map(|hit| (hit.id.as_str(), hit.mode, hit.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                (
                    "number_type.premium_rate",
                    RuleMode::Shadow,
                    Outcome::ShadowBlock
                ),
                ("country.NG", RuleMode::Shadow, Outcome::ShadowBlock),
            ]
        );
    }

    #[test]
    fn a_rule_in_shadow_mode_records_without_refusing_and_monitor_flags() {
        let set = defaults(RuleMode::Enforce);
        let shadowed = set.assess(class(NumberType::Mobile, "FR"), &ClientSignals::default());
        assert_eq!(shadowed.refusal, None);
        assert_eq!(shadowed.risk.decision, Decision::ShadowBlock);
        let monitored = set.assess(class(NumberType::Mobile, "DE"), &ClientSignals::default());
        assert_eq!(monitored.refusal, None);
        assert_eq!(monitored.risk.decision, Decision::Monitor);
        assert_eq!(monitored.risk.rules[0].outcome, Outcome::Monitor);
    }

    #[test]
    fn allowed_regions_and_types_and_the_off_mode_record_nothing() {
        let plain = defaults(RuleMode::Enforce)
            .assess(class(NumberType::Voip, "GB"), &ClientSignals::default());
        assert_eq!(
            (plain.risk.decision, plain.risk.rules.len()),
            (Decision::Allow, 0)
        );
        let off = defaults(RuleMode::Off).assess(
            class(NumberType::PremiumRate, "NG"),
            &ClientSignals::default(),
        );
        assert_eq!(off.refusal, None);
        assert!(off.risk.rules.is_empty());
    }

    #[test]
    fn velocity_checks_follow_the_rules_in_force_and_skip_allow_listed_requests() {
        use crate::domain::PhoneNumber;
        use crate::domain::abuse::allow::AllowKind;
        use crate::domain::abuse::rules::RuleKind;
        use crate::domain::abuse::velocity::Requester;

        let velocity = |id: &str, mode: RuleMode, scope: &str| {
            Rule {
            id: RuleId::parse(id).unwrap(),
            mode,
            params: RuleParams::parse(
                RuleKind::Velocity,
                &serde_json::json!({"scope": scope, "window_secs": 60, "limit": 3, "action": "block"}),
            )
            .unwrap(),
        }
        };
        let set = RuleSet::new(
            RuleMode::Enforce,
            [
                velocity("velocity.global", RuleMode::Shadow, "global"),
                velocity("velocity.client_ip", RuleMode::Enforce, "client_ip"),
                velocity("velocity.client_id", RuleMode::Enforce, "client_id"),
                velocity("velocity.network", RuleMode::Off, "network"),
            ],
            AllowList::new([(AllowKind::Number, "+14155550100")]),
        );
        let client = ClientSignals::parse(Some("203.0.113.9"), None).unwrap();
        let checks_for = |number: &str| {
            let to = PhoneNumber::parse(number).unwrap();
            set.velocity_checks(&Requester {
                to: &to,
                region: Region::parse("US").unwrap(),
                client: &client,
                api_key: "configured",
            })
        };

        let checks = checks_for("+14155550101");
        let judged: Vec<(String, &str, Outcome)> = checks
            .iter()
            .map(|check| (check.rule.to_string(), check.key.as_str(), check.outcome))
            .collect();
        assert_eq!(
            judged,
            [
                (
                    "velocity.client_ip".to_owned(),
                    "203.0.113.9",
                    Outcome::Block
                ),
                ("velocity.global".to_owned(), "all", Outcome::ShadowBlock),
            ]
        );
        assert!(checks_for("+14155550100").is_empty(), "allow-listed");
    }

    #[test]
    fn an_unreadable_client_ip_is_noted_not_refused() {
        let client = ClientSignals::parse(Some("not-an-ip"), None).unwrap();
        let assessment =
            defaults(RuleMode::Enforce).assess(class(NumberType::Mobile, "GB"), &client);
        assert_eq!(assessment.refusal, None);
        assert_eq!(assessment.risk.notes[0].code, "client_ip_unreadable");
    }
}
