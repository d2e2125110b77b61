//! JSON representations of stored records, shared by the native and PortaText routes.
//! Each derives its schema for the OpenAPI document, so the document describes what is
//! serialized.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use verify_common::db::abuse::{AllowRecord, BlockRecord, RuleCount, RuleRecord};
use verify_common::db::deliveries::DeliveryRecord;
use verify_common::db::stats::{StatsFigures, StatsGroup};
use verify_common::db::templates::TemplateRecord;
use verify_common::db::timeline::{CheckResult, TimelineEvent, TimelineKind};
use verify_common::db::verifications::VerificationRecord;
use verify_common::db::webhooks::EndpointRecord;
use verify_common::domain::abuse::{AllowKind, BlockScope, Outcome, RuleKind, RuleMode};
use verify_common::domain::webhook::webhook_message_id;
use verify_common::domain::{
    AttemptLogEntry, AttemptOutcome, DeliveryStatus, SmsEncoding, TemplateBody, TemplateId,
    VerificationStatus, new_template_engine,
};
use verify_common::domain::{ReceiptStatus, WebhookEvent};

/// A webhook endpoint. `secret` is present only in the answer that created it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WebhookView {
    pub id: i64,
    pub url: String,
    #[schema(schema_with = webhook_events)]
    pub events: Vec<&'static str>,
    pub enabled: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WebhookView {
    pub(crate) fn new(record: &EndpointRecord, secret: Option<&str>) -> Self {
        Self {
            id: record.id,
            url: record.url.as_str().to_owned(),
            events: record.events.iter().map(|event| event.as_str()).collect(),
            enabled: record.disabled_at.is_none(),
            disabled_at: record.disabled_at,
            disabled_reason: record.disabled_reason.clone(),
            secret: secret.map(str::to_owned),
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// The schema of a list of webhook event types: `verification.approved`, … as
/// [`WebhookEvent::ALL`] names them.
pub(crate) fn webhook_events() -> utoipa::openapi::Array {
    let names = WebhookEvent::ALL.iter().map(|event| event.as_str());
    utoipa::openapi::ArrayBuilder::new()
        .items(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .enum_values(Some(names)),
        )
        .description(Some("Webhook event types"))
        .build()
}

/// A verification with its sends.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VerificationView {
    #[schema(format = Uuid)]
    pub id: String,
    /// In E.164: `+`, a country code and 8 to 15 digits in all.
    #[schema(pattern = r"^\+[1-9][0-9]{7,14}$")]
    pub to: String,
    pub status: VerificationStatus,
    /// Status of the newest send: `delivered` or `undelivered` once its provider's
    /// receipt came.
    pub delivery_status: Option<DeliveryStatus>,
    pub template_id: Option<TemplateId>,
    pub locale: Option<String>,
    pub from: Option<String>,
    pub code_length: u8,
    pub attempts_remaining: u32,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub approved_at: Option<DateTime<Utc>>,
    /// The end user's address and id, as the start request gave them.
    pub client_ip: Option<String>,
    pub client_id: Option<String>,
    /// What the abuse rules made of the start request: `{decision, mode, number_type,
    /// country, rules, notes}`.
    pub risk: Option<serde_json::Value>,
    pub sends: Vec<SendView>,
}

/// One send of the code, with its attempt history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SendView {
    #[schema(format = Uuid)]
    pub id: String,
    pub send_number: i32,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub provider_message_id: Option<String>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// When the provider's final receipt was recorded.
    pub receipt_at: Option<DateTime<Utc>>,
    /// The provider's error code from an `undelivered` receipt (Twilio's `30003`, …).
    pub receipt_error_code: Option<String>,
    /// One entry per provider attempt: outcome, error and, for retries, when the next
    /// attempt was scheduled.
    pub attempt_log: Vec<AttemptLogEntry>,
}

impl VerificationView {
    pub(crate) fn new(
        verification: &VerificationRecord,
        sends: &[DeliveryRecord],
        now: DateTime<Utc>,
    ) -> Self {
        let status = verification.status_at(now);
        Self {
            id: verification.id.to_string(),
            to: verification.to.as_str().to_owned(),
            status,
            delivery_status: sends.last().map(|send| send.status),
            template_id: verification.template_id,
            locale: verification
                .locale
                .as_ref()
                .map(|locale| locale.as_str().to_owned()),
            from: verification.sender.clone(),
            code_length: verification.code_length.get(),
            attempts_remaining: if status == VerificationStatus::Pending {
                verification.attempts_remaining()
            } else {
                0
            },
            expires_at: verification.expires_at,
            created_at: verification.created_at,
            updated_at: verification.updated_at,
            approved_at: verification.approved_at,
            client_ip: verification.client_ip.map(|ip| ip.to_string()),
            client_id: verification
                .client_id
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            risk: verification.risk.clone(),
            sends: sends.iter().map(SendView::new).collect(),
        }
    }
}

impl SendView {
    pub(crate) fn new(send: &DeliveryRecord) -> Self {
        Self {
            id: send.id.to_string(),
            send_number: send.send_number,
            status: send.status,
            attempts: send.attempts,
            provider_message_id: send.provider_message_id.clone(),
            last_error: send.last_error.clone(),
            next_attempt_at: (send.status == DeliveryStatus::Retrying)
                .then_some(send.next_attempt_at)
                .flatten(),
            created_at: send.created_at,
            updated_at: send.updated_at,
            sent_at: send.sent_at,
            receipt_at: send.receipt_at,
            receipt_error_code: send.receipt_error_code.clone(),
            attempt_log: send.attempt_log.clone(),
        }
    }
}

/// The answer to a check by id (any outcome) or by number (an approval).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CheckView {
    #[schema(format = Uuid)]
    pub id: String,
    pub status: VerificationStatus,
    pub valid: bool,
    pub attempts_remaining: u32,
}

