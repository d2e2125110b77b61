//! Abuse controls in the API: the rules every start request is judged by, the allow list
//! and the blocks in force, held in memory so judging costs no database round trip, and
//! the counters of what the rules did. Velocity limits are judged where the sends are recorded (the start's
//! batch statement, the resend's statement); this module says which limits a request is
//! counted under and counts what they did.
//!
//! Rules and the allow list live in Postgres and every change of either bumps their
//! version and announces it. Each API
//! process hears the announcement on its listener session (`crate::notifications`) and
//! reloads the rules at once, so a change made through any replica applies everywhere
//! within milliseconds. While that session is down, the process polls the version every
//! `VERIFY_ABUSE_REFRESH_MS` (1 s by default) instead, so a change still applies within
//! about a second (the README promises two); a change made through this process applies
//! here at once either way. Should Postgres be unreachable, the process keeps judging by
//! the rules it has, and start requests fail with 503 anyway because they cannot be
//! recorded.
//!
//! Blocks (written by the guess budget when a check reaches it, and by the conversion
//! breaker, `crate::breaker`) are followed the same way: their table announces every
//! change, the process reloads the blocks in force, and while no session hears the
//! announcements it reloads them every `VERIFY_ABUSE_REFRESH_MS`. A lift or a lock made
//! through this process applies here at once. A block that runs out stops refusing at
//! its time without a reload.
//!
//! Outcomes (blocks, would-be blocks, monitored requests) are counted in memory per rule
//! and added to the shared totals and to `verify_abuse_decisions_total` on the same
//! schedule, never per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use verify_common::db::abuse::{self, RuleCount};
use verify_common::db::verifications::GuessCheck;
use verify_common::db::{DbError, Pool};
use verify_common::domain::PhoneNumber;
use verify_common::domain::abuse::{
    ActiveBlock, AllowKind, AllowList, BlockSet, ClientSignals, Outcome, Requester, Risk, RiskNote,
    RuleHit, RuleId, RuleMode, RuleParams, RuleSet, VelocityCheck,
};

use crate::error::ApiError;
use crate::metrics::ApiMetrics;

/// Outcomes counted since the last flush.
#[derive(Default)]
struct Uncounted {
    /// Per rule, for the shared totals; kept for the next flush when writing fails.
    stored: HashMap<(String, Outcome), i64>,
    /// Per rule and the mode it applied in, for the metrics; reported at every flush.
    reported: HashMap<(String, Outcome, RuleMode), u64>,
}

impl Uncounted {
    fn add(&mut self, rule: String, outcome: Outcome, mode: RuleMode) {
        *self.stored.entry((rule.clone(), outcome)).or_default() += 1;
        *self.reported.entry((rule, outcome, mode)).or_default() += 1;
    }
}

/// The rules as last loaded, with the version they were read at.
struct Loaded {
    version: i64,
    rules: Arc<RuleSet>,
}

/// The rules and blocks in force in this process, and its uncounted rule outcomes.
pub(crate) struct AbuseControls {
    pool: Pool,
    global: RuleMode,
    loaded: RwLock<Loaded>,
    /// The blocks in force, with the number of the read that found them.
    blocks: RwLock<(u64, Arc<BlockSet>)>,
    /// Numbers block reads in the order they start, so a slow read never replaces the
    /// result of one that started after it.
    block_reads: AtomicU64,
    /// Outcomes not yet added to the shared totals or reported as metrics.
    pending: Mutex<Uncounted>,
    metrics: Arc<ApiMetrics>,
    /// Whether rule and block changes are being heard, so they need not be polled.
    listening: AtomicBool,
}

impl AbuseControls {
    /// Loads the rules and the blocks in force; `global` caps every rule's mode.
    ///
    /// # Errors
    /// [`DbError`] when they cannot be read: the API must not start without them.
    pub(crate) async fn load(
        pool: Pool,
        global: RuleMode,
        metrics: Arc<ApiMetrics>,
    ) -> Result<Self, DbError> {
        let snapshot = abuse::load_rules(&pool).await?;
        let rules = rule_set(global, &snapshot);
        let blocks = read_blocks(&pool).await?;
        Ok(Self {
            pool,
            global,
            blocks: RwLock::new((0, Arc::new(blocks))),
            block_reads: AtomicU64::new(1),
            loaded: RwLock::new(Loaded {
                version: snapshot.version,
                rules: Arc::new(rules),
            }),
            pending: Mutex::new(Uncounted::default()),
            metrics,
            listening: AtomicBool::new(false),
        })
    }

