//! Judging a start request by the rules that need no counters (number type, country):
//! in memory, from a snapshot of the rules, with no database round trip.
//!
//! The result is a [`Risk`] (the decision, every rule that matched with its mode and
//! outcome, and notes about signals that could not be used) and, when an enforced rule
//! blocks, the [`Refusal`] to answer with. Rules in shadow mode are evaluated the same
//! way; their blocks are recorded as `shadow_block` and refuse nothing.

use std::collections::HashMap;

use serde::Serialize;

use crate::domain::abuse::client::ClientSignals;
use crate::domain::abuse::rules::{Rule, RuleAction, RuleId, RuleMode};
use crate::domain::numbering::{NumberClass, NumberType, Region};

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
}

impl RuleSet {
    /// The set of `rules` under the process-wide mode `global`.
    pub fn new(global: RuleMode, rules: impl IntoIterator<Item = Rule>) -> Self {
        let mut set = Self {
            global,
            number_types: HashMap::new(),
            country_default: None,
            countries: HashMap::new(),
        };
        for rule in rules {
            match rule.id {
                RuleId::NumberType(kind) => {
                    set.number_types.insert(kind, rule);
                }
                RuleId::CountryDefault => set.country_default = Some(rule),
                RuleId::Country(region) => {
                    set.countries.insert(region, rule);
                }
            }
        }
        set
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
            let outcome = match (mode, rule.params.action) {
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
    use super::{Decision, Outcome, RefusalReason, RuleSet};
    use crate::domain::abuse::client::ClientSignals;
    use crate::domain::abuse::rules::{Rule, RuleAction, RuleId, RuleMode, RuleParams};
    use crate::domain::numbering::{NumberClass, NumberType, Region};

    fn rule(id: &str, mode: RuleMode, action: RuleAction) -> Rule {
        Rule {
            id: RuleId::parse(id).unwrap(),
            mode,
            params: RuleParams { action },
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
    fn an_unreadable_client_ip_is_noted_not_refused() {
        let client = ClientSignals::parse(Some("not-an-ip"), None).unwrap();
        let assessment =
            defaults(RuleMode::Enforce).assess(class(NumberType::Mobile, "GB"), &client);
        assert_eq!(assessment.refusal, None);
        assert_eq!(assessment.risk.notes[0].code, "client_ip_unreadable");
    }
}