/// The answer to every check by number that did not approve, whatever the reason: the
/// fields of [`CheckView`], each `null` but `valid: false`, so clients read one shape and
/// nothing tells whether the number has a verification.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct RefusedCheckView {
    #[schema(schema_with = always_null)]
    id: Option<String>,
    #[schema(schema_with = always_null)]
    status: Option<VerificationStatus>,
    #[schema(schema_with = always_false)]
    valid: bool,
    #[schema(schema_with = always_null)]
    attempts_remaining: Option<u32>,
}

/// The answer to a check by number: an approval, or the one refusal.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum NumberCheckView {
    Approved(CheckView),
    Refused(RefusedCheckView),
}

/// The schema of a refusal's fields that are always `null`: saying so keeps an approval
/// and a refusal apart for clients that pick a shape by validating.
fn always_null() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Null)
        .build()
}

/// The schema of a refusal's `valid`: always `false`.
fn always_false() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Boolean)
        .enum_values(Some([false]))
        .build()
}

/// A stored template.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TemplateView {
    pub id: TemplateId,
    pub name: String,
    pub description: String,
    pub locale: Option<String>,
    pub text: String,
    /// Variables the text needs besides `code` and `ttl_minutes`.
    pub variables: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TemplateView {
    pub(crate) fn new(record: &TemplateRecord) -> Self {
        // Stored bodies were validated on save; re-parsing only lists their variables.
        let variables = TemplateBody::parse(&new_template_engine(), &record.body)
            .map(|body| body.variables().to_vec())
            .unwrap_or_default();
        Self {
            id: record.id,
            name: record.name.clone(),
            description: record.description.clone(),
            locale: record
                .locale
                .as_ref()
                .map(|locale| locale.as_str().to_owned()),
            text: record.body.clone(),
            variables,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// One page of templates, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TemplateListView {
    pub templates: Vec<TemplateView>,
}

/// A rendered preview of a template text.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PreviewView {
    pub text: String,
    pub encoding: SmsEncoding,
    pub characters: usize,
    pub segments: usize,
    pub variables: Vec<String>,
}

/// One abuse rule as stored, how it applies under the process-wide mode, and how often it
/// matched, by outcome (`block`, `shadow_block`, `monitor`; totals of every API process).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RuleView {
    pub id: String,
    pub kind: RuleKind,
    pub mode: RuleMode,
    /// The mode it applies in: the weaker of its own and `VERIFY_ABUSE_MODE`.
    pub effective_mode: RuleMode,
    pub params: serde_json::Value,
    /// Why the rule exists and what its figures mean.
    pub reason: String,
    pub updated_at: DateTime<Utc>,
    pub counts: BTreeMap<&'static str, i64>,
}

impl RuleView {
    pub(crate) fn new(record: &RuleRecord, global: RuleMode, counts: &[RuleCount]) -> Self {
        let id = record.rule.id.to_string();
        let mut by_outcome: BTreeMap<&'static str, i64> =
            Outcome::ALL.iter().map(|o| (o.as_str(), 0)).collect();
        for count in counts.iter().filter(|count| count.rule_id == id) {
            by_outcome.insert(count.outcome.as_str(), count.count);
        }
        Self {
            kind: record.rule.id.kind(),
            id,
            mode: record.rule.mode,
            effective_mode: record.rule.mode.under(global),
            params: record.rule.params.to_json(),
            reason: record.reason.clone(),
            updated_at: record.updated_at,
            counts: by_outcome,
        }
    }
}

