//! The blocks in force, held in memory: a start request finds those on its destination
//! (its number, its prefix, its country) without asking the database.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::abuse::blocks::BlockScope;
use crate::domain::abuse::rules::RuleId;
use crate::domain::numbering::Region;
use crate::domain::phone_number::PhoneNumber;

/// A block that has not been lifted, as a rule wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveBlock {
    pub id: i64,
    pub scope: BlockScope,
    /// What is blocked within the scope: a number, a prefix (`+1415555`), a region (`NG`).
    pub key: String,
    pub rule: RuleId,
    pub until: DateTime<Utc>,
    /// Written by a rule in shadow mode: it shows what the rule would do, refusing nothing.
    pub shadow: bool,
}

/// The blocks in force, by scope and key.
#[derive(Debug, Clone, Default)]
pub struct BlockSet {
    by_scope: HashMap<BlockScope, HashMap<String, Vec<ActiveBlock>>>,
}

impl BlockSet {
    pub fn new(blocks: impl IntoIterator<Item = ActiveBlock>) -> Self {
        let mut by_scope: HashMap<BlockScope, HashMap<String, Vec<ActiveBlock>>> = HashMap::new();
        for block in blocks {
            by_scope
                .entry(block.scope)
                .or_default()
                .entry(block.key.clone())
                .or_default()
                .push(block);
        }
        Self { by_scope }
    }

    /// The blocks in force at `now` on a send to `to` in `region`: on the number itself,
    /// then on its prefix, then on its country. Blocks that ran out are ignored, so a
    /// set loaded a while ago never refuses for longer than its blocks said.
    pub fn on_destination(
        &self,
        to: &PhoneNumber,
        region: Region,
        now: DateTime<Utc>,
    ) -> Vec<&ActiveBlock> {
        [
            (BlockScope::Number, to.as_str()),
            (BlockScope::Prefix, to.prefix()),
            (BlockScope::Country, region.as_str()),
        ]
        .into_iter()
        .filter_map(|(scope, key)| self.by_scope.get(&scope)?.get(key))
        .flatten()
        .filter(|block| block.until > now)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use super::{ActiveBlock, BlockSet};
    use crate::domain::PhoneNumber;
    use crate::domain::abuse::blocks::BlockScope;
    use crate::domain::abuse::rules::RuleId;
    use crate::domain::numbering::Region;

    fn block(scope: BlockScope, key: &str, rule: RuleId, minutes: i64) -> ActiveBlock {
        ActiveBlock {
            id: 1,
            scope,
            key: key.to_owned(),
            rule,
            until: Utc::now() + Duration::minutes(minutes),
            shadow: false,
        }
    }

    #[test]
    fn a_destination_finds_the_blocks_on_its_number_prefix_and_country_in_force() {
        let set = BlockSet::new([
            block(BlockScope::Number, "+14155550100", RuleId::GuessNumber, 10),
            block(BlockScope::Prefix, "+1415555", RuleId::ConversionPrefix, 10),
            block(BlockScope::Country, "US", RuleId::ConversionCountry, 10),
            block(BlockScope::Country, "NG", RuleId::ConversionCountry, 10),
            block(BlockScope::Prefix, "+1415556", RuleId::ConversionPrefix, 10),
        ]);
        let us = Region::parse("US").unwrap();
        let to = PhoneNumber::parse("+14155550100").unwrap();

        let found: Vec<RuleId> = set
            .on_destination(&to, us, Utc::now())
            .iter()
            .map(|block| block.rule)
            .collect();

        assert_eq!(
            found,
            [
                RuleId::GuessNumber,
                RuleId::ConversionPrefix,
                RuleId::ConversionCountry
            ]
        );
        let neighbour = PhoneNumber::parse("+14155550199").unwrap();
        assert_eq!(set.on_destination(&neighbour, us, Utc::now()).len(), 2);
    }

    #[test]
    fn a_block_that_ran_out_is_ignored() {
        let set = BlockSet::new([block(
            BlockScope::Number,
            "+14155550100",
            RuleId::GuessNumber,
            -1,
        )]);
        let to = PhoneNumber::parse("+14155550100").unwrap();
        let us = Region::parse("US").unwrap();
        assert!(set.on_destination(&to, us, Utc::now()).is_empty());
    }

    #[test]
    fn every_scope_reads_back_from_its_text() {
        for scope in BlockScope::ALL {
            assert_eq!(scope.as_str().parse::<BlockScope>(), Ok(scope));
        }
    }
}
