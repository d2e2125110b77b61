//! Velocity limits applied to a request: at most `limit` sends per `window` for one key
//! of a scope (one number, one client address, one country, …), as the rule's
//! [`VelocityLimit`] says.
//!
//! The limits are judged where the sends are recorded, in the batch statement, because
//! only there are the counts of every API process known. This module decides what each
//! request is counted under ([`VelocityCheck`]: the rule, the scope's key for this request,
//! the figures, what exceeding it does) and nothing else; counting is `db::starts`'.

use std::net::IpAddr;
use std::time::Duration;

use crate::domain::abuse::blocks::BlockScope;
use crate::domain::abuse::client::ClientSignals;
use crate::domain::abuse::rules::{Outcome, RuleAction, RuleId, RuleMode, VelocityLimit};
use crate::domain::numbering::Region;
use crate::domain::phone_number::PhoneNumber;

/// The key of the `global` scope: every request shares it.
const GLOBAL_KEY: &str = "all";
/// The key of the `api_key` scope for the key configured with `VERIFY_API_KEY`, which
/// has no stored id.
pub const CONFIGURED_KEY: &str = "configured";

/// What is known of a request for choosing its keys: the number, its region, the client
/// signals and the API key that asked (its stored id, or [`CONFIGURED_KEY`]).
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub to: &'a PhoneNumber,
    pub region: Region,
    pub client: &'a ClientSignals,
    pub api_key: &'a str,
}

impl Requester<'_> {
    /// This request's key in `scope`; `None` when the request did not say (no client
    /// address, no client id).
    pub fn key(&self, scope: BlockScope) -> Option<String> {
        Some(match scope {
            BlockScope::Number => self.to.as_str().to_owned(),
            BlockScope::Prefix => number_prefix(self.to),
            BlockScope::Country => self.region.as_str().to_owned(),
            BlockScope::ClientIp => self.client.ip?.to_string(),
            BlockScope::Network => network(self.client.ip?),
            BlockScope::ClientId => self.client.id.as_ref()?.as_str().to_owned(),
            BlockScope::ApiKey => self.api_key.to_owned(),
            BlockScope::Global => GLOBAL_KEY.to_owned(),
        })
    }
}

/// The E.164 number without its last four digits: the range one pumping run walks.
pub fn number_prefix(number: &PhoneNumber) -> String {
    let e164 = number.as_str();
    // E.164 text is ASCII and at least 9 characters long.
    e164[..e164.len().saturating_sub(4)].to_owned()
}

/// The network an address belongs to, for counting: its IPv4 /24 or its IPv6 /64
/// (`203.0.113.0/24`, `2001:db8:1:2::/64`).
pub fn network(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            format!("{}/64", std::net::Ipv6Addr::from(segments))
        }
    }
}

/// One velocity rule applied to one request: the key it counts the request under, its
/// figures, and what exceeding it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VelocityCheck {
    pub rule: RuleId,
    pub scope: BlockScope,
    pub key: String,
    pub window: Duration,
    pub limit: u32,
    /// Counted in time buckets of this width rather than one row per send.
    pub bucket: Option<Duration>,
    /// The mode the rule applies in (its own, capped by the global mode; never off).
    pub mode: RuleMode,
    /// What exceeding the limit does: `Block` refuses the request.
    pub outcome: Outcome,
}

impl VelocityCheck {
    /// The check of `limit` (rule `rule`, applying in `mode`) for a request; `None` when
    /// the rule is off or the request has no key in its scope.
    pub fn new(
        rule: RuleId,
        mode: RuleMode,
        limit: &VelocityLimit,
        requester: &Requester<'_>,
    ) -> Option<Self> {
        let outcome = match (mode, limit.action()) {
            (RuleMode::Off, _) | (_, RuleAction::Allow) => return None,
            (_, RuleAction::Monitor) => Outcome::Monitor,
            (RuleMode::Shadow, RuleAction::Block) => Outcome::ShadowBlock,
            (RuleMode::Enforce, RuleAction::Block) => Outcome::Block,
        };
        Some(Self {
            rule,
            scope: limit.scope,
            key: requester.key(limit.scope)?,
            window: limit.window(),
            limit: limit.limit(),
            bucket: limit.bucket(),
            mode,
            outcome,
        })
    }

    /// Whether exceeding the limit refuses the request.
    pub fn refuses(&self) -> bool {
        self.outcome == Outcome::Block
    }

    /// Whether `counted` sends (this request's included) exceed the limit.
    pub fn exceeded_by(&self, counted: u64) -> bool {
        counted > u64::from(self.limit)
    }

    /// The entry the verification's risk gets when the limit is exceeded without
    /// refusing; `detail` names what was counted, the figures are added where they are
    /// known.
    pub fn risk_entry(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.rule.to_string(),
            "mode": self.mode,
            "outcome": self.outcome,
            "detail": self.subject(),
        })
    }

    /// What was counted, for people (`client_ip 203.0.113.9`, `global`).
    pub fn subject(&self) -> String {
        match self.scope {
            BlockScope::Global => "global".to_owned(),
            scope => format!("{scope} {}", self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{network, number_prefix};
    use crate::domain::PhoneNumber;

    #[test]
    fn keys_are_the_prefix_and_the_network_of_the_request() {
        let number = PhoneNumber::parse("+14155550123").unwrap();
        assert_eq!(number_prefix(&number), "+1415555");
        assert_eq!(network("203.0.113.9".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(
            network("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
    }
}