    /// The process-wide mode (`VERIFY_ABUSE_MODE`).
    pub(crate) fn global_mode(&self) -> RuleMode {
        self.global
    }

    fn rules(&self) -> Arc<RuleSet> {
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&loaded.rules)
    }

    fn blocks(&self) -> Arc<BlockSet> {
        Arc::clone(&self.blocks.read().unwrap_or_else(|p| p.into_inner()).1)
    }

    /// Judges a send to `to` for a client with `client`'s signals, asked for with the API
    /// key `api_key` (as [`crate::auth::Caller::key_name`] names it), and counts what the
    /// rules that need no counters and the blocks in force on its number, prefix and
    /// country did. Returns the risk and the velocity limits the send is to be counted
    /// under (none when the allow list exempts it, which the risk notes). The allow list
    /// also exempts it from the conversion breaker's blocks, not from a guess lock.
    ///
    /// # Errors
    /// [`ApiError::Refused`] when an enforced rule or block refuses the request.
    pub(crate) fn assess(
        &self,
        to: &PhoneNumber,
        client: &ClientSignals,
        api_key: &str,
    ) -> Result<(Risk, Vec<VelocityCheck>), ApiError> {
        let class = to.class().ok_or_else(|| {
            ApiError::invalid(
                "invalid_phone_number",
                "to",
                verify_common::domain::PhoneNumberError::NotValidInCountry,
            )
        })?;
        let rules = self.rules();
        let allowed = rules.allowed(to, api_key);
        let blocks = self.blocks();
        let found: Vec<&ActiveBlock> = blocks
            .on_destination(to, class.region, Utc::now())
            .into_iter()
            .filter(|block| allowed.is_none() || block.rule == RuleId::GuessNumber)
            .collect();
        let mut assessment = rules.apply_blocks(rules.assess(class, client), &found);
        self.count_hits(&assessment.risk.rules);
        if let Some(refusal) = assessment.refusal {
            return Err(ApiError::Refused(refusal));
        }
        if self.global == RuleMode::Off {
            return Ok((assessment.risk, Vec::new()));
        }
        if let Some(kind) = allowed {
            assessment.risk.notes.push(RiskNote {
                code: "allow_listed".to_owned(),
                message: format!(
                    "the allow list has this {}: velocity and conversion rules do not apply",
                    match kind {
                        AllowKind::Number => "number",
                        AllowKind::Prefix => "number's prefix",
                        AllowKind::ApiKey => "API key",
                    }
                ),
            });
            return Ok((assessment.risk, Vec::new()));
        }
        let checks = rules.velocity_checks(&Requester {
            to,
            region: class.region,
            client,
            api_key,
        });
        Ok((assessment.risk, checks))
    }

    /// The guess budget as checks apply it now; `None` when its rule is not stored.
    pub(crate) fn guess_check(&self) -> Option<GuessCheck> {
        let (rule, mode) = self.rules().counting_rule(RuleId::GuessNumber)?;
        match rule.params {
            RuleParams::GuessBudget(budget) => Some(GuessCheck { mode, budget }),
            _ => None,
        }
    }

    /// Counts one outcome of `rule`, applying in `mode`, met outside a start request (a
    /// check refused by a lock).
    pub(crate) fn count(&self, rule: RuleId, outcome: Outcome, mode: RuleMode) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.add(rule.to_string(), outcome, mode);
    }

    fn count_hits(&self, hits: &[RuleHit]) {
        if hits.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for hit in hits {
            pending.add(hit.id.clone(), hit.outcome, hit.mode);
        }
    }

    /// Reads the blocks in force again, now.
    ///
    /// # Errors
    /// [`DbError`] when they cannot be read; the blocks in force stay.
    pub(crate) async fn reload_blocks(&self) -> Result<(), DbError> {
        let read = self.block_reads.fetch_add(1, Ordering::AcqRel);
        let blocks = read_blocks(&self.pool).await?;
        let mut current = self.blocks.write().unwrap_or_else(|p| p.into_inner());
        if read > current.0 {
            *current = (read, Arc::new(blocks));
        }
        Ok(())
    }

    /// Counts what the velocity limits did to one request: each of `checks` whose figure
    /// in `counts` (same order) exceeds its limit had its outcome.
    pub(crate) fn count_velocity(&self, checks: &[VelocityCheck], counts: &[u64]) {
        let mut pending = None;
        for (check, counted) in checks.iter().zip(counts) {
            if check.exceeded_by(*counted) {
                let pending = pending
                    .get_or_insert_with(|| self.pending.lock().unwrap_or_else(|p| p.into_inner()));
                pending.add(check.rule.to_string(), check.outcome, check.mode);
            }
        }
    }

    /// How long the velocity rules in force need their records (see
    /// [`RuleSet::velocity_retention`]).
    pub(crate) fn velocity_retention(&self) -> (Duration, Duration) {
        self.rules().velocity_retention()
    }

    /// Reads the rules again, now. An older snapshot never replaces a newer one, so a
    /// slow reload cannot undo a faster one.
    ///
    /// # Errors
    /// [`DbError`] when the rules cannot be read; the rules in force stay.
    pub(crate) async fn reload(&self) -> Result<(), DbError> {
        let snapshot = abuse::load_rules(&self.pool).await?;
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        if snapshot.version >= loaded.version {
            let rules = rule_set(self.global, &snapshot);
            *loaded = Loaded {
                version: snapshot.version,
                rules: Arc::new(rules),
            };
        }
        Ok(())
    }

    /// The listener session now hears rule and block changes. Changes made before it
    /// listened were not heard, so the rules and blocks are read again.
    ///
    /// # Errors
    /// [`DbError`] when they cannot be read; polling goes on until they are.
    pub(crate) async fn listening_started(&self) -> Result<(), DbError> {
        self.reload().await?;
        self.reload_blocks().await?;
        self.listening.store(true, Ordering::Release);
        Ok(())
    }

    /// The listener session is lost: rule and block changes are polled for until it is
    /// back.
    pub(crate) fn listening_lost(&self) {
        self.listening.store(false, Ordering::Release);
    }

    /// Reloads the blocks, and the rules if their version moved since they were loaded,
    /// unless changes are being heard. The blocks in force are few, so reading them all
    /// costs about as much as asking whether they changed.
    async fn refresh(&self) -> Result<(), DbError> {
        if self.listening.load(Ordering::Acquire) {
            return Ok(());
        }
        self.reload_blocks().await?;
        let version = abuse::rules_version(&self.pool).await?;
        let current = self
            .loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .version;
        if version != current {
            self.reload().await?;
        }
        Ok(())
    }

    /// Reports this process's uncounted outcomes as metrics and adds them to the shared
    /// totals. When the totals cannot be written, their part is kept for the next
    /// attempt (the metrics have it already).
    async fn flush_counts(&self) -> Result<(), DbError> {
        let (taken, reported) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            (
                std::mem::take(&mut pending.stored),
                std::mem::take(&mut pending.reported),
            )
        };
        for ((rule, outcome, mode), count) in reported {
            self.metrics.abuse_decisions(&rule, outcome, mode, count);
        }
        let taken: Vec<RuleCount> = {
            taken
                .into_iter()
                .map(|((rule_id, outcome), count)| RuleCount {
                    rule_id,
                    outcome,
                    count,
                })
                .collect()
        };
        if let Err(error) = abuse::add_rule_counts(&self.pool, &taken).await {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for count in taken {
                *pending
                    .stored
                    .entry((count.rule_id, count.outcome))
                    .or_default() += count.count;
            }
            return Err(error);
        }
        Ok(())
    }
}

