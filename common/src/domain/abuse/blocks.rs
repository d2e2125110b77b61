//! Blocks: sends to one scope (a prefix, a country, an IP address, …) refused until a
//! time. The rules that watch counters write them; people list and lift them. The blocks
//! in force, as a start request is judged by them, are `active_blocks`.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use utoipa::ToSchema;

/// What a block applies to, and what a velocity limit counts by: one number, one
/// prefix, … or everything (`global`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlockScope {
    Number,
    /// An E.164 number without its last four digits.
    Prefix,
    Country,
    ClientIp,
    /// An IPv4 /24 or IPv6 /64.
    Network,
    ClientId,
    ApiKey,
    Global,
}

impl BlockScope {
    /// Every scope, in a fixed order.
    pub const ALL: [BlockScope; 8] = [
        Self::Number,
        Self::Prefix,
        Self::Country,
        Self::ClientIp,
        Self::Network,
        Self::ClientId,
        Self::ApiKey,
        Self::Global,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Prefix => "prefix",
            Self::Country => "country",
            Self::ClientIp => "client_ip",
            Self::Network => "network",
            Self::ClientId => "client_id",
            Self::ApiKey => "api_key",
            Self::Global => "global",
        }
    }
}

impl fmt::Display for BlockScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BlockScope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a block scope"))
    }
}

#[cfg(test)]
mod tests {
    use super::BlockScope;

    #[test]
    fn every_scope_reads_back_from_its_text() {
        for scope in BlockScope::ALL {
            assert_eq!(scope.as_str().parse::<BlockScope>(), Ok(scope));
        }
    }
}
