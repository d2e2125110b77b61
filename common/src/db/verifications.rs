//! Verification rows: reading them back, checks, cancel and the sweep that notices
//! expiry. They are created, with their sends, by [`super::starts`].

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::rows::{columns, named, read_one, table_row};
use super::templates::read_locale;
use super::{DbError, seconds};
use crate::domain::abuse::{ClientId, GuessBudget, Outcome, RuleMode};
use crate::domain::otp::NONCE_LEN;
use crate::domain::{
    OtpCodeLength, PhoneNumber, TemplateId, TemplateLocale, Variables, VerificationId,
    VerificationStatus,
};

/// A verification row, read back into domain types.
#[derive(Debug, Clone)]
pub struct VerificationRecord {
    pub id: VerificationId,
    pub to: PhoneNumber,
    pub template_id: Option<TemplateId>,
    pub locale: Option<TemplateLocale>,
    pub sender: Option<String>,
    pub variables: Variables,
    pub code_length: OtpCodeLength,
    pub code_nonce: Vec<u8>,
    /// The stored status; use [`VerificationRecord::status_at`] for what callers see.
    pub stored_status: VerificationStatus,
    pub checks_made: i32,
    pub max_checks: i32,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub approved_at: Option<DateTime<Utc>>,
    /// The end user's address and id, as the start request gave them.
    pub client_ip: Option<IpAddr>,
    pub client_id: Option<ClientId>,
    /// What the abuse rules made of the start request (`null` when none were evaluated).
    pub risk: Option<serde_json::Value>,
}

impl VerificationRecord {
    /// The status as seen at `now` (a pending verification past expiry is expired).
    pub fn status_at(&self, now: DateTime<Utc>) -> VerificationStatus {
        self.stored_status.at(self.expires_at, now)
    }

    /// Checks left before the verification closes.
    pub fn attempts_remaining(&self) -> u32 {
        u32::try_from(self.max_checks - self.checks_made).unwrap_or(0)
    }
}

table_row! {
    /// A `verifications` row as stored.
    pub(crate) struct VerificationRow in "verifications" {
        id: uuid::Uuid,
        to_number: String,
        template_id: Option<i64>,
        locale: Option<String>,
        sender: Option<String>,
        variables: serde_json::Value,
        code_length: i16,
        code_nonce: Vec<u8>,
        status: String,
        checks_made: i32,
        max_checks: i32,
        expires_at: DateTime<Utc>,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
        approved_at: Option<DateTime<Utc>>,
        client_ip: Option<IpAddr>,
        client_id: Option<String>,
        risk: Option<serde_json::Value>,
    }
}

#[cfg(test)]
table_row! {
    /// The `expiry_sweeps` row: only SQL reads it (`sweep_expired_verifications`).
    pub(crate) struct ExpirySweepRow in "expiry_sweeps" {}
    unread [singleton, swept_until, learned_until]
}

#[cfg(test)]
table_row! {
    /// An `expiry_lifetimes` row: only SQL reads it (`sweep_expired_verifications`).
    pub(crate) struct ExpiryLifetimeRow in "expiry_lifetimes" {}
    unread [lifetime, last_created_at]
}

impl TryFrom<VerificationRow> for VerificationRecord {
    type Error = DbError;

    fn try_from(row: VerificationRow) -> Result<Self, DbError> {
        if row.code_nonce.len() != NONCE_LEN {
            return Err(DbError::Corrupt(format!(
                "nonce of {} bytes",
                row.code_nonce.len()
            )));
        }
        Ok(Self {
            id: VerificationId::from_uuid(row.id),
            to: PhoneNumber::from_trusted_storage(row.to_number),
            template_id: row
                .template_id
                .map(TemplateId::try_from)
                .transpose()
                .map_err(|e| DbError::Corrupt(e.to_string()))?,
            locale: row.locale.as_deref().map(read_locale).transpose()?,
            sender: row.sender,
            variables: Variables::from_trusted_storage(&row.variables),
            code_length: OtpCodeLength::parse(i64::from(row.code_length))
                .map_err(|e| DbError::Corrupt(e.to_string()))?,
            code_nonce: row.code_nonce,
            stored_status: row.status.parse().map_err(DbError::Corrupt)?,
            checks_made: row.checks_made,
            max_checks: row.max_checks,
            expires_at: row.expires_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            approved_at: row.approved_at,
            client_ip: row.client_ip,
            client_id: row.client_id.map(ClientId::from_trusted_storage),
            risk: row.risk,
        })
    }
}

