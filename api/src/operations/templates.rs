//! Template operations: validate, store, list, preview.

use std::time::Duration;

use verify_common::db::templates::{self, TemplateFields, TemplateRecord};
use verify_common::domain::{
    OtpCodeLength, SmsShape, TemplateBody, TemplateDescription, TemplateError, TemplateId,
    TemplateLocale, TemplateName, VariableError, Variables,
};

use crate::error::ApiError;
use crate::state::AppState;
use crate::views::PreviewView;

/// Minutes shown for `{{ttl_minutes}}` in previews: the configured default lifetime.
fn default_ttl_minutes(state: &AppState) -> u64 {
    ttl_minutes(state.otp.ttl)
}

/// `{{ttl_minutes}}` for a code with `ttl` left, rounded up as the worker rounds it.
pub(crate) fn ttl_minutes(ttl: Duration) -> u64 {
    ttl.as_secs().div_ceil(60)
}

/// A stand-in for a code of `length` digits, for measuring a text before the code
/// exists: every digit is one GSM-7 septet, so which digits does not matter.
pub(crate) fn placeholder_code(length: OtpCodeLength) -> String {
    "0".repeat(usize::from(length.get()))
}

/// Fields a client sent to create or change a template; `None` means "not given".
#[derive(Debug, Default)]
pub(crate) struct TemplateInput {
    pub name: Option<String>,
    pub description: Option<String>,
    /// `Some(None)` clears the locale.
    pub locale: Option<Option<String>>,
    pub text: Option<String>,
}

/// Maps a template problem to the request field it concerns: 422 for characters that
/// could disguise the message, 400 for the rest.
pub(crate) fn template_error(error: TemplateError) -> ApiError {
    if let TemplateError::UnsafeCharacter(_) = error {
        return ApiError::unprocessable("unsafe_characters", "text", error);
    }
    let (code, field) = match &error {
        TemplateError::InvalidName => ("invalid_template_name", "name"),
        TemplateError::DescriptionTooLong => ("invalid_description", "description"),
        TemplateError::InvalidLocale => ("invalid_locale", "locale"),
        TemplateError::MissingVariable(_) => ("missing_variable", "variables"),
        TemplateError::EmptyBody
        | TemplateError::UnsafeCharacter(_)
        | TemplateError::BodyTooLong
        | TemplateError::MissingCode
        | TemplateError::ControlCharacter
        | TemplateError::BlocksNotAllowed
        | TemplateError::Syntax(_)
        | TemplateError::InvalidVariable(_) => ("invalid_template", "text"),
    };
    if let TemplateError::MissingVariable(name) = &error {
        return ApiError::invalid(code, format!("variables.{name}"), &error);
    }
    ApiError::invalid(code, field, &error)
}

/// Maps a variables problem to the field it names (`variables.brand`): 422 for
/// characters that could disguise the message, 400 for the rest.
pub(crate) fn variable_error(error: VariableError) -> ApiError {
    let field = error.field();
    match error {
        VariableError::UnsafeCharacter { .. } => {
            ApiError::unprocessable("unsafe_characters", field, error)
        }
        _ => ApiError::invalid("invalid_variables", field, error),
    }
}

fn validate(
    state: &AppState,
    input: TemplateInput,
    base: Option<&TemplateRecord>,
) -> Result<TemplateFields, ApiError> {
    let name = input
        .name
        .or_else(|| base.map(|b| b.name.clone()))
        .ok_or_else(|| ApiError::invalid("missing_field", "name", "name is required"))?;
    let text = input
        .text
        .or_else(|| base.map(|b| b.body.clone()))
        .ok_or_else(|| ApiError::invalid("missing_field", "text", "text is required"))?;
    let description = input
        .description
        .or_else(|| base.map(|b| b.description.clone()))
        .unwrap_or_default();
    let locale = match input.locale {
        Some(given) => given
            .as_deref()
            .map(TemplateLocale::parse)
            .transpose()
            .map_err(template_error)?,
        None => base.and_then(|b| b.locale.clone()),
    };
    Ok(TemplateFields {
        name: TemplateName::parse(&name).map_err(template_error)?,
        description: TemplateDescription::parse(&description).map_err(template_error)?,
        locale,
        body: fitting_body(state, &text)?,
    })
}

