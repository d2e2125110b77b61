//! Abuse controls in Postgres: the rules and the allow list (with the version every change
//! of either bumps), the rules' counters, blocks, the conversion breaker, and the clean-up
//! of old velocity counts and guesses.
//!
//! API processes keep the rules and the allow list in memory and reload them when the
//! version moves ([`rules_version`], [`load_rules`]), and the blocks in force when their
//! table announces a change ([`list_active_blocks`]), so judging a request reads nothing
//! here. Counters are added in batches ([`add_rule_counts`]), never per request. The
//! velocity counts themselves are written with the sends (`db::starts`); the guess budget
//! is applied by the check's own statement (`db::verifications`); the conversion breaker
//! by one statement a few times a minute, off the request path
//! ([`trip_conversion_breakers`]).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::rows::{columns, named, read_all, read_one, table_row};
use super::{DbError, seconds};
use crate::domain::abuse::{
    ActiveBlock, AllowEntry, AllowKind, BlockScope, ConversionBreaker, Outcome, Rule, RuleId,
    RuleMode, RuleParams,
};

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    pub rule: Rule,
    /// Why the rule exists, for people (may be empty).
    pub reason: String,
    pub updated_at: DateTime<Utc>,
}

table_row! {
    /// An `abuse_rules` row as stored.
    pub(crate) struct AbuseRuleRow in "abuse_rules" {
        id: String,
        mode: String,
        params: serde_json::Value,
        reason: String,
        updated_at: DateTime<Utc>,
    }
    // The kind is implied by the id; it is stored for queries by kind.
    unread [kind]
}

impl TryFrom<AbuseRuleRow> for RuleRecord {
    type Error = DbError;

    fn try_from(row: AbuseRuleRow) -> Result<Self, DbError> {
        let corrupt = |what: String| DbError::Corrupt(format!("abuse rule {}: {what}", row.id));
        let id = RuleId::parse(&row.id).map_err(|e| corrupt(e.to_string()))?;
        let mode = row.mode.parse::<RuleMode>().map_err(corrupt)?;
        let params =
            RuleParams::parse(id.kind(), &row.params).map_err(|e| corrupt(e.to_string()))?;
        Ok(Self {
            rule: Rule { id, mode, params },
            reason: row.reason,
            updated_at: row.updated_at,
        })
    }
}

table_row! {
    /// The `abuse_rules_version` row: how many changes the rules have seen.
    pub(crate) struct AbuseRulesVersionRow in "abuse_rules_version" {
        version: i64,
    }
    // A constant that keeps the table to one row.
    unread [singleton]
}

/// The rules and the allow list, and the version they were read at (or an older one).
#[derive(Debug, Clone)]
pub struct RulesSnapshot {
    pub version: i64,
    pub rules: Vec<RuleRecord>,
    pub allow: Vec<AllowRecord>,
}

/// The rules' version: it changes whenever a rule is written or deleted.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn rules_version(pool: &Pool) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT version FROM abuse_rules_version")
        .await?;
    let row = client.query_one(&statement, &[]).await?;
    Ok(read_one::<AbuseRulesVersionRow>(&row)?.version)
}

/// Every rule with the version they were read at, in one statement, then the allow
/// list, so the version is never newer than either.
///
/// # Errors
/// [`DbError`] on database failure; [`DbError::Corrupt`] for a stored rule the API would
/// not have written.
pub async fn load_rules(pool: &Pool) -> Result<RulesSnapshot, DbError> {
    static LOAD: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT (SELECT version FROM abuse_rules_version) AS current_version, {}
             FROM abuse_rules ORDER BY id",
            columns::<AbuseRuleRow>()
        )
    });
    let client = pool.get().await?;
    let rows = client.query(LOAD.as_str(), &[]).await?;
    let version = match rows.first() {
        Some(row) => named(row, "current_version")?,
        // No rules at all: the version alone says when that changes.
        None => {
            drop(client);
            let version = rules_version(pool).await?;
            return Ok(RulesSnapshot {
                version,
                rules: Vec::new(),
                allow: list_allow_entries(pool).await?,
            });
        }
    };
    drop(client);
    let rules = read_all::<AbuseRuleRow>(&rows)?
        .into_iter()
        .map(RuleRecord::try_from)
        .collect::<Result<_, _>>()?;
    Ok(RulesSnapshot {
        version,
        rules,
        allow: list_allow_entries(pool).await?,
    })
}