/// Reads a verification from a row whose columns are those of [`VerificationRow`].
pub(crate) fn read_verification(row: &Row) -> Result<VerificationRecord, DbError> {
    read_one::<VerificationRow>(row)?.try_into()
}

/// One verification by id.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn find_verification(
    pool: &Pool,
    id: VerificationId,
) -> Result<Option<VerificationRecord>, DbError> {
    static FIND: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM verifications WHERE id = $1",
            columns::<VerificationRow>()
        )
    });
    let client = pool.get().await?;
    let statement = client.prepare_cached(&FIND).await?;
    client
        .query_opt(&statement, &[&id.as_uuid()])
        .await?
        .map(|row| read_verification(&row))
        .transpose()
}

/// The verification a check by phone number applies to: the newest one still open, or
/// else the newest one at all (so its final status can be reported).
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn find_verification_to_check(
    pool: &Pool,
    to: &PhoneNumber,
) -> Result<Option<VerificationRecord>, DbError> {
    static FIND_TO_CHECK: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM verifications WHERE to_number = $1
             ORDER BY (status = 'pending' AND expires_at > now()) DESC, created_at DESC
             LIMIT 1",
            columns::<VerificationRow>()
        )
    });
    let client = pool.get().await?;
    let statement = client.prepare_cached(&FIND_TO_CHECK).await?;
    client
        .query_opt(&statement, &[&to.as_str()])
        .await?
        .map(|row| read_verification(&row))
        .transpose()
}

/// The state of a verification right after a counted check.
#[derive(Debug, Clone, Copy)]
pub struct CheckRecord {
    pub status: VerificationStatus,
    pub checks_made: i32,
    pub max_checks: i32,
    /// What the number's guess lock did to the check: `Block` (it refused the code, right
    /// or wrong), `ShadowBlock` (it would have, in shadow mode), `None` (no lock).
    pub lock: Option<Outcome>,
    /// This check reached the guess budget and wrote (or renewed) the number's lock.
    pub locked_now: bool,
}

/// The guess budget as a check applies it: the rule's parameters and the mode it applies
/// in now.
#[derive(Debug, Clone, Copy)]
pub struct GuessCheck {
    pub mode: RuleMode,
    pub budget: GuessBudget,
}

