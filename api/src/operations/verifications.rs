//! Verification operations: start, read, check, resend, cancel.

use std::cmp::Reverse;
use std::time::Duration;

use chrono::Utc;
use verify_common::db::deliveries::{self, DeliveryRecord};
use verify_common::db::idempotency::{self, IdempotencyClaim};
use verify_common::db::starts::{self, CreateOutcome, NewVerification, ResendOutcome, StartResult};
use verify_common::db::timeline;
use verify_common::db::verifications::{self, VerificationRecord};
use verify_common::domain::abuse::{ClientIdError, ClientSignals, RuleId, VelocityCheck};
use verify_common::domain::otp::generate_nonce;
use verify_common::domain::{
    DeliveryId, OtpCode, OtpCodeLength, PhoneNumber, Sender, SmsEncoding, SmsShape, SmsTooLong,
    TemplateBody, TemplateId, TemplateLocale, TraceParent, Variables, VerificationId,
    VerificationStatus,
};

use crate::error::ApiError;
use crate::metrics::{CheckResult, country_of};
use crate::operations::templates::{placeholder_code, template_error, ttl_minutes};
use crate::state::AppState;
use crate::template_cache::LookupError;
use crate::trace;
use crate::views::{CheckView, TimelineView};

/// A validated request to start a verification.
#[derive(Debug)]
pub(crate) struct StartRequest {
    pub to: PhoneNumber,
    pub template_id: Option<TemplateId>,
    pub locale: Option<TemplateLocale>,
    pub variables: Variables,
    pub sender: Option<Sender>,
    pub code_length: Option<OtpCodeLength>,
    pub ttl: Option<Duration>,
    /// What the producer told us about the end user (`client_ip`, `client_id`).
    pub client: ClientSignals,
    /// The API key that asked, as the abuse rules name it
    /// ([`crate::auth::Caller::key_name`]).
    pub api_key: String,
    /// The request's trace: kept with the send, and carried by its job.
    pub trace: TraceParent,
}

/// Reads a request's `client_ip` and `client_id`.
///
/// # Errors
/// 422 `invalid_client_id` naming `client_id`; an unreadable `client_ip` is not an error.
pub(crate) fn client_signals(
    ip: Option<&str>,
    id: Option<&str>,
) -> Result<ClientSignals, ApiError> {
    ClientSignals::parse(ip, id)
        .map_err(|e: ClientIdError| ApiError::unprocessable("invalid_client_id", "client_id", e))
}

/// Phone-number errors as a 400 naming `field`.
pub(crate) fn phone_error(
    field: &str,
    error: &verify_common::domain::PhoneNumberError,
) -> ApiError {
    ApiError::invalid("invalid_phone_number", field, error)
}

fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "verification_not_found",
        what: "verification",
    }
}

/// The 400 for a `template_id` that names no template.
fn template_not_found(id: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(
        "template_not_found",
        "template_id",
        format!("template {id} does not exist"),
    )
}

/// The template id of a start request's body. A number that cannot be an id names no
/// template, so it is answered as an unknown one is.
///
/// # Errors
/// 400 `template_not_found` naming `template_id`.
pub(crate) fn body_template_id(raw: Option<i64>) -> Result<Option<TemplateId>, ApiError> {
    raw.map(|id| TemplateId::try_from(id).map_err(|_| template_not_found(id)))
        .transpose()
}

/// Checks that the template (or the built-in text for the locale) exists, that every
/// variable it needs was supplied and that the message fits the segment cap, so a request
/// that could never be sent fails now instead of later in a worker. The message is
/// rendered once, from the cached template, with a stand-in for the code: no query.
async fn check_renderable(state: &AppState, request: &StartRequest) -> Result<(), ApiError> {
    let body = match request.template_id {
        Some(id) => state.template_cache.stored(&state.pool, id).await,
        None => state.template_cache.built_in(
            request
                .locale
                .as_ref()
                .map_or("en", TemplateLocale::language),
        ),
    }
    .map_err(|error| match error {
        LookupError::NotFound(id) => template_not_found(id),
        LookupError::NoBuiltIn(language) => ApiError::invalid(
            "unsupported_locale",
            "locale",
            format!(
                "there is no built-in text for {language:?}; create a template and pass template_id"
            ),
        ),
        LookupError::Invalid(error) => template_error(error),
        LookupError::Db(error) => error.into(),
    })?;
    if let Some(missing) = body.first_missing_variable(&request.variables) {
        return Err(ApiError::invalid(
            "missing_variable",
            format!("variables.{missing}"),
            format!("the template needs the variable {missing:?}"),
        ));
    }
    let text = body
        .render(
            &state.templates,
            &placeholder_code(request.code_length.unwrap_or(state.otp.code_length)),
            ttl_minutes(request.ttl.unwrap_or(state.otp.ttl)),
            &request.variables,
        )
        .map_err(template_error)?;
    state
        .max_segments
        .admit(&text)
        .map_err(|too_long| message_too_long(request, &body, too_long))?;
    Ok(())
}