/// One rule by id.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn find_rule(pool: &Pool, id: RuleId) -> Result<Option<RuleRecord>, DbError> {
    static FIND: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM abuse_rules WHERE id = $1",
            columns::<AbuseRuleRow>()
        )
    });
    let client = pool.get().await?;
    client
        .query_opt(FIND.as_str(), &[&id.to_string()])
        .await?
        .map(|row| read_one::<AbuseRuleRow>(&row)?.try_into())
        .transpose()
}

/// Creates or replaces a rule, with `reason` as its explanation.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn put_rule(pool: &Pool, rule: &Rule, reason: &str) -> Result<RuleRecord, DbError> {
    static PUT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO abuse_rules (id, kind, mode, params, reason) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE
                 SET mode = EXCLUDED.mode, params = EXCLUDED.params, reason = EXCLUDED.reason,
                     updated_at = now()
             RETURNING {}",
            columns::<AbuseRuleRow>()
        )
    });
    let client = pool.get().await?;
    let row = client
        .query_one(
            PUT.as_str(),
            &[
                &rule.id.to_string(),
                &rule.id.kind().as_str(),
                &rule.mode.as_str(),
                &rule.params.to_json(),
                &reason,
            ],
        )
        .await?;
    read_one::<AbuseRuleRow>(&row)?.try_into()
}

/// Deletes a rule; false when there was none.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn delete_rule(pool: &Pool, id: RuleId) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let deleted = client
        .execute("DELETE FROM abuse_rules WHERE id = $1", &[&id.to_string()])
        .await?;
    Ok(deleted == 1)
}

table_row! {
    /// An `abuse_rule_counts` row as stored.
    pub(crate) struct AbuseRuleCountRow in "abuse_rule_counts" {
        rule_id: String,
        outcome: String,
        count: i64,
    }
    // When the count last grew; only for people reading the table.
    unread [updated_at]
}

/// How often one rule had one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCount {
    pub rule_id: String,
    pub outcome: Outcome,
    pub count: i64,
}

/// Adds counts of rule outcomes (several processes add to the same totals).
///
/// # Errors
/// [`DbError`] on database failure; then nothing was added.
pub async fn add_rule_counts(pool: &Pool, counts: &[RuleCount]) -> Result<(), DbError> {
    if counts.is_empty() {
        return Ok(());
    }
    let rule_ids: Vec<&str> = counts.iter().map(|c| c.rule_id.as_str()).collect();
    let outcomes: Vec<&str> = counts.iter().map(|c| c.outcome.as_str()).collect();
    let amounts: Vec<i64> = counts.iter().map(|c| c.count).collect();
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO abuse_rule_counts AS c (rule_id, outcome, count)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
             ON CONFLICT (rule_id, outcome) DO UPDATE
                 SET count = c.count + EXCLUDED.count, updated_at = now()",
            &[&rule_ids, &outcomes, &amounts],
        )
        .await?;
    Ok(())
}

/// Every rule's counts so far.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn rule_counts(pool: &Pool) -> Result<Vec<RuleCount>, DbError> {
    static LIST: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM abuse_rule_counts ORDER BY rule_id, outcome",
            columns::<AbuseRuleCountRow>()
        )
    });
    let client = pool.get().await?;
    let rows = client.query(LIST.as_str(), &[]).await?;
    read_all::<AbuseRuleCountRow>(&rows)?
        .into_iter()
        .map(|row| {
            let outcome = Outcome::ALL
                .into_iter()
                .find(|outcome| outcome.as_str() == row.outcome)
                .ok_or_else(|| DbError::Corrupt(format!("rule outcome {:?}", row.outcome)))?;
            Ok(RuleCount {
                rule_id: row.rule_id,
                outcome,
                count: row.count,
            })
        })
        .collect()
}

/// A stored allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRecord {
    pub id: i64,
    pub kind: AllowKind,
    pub value: String,
    pub note: String,
    pub created_at: DateTime<Utc>,
}

table_row! {
    /// An `abuse_allow` row as stored.
    pub(crate) struct AbuseAllowRow in "abuse_allow" {
        id: i64,
        kind: String,
        value: String,
        note: String,
        created_at: DateTime<Utc>,
    }
}

impl TryFrom<AbuseAllowRow> for AllowRecord {
    type Error = DbError;