/// Counts one check and applies its result atomically: a right code approves, the last
/// allowed wrong code closes. Only a pending, unexpired verification with checks left is
/// touched, so concurrent checks can neither approve twice nor exceed the budget (each
/// `UPDATE` re-reads the row after the previous one commits). `None` means no check was
/// counted because the verification is no longer open.
///
/// The same statement applies the guess budget (`check_verification`, migration V11):
/// while the number is locked no code approves, every failed check is recorded against
/// the number, and the one that reaches the budget locks it. Without `guess` (no such
/// rule) nothing of that happens. A check that approves or uses up the last attempt
/// records its webhooks (`verification.approved`, `verification.max_attempts_reached`) in
/// the same statement (migration V15), and an approval its stats (V18).
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn record_check(
    pool: &Pool,
    id: VerificationId,
    code_matched: bool,
    guess: Option<GuessCheck>,
) -> Result<Option<CheckRecord>, DbError> {
    let mode = guess.map_or(RuleMode::Off, |g| g.mode);
    let budget = guess.map(|g| g.budget);
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            // An approval adds to the stats rollups (migration V18) in the same statement.
            "WITH c AS (SELECT * FROM check_verification($1, $2, $3, $4, $5, $6)),
             approval AS (
                 SELECT add_to_stats(ARRAY[ROW(
                            v.created_at, coalesce(v.risk ->> 'country', 'unknown'),
                            coalesce(v.template_id, 0), '', 0, 0, 0, 1, 0, NULL,
                            extract(epoch FROM now() - v.created_at)::float8 * 1000
                        )::stats_event])
                 FROM c JOIN verifications v ON v.id = $1
                 WHERE c.status = 'approved'
             )
             SELECT c.status, c.checks_made, c.max_checks, c.lock, c.locked_now
             FROM c LEFT JOIN approval ON true",
        )
        .await?;
    let Some(row) = client
        .query_opt(
            &statement,
            &[
                &id.as_uuid(),
                &code_matched,
                &mode.as_str(),
                &budget.map(|b| seconds(b.window)),
                &budget.map(|b| i64::from(b.limit)),
                &budget.map(|b| seconds(b.lock)),
            ],
        )
        .await?
    else {
        return Ok(None);
    };
    let status: String = named(&row, "status")?;
    let lock = named::<Option<String>>(&row, "lock")?
        .map(|text| {
            Outcome::ALL
                .into_iter()
                .find(|outcome| outcome.as_str() == text)
                .ok_or_else(|| DbError::Corrupt(format!("guess lock outcome {text:?}")))
        })
        .transpose()?;
    Ok(Some(CheckRecord {
        status: status.parse().map_err(DbError::Corrupt)?,
        checks_made: named(&row, "checks_made")?,
        max_checks: named(&row, "max_checks")?,
        lock,
        locked_now: named(&row, "locked_now")?,
    }))
}

/// Cancels an open verification, recording its `verification.canceled` webhooks in the
/// same statement. `None` when it does not exist or is not open.
///
/// # Errors
/// [`DbError`] on database failure.
pub async fn cancel_verification(
    pool: &Pool,
    id: VerificationId,
) -> Result<Option<VerificationRecord>, DbError> {
    static CANCEL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH canceled AS (
                 UPDATE verifications SET status = 'canceled', updated_at = now()
                 WHERE id = $1 AND status = 'pending' AND expires_at > now()
                 RETURNING *
             )
             SELECT {}, emit_webhook_event(
                 'verification.canceled', id,
                 verification_event_data(id, to_number, status, checks_made, max_checks,
                                         created_at, expires_at)) AS webhooks
             FROM canceled",
            columns::<VerificationRow>()
        )
    });
    let client = pool.get().await?;
    let row = client.query_opt(CANCEL.as_str(), &[&id.as_uuid()]).await?;
    row.map(|row| read_verification(&row)).transpose()
}

/// Sweeps once for verifications that expired since the last sweep and at least `settle`
/// ago: records `verification.expired` for every endpoint subscribed to it and moves the
/// watermark past them, in one statement (`sweep_expired_verifications`, migration V19),
/// so a crash neither emits twice nor skips. Returns the number of each verification
/// found expired; empty when another process is sweeping.
///
/// The verifications are reached through the BRIN index on `created_at`, one narrow range
/// per lifetime in use; approved, canceled and closed ones are left out, and stay out
/// because nothing changes a verification after its expiry. `settle` must outlast the
/// statements in flight when a verification expires (a check begun just before).
///
/// # Errors
/// [`DbError`] on database failure; then nothing was recorded.
pub async fn sweep_expired_verifications(
    pool: &Pool,
    settle: Duration,
) -> Result<Vec<PhoneNumber>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT s.to_number FROM sweep_expired_verifications($1) AS s (to_number)")
        .await?;
    let rows = client.query(&statement, &[&seconds(settle)]).await?;
    rows.iter()
        .map(|row| named::<String>(row, "to_number").map(PhoneNumber::from_trusted_storage))
        .collect()
}