/// A variable that adds to a message over the segment cap.
struct Contributor<'a> {
    name: &'a str,
    /// Holds a character outside GSM-7, in a message that is UCS-2 because of it or the
    /// template: one such character cuts a segment from 153 characters to 67.
    outside_gsm: bool,
    /// Units it adds in the message's encoding.
    units: usize,
    characters: usize,
}

/// The 422 for a message over the segment cap. It names the non-empty variables the
/// template reads, those outside GSM-7 first when the message is UCS-2, then the longest;
/// the field is the first of them, or the template when no variable adds anything.
fn message_too_long(request: &StartRequest, body: &TemplateBody, too_long: SmsTooLong) -> ApiError {
    let ucs2 = too_long.shape.encoding == SmsEncoding::Ucs2;
    let mut contributors: Vec<Contributor<'_>> = body
        .variables()
        .iter()
        .filter_map(|name| {
            let value = request.variables.get(name).filter(|v| !v.is_empty())?;
            let own = SmsShape::of(value);
            Some(Contributor {
                name,
                outside_gsm: ucs2 && own.encoding == SmsEncoding::Ucs2,
                units: if ucs2 {
                    value.encode_utf16().count()
                } else {
                    own.units
                },
                characters: own.characters,
            })
        })
        .collect();
    contributors.sort_by_key(|c| (Reverse(c.outside_gsm), Reverse(c.units), c.name));
    let mut message = too_long.to_string();
    let Some(first) = contributors.first() else {
        let field = if request.template_id.is_some() {
            "template_id"
        } else {
            "locale"
        };
        message.push_str(", and no variable adds to it: shorten the template");
        return ApiError::unprocessable("message_too_long", field, message);
    };
    let field = format!("variables.{}", first.name);
    let named: Vec<String> = contributors
        .iter()
        .map(|c| {
            let note = if c.outside_gsm { ", not all GSM-7" } else { "" };
            format!("variables.{} ({} characters{note})", c.name, c.characters)
        })
        .collect();
    message.push_str("; shorten ");
    message.push_str(&named.join(", "));
    ApiError::unprocessable("message_too_long", field, message)
}

/// Hands the job of a committed send to the outbox, which publishes it in the background;
/// the send is durable already, so the answer does not wait for the broker.
fn enqueue(state: &AppState, delivery: &DeliveryRecord, trace: TraceParent) {
    state.outbox.publish(delivery.id, Some(trace));
}

/// The result of a start request.
#[derive(Debug)]
enum Started {
    /// A new verification, its first send enqueued.
    New(VerificationRecord, Vec<DeliveryRecord>),
    /// A repeat of an earlier request with the same idempotency key: nothing was created.
    /// `response` is the first answer, if it was stored.
    Replayed {
        verification: VerificationRecord,
        sends: Vec<DeliveryRecord>,
        response: Option<serde_json::Value>,
    },
}

