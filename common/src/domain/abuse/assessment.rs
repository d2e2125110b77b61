//! Judging a start request by the rules that need no counters (number type, country)
//! and by the blocks in force on its destination (which the guess budget and the
//! conversion breaker wrote): in memory, from snapshots of the rules and the blocks, with
//! no database round trip. The same
//! snapshot says which velocity limits a request is counted under (judged where sends
//! are recorded) and whether the allow list exempts it from them.
//!
//! The result is a [`Risk`] (the decision, every rule that matched with its mode and
//! outcome, and notes about signals that could not be used) and, when an enforced rule
//! blocks, the [`Refusal`] to answer with. Rules in shadow mode are evaluated the same
//! way; their blocks are recorded as `shadow_block` and refuse nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::abuse::active_blocks::ActiveBlock;
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
    /// A block written by a counting rule is in force on the number (`scope` number: the
    /// guess budget locked it), its prefix or its country, until `until`.
    Blocked {
        scope: BlockScope,
        until: DateTime<Utc>,
    },
}

impl RefusalReason {
    /// What the rule judged, for people (`number type premium_rate`, `country NG`).
    fn subject(self) -> String {
        match self {
            Self::NumberType(kind) => format!("number type {kind}"),
            Self::Country(region) => format!("country {region}"),
            Self::Blocked { scope, until } => format!("{scope} blocked until {until}"),
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
        RefusalReason::Blocked {
            scope: BlockScope::Number,
            ..
        } => format!(
            "too many wrong codes were tried for this number; it is locked for now (rule {rule})"
        ),
        RefusalReason::Blocked { scope, .. } => format!(
            "codes to this {scope} are paused: too few of its recent codes were used (rule {rule})"
        ),
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
    /// The rules that write blocks (guesses, conversion).
    counting: HashMap<RuleId, Rule>,
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
            counting: HashMap::new(),
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
                RuleId::GuessNumber | RuleId::ConversionPrefix | RuleId::ConversionCountry => {
                    set.counting.insert(rule.id, rule);
                }
                // Parameters of another kind: not written by the API, judged by nothing.
                RuleId::Velocity(_) => {}
            }
        }
        set.velocity.sort_by_key(|(id, _, _)| *id);
        set
    }

    /// A rule that writes blocks (`guess.number`, `conversion.*`) with the mode it
    /// applies in now; `None` when it is not stored.
    pub fn counting_rule(&self, id: RuleId) -> Option<(Rule, RuleMode)> {
        self.counting
            .get(&id)
            .map(|rule| (*rule, rule.mode.under(self.global)))
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
        let decision = decide(&hits);
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

    /// Adds to `assessment` what `blocks` (those in force on its destination) do to it,
    /// unless a rule refused it already; see [`RuleSet::judge_blocks`].
    pub fn apply_blocks(&self, mut assessment: Assessment, blocks: &[&ActiveBlock]) -> Assessment {
        if assessment.refusal.is_some() {
            return assessment;
        }
        let (hits, refusal) = self.judge_blocks(blocks);
        assessment.risk.rules.extend(hits);
        assessment.refusal = refusal;
        assessment.risk.decision = decide(&assessment.risk.rules);
        assessment
    }

    /// What `blocks` do to a send: the hits to record and the refusal, if any. A block
    /// applies in the mode its rule has now, and at most in shadow mode if a rule in
    /// shadow mode wrote it: an enforced one refuses (the first found ends the judging),
    /// a shadow one is recorded as a would-be refusal, and one whose rule is off or gone
    /// does nothing.
    pub fn judge_blocks(&self, blocks: &[&ActiveBlock]) -> (Vec<RuleHit>, Option<Refusal>) {
        let mut hits = Vec::new();
        for block in blocks {
            let Some((_, rule_mode)) = self.counting_rule(block.rule) else {
                continue;
            };
            let mode = if block.shadow {
                rule_mode.min(RuleMode::Shadow)
            } else {
                rule_mode
            };
            let outcome = match mode {
                RuleMode::Off => continue,
                RuleMode::Shadow => Outcome::ShadowBlock,
                RuleMode::Enforce => Outcome::Block,
            };
            let detail = match block.scope {
                BlockScope::Number => format!("number locked until {}", block.until),
                scope => format!("{scope} {} blocked until {}", block.key, block.until),
            };
            hits.push(RuleHit {
                id: block.rule.to_string(),
                mode,
                outcome,
                detail,
            });
            if outcome == Outcome::Block {
                let refusal = Refusal {
                    rule: block.rule,
                    reason: RefusalReason::Blocked {
                        scope: block.scope,
                        until: block.until,
                    },
                };
                return (hits, Some(refusal));
            }
        }
        (hits, None)
    }
}