    fn try_from(row: AbuseAllowRow) -> Result<Self, DbError> {
        Ok(Self {
            id: row.id,
            kind: row
                .kind
                .parse()
                .map_err(|_| DbError::Corrupt(format!("allow-list kind {:?}", row.kind)))?,
            value: row.value,
            note: row.note,
            created_at: row.created_at,
        })
    }
}

/// The result of adding an allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowInsertOutcome {
    Added(AllowRecord),
    /// An entry of that kind and value exists already.
    Exists,
    /// The entry names an API key id that no stored key has.
    UnknownApiKey,
}

/// Every allow-list entry, oldest first.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn list_allow_entries(pool: &Pool) -> Result<Vec<AllowRecord>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM abuse_allow ORDER BY id",
                columns::<AbuseAllowRow>()
            ),
            &[],
        )
        .await?;
    read_all::<AbuseAllowRow>(&rows)?
        .into_iter()
        .map(AllowRecord::try_from)
        .collect()
}

/// Adds an entry to the allow list.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn insert_allow_entry(
    pool: &Pool,
    entry: &AllowEntry,
) -> Result<AllowInsertOutcome, DbError> {
    let client = pool.get().await?;
    if entry.kind() == AllowKind::ApiKey {
        let id = Uuid::parse_str(entry.value())
            .map_err(|e| DbError::Corrupt(format!("allow-list API key id: {e}")))?;
        let known = client
            .query_opt("SELECT 1 FROM api_keys WHERE id = $1", &[&id])
            .await?
            .is_some();
        if !known {
            return Ok(AllowInsertOutcome::UnknownApiKey);
        }
    }
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO abuse_allow (kind, value, note) VALUES ($1, $2, $3)
                 ON CONFLICT (kind, value) DO NOTHING
                 RETURNING {}",
                columns::<AbuseAllowRow>()
            ),
            &[&entry.kind().as_str(), &entry.value(), &entry.note()],
        )
        .await?;
    match row {
        Some(row) => Ok(AllowInsertOutcome::Added(
            read_one::<AbuseAllowRow>(&row)?.try_into()?,
        )),
        None => Ok(AllowInsertOutcome::Exists),
    }
}

/// Removes an allow-list entry; false when there was none.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn delete_allow_entry(pool: &Pool, id: i64) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let deleted = client
        .execute("DELETE FROM abuse_allow WHERE id = $1", &[&id])
        .await?;
    Ok(deleted == 1)
}

/// A stored block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    pub id: i64,
    pub scope: BlockScope,
    pub key: String,
    pub rule_id: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// The counts that tripped the block.
    pub counts: serde_json::Value,
    /// Written by a rule in shadow mode: it refuses nothing.
    pub shadow: bool,
}

impl BlockRecord {
    /// The block as a start request is judged by; `None` for a block of a rule this build
    /// does not know (it cannot be applied, and listing it still shows it).
    pub fn to_active(&self) -> Option<ActiveBlock> {
        Some(ActiveBlock {
            id: self.id,
            scope: self.scope,
            key: self.key.clone(),
            rule: RuleId::parse(&self.rule_id).ok()?,
            until: self.until,
            shadow: self.shadow,
        })
    }
}

table_row! {
    /// An `abuse_blocks` row as stored.
    pub(crate) struct AbuseBlockRow in "abuse_blocks" {
        id: i64,
        scope: String,
        key: String,
        rule_id: String,
        reason: String,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        counts: serde_json::Value,
        shadow: bool,
    }
    // Lifted blocks are never read back; the breaker's statement reads when they were lifted.
    unread [lifted_at]
}

impl TryFrom<AbuseBlockRow> for BlockRecord {
    type Error = DbError;

    fn try_from(row: AbuseBlockRow) -> Result<Self, DbError> {
        Ok(Self {
            id: row.id,
            scope: row.scope.parse().map_err(DbError::Corrupt)?,
            key: row.key,
            rule_id: row.rule_id,
            reason: row.reason,
            since: row.since,
            until: row.until,
            counts: row.counts,
            shadow: row.shadow,
        })
    }
}

/// A block to record.
#[derive(Debug, Clone)]
pub struct NewBlock {
    pub scope: BlockScope,
    pub key: String,
    pub rule_id: String,
    pub reason: String,
    pub until: DateTime<Utc>,
    pub counts: serde_json::Value,
}

