//! Why jobs are dead-lettered, and the operator's commands on the dead-letter queue.
//!
//! - [`DeadLetterReason`]: the typed reason a worker gives up on a job, with a stable
//!   code that the consumer writes into the dead letter's headers.
//! - [`list_dead_letters`] (`verify-worker dlq list`): reads the queue without removing
//!   anything.
//! - [`replay_dead_letters`] (`verify-worker dlq replay`): moves chosen jobs back to the
//!   work queue. A failed send is re-armed in Postgres first, and only while its
//!   verification is still pending and unexpired; the rest are skipped with the reason
//!   and stay in the queue.
//!
//! The AMQP side lives in `verify_common::queue::dead_letters`; this module decides.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use verify_common::config::RabbitSettings;
use verify_common::db::deliveries::{self, ReplayCheck};
use verify_common::db::{DbError, Pool};
use verify_common::domain::{DeliveryId, VerificationStatus};
use verify_common::queue::{DeadLetter, DeadLetterBrowser, QueueError, SendSms};

/// Why a worker gives up on a job and dead-letters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The message is not a send job this build can read.
    UnreadablePayload(String),
    /// The job names a delivery that does not exist.
    DeliveryMissing(DeliveryId),
    /// The verification's template was deleted.
    TemplateMissing(i64),
    /// The template cannot be rendered with the verification's variables.
    RenderFailed(String),
    /// The provider refused the message for good (a 4xx other than 408/429).
    ProviderRejected(String),
    /// Every allowed attempt failed with a transient error.
    AttemptsExhausted { attempts: u32, last_error: String },
    /// A transient error, and the code would expire before the next attempt.
    ExpiresBeforeRetry(String),
}

impl DeadLetterReason {
    /// A stable machine code, written to the `x-verify-reason-code` header.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnreadablePayload(_) => "unreadable_payload",
            Self::DeliveryMissing(_) => "delivery_missing",
            Self::TemplateMissing(_) => "template_missing",
            Self::RenderFailed(_) => "render_failed",
            Self::ProviderRejected(_) => "provider_rejected",
            Self::AttemptsExhausted { .. } => "attempts_exhausted",
            Self::ExpiresBeforeRetry(_) => "expires_before_retry",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnreadablePayload(error) | Self::RenderFailed(error) => f.write_str(error),
            Self::ProviderRejected(error) => f.write_str(error),
            Self::DeliveryMissing(id) => write!(f, "delivery {id} does not exist"),
            Self::TemplateMissing(id) => write!(f, "template {id} no longer exists"),
            Self::AttemptsExhausted {
                attempts,
                last_error,
            } => write!(f, "gave up after {attempts} attempts: {last_error}"),
            Self::ExpiresBeforeRetry(error) => write!(
                f,
                "gave up: the code expires before the next attempt ({error})"
            ),
        }
    }
}

/// What can go wrong running a dead-letter command.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A body as text: itself when it is printable UTF-8, otherwise escaped (`\xNN`,
/// `\n`, …) so nothing is hidden or mangled.
fn printable(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => body.escape_ascii().to_string(),
    }
}

/// One dead letter as `dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedDeadLetter {
    /// The job's delivery, when the body is a readable job.
    pub delivery_id: Option<DeliveryId>,
    pub reason_code: String,
    pub reason: String,
    pub dead_at: Option<DateTime<Utc>>,
    pub dead_lettered: u32,
    pub replayed: u32,
    pub worker: Option<String>,
    pub routing_key: Option<String>,
    /// The body: as is when it is printable UTF-8, escaped otherwise.
    pub body: String,
}

impl ListedDeadLetter {
    fn from_letter(letter: &DeadLetter) -> Self {
        Self {
            delivery_id: SendSms::decode(&letter.body)
                .ok()
                .map(|job| job.delivery_id),
            reason_code: letter.reason_code.clone(),
            reason: letter.reason.clone(),
            dead_at: letter.dead_at,
            dead_lettered: letter.history.dead_lettered,
            replayed: letter.history.replayed,
            worker: letter.worker.clone(),
            routing_key: letter.original_routing_key.clone(),
            body: printable(&letter.body),
        }
    }
}

/// What `dlq list` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterListing {
    pub queue: String,
    /// Messages in the queue when the listing started.
    pub depth: u32,
    /// The first of them, oldest first.
    pub letters: Vec<ListedDeadLetter>,
}