/// Every abuse rule, and the mode all rules apply under (`VERIFY_ABUSE_MODE`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RuleListView {
    pub mode: RuleMode,
    pub rules: Vec<RuleView>,
}

/// The allow list.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AllowListView {
    pub entries: Vec<AllowView>,
}

/// The blocks in force.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BlockListView {
    pub blocks: Vec<BlockView>,
}

/// Every webhook endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WebhookListView {
    pub webhooks: Vec<WebhookView>,
}

/// An allow-list entry.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AllowView {
    pub id: i64,
    pub kind: AllowKind,
    pub value: String,
    pub note: String,
    pub created_at: DateTime<Utc>,
}

impl AllowView {
    pub(crate) fn new(record: &AllowRecord) -> Self {
        Self {
            id: record.id,
            kind: record.kind,
            value: record.value.clone(),
            note: record.note.clone(),
            created_at: record.created_at,
        }
    }
}

/// A block in force.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BlockView {
    pub id: i64,
    pub scope: BlockScope,
    pub key: String,
    pub rule: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// The counts that tripped it.
    pub counts: serde_json::Value,
    /// Written by a rule in shadow mode: shown, recorded in the risk of the verifications
    /// it matches, but refusing nothing.
    pub shadow: bool,
}

impl BlockView {
    pub(crate) fn new(record: &BlockRecord) -> Self {
        Self {
            id: record.id,
            scope: record.scope,
            key: record.key.clone(),
            rule: record.rule_id.clone(),
            reason: record.reason.clone(),
            since: record.since,
            until: record.until,
            counts: record.counts.clone(),
            shadow: record.shadow,
        }
    }
}

/// A stats report: the window as covered (whole hours), the grouping and one row per
/// group.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatsView {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: Option<&'static str>,
    pub groups: Vec<StatsGroupView>,
}

/// The figures of one group. Rates are `null` when their denominator is 0, medians when
/// no duration was recorded.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatsGroupView {
    /// The group's value: a country, a template id (`null` for the built-in text), a
    /// provider (`null` for starts and approvals), a `YYYY-MM-DD` day; `null` ungrouped.
    pub group: serde_json::Value,
    pub started: i64,
    pub sent: i64,
    pub delivered: i64,
    pub approved: i64,
    pub segments_sent: i64,
    /// Approved ÷ started.
    pub conversion_rate: Option<f64>,
    /// Delivered ÷ sent.
    pub delivery_rate: Option<f64>,
    pub median_ms_to_sms: Option<u64>,
    pub median_ms_to_approval: Option<u64>,
}

impl StatsGroupView {
    pub(crate) fn new(figures: &StatsFigures) -> Self {
        let group = match &figures.group {
            StatsGroup::All => serde_json::Value::Null,
            StatsGroup::Country(country) => country.as_str().into(),
            StatsGroup::Template(id) => id.map_or(serde_json::Value::Null, |id| id.get().into()),
            StatsGroup::Provider(name) => name.as_deref().into(),
            StatsGroup::Day(day) => day.format("%Y-%m-%d").to_string().into(),
        };
        // Counts are far below 2^52, where f64 stops holding integers exactly.
        #[allow(clippy::cast_precision_loss)]
        let rate = |part: i64, whole: i64| (whole > 0).then(|| part as f64 / whole as f64);
        let millis = |median: Option<std::time::Duration>| {
            median.map(|d| u64::try_from((d.as_micros() + 500) / 1000).unwrap_or(u64::MAX))
        };
        Self {
            group,
            started: figures.started,
            sent: figures.sent,
            delivered: figures.delivered,
            approved: figures.approved,
            segments_sent: figures.segments,
            conversion_rate: rate(figures.approved, figures.started),
            delivery_rate: rate(figures.delivered, figures.sent),
            median_ms_to_sms: millis(figures.start_to_sms.median()),
            median_ms_to_approval: millis(figures.start_to_approval.median()),
        }
    }
}

/// A verification's timeline: every event of its life, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TimelineView {
    pub events: Vec<TimelineEventView>,
}

/// One event: its `type`, when it happened (`at`) and the facts recorded about it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TimelineEventView {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: TimelineEventKindView,
}