/// Records a block from now until `block.until`.
///
/// # Errors
/// [`DbError`] on database failure (also when `until` is not in the future).
pub async fn insert_block(pool: &Pool, block: &NewBlock) -> Result<BlockRecord, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO abuse_blocks (scope, key, rule_id, reason, until, counts)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {}",
                columns::<AbuseBlockRow>()
            ),
            &[
                &block.scope.as_str(),
                &block.key,
                &block.rule_id,
                &block.reason,
                &block.until,
                &block.counts,
            ],
        )
        .await?;
    read_one::<AbuseBlockRow>(&row)?.try_into()
}

/// Blocks in force now (not lifted, not run out), newest first.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn list_active_blocks(pool: &Pool) -> Result<Vec<BlockRecord>, DbError> {
    static LIST: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM abuse_blocks WHERE lifted_at IS NULL AND until > now()
             ORDER BY since DESC, id DESC",
            columns::<AbuseBlockRow>()
        )
    });
    let client = pool.get().await?;
    let rows = client.query(LIST.as_str(), &[]).await?;
    read_all::<AbuseBlockRow>(&rows)?
        .into_iter()
        .map(BlockRecord::try_from)
        .collect()
}

/// Lifts a block in force; false when no block in force has this id. The row stays,
/// marked lifted, so the rule that wrote it counts only what happens afterwards.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn lift_block(pool: &Pool, id: i64) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let lifted = client
        .execute(
            "UPDATE abuse_blocks SET lifted_at = now()
             WHERE id = $1 AND lifted_at IS NULL AND until > now()",
            &[&id],
        )
        .await?;
    Ok(lifted == 1)
}

/// Deletes the failed checks older than any guess budget's window.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn delete_old_guesses(pool: &Pool) -> Result<u64, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM abuse_guesses WHERE failed_at < now() - make_interval(secs => $1)",
            &[&seconds(std::time::Duration::from_secs(
                crate::domain::abuse::MAX_RULE_SECS,
            ))],
        )
        .await?)
}

/// A conversion rule to evaluate: which one, its thresholds, and whether it runs in
/// shadow mode (its blocks then refuse nothing).
#[derive(Debug, Clone, Copy)]
pub struct ConversionCheck {
    pub rule: RuleId,
    pub breaker: ConversionBreaker,
    pub shadow: bool,
}

/// Taken for the length of one evaluation of the conversion breaker, so that of many API
/// processes only one evaluates at a time and the others skip their turn.
const BREAKER_LOCK_KEY: i64 = 0x5645_5249_4659_0002;

