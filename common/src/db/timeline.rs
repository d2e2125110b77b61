//! A verification's timeline: every event of its life, oldest first, assembled by one
//! query from the rows that record them (the verification, its sends and their attempt
//! logs and receipts, its counted checks, its webhook deliveries and their attempts).

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Deserialize;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::DbError;
use super::rows::named;
use crate::domain::{AttemptOutcome, ReceiptStatus, VerificationId, VerificationStatus};

/// One event of a verification's life.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEvent {
    pub at: DateTime<Utc>,
    pub kind: TimelineKind,
}

/// What happened, with the facts recorded about it. The `type` names are the API's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum TimelineKind {
    /// The verification was started.
    #[serde(rename = "verification.created")]
    Created {
        expires_at: DateTime<Utc>,
        max_checks: i32,
    },
    /// A send (the first or a resend) was queued for a worker.
    #[serde(rename = "send.queued")]
    SendQueued { send_id: Uuid, send_number: i32 },
    /// A worker's attempt at a send, as its attempt log recorded it.
    #[serde(rename = "send.attempt")]
    SendAttempt {
        send_id: Uuid,
        send_number: i32,
        attempt: i32,
        outcome: AttemptOutcome,
        #[serde(default)]
        provider_message_id: Option<String>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        retry_at: Option<DateTime<Utc>>,
        #[serde(default)]
        duration_ms: Option<u64>,
        #[serde(default)]
        provider: Option<String>,
    },
    /// The provider's final delivery receipt for a send.
    #[serde(rename = "send.receipt")]
    SendReceipt {
        send_id: Uuid,
        send_number: i32,
        status: ReceiptStatus,
        error_code: Option<String>,
    },
    /// A counted check of a code, and the verification's status after it.
    #[serde(rename = "check")]
    Check {
        check_number: i32,
        outcome: CheckResult,
        status: VerificationStatus,
    },
    /// The verification was canceled (through the API, or by a newer start to its number).
    #[serde(rename = "verification.canceled")]
    Canceled,
    /// The code's lifetime ran out while the verification was pending.
    #[serde(rename = "verification.expired")]
    Expired,
    /// A webhook event about the verification was recorded for an endpoint.
    #[serde(rename = "webhook.queued")]
    WebhookQueued {
        webhook_id: Uuid,
        event: String,
        endpoint_id: i64,
        /// Where its delivery stands now: `pending`, `delivered`, `failed`, `abandoned`.
        status: String,
        attempts: i32,
    },
    /// One attempt to deliver that webhook.
    #[serde(rename = "webhook.attempt")]
    WebhookAttempt {
        webhook_id: Uuid,
        event: String,
        attempt: i32,
        /// `None` when no answer came (refused destination, connection error, timeout).
        status_code: Option<i32>,
        error: Option<String>,
    },
}

/// How a counted check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    Approved,
    WrongCode,
    /// The number's guess lock refused the code, right or wrong; counted as a failure.
    Locked,
}

#[cfg(test)]
super::rows::table_row! {
    /// A `verification_checks` row: written by the statement that counts a check
    /// (`check_verification`), read only by the timeline's query.
    pub(crate) struct VerificationCheckRow in "verification_checks" {}
    unread [verification_id, check_number, outcome, checked_at]
}

/// Every event of the verification `id`, oldest first (events at the same moment in the
/// order of the life: created, sends, checks, closing, webhooks). `None` when no
/// verification has that id.
///
/// One statement, a `UNION ALL` of lookups by verification id, each on an index
/// (primary keys, `sms_deliveries`' unique key, `webhook_deliveries_verification`).
///
/// # Errors
/// [`DbError`] on database failure, or `Corrupt` for a row this build cannot read.
pub async fn verification_timeline(
    pool: &Pool,
    id: VerificationId,
) -> Result<Option<Vec<TimelineEvent>>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT e.at, e.event FROM (
                 SELECT v.created_at AS at, 0 AS rank, 0 AS seq,
                        jsonb_build_object('type', 'verification.created',
                                           'expires_at', v.expires_at,
                                           'max_checks', v.max_checks) AS event
                 FROM verifications v WHERE v.id = $1
               UNION ALL
                 SELECT d.created_at, 1, d.send_number,
                        jsonb_build_object('type', 'send.queued', 'send_id', d.id,
                                           'send_number', d.send_number)
                 FROM sms_deliveries d WHERE d.verification_id = $1
               UNION ALL
                 SELECT (a.entry ->> 'at')::timestamptz, 2, a.n::integer,
                        a.entry || jsonb_build_object('type', 'send.attempt', 'send_id', d.id,
                                                      'send_number', d.send_number)
                 FROM sms_deliveries d,
                      jsonb_array_elements(d.attempt_log) WITH ORDINALITY AS a (entry, n)
                 WHERE d.verification_id = $1
               UNION ALL
                 SELECT d.receipt_at, 3, d.send_number,
                        jsonb_build_object('type', 'send.receipt', 'send_id', d.id,
                                           'send_number', d.send_number, 'status', d.status,
                                           'error_code', d.receipt_error_code)
                 FROM sms_deliveries d
                 WHERE d.verification_id = $1 AND d.receipt_at IS NOT NULL
               UNION ALL
                 SELECT c.checked_at, 4, c.check_number,
                        jsonb_build_object(
                            'type', 'check', 'check_number', c.check_number,
                            'outcome', c.outcome,
                            'status', CASE WHEN c.outcome = 'approved' THEN 'approved'
                                           WHEN c.check_number >= v.max_checks
                                               THEN 'max_attempts_reached'
                                           ELSE 'pending' END)
                 FROM verification_checks c
                 JOIN verifications v ON v.id = c.verification_id
                 WHERE c.verification_id = $1
               UNION ALL
                 SELECT CASE WHEN v.status = 'canceled' THEN v.updated_at ELSE v.expires_at END,
                        5, 0,
                        jsonb_build_object('type', CASE WHEN v.status = 'canceled'
                                                        THEN 'verification.canceled'
                                                        ELSE 'verification.expired' END)
                 FROM verifications v
                 WHERE v.id = $1
                   AND (v.status = 'canceled'
                        OR (v.status = 'pending' AND v.expires_at <= now()))
               UNION ALL
                 SELECT w.created_at, 6, 0,
                        jsonb_build_object('type', 'webhook.queued', 'webhook_id', w.id,
                                           'event', w.event_type, 'endpoint_id', w.endpoint_id,
                                           'status', w.status, 'attempts', w.attempts)
                 FROM webhook_deliveries w WHERE w.verification_id = $1
               UNION ALL
                 SELECT t.attempted_at, 7, t.attempt,
                        jsonb_build_object('type', 'webhook.attempt', 'webhook_id', w.id,
                                           'event', w.event_type, 'attempt', t.attempt,
                                           'status_code', t.status_code, 'error', t.error)
                 FROM webhook_deliveries w
                 JOIN webhook_attempts t ON t.delivery_id = w.id
                 WHERE w.verification_id = $1
             ) e
             ORDER BY e.at, e.rank, e.seq",
        )
        .await?;
    let rows = client.query(&statement, &[&id.as_uuid()]).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    rows.iter()
        .map(|row| {
            let Json(kind) = named::<Json<TimelineKind>>(row, "event")
                .map_err(|e| DbError::Corrupt(format!("timeline event: {e}")))?;
            Ok(TimelineEvent {
                at: named(row, "at")?,
                kind,
            })
        })
        .collect::<Result<_, _>>()
        .map(Some)
}