/// Records a verification and its first send (canceling the number's earlier open
/// verifications) and enqueues the send. With an idempotency claim, a repeated request
/// returns the first one's verification instead.
///
/// The abuse rules judge the request before anything is written, the idempotency key
/// included, and the velocity limits in the statement that would write it: a refused
/// request records nothing, so a retry of it is judged again, by the rules in force then.
///
/// # Errors
/// 400s for unusable templates or variables, 422 for a message over the segment cap or
/// an idempotency key reused with another body, 403/422 when an abuse rule refuses the
/// number, 429 over the per-number limit or a velocity limit, or when a block refuses
/// the number (`number_locked`) or its prefix or country (`destination_blocked`), 503 when
/// Postgres is down.
async fn start_verification(
    state: &AppState,
    request: StartRequest,
    idempotency: Option<&IdempotencyClaim>,
) -> Result<Started, ApiError> {
    check_renderable(state, &request).await?;
    let (risk, velocity) = state
        .abuse
        .assess(&request.to, &request.client, &request.api_key)?;
    // Judging classified the number already, so its region costs nothing now.
    let country = country_of(&request.to);
    let risk = serde_json::to_value(&risk).map_err(|e| ApiError::Internal(e.into()))?;
    let nonce = generate_nonce().map_err(|e| ApiError::Internal(e.into()))?;
    let id = VerificationId::generate();
    trace::record_verification(id);
    let new = NewVerification {
        id,
        delivery_id: DeliveryId::generate(),
        to: request.to,
        template_id: request.template_id,
        locale: request.locale,
        sender: request.sender,
        variables: request.variables,
        code_length: request.code_length.unwrap_or(state.otp.code_length),
        code_nonce: nonce,
        max_checks: state.otp.max_checks,
        ttl: request.ttl.unwrap_or(state.otp.ttl),
        idempotency: idempotency.cloned(),
        client_ip: request.client.ip,
        client_id: request.client.id,
        risk: Some(risk),
        velocity: velocity.clone(),
        trace: Some(request.trace),
    };
    // The group commit hands the send's job to the outbox itself.
    let StartResult {
        outcome,
        velocity_counts,
    } = state.starts.submit(new).await?;
    state.abuse.count_velocity(&velocity, &velocity_counts);
    match outcome {
        CreateOutcome::Created(created) => {
            let (verification, delivery) = *created;
            state.metrics.verification_started(country);
            tracing::info!(verification = %verification.id, to = %verification.to, "verification started");
            Ok(Started::New(verification, vec![delivery]))
        }
        CreateOutcome::RateLimited { retry_after } => Err(rate_limited(retry_after)),
        CreateOutcome::VelocityLimited { check, retry_after } => {
            Err(velocity_limited(&velocity, check, retry_after))
        }
        CreateOutcome::Replayed {
            verification_id,
            response,
        } => {
            let (verification, sends) = find_verification(state, verification_id).await?;
            Ok(Started::Replayed {
                verification,
                sends,
                response,
            })
        }
        CreateOutcome::KeyReused => Err(crate::idempotency::key_reused()),
    }
}

/// Starts a verification and renders the answer with `render`, handling idempotent
/// repeats in one place: a new verification's answer is stored under the key, a repeat
/// gets the stored answer (or, if storing had failed, one rendered from the current state).
///
/// # Errors
/// As [`start_verification`].
pub(crate) async fn start_verification_answer(
    state: &AppState,
    request: StartRequest,
    idempotency: Option<&IdempotencyClaim>,
    render: impl Fn(&VerificationRecord, &[DeliveryRecord]) -> serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    Ok(
        match start_verification(state, request, idempotency).await? {
            Started::New(verification, sends) => {
                let answer = render(&verification, &sends);
                if let Some(claim) = idempotency {
                    remember_response(state, claim, &answer).await;
                }
                answer
            }
            Started::Replayed {
                response: Some(answer),
                ..
            } => answer,
            Started::Replayed {
                verification,
                sends,
                response: None,
            } => render(&verification, &sends),
        },
    )
}

/// Stores the first answer to an idempotent request. Failing to store it only means a
/// duplicate is answered from the current state instead, so errors are logged, not raised.
async fn remember_response(
    state: &AppState,
    claim: &IdempotencyClaim,
    response: &serde_json::Value,
) {
    if let Err(error) = idempotency::store_idempotent_response(&state.pool, claim, response).await {
        tracing::warn!(%error, "could not store an idempotent response");
    }
}

fn rate_limited(retry_after: Duration) -> ApiError {
    ApiError::TooManyRequests {
        code: "rate_limited",
        message: "too many codes were sent to this number recently".to_owned(),
        retry_after,
    }
}

/// The 429 for a send refused by the velocity check at `check` of `checks`.
fn velocity_limited(checks: &[VelocityCheck], check: usize, retry_after: Duration) -> ApiError {
    match checks.get(check) {
        Some(refusing) => ApiError::VelocityLimited {
            rule: refusing.rule,
            scope: refusing.scope,
            retry_after,
        },
        None => ApiError::Internal(anyhow::anyhow!(
            "velocity check {check} refused a send with {} checks",
            checks.len()
        )),
    }
}

/// A verification and its sends.
///
/// # Errors
/// 404 for an unknown id.
pub(crate) async fn find_verification(
    state: &AppState,
    id: VerificationId,
) -> Result<(VerificationRecord, Vec<DeliveryRecord>), ApiError> {
    let verification = verifications::find_verification(&state.pool, id)
        .await?
        .ok_or_else(not_found)?;
    let sends = deliveries::list_deliveries(&state.pool, id).await?;
    Ok((verification, sends))
}