/// The conversion breaker, as one statement over every conversion rule. Per rule, it
/// groups the verifications of the rule's window, except those younger than its grace
/// and those to allow-listed numbers or prefixes, by prefix (the E.164 number without its
/// last four digits, as `PhoneNumber::prefix` cuts it) or by country (the region the
/// rules saw, in the verification's risk). A group's verifications count only after the
/// last lift of the rule's block on it, so a lifted block is not tripped again by the
/// sends that tripped it. A group with at least `min_sends` verifications, fewer than
/// `min_conversion_pct` % of them approved, gets a block until `cooldown_secs` from now;
/// an open block is renewed instead. A block it creates in enforce mode records its
/// `abuse.blocked` webhooks in the same statement (migration V15).
///
/// The verifications are found through the BRIN index on `created_at` (migration V11),
/// so the statement reads the window's rows and no others.
const TRIP_CONVERSION_BREAKERS: &str = "
WITH rules AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::boolean[], $4::bigint[], $5::bigint[],
                $6::float8[], $7::float8[], $8::float8[])
         AS r (scope, rule_id, shadow, min_sends, min_pct, window_secs, cooldown_secs,
               grace_secs)
), judged AS (
    SELECT r.scope, r.rule_id,
           CASE r.scope WHEN 'prefix' THEN left(v.to_number, length(v.to_number) - 4)
                        ELSE v.risk->>'country' END AS key,
           v.created_at, v.status = 'approved' AS approved
    FROM rules r
    JOIN verifications v
      ON v.created_at > now() - make_interval(secs => r.window_secs)
     AND v.created_at <= now() - make_interval(secs => r.grace_secs)
    -- The widest window as one bound, so the index is used for all rules at once.
    WHERE v.created_at > (SELECT now() - make_interval(secs => max(w.window_secs))
                          FROM rules w)
      -- Allow-listed traffic is not judged: numbers and prefixes listed now, and starts
      -- the allow list exempted when they were made (an allowed API key's QA traffic
      -- that never checks its codes would otherwise trip the breaker for everyone).
      AND NOT coalesce(v.risk -> 'notes'
                       @> jsonb_build_array(jsonb_build_object('code', 'allow_listed')), false)
      AND NOT EXISTS (
        SELECT 1 FROM abuse_allow a
        WHERE (a.kind = 'number' AND a.value = v.to_number)
           OR (a.kind = 'prefix' AND starts_with(v.to_number, a.value)))
), lifted AS (
    SELECT b.scope, b.key, b.rule_id, max(b.lifted_at) AS lifted_at
    FROM abuse_blocks b
    JOIN rules r ON r.scope = b.scope AND r.rule_id = b.rule_id
    WHERE b.lifted_at > now() - make_interval(secs => r.window_secs)
    GROUP BY b.scope, b.key, b.rule_id
), tallies AS (
    SELECT j.scope, j.rule_id, j.key, count(*) AS sends,
           count(*) FILTER (WHERE j.approved) AS approved
    FROM judged j
    LEFT JOIN lifted l ON l.scope = j.scope AND l.key = j.key AND l.rule_id = j.rule_id
    WHERE j.key IS NOT NULL AND (l.lifted_at IS NULL OR j.created_at > l.lifted_at)
    GROUP BY j.scope, j.rule_id, j.key
), written AS (
INSERT INTO abuse_blocks AS b (scope, key, rule_id, reason, until, counts, shadow)
SELECT t.scope, t.key, t.rule_id,
       format('%s%% of %s verifications approved in %s seconds; at least %s%% are expected',
              100 * t.approved / t.sends, t.sends, r.window_secs, r.min_pct),
       now() + make_interval(secs => r.cooldown_secs),
       jsonb_build_object('sends', t.sends, 'approved', t.approved,
                          'window_secs', r.window_secs),
       r.shadow
FROM tallies t
JOIN rules r ON r.scope = t.scope AND r.rule_id = t.rule_id
WHERE t.sends >= r.min_sends AND t.approved * 100 < r.min_pct * t.sends
ON CONFLICT (scope, key, rule_id) WHERE lifted_at IS NULL DO UPDATE
    SET since = CASE WHEN b.until <= now() THEN now() ELSE b.since END,
        until = EXCLUDED.until,
        reason = EXCLUDED.reason,
        counts = EXCLUDED.counts,
        shadow = EXCLUDED.shadow
    -- xmax is 0 for a row this statement inserted, not for one it updated.
    RETURNING b.id, b.scope, b.key, b.rule_id, b.reason, b.since, b.until, b.counts, b.shadow,
              b.xmax = 0 AS created
), webhooks AS (
    INSERT INTO webhook_deliveries (id, endpoint_id, event_type, payload)
    SELECT gen_random_uuid(), e.id, 'abuse.blocked',
           webhook_payload('abuse.blocked', jsonb_build_object(
               'block_id', w.id, 'scope', w.scope, 'key', w.key, 'rule', w.rule_id,
               'reason', w.reason, 'since', w.since, 'until', w.until, 'counts', w.counts))
    FROM written w
    JOIN webhook_endpoints e
      ON e.disabled_at IS NULL AND 'abuse.blocked' = ANY (e.events)
    WHERE w.created AND NOT w.shadow
)
SELECT count(*) AS written FROM written";