/// The event types of a timeline and their fields. The `type` names are stable.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type")]
pub(crate) enum TimelineEventKindView {
    #[serde(rename = "verification.created")]
    Created {
        expires_at: DateTime<Utc>,
        max_checks: i32,
    },
    #[serde(rename = "send.queued")]
    SendQueued {
        #[schema(format = Uuid)]
        send_id: String,
        send_number: i32,
    },
    #[serde(rename = "send.attempt")]
    SendAttempt {
        #[schema(format = Uuid)]
        send_id: String,
        send_number: i32,
        attempt: i32,
        outcome: AttemptOutcome,
        provider_message_id: Option<String>,
        error: Option<String>,
        retry_at: Option<DateTime<Utc>>,
        duration_ms: Option<u64>,
        /// The provider the attempt went to (`twilio`, `http`, `log`).
        provider: Option<String>,
    },
    #[serde(rename = "send.receipt")]
    SendReceipt {
        #[schema(format = Uuid)]
        send_id: String,
        send_number: i32,
        #[schema(value_type = ReceiptStatus)]
        status: &'static str,
        error_code: Option<String>,
    },
    /// A counted check: `outcome` is `approved`, `wrong_code` or `locked` (the number's
    /// guess lock refused the code); `status` is the verification's after it.
    #[serde(rename = "check")]
    Check {
        check_number: i32,
        #[schema(value_type = CheckResult)]
        outcome: &'static str,
        status: VerificationStatus,
    },
    #[serde(rename = "verification.canceled")]
    Canceled,
    #[serde(rename = "verification.expired")]
    Expired,
    #[serde(rename = "webhook.queued")]
    WebhookQueued {
        webhook_id: String,
        event: String,
        endpoint_id: i64,
        /// Where its delivery stands now: `pending`, `delivered`, `failed`, `abandoned`.
        status: String,
        attempts: i32,
    },
    #[serde(rename = "webhook.attempt")]
    WebhookAttempt {
        webhook_id: String,
        event: String,
        attempt: i32,
        /// `null` when no answer came (refused destination, connection error, timeout).
        status_code: Option<i32>,
        error: Option<String>,
    },
}

impl TimelineView {
    pub(crate) fn new(events: &[TimelineEvent]) -> Self {
        Self {
            events: events
                .iter()
                .map(|event| TimelineEventView {
                    at: event.at,
                    event: TimelineEventKindView::new(&event.kind),
                })
                .collect(),
        }
    }
}

impl TimelineEventKindView {
    fn new(kind: &TimelineKind) -> Self {
        match kind.clone() {
            TimelineKind::Created {
                expires_at,
                max_checks,
            } => Self::Created {
                expires_at,
                max_checks,
            },
            TimelineKind::SendQueued {
                send_id,
                send_number,
            } => Self::SendQueued {
                send_id: send_id.to_string(),
                send_number,
            },
            TimelineKind::SendAttempt {
                send_id,
                send_number,
                attempt,
                outcome,
                provider_message_id,
                error,
                retry_at,
                duration_ms,
                provider,
            } => Self::SendAttempt {
                send_id: send_id.to_string(),
                send_number,
                attempt,
                outcome,
                provider_message_id,
                error,
                retry_at,
                duration_ms,
                provider,
            },
            TimelineKind::SendReceipt {
                send_id,
                send_number,
                status,
                error_code,
            } => Self::SendReceipt {
                send_id: send_id.to_string(),
                send_number,
                status: status.as_str(),
                error_code,
            },
            TimelineKind::Check {
                check_number,
                outcome,
                status,
            } => Self::Check {
                check_number,
                outcome: match outcome {
                    CheckResult::Approved => "approved",
                    CheckResult::WrongCode => "wrong_code",
                    CheckResult::Locked => "locked",
                },
                status,
            },
            TimelineKind::Canceled => Self::Canceled,
            TimelineKind::Expired => Self::Expired,
            TimelineKind::WebhookQueued {
                webhook_id,
                event,
                endpoint_id,
                status,
                attempts,
            } => Self::WebhookQueued {
                webhook_id: webhook_message_id(webhook_id),
                event,
                endpoint_id,
                status,
                attempts,
            },
            TimelineKind::WebhookAttempt {
                webhook_id,
                event,
                attempt,
                status_code,
                error,
            } => Self::WebhookAttempt {
                webhook_id: webhook_message_id(webhook_id),
                event,
                attempt,
                status_code,
                error,
            },
        }
    }
}