/// Every event of a verification, oldest first.
///
/// # Errors
/// 404 for an unknown id.
pub(crate) async fn timeline(
    state: &AppState,
    id: VerificationId,
) -> Result<TimelineView, ApiError> {
    let events = timeline::verification_timeline(&state.pool, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(TimelineView::new(&events))
}

/// Parses a typed code: 4–10 digits.
///
/// # Errors
/// 400 `invalid_code`.
pub(crate) fn parse_code(code: &str) -> Result<&str, ApiError> {
    let trimmed = code.trim();
    if (4..=10).contains(&trimmed.len()) && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        Ok(trimmed)
    } else {
        Err(ApiError::invalid(
            "invalid_code",
            "code",
            "the code must be 4 to 10 digits",
        ))
    }
}

/// Checks a typed code against the verification with this id.
///
/// The caller proved it holds the id it was given when it started the verification, so
/// the answer shows the verification's real `status` and `attempts_remaining`. An id that
/// names no verification answers exactly as an expired one would (200, `expired`, no
/// attempts left), so ids cannot be probed for.
///
/// # Errors
/// 400 for a malformed code; 503 when Postgres is down.
pub(crate) async fn check_by_id(
    state: &AppState,
    id: VerificationId,
    code: &str,
) -> Result<CheckView, ApiError> {
    let code = parse_code(code)?;
    match verifications::find_verification(&state.pool, id).await? {
        Some(verification) => check_verification(state, verification, code).await,
        None => {
            state.metrics.check(CheckResult::NotFound);
            Ok(expired(id))
        }
    }
}

/// The answer about an expired verification, and about one that does not exist.
fn expired(id: VerificationId) -> CheckView {
    CheckView {
        id: id.to_string(),
        status: VerificationStatus::Expired,
        valid: false,
        attempts_remaining: 0,
    }
}

/// What a check by number may tell its caller.
#[derive(Debug)]
pub(crate) enum NumberCheck {
    /// The code approved the number's newest open verification.
    Approved(CheckView),
    /// Anything else: no verification, a wrong code, or one expired, used, canceled or
    /// out of attempts. One answer for all of them, so a check by number never tells
    /// whether the number has a verification.
    Refused,
}

/// Checks a typed code against the newest open verification of `to` (the newest one
/// when none is open).
///
/// # Errors
/// 400 for a malformed code; 503 when Postgres is down.
pub(crate) async fn check_by_number(
    state: &AppState,
    to: &PhoneNumber,
    code: &str,
) -> Result<NumberCheck, ApiError> {
    let code = parse_code(code)?;
    let Some(verification) = verifications::find_verification_to_check(&state.pool, to).await?
    else {
        state.metrics.check(CheckResult::NotFound);
        return Ok(NumberCheck::Refused);
    };
    trace::record_verification(verification.id);
    let view = check_verification(state, verification, code).await?;
    Ok(if view.valid {
        NumberCheck::Approved(view)
    } else {
        NumberCheck::Refused
    })
}

/// Checks `code` against `verification` and counts the check if it is still open.
///
/// The guess budget applies in the same statement: while the number is locked, even the
/// right code fails, and the answer is the one a wrong code gets, so a lock cannot be
/// told from a wrong guess. A check that locks the number makes this process apply the
/// lock at once, before it answers.
async fn check_verification(
    state: &AppState,
    verification: VerificationRecord,
    code: &str,
) -> Result<CheckView, ApiError> {
    let closed = |v: &VerificationRecord| CheckView {
        id: v.id.to_string(),
        status: v.status_at(Utc::now()),
        valid: false,
        attempts_remaining: 0,
    };
    match verification.status_at(Utc::now()) {
        VerificationStatus::Pending => {}
        VerificationStatus::Expired => {
            state.metrics.check(CheckResult::Expired);
            return Ok(closed(&verification));
        }
        _ => {
            state.metrics.check(CheckResult::Closed);
            return Ok(closed(&verification));
        }
    }
    let expected = OtpCode::derive(
        &state.secret,
        verification.id.as_uuid(),
        &verification.code_nonce,
        verification.code_length,
    )
    .map_err(|e| ApiError::Internal(e.into()))?;
    let matched = expected.matches(code);
    let guess = state.abuse.guess_check();
    match verifications::record_check(&state.pool, verification.id, matched, guess).await? {
        Some(record) => {
            if let (Some(outcome), Some(guess)) = (record.lock, guess) {
                state.abuse.count(RuleId::GuessNumber, outcome, guess.mode);
            }
            if record.locked_now
                && let Err(error) = state.abuse.reload_blocks().await
            {
                tracing::warn!(%error, "could not reload the abuse blocks after a lock");
            }
            let valid = matched && record.status == VerificationStatus::Approved;
            if valid {
                state.metrics.check(CheckResult::Approved);
                state.metrics.verification_approved(&verification.to);
            } else {
                state.metrics.check(CheckResult::WrongCode);
            }
            let remaining = if record.status == VerificationStatus::Pending {
                u32::try_from(record.max_checks - record.checks_made).unwrap_or(0)
            } else {
                0
            };
            tracing::info!(verification = %verification.id, valid, "code checked");
            Ok(CheckView {
                id: verification.id.to_string(),
                status: record.status,
                valid,
                attempts_remaining: remaining,
            })
        }
        // Closed between our read and our update (a concurrent check won the race).
        None => {
            state.metrics.check(CheckResult::Closed);
            Ok(
                verifications::find_verification(&state.pool, verification.id)
                    .await?
                    .map_or_else(|| expired(verification.id), |current| closed(&current)),
            )
        }
    }
}