/// Evaluates the conversion breaker once for `checks`: blocks written or renewed, or
/// `None` when another process is evaluating it now.
///
/// # Errors
/// [`DbError`] on database failure; then nothing was written.
pub async fn trip_conversion_breakers(
    pool: &Pool,
    checks: &[ConversionCheck],
) -> Result<Option<u64>, DbError> {
    let scope = |rule: RuleId| match rule {
        RuleId::ConversionCountry => BlockScope::Country.as_str(),
        _ => BlockScope::Prefix.as_str(),
    };
    let scopes: Vec<&str> = checks.iter().map(|c| scope(c.rule)).collect();
    let rule_ids: Vec<String> = checks.iter().map(|c| c.rule.to_string()).collect();
    let shadows: Vec<bool> = checks.iter().map(|c| c.shadow).collect();
    let min_sends: Vec<i64> = checks
        .iter()
        .map(|c| i64::from(c.breaker.min_sends))
        .collect();
    let min_pcts: Vec<i64> = checks
        .iter()
        .map(|c| i64::from(c.breaker.min_conversion_pct))
        .collect();
    let windows: Vec<f64> = checks.iter().map(|c| seconds(c.breaker.window)).collect();
    let cooldowns: Vec<f64> = checks.iter().map(|c| seconds(c.breaker.cooldown)).collect();
    let graces: Vec<f64> = checks.iter().map(|c| seconds(c.breaker.grace)).collect();
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    // The statement groups every verification of the window; with the default 4 MB of
    // working memory its grouping spills to disk and takes twice as long (measured at a
    // million verifications in the window: 6-8 s, 3.7 s with 64 MB).
    let row = transaction
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1) AS locked,
                    set_config('work_mem', '64MB', true) AS work_mem",
            &[&BREAKER_LOCK_KEY],
        )
        .await?;
    if !named::<bool>(&row, "locked")? {
        return Ok(None);
    }
    let row = transaction
        .query_one(
            TRIP_CONVERSION_BREAKERS,
            &[
                &scopes, &rule_ids, &shadows, &min_sends, &min_pcts, &windows, &cooldowns, &graces,
            ],
        )
        .await?;
    let written: i64 = named(&row, "written")?;
    transaction.commit().await?;
    Ok(Some(u64::try_from(written).unwrap_or(0)))
}

#[cfg(test)]
table_row! {
    /// An `abuse_guesses` row: one failed check of a number. Only SQL reads it (the
    /// statement that checks codes, in `db::verifications`).
    pub(crate) struct AbuseGuessRow in "abuse_guesses" {}
    unread [to_number, failed_at]
}

#[cfg(test)]
table_row! {
    /// An `abuse_sends` row: only SQL reads it (the velocity limits, in `db::starts`).
    pub(crate) struct AbuseSendRow in "abuse_sends" {}
    unread [created_at, prefix, client_ip, network, client_id]
}

#[cfg(test)]
table_row! {
    /// An `abuse_counters` row: only SQL reads it (the velocity limits, in `db::starts`).
    pub(crate) struct AbuseCounterRow in "abuse_counters" {}
    unread [rule_id, key, bucket, shard, sends]
}

/// Deletes the velocity counts no rule looks at any more: recorded sends older than
/// `sends_window` and counter buckets older than `buckets_window` (the longest windows of
/// the rules in force that count each way). Returns how many rows went.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn delete_old_velocity_counts(
    pool: &Pool,
    sends_window: std::time::Duration,
    buckets_window: std::time::Duration,
) -> Result<u64, DbError> {
    let client = pool.get().await?;
    let sends = client
        .execute(
            "DELETE FROM abuse_sends WHERE created_at < now() - make_interval(secs => $1)",
            &[&super::seconds(sends_window)],
        )
        .await?;
    let buckets = client
        .execute(
            "DELETE FROM abuse_counters WHERE bucket < now() - make_interval(secs => $1)",
            &[&super::seconds(buckets_window)],
        )
        .await?;
    Ok(sends + buckets)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::delete_old_velocity_counts;
    use crate::db::{build_pool, migrate};
    use crate::testing::TestDatabase;

    #[tokio::test]
    async fn velocity_counts_older_than_their_windows_are_deleted_and_newer_ones_kept() {
        let database = TestDatabase::create().await;
        let pool = build_pool(&database.settings).unwrap();
        migrate(&pool).await.unwrap();
        let client = pool.get().await.unwrap();
        client
            .batch_execute(
                "INSERT INTO abuse_sends (created_at, client_ip) VALUES
                     (now() - interval '2 hours', '203.0.113.1'),
                     (now() - interval '10 minutes', '203.0.113.2');
                 INSERT INTO abuse_counters (rule_id, key, bucket, shard, sends) VALUES
                     ('velocity.global', 'all', now() - interval '25 hours', 0, 5),
                     ('velocity.global', 'all', now() - interval '1 hour', 0, 7);",
            )
            .await
            .unwrap();

        let deleted = delete_old_velocity_counts(
            &pool,
            Duration::from_secs(3600),
            Duration::from_secs(24 * 3600),
        )
        .await
        .unwrap();

        assert_eq!(deleted, 2);
        let kept = client
            .query_one(
                "SELECT (SELECT string_agg(client_ip, ',') FROM abuse_sends),
                        (SELECT sum(sends)::bigint FROM abuse_counters)",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(kept.get::<_, String>(0), "203.0.113.2");
        assert_eq!(kept.get::<_, i64>(1), 7);
    }
}