/// Parses a body and refuses it when even its shortest message (every variable empty, a
/// code of the default length, the default lifetime) takes more SMS segments than
/// allowed: no verification could ever be sent with it.
fn fitting_body(state: &AppState, text: &str) -> Result<TemplateBody, ApiError> {
    let body = TemplateBody::parse(&state.templates, text).map_err(template_error)?;
    let shortest = body
        .render_with_empty_variables(
            &state.templates,
            &placeholder_code(state.otp.code_length),
            default_ttl_minutes(state),
        )
        .map_err(template_error)?;
    if let Err(too_long) = state.max_segments.admit(&shortest) {
        return Err(ApiError::unprocessable(
            "message_too_long",
            "text",
            format!(
                "with every variable empty and a {}-digit code, {too_long}",
                state.otp.code_length.get()
            ),
        ));
    }
    Ok(body)
}

fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "template_not_found",
        what: "template",
    }
}

/// Validates and stores a new template.
///
/// # Errors
/// 400s naming the field; 503 when Postgres is down.
pub(crate) async fn create_template(
    state: &AppState,
    input: TemplateInput,
) -> Result<TemplateRecord, ApiError> {
    let fields = validate(state, input, None)?;
    Ok(templates::insert_template(&state.pool, &fields).await?)
}

/// Changes the given fields of a template, re-validating the result.
///
/// # Errors
/// 404 for an unknown id; 400s naming the field.
pub(crate) async fn update_template(
    state: &AppState,
    id: TemplateId,
    input: TemplateInput,
) -> Result<TemplateRecord, ApiError> {
    let current = find_template(state, id).await?;
    let fields = validate(state, input, Some(&current))?;
    let updated = templates::update_template(&state.pool, id, &fields).await;
    state.template_cache.forget(id);
    updated?.ok_or_else(not_found)
}

/// One template.
///
/// # Errors
/// 404 for an unknown id.
pub(crate) async fn find_template(
    state: &AppState,
    id: TemplateId,
) -> Result<TemplateRecord, ApiError> {
    templates::find_template(&state.pool, id)
        .await?
        .ok_or_else(not_found)
}

/// Deletes a template.
///
/// # Errors
/// 404 for an unknown id.
pub(crate) async fn delete_template(state: &AppState, id: TemplateId) -> Result<(), ApiError> {
    let deleted = templates::delete_template(&state.pool, id).await;
    state.template_cache.forget(id);
    if deleted? { Ok(()) } else { Err(not_found()) }
}

/// Templates in id order, for paging with `after`.
///
/// # Errors
/// 503 when Postgres is down.
pub(crate) async fn list_templates(
    state: &AppState,
    after: i64,
    limit: i64,
) -> Result<Vec<TemplateRecord>, ApiError> {
    Ok(templates::list_templates(&state.pool, after, limit).await?)
}

/// Renders a text with a sample code and the given variables, and measures the SMS.
///
/// # Errors
/// 400 naming the problem with the text or a missing variable.
pub(crate) fn preview(
    state: &AppState,
    text: &str,
    variables: &Variables,
) -> Result<PreviewView, ApiError> {
    let body = TemplateBody::parse(&state.templates, text).map_err(template_error)?;
    let rendered = body
        .render_sample(&state.templates, default_ttl_minutes(state), variables)
        .map_err(template_error)?;
    let shape = SmsShape::of(&rendered);
    Ok(PreviewView {
        text: rendered,
        encoding: shape.encoding,
        characters: shape.characters,
        segments: shape.segments,
        variables: body.variables().to_vec(),
    })
}
