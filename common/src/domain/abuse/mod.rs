//! Abuse controls' vocabulary: the signals a request carries about its end user
//! (`client`), the rules, their modes and parameters (`rules`), judging a request by the
//! rules that need no counters (`assessment`), what the velocity limits count a request
//! under (`velocity`), the allow list (`allow`), blocks (`blocks`) and the blocks in force
//! as starts are judged by them (`active_blocks`). Storage and caching live elsewhere
//! (`db::abuse`, `db::starts`, the API); nothing here does I/O.

pub mod active_blocks;
pub mod allow;
pub mod assessment;
pub mod blocks;
pub mod client;
pub mod rules;
pub mod velocity;

pub use allow::{AllowEntry, AllowEntryError, AllowKind, AllowList, MAX_ALLOW_NOTE_CHARS};

pub use active_blocks::{ActiveBlock, BlockSet};
pub use assessment::{
    Assessment, Decision, Refusal, RefusalReason, Risk, RiskNote, RuleHit, RuleSet,
};
pub use blocks::BlockScope;
pub use client::{ClientId, ClientIdError, ClientSignals, MAX_CLIENT_ID_LEN};
pub use rules::{
    ConversionBreaker, GuessBudget, MAX_RULE_SECS, Outcome, Rule, RuleAction, RuleId, RuleIdError,
    RuleKind, RuleMode, RuleParams, RuleParamsError, VelocityLimit, VelocityName,
};
pub use velocity::{CONFIGURED_KEY, Requester, VelocityCheck};