/// The overall decision from the rules that matched an accepted request.
fn decide(hits: &[RuleHit]) -> Decision {
    if hits.iter().any(|hit| hit.outcome == Outcome::ShadowBlock) {
        Decision::ShadowBlock
    } else if hits.iter().any(|hit| hit.outcome == Outcome::Monitor) {
        Decision::Monitor
    } else {
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::{Decision, RefusalReason, RuleSet};
    use crate::domain::abuse::allow::AllowList;
    use crate::domain::abuse::client::ClientSignals;
    use chrono::{Duration, Utc};

    use crate::domain::abuse::active_blocks::ActiveBlock;
    use crate::domain::abuse::blocks::BlockScope;
    use crate::domain::abuse::rules::{
        Outcome, Rule, RuleAction, RuleId, RuleKind, RuleMode, RuleParams,
    };
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

    fn counting(id: RuleId, mode: RuleMode) -> Rule {
        let params = match id {
            RuleId::GuessNumber => RuleParams::parse(
                RuleKind::Guess,
                &serde_json::json!({"window_secs": 3600, "limit": 10, "lock_secs": 3600}),
            ),
            _ => RuleParams::parse(
                RuleKind::Conversion,
                &serde_json::json!({"min_sends": 50, "min_conversion_pct": 20,
                    "window_secs": 3600, "cooldown_secs": 43_200, "grace_secs": 120}),
            ),
        }
        .unwrap();
        Rule { id, mode, params }
    }

    fn block(scope: BlockScope, key: &str, rule: RuleId, shadow: bool) -> ActiveBlock {
        ActiveBlock {
            id: 7,
            scope,
            key: key.to_owned(),
            rule,
            until: Utc::now() + Duration::hours(1),
            shadow,
        }
    }

    fn with_counting(global: RuleMode, modes: [RuleMode; 3]) -> RuleSet {
        let [guess, prefix, country] = modes;
        RuleSet::new(
            global,
            [
                rule("country.default", RuleMode::Enforce, RuleAction::Allow),
                rule("country.NG", RuleMode::Enforce, RuleAction::Block),
                counting(RuleId::GuessNumber, guess),
                counting(RuleId::ConversionPrefix, prefix),
                counting(RuleId::ConversionCountry, country),
            ],
            AllowList::default(),
        )
    }

    #[test]
    fn an_enforced_block_refuses_and_the_first_one_found_names_the_refusal() {
        use RuleMode::Enforce;
        let set = with_counting(Enforce, [Enforce; 3]);
        let lock = block(
            BlockScope::Number,
            "+14155550100",
            RuleId::GuessNumber,
            false,
        );
        let prefix = block(
            BlockScope::Prefix,
            "+1415555",
            RuleId::ConversionPrefix,
            false,
        );
        let assessment = set.assess(class(NumberType::Mobile, "US"), &ClientSignals::default());

        let judged = set.apply_blocks(assessment, &[&lock, &prefix]);

        let refusal = judged.refusal.unwrap();
        assert_eq!(refusal.rule, RuleId::GuessNumber);
        assert!(matches!(
            refusal.reason,
            RefusalReason::Blocked {
                scope: BlockScope::Number,
                ..
            }
        ));
        assert_eq!(judged.risk.rules.len(), 1);
    }

    #[test]
    fn shadow_blocks_and_rules_in_shadow_mode_record_without_refusing() {
        use RuleMode::{Enforce, Shadow};
        let written_in_shadow = block(
            BlockScope::Prefix,
            "+1415555",
            RuleId::ConversionPrefix,
            true,
        );
        let rule_now_in_shadow = block(BlockScope::Country, "US", RuleId::ConversionCountry, false);
        let set = with_counting(Enforce, [Enforce, Enforce, Shadow]);
        let assessment = set.assess(class(NumberType::Mobile, "US"), &ClientSignals::default());

        let judged = set.apply_blocks(assessment, &[&written_in_shadow, &rule_now_in_shadow]);

        assert_eq!(judged.refusal, None);
        assert_eq!(judged.risk.decision, Decision::ShadowBlock);
        let outcomes: Vec<_> = judged
            .risk
            .rules
            .iter()
            .map(|hit| (hit.id.as_str(), hit.mode, hit.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("conversion.prefix", Shadow, Outcome::ShadowBlock),
                ("conversion.country", Shadow, Outcome::ShadowBlock),
            ]
        );
    }

    #[test]
    fn blocks_of_rules_that_are_off_do_nothing_and_a_refused_request_stays_as_it_was() {
        use RuleMode::{Enforce, Off};
        let lock = block(
            BlockScope::Number,
            "+2348021234567",
            RuleId::GuessNumber,
            false,
        );
        let off = with_counting(Enforce, [Off, Enforce, Enforce]);
        let assessment = off.assess(class(NumberType::Mobile, "GB"), &ClientSignals::default());
        let judged = off.apply_blocks(assessment, &[&lock]);
        assert_eq!((judged.refusal, judged.risk.rules.len()), (None, 0));

        let on = with_counting(Enforce, [Enforce; 3]);
        let refused = on.assess(class(NumberType::Mobile, "NG"), &ClientSignals::default());
        let judged = on.apply_blocks(refused, &[&lock]);
        assert_eq!(judged.refusal.unwrap().rule.to_string(), "country.NG");
        assert_eq!(judged.risk.rules.len(), 1);
    }
}