/// Reads up to `limit` dead letters, oldest first, and leaves every one in the queue.
///
/// # Errors
/// [`DeadLetterError::Queue`] when RabbitMQ fails; nothing was removed.
pub async fn list_dead_letters(
    rabbit: &RabbitSettings,
    limit: usize,
) -> Result<DeadLetterListing, DeadLetterError> {
    let browser = DeadLetterBrowser::open(rabbit).await?;
    let result = async {
        let depth = browser.depth().await?;
        let mut letters = Vec::new();
        // Held unacknowledged until the browser closes, so each `next` returns a new
        // message and none leaves the queue.
        while letters.len() < limit {
            let Some(letter) = browser.next().await? else {
                break;
            };
            letters.push(ListedDeadLetter::from_letter(&letter));
        }
        Ok::<_, QueueError>(DeadLetterListing {
            queue: browser.queue().to_owned(),
            depth,
            letters,
        })
    }
    .await;
    browser.close().await;
    Ok(result?)
}

/// Longest reason and body shown in a table cell.
const REASON_WIDTH: usize = 48;
const BODY_WIDTH: usize = 64;

fn truncated(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

fn timestamp(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |at| at.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

impl DeadLetterListing {
    /// An aligned table for people, under a line giving the queue's depth.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "{}: {} message{}",
            self.queue,
            self.depth,
            if self.depth == 1 { "" } else { "s" }
        );
        if self.letters.len() < self.depth as usize {
            out.push_str(&format!(" (showing the first {})", self.letters.len()));
        }
        out.push('\n');
        if self.letters.is_empty() {
            return out;
        }
        let header = [
            "DELIVERY", "CODE", "DEAD AT", "DEAD", "REPLAYED", "REASON", "BODY",
        ];
        let rows: Vec<[String; 7]> = self
            .letters
            .iter()
            .map(|letter| {
                [
                    letter
                        .delivery_id
                        .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                    letter.reason_code.clone(),
                    timestamp(letter.dead_at),
                    letter.dead_lettered.to_string(),
                    letter.replayed.to_string(),
                    truncated(&letter.reason, REASON_WIDTH),
                    truncated(&letter.body, BODY_WIDTH),
                ]
            })
            .collect();
        let mut widths = header.map(|title| title.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        out.push('\n');
        let header = header.map(str::to_owned);
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
                let pad = " ".repeat(width - cell.chars().count());
                // Counts read best right-aligned.
                if matches!(column, 3 | 4) {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                line.push_str("  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// One JSON object per dead letter, for scripts.
    pub fn to_json_lines(&self) -> String {
        self.letters
            .iter()
            .map(|letter| {
                let mut line = serde_json::to_string(letter)
                    .expect("a struct of strings, numbers and timestamps always serialises");
                line.push('\n');
                line
            })
            .collect()
    }
}

/// Which dead letters a replay takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaySelection {
    All,
    Deliveries(BTreeSet<DeliveryId>),
}

/// How to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    pub selection: ReplaySelection,
    /// Report what would happen; change nothing.
    pub dry_run: bool,
    /// Remove the dead letters that are skipped instead of leaving them in the queue.
    pub discard_skipped: bool,
}

/// Why a dead letter is not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    DeliveryMissing,
    AlreadySent,
    /// Approved, canceled, out of checks or expired: nobody can use the code any more.
    VerificationClosed(VerificationStatus),
    /// A concurrent change (another replay, a worker) got in between; replay again.
    ChangedDuringReplay,
}

impl SkipReason {
    /// A stable code for the summary.
    pub fn code(self) -> &'static str {
        match self {
            Self::DeliveryMissing => "delivery_missing",
            Self::AlreadySent => "already_sent",
            Self::ChangedDuringReplay => "changed_during_replay",
            Self::VerificationClosed(VerificationStatus::Expired) => "verification_expired",
            Self::VerificationClosed(VerificationStatus::Approved) => "verification_approved",
            Self::VerificationClosed(VerificationStatus::Canceled) => "verification_canceled",
            Self::VerificationClosed(VerificationStatus::MaxAttemptsReached) => {
                "verification_max_attempts_reached"
            }
            // Never produced: a pending verification is re-armable.
            Self::VerificationClosed(VerificationStatus::Pending) => "verification_pending",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeliveryMissing => f.write_str("the delivery no longer exists"),
            Self::AlreadySent => f.write_str("the SMS was already sent"),
            Self::VerificationClosed(status) => {
                write!(f, "the verification is {}", status.as_str())
            }
            Self::ChangedDuringReplay => {
                f.write_str("the send changed during the replay; replay it again")
            }
        }
    }
}