/// The blocks in force, as judging applies them.
async fn read_blocks(pool: &Pool) -> Result<BlockSet, DbError> {
    let records = abuse::list_active_blocks(pool).await?;
    Ok(BlockSet::new(
        records.iter().filter_map(abuse::BlockRecord::to_active),
    ))
}

/// The rules and allow list of `snapshot` under the process-wide mode `global`.
fn rule_set(global: RuleMode, snapshot: &abuse::RulesSnapshot) -> RuleSet {
    RuleSet::new(
        global,
        snapshot.rules.iter().map(|record| record.rule),
        AllowList::new(
            snapshot
                .allow
                .iter()
                .map(|entry| (entry.kind, entry.value.as_str())),
        ),
    )
}

/// Writes the counters (and, while no change is heard, refreshes the rules and blocks) every
/// `interval` until `shutdown`, then writes the counters a last time.
pub(crate) async fn run(
    controls: Arc<AbuseControls>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = controls.refresh().await {
            tracing::warn!(%error, "could not refresh the abuse rules; the loaded ones stay");
        }
        if let Err(error) = controls.flush_counts().await {
            tracing::warn!(%error, "could not write the abuse rule counters; will retry");
        }
    }
    if let Err(error) = controls.flush_counts().await {
        tracing::warn!(%error, "could not write the abuse rule counters at shutdown");
    }
}
