//! Turning a claimed send into the SMS text.

use chrono::{DateTime, Utc};
use upon::Engine;
use verify_common::db::deliveries::ClaimedSend;
use verify_common::domain::{
    CodeSecret, OtpCode, TemplateBody, TemplateError, TemplateLocale, default_template_text,
    new_template_engine,
};

/// Why a send cannot be rendered. Both are permanent for that send.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {0} no longer exists")]
    TemplateDeleted(i64),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the stored code material is unusable: {0}")]
    Code(String),
}

/// Renders SMS texts with one template engine for the whole process.
pub struct SmsRenderer {
    engine: Engine<'static>,
}

impl Default for SmsRenderer {
    fn default() -> Self {
        Self {
            engine: new_template_engine(),
        }
    }
}

impl SmsRenderer {
    /// The SMS body for a claimed send: its template (or the built-in text for its
    /// locale) with the code, the minutes left and the verification's own variables.
    ///
    /// # Errors
    /// [`RenderError`] when the template is gone or a variable is missing.
    pub fn render(
        &self,
        send: &ClaimedSend,
        secret: &CodeSecret,
        now: DateTime<Utc>,
    ) -> Result<String, RenderError> {
        let text = match (send.template_id, &send.template_body) {
            (Some(_), Some(body)) => body.clone(),
            (Some(id), None) => return Err(RenderError::TemplateDeleted(id)),
            (None, _) => {
                let language = send
                    .locale
                    .as_deref()
                    .and_then(|l| TemplateLocale::parse(l).ok())
                    .map_or_else(|| "en".to_owned(), |l| l.language().to_owned());
                default_template_text(&language)
                    .or_else(|| default_template_text("en"))
                    .unwrap_or_default()
                    .to_owned()
            }
        };
        let body = TemplateBody::parse(&self.engine, &text)?;
        let code = OtpCode::derive(
            secret,
            send.verification_id.as_uuid(),
            &send.code_nonce,
            send.code_length,
        )
        .map_err(|e| RenderError::Code(e.to_string()))?;
        let seconds_left = (send.expires_at - now).num_seconds().max(0);
        let minutes_left = u64::try_from(seconds_left).unwrap_or(0).div_ceil(60);
        Ok(body.render(&self.engine, code.expose(), minutes_left, &send.variables)?)
    }
}