/// What a replay did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// Back in the work queue; `rearmed` when its failed send was queued again first.
    Replayed {
        delivery_id: DeliveryId,
        rearmed: bool,
    },
    /// Not replayed; removed from the queue only when `discarded`.
    Skipped {
        delivery_id: DeliveryId,
        reason: SkipReason,
        discarded: bool,
    },
    /// Not a readable job: it can never be replayed and stays in the queue.
    Unreadable { body: String },
}

/// What `dlq replay` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub dry_run: bool,
    pub verdicts: Vec<ReplayVerdict>,
    /// Deliveries asked for by id that are not in the queue.
    pub not_found: Vec<DeliveryId>,
}

impl ReplayReport {
    /// How many jobs went (or would go) back to the work queue.
    pub fn replayed(&self) -> usize {
        self.verdicts
            .iter()
            .filter(|verdict| matches!(verdict, ReplayVerdict::Replayed { .. }))
            .count()
    }

    /// Skipped jobs by reason code.
    pub fn skipped(&self) -> BTreeMap<&'static str, usize> {
        let mut skipped = BTreeMap::new();
        for verdict in &self.verdicts {
            if let ReplayVerdict::Skipped { reason, .. } = verdict {
                *skipped.entry(reason.code()).or_default() += 1;
            }
        }
        skipped
    }

    /// How many unreadable messages were refused.
    pub fn unreadable(&self) -> usize {
        self.verdicts
            .iter()
            .filter(|verdict| matches!(verdict, ReplayVerdict::Unreadable { .. }))
            .count()
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let would = if self.dry_run { "would be " } else { "" };
        for verdict in &self.verdicts {
            match verdict {
                ReplayVerdict::Replayed {
                    delivery_id,
                    rearmed,
                } => {
                    let rearmed = if *rearmed {
                        " (failed send re-armed)"
                    } else {
                        ""
                    };
                    writeln!(f, "{delivery_id}  {would}replayed{rearmed}")?;
                }
                ReplayVerdict::Skipped {
                    delivery_id,
                    reason,
                    discarded,
                } => {
                    let left = if *discarded {
                        "discarded"
                    } else {
                        "left in the queue"
                    };
                    writeln!(
                        f,
                        "{delivery_id}  {would}skipped, {}: {reason}; {would}{left}",
                        reason.code()
                    )?;
                }
                ReplayVerdict::Unreadable { body } => writeln!(
                    f,
                    "{:<36}  refused, unreadable_payload: {}; left in the queue",
                    "-",
                    truncated(body, BODY_WIDTH)
                )?,
            }
        }
        for id in &self.not_found {
            writeln!(f, "{id}  not in the dead-letter queue")?;
        }
        let skipped = self.skipped();
        let total: usize = skipped.values().sum();
        let dry_run = if self.dry_run {
            "dry run, nothing changed: "
        } else {
            ""
        };
        write!(f, "{dry_run}replayed {}", self.replayed())?;
        write!(f, ", skipped {total}")?;
        if total > 0 {
            let by_reason: Vec<String> = skipped
                .iter()
                .map(|(code, n)| format!("{code}: {n}"))
                .collect();
            write!(f, " ({})", by_reason.join(", "))?;
        }
        writeln!(f, ", unreadable {}", self.unreadable())
    }
}

/// Moves the selected dead letters back to the work queue.
///
/// Only the messages in the queue when the replay starts are looked at, so a job that
/// fails again and is dead-lettered anew during the replay is not replayed twice. For
/// each readable job: a failed send whose verification is still pending and unexpired is
/// re-armed in Postgres, then the job is published to the work queue with a confirm, and
/// only then removed from the dead-letter queue. Sends that can no longer be sent are
/// skipped and stay (or are discarded with `discard_skipped`); unreadable messages
/// always stay.
///
/// # Errors
/// [`DeadLetterError`] when Postgres or RabbitMQ fails. Jobs replayed before the failure
/// stay replayed (and are logged); every other message stays in the queue.
pub async fn replay_dead_letters(
    pool: &Pool,
    rabbit: &RabbitSettings,
    options: &ReplayOptions,
) -> Result<ReplayReport, DeadLetterError> {
    let browser = DeadLetterBrowser::open(rabbit).await?;
    let result = replay_from(&browser, pool, options).await;
    browser.close().await;
    result
}

