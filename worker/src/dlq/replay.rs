//! `verify-worker dlq replay`: moves chosen dead letters back to the work queue. A
//! failed send is re-armed in Postgres first, and only while its verification is still
//! pending and unexpired; the rest are skipped with the reason and stay in the queue.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use verify_common::config::RabbitSettings;
use verify_common::db::deliveries::{self, ReplayCheck};
use verify_common::db::{DbError, Pool};
use verify_common::domain::{DeliveryId, VerificationStatus};
use verify_common::queue::{DeadLetter, DeadLetterBrowser, QueueError, SendSms};

use super::body::{BODY_WIDTH, printable, truncated};

/// What can go wrong replaying dead letters.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Db(#[from] DbError),
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
/// [`ReplayError`] when Postgres or RabbitMQ fails. Jobs replayed before the failure
/// stay replayed (and are logged); every other message stays in the queue.
pub async fn replay_dead_letters(
    pool: &Pool,
    rabbit: &RabbitSettings,
    options: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    let browser = DeadLetterBrowser::open(rabbit).await?;
    let result = replay_from(&browser, pool, options).await;
    browser.close().await;
    result
}

async fn replay_from(
    browser: &DeadLetterBrowser,
    pool: &Pool,
    options: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
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
) -> Result<ReplayVerdict, ReplayError> {
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

    use verify_common::domain::{DeliveryId, VerificationStatus};

    use super::{ReplayReport, ReplayVerdict, SkipReason};

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