/// Sends the same code again, asked for with the API key `api_key` (as
/// [`crate::auth::Caller::key_name`] names it). The send is judged like a start: by the
/// number-type and country rules in force now, by the blocks in force on its number,
/// prefix and country, and by the velocity limits, under the client signals its
/// verification was started with.
///
/// # Errors
/// 404 unknown, 409 closed, 403/422 when an abuse rule refuses the number, 429 too soon,
/// over the per-number limit or over a velocity limit, or blocked (`number_locked`,
/// `destination_blocked`), 503 when a dependency is down.
pub(crate) async fn resend(
    state: &AppState,
    id: VerificationId,
    api_key: &str,
    trace: TraceParent,
) -> Result<(VerificationRecord, Vec<DeliveryRecord>), ApiError> {
    // Read first, to judge the number in memory; resends are rare next to starts.
    let verification = verifications::find_verification(&state.pool, id)
        .await?
        .ok_or_else(not_found)?;
    let client = ClientSignals {
        ip: verification.client_ip,
        id: verification.client_id.clone(),
        unreadable_ip: false,
    };
    let (_, velocity) = state.abuse.assess(&verification.to, &client, api_key)?;
    let (outcome, counts) = starts::insert_resend(
        &state.pool,
        id,
        DeliveryId::generate(),
        state.api.resend_interval(),
        state.send_limit,
        &velocity,
        Some(trace),
    )
    .await?;
    state.abuse.count_velocity(&velocity, &counts);
    match outcome {
        ResendOutcome::Created(delivery) => {
            enqueue(state, &delivery, trace);
            find_verification(state, id).await
        }
        ResendOutcome::NotFound => Err(not_found()),
        ResendOutcome::NotPending(status) => Err(ApiError::Conflict {
            code: "verification_not_pending",
            message: format!("the verification is {}; start a new one", status.as_str()),
        }),
        ResendOutcome::TooSoon { retry_after } => Err(ApiError::TooManyRequests {
            code: "resend_too_soon",
            message: "the code was sent moments ago; wait before resending".to_owned(),
            retry_after,
        }),
        ResendOutcome::RateLimited { retry_after } => Err(rate_limited(retry_after)),
        ResendOutcome::VelocityLimited { check, retry_after } => {
            Err(velocity_limited(&velocity, check, retry_after))
        }
    }
}

/// Cancels an open verification; no code is accepted afterwards.
///
/// # Errors
/// 404 unknown, 409 already closed.
pub(crate) async fn cancel(
    state: &AppState,
    id: VerificationId,
) -> Result<(VerificationRecord, Vec<DeliveryRecord>), ApiError> {
    match verifications::cancel_verification(&state.pool, id).await? {
        Some(verification) => {
            state.metrics.verification_canceled(&verification.to);
            let sends = deliveries::list_deliveries(&state.pool, id).await?;
            Ok((verification, sends))
        }
        None => {
            let (verification, _) = find_verification(state, id).await?;
            Err(ApiError::Conflict {
                code: "verification_not_pending",
                message: format!(
                    "the verification is already {}",
                    verification.status_at(Utc::now()).as_str()
                ),
            })
        }
    }
}