async fn replay_from(
    browser: &DeadLetterBrowser,
    pool: &Pool,
    options: &ReplayOptions,
) -> Result<ReplayReport, DeadLetterError> {
    let depth = browser.depth().await?;
    let mut report = ReplayReport {
        dry_run: options.dry_run,
        verdicts: Vec::new(),
        not_found: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for _ in 0..depth {
        let Some(letter) = browser.next().await? else {
            break;
        };
        let job = match SendSms::decode(&letter.body) {
            Ok(job) => job,
            Err(_) => {
                if options.selection == ReplaySelection::All {
                    report.verdicts.push(ReplayVerdict::Unreadable {
                        body: printable(&letter.body),
                    });
                }
                continue;
            }
        };
        if let ReplaySelection::Deliveries(wanted) = &options.selection
            && !wanted.contains(&job.delivery_id)
        {
            continue;
        }
        seen.insert(job.delivery_id);
        let verdict = replay_one(browser, pool, options, letter, job.delivery_id).await?;
        report.verdicts.push(verdict);
    }
    if let ReplaySelection::Deliveries(wanted) = &options.selection {
        report.not_found = wanted.difference(&seen).copied().collect();
    }
    Ok(report)
}

async fn replay_one(
    browser: &DeadLetterBrowser,
    pool: &Pool,
    options: &ReplayOptions,
    letter: DeadLetter,
    delivery_id: DeliveryId,
) -> Result<ReplayVerdict, DeadLetterError> {
    let plan = match deliveries::check_replay(pool, delivery_id).await? {
        ReplayCheck::Rearmable if options.dry_run => Ok(true),
        ReplayCheck::Rearmable => match deliveries::rearm_delivery(pool, delivery_id).await {
            Ok(()) => Ok(true),
            // The send or its verification moved since the check: say how it stands now.
            Err(DbError::TransitionRejected) => {
                match deliveries::check_replay(pool, delivery_id).await? {
                    ReplayCheck::Rearmable => Err(SkipReason::ChangedDuringReplay),
                    now => plan_for(now),
                }
            }
            Err(error) => return Err(error.into()),
        },
        check => plan_for(check),
    };
    match plan {
        Ok(rearmed) => {
            if !options.dry_run {
                browser.replay(letter).await?;
                tracing::info!(delivery = %delivery_id, rearmed, "replayed a dead-lettered job");
            }
            Ok(ReplayVerdict::Replayed {
                delivery_id,
                rearmed,
            })
        }
        Err(reason) => {
            let discarded = options.discard_skipped;
            if discarded && !options.dry_run {
                browser.discard(letter).await?;
                tracing::info!(delivery = %delivery_id, reason = reason.code(), "discarded a dead-lettered job");
            }
            Ok(ReplayVerdict::Skipped {
                delivery_id,
                reason,
                discarded,
            })
        }
    }
}

/// Replay without re-arming (`Ok(false)`), or skip (`Err`), for a send that needs no
/// re-arming or cannot have it.
fn plan_for(check: ReplayCheck) -> Result<bool, SkipReason> {
    match check {
        // Never finished (or re-armed by an earlier replay whose publish failed): the job
        // is all it needs, and the guarded claim makes a duplicate harmless.
        ReplayCheck::Waiting => Ok(false),
        ReplayCheck::Rearmable => Err(SkipReason::ChangedDuringReplay),
        ReplayCheck::Sent => Err(SkipReason::AlreadySent),
        ReplayCheck::VerificationClosed(status) => Err(SkipReason::VerificationClosed(status)),
        ReplayCheck::Missing => Err(SkipReason::DeliveryMissing),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use verify_common::domain::{DeliveryId, VerificationStatus};

    use super::{
        DeadLetterListing, DeadLetterReason, ListedDeadLetter, ReplayReport, ReplayVerdict,
        SkipReason, printable,
    };

    #[test]
    fn every_reason_has_its_own_stable_code() {
        let reasons = [
            DeadLetterReason::UnreadablePayload("bad".into()),
            DeadLetterReason::DeliveryMissing(DeliveryId::generate()),
            DeadLetterReason::TemplateMissing(7),
            DeadLetterReason::RenderFailed("missing variable".into()),
            DeadLetterReason::ProviderRejected("400".into()),
            DeadLetterReason::AttemptsExhausted {
                attempts: 3,
                last_error: "503".into(),
            },
            DeadLetterReason::ExpiresBeforeRetry("503".into()),
        ];
        let codes: Vec<&str> = reasons.iter().map(DeadLetterReason::code).collect();
        assert_eq!(
            codes,
            [
                "unreadable_payload",
                "delivery_missing",
                "template_missing",
                "render_failed",
                "provider_rejected",
                "attempts_exhausted",
                "expires_before_retry"
            ]
        );
        assert_eq!(
            reasons[2].to_string(),
            "template 7 no longer exists",
            "the text recorded as the send's last error"
        );
        assert_eq!(reasons[5].to_string(), "gave up after 3 attempts: 503");
    }

    #[test]
    fn a_body_is_shown_as_is_when_printable_and_escaped_otherwise() {
        assert_eq!(printable(br#"{"v":1}"#), r#"{"v":1}"#);
        assert_eq!(printable(b"a\nb\xff"), r"a\nb\xff");
    }

    fn listed(delivery_id: Option<DeliveryId>, code: &str, body: &str) -> ListedDeadLetter {
        ListedDeadLetter {
            delivery_id,
            reason_code: code.to_owned(),
            reason: "x".repeat(60),
            dead_at: Some(chrono::Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap()),
            dead_lettered: 1,
            replayed: 0,
            worker: None,
            routing_key: Some("send".to_owned()),
            body: body.to_owned(),
        }
    }

    #[test]
    fn the_table_aligns_its_columns_and_says_how_many_are_waiting() {
        let listing = DeadLetterListing {
            queue: "verify.sms.dead".to_owned(),
            depth: 3,
            letters: vec![
                listed(Some(DeliveryId::generate()), "template_missing", "{}"),
                listed(None, "unreadable_payload", r"\xff"),
            ],
        };

        let table = listing.to_table();

        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "verify.sms.dead: 3 messages (showing the first 2)"
        );
        let code_at = lines[2].find("CODE").unwrap();
        assert_eq!(lines[3].find("template_missing"), Some(code_at));
        assert_eq!(lines[4].find("unreadable_payload"), Some(code_at));
        assert!(lines[3].contains('…'), "long reasons are cut: {}", lines[3]);
    }

    #[test]
    fn json_lines_carry_one_object_per_dead_letter() {
        let id = DeliveryId::generate();
        let listing = DeadLetterListing {
            queue: "q".to_owned(),
            depth: 1,
            letters: vec![listed(Some(id), "template_missing", "{}")],
        };

        let lines = listing.to_json_lines();

        let value: serde_json::Value = serde_json::from_str(lines.trim_end()).unwrap();
        assert_eq!(value["delivery_id"], id.to_string());
        assert_eq!(value["reason_code"], "template_missing");
        assert_eq!(value["dead_at"], "2025-01-02T03:04:05Z");
        assert_eq!(value["dead_lettered"], 1);
    }

    #[test]
    fn the_summary_counts_replays_skips_by_reason_and_refusals() {
        let report = ReplayReport {
            dry_run: false,
            verdicts: vec![
                ReplayVerdict::Replayed {
                    delivery_id: DeliveryId::generate(),
                    rearmed: true,
                },
                ReplayVerdict::Skipped {
                    delivery_id: DeliveryId::generate(),
                    reason: SkipReason::VerificationClosed(VerificationStatus::Expired),
                    discarded: false,
                },
                ReplayVerdict::Unreadable {
                    body: "nope".to_owned(),
                },
            ],
            not_found: Vec::new(),
        };

        assert_eq!(report.replayed(), 1);
        assert_eq!(
            report.skipped(),
            BTreeMap::from([("verification_expired", 1)])
        );
        let text = report.to_string();
        assert!(
            text.ends_with("replayed 1, skipped 1 (verification_expired: 1), unreadable 1\n"),
            "{text}"
        );
    }
}
