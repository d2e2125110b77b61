//! Abuse controls' vocabulary: the signals a request carries about its end user
//! (`client`), the rules and their modes (`rules`), judging a request by the rules that
//! need no counters (`assessment`), the allow list (`allow`) and blocks (`blocks`).
//! Storage and caching live elsewhere (`db::abuse`, the API); nothing here does I/O.

pub mod allow;
pub mod assessment;
pub mod blocks;
pub mod client;
pub mod rules;

pub use allow::{AllowEntry, AllowEntryError, AllowKind, MAX_ALLOW_NOTE_CHARS};

pub use assessment::{
    Assessment, Decision, Outcome, Refusal, RefusalReason, Risk, RiskNote, RuleHit, RuleSet,
};
pub use blocks::BlockScope;
pub use client::{ClientId, ClientIdError, ClientSignals, MAX_CLIENT_ID_LEN};
pub use rules::{
    Rule, RuleAction, RuleId, RuleIdError, RuleKind, RuleMode, RuleParams, RuleParamsError,
};
