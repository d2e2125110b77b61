//! Turning a claimed send into the SMS text, within the segment cap.
//!
//! A send without a template gets the built-in text of its verification's locale, or
//! English when it has none. A locale without built-in text is an error, never a quiet
//! switch to English: the person asked for their language, and an operator can put it
//! right (give the verification a template, or a build that has the text) and replay the
//! job. (A stored locale that does not parse never gets here: its claim fails that send.) A text over the segment cap is refused, never cut
//! short: a truncated message could lose the code, and the API let the start through
//! under the cap the operator has lowered since, who can raise it again and replay.

use chrono::{DateTime, Utc};
use upon::Engine;
use verify_common::db::deliveries::ClaimedSend;
use verify_common::domain::{
    CodeSecret, OtpCode, SegmentCap, SmsTooLong, TemplateBody, TemplateError, TemplateId,
    TemplateLocale, default_template_text, new_template_engine,
};

/// The language of a verification that names no locale.
const DEFAULT_LANGUAGE: &str = "en";

/// Why a send cannot be rendered. Each is permanent for that send.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {0} no longer exists")]
    TemplateDeleted(TemplateId),
    #[error("there is no built-in text for locale {0}")]
    UnsupportedLocale(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the stored code material is unusable: {0}")]
    Code(String),
    #[error(transparent)]
    TooLong(#[from] SmsTooLong),
}

/// Renders SMS texts with one template engine for the whole process, and refuses those
/// over the segment cap.
pub struct SmsRenderer {
    engine: Engine<'static>,
    max_segments: SegmentCap,
}

impl SmsRenderer {
    pub fn new(max_segments: SegmentCap) -> Self {
        Self {
            engine: new_template_engine(),
            max_segments,
        }
    }

    /// The SMS body for a claimed send: its template (or the built-in text for its
    /// locale) with the code, the minutes left and the verification's own variables.
    ///
    /// # Errors
    /// [`RenderError`] when the template is gone, the locale has no built-in text, a
    /// variable is missing or the text takes more segments than the cap.
    pub fn render(
        &self,
        send: &ClaimedSend,
        secret: &CodeSecret,
        now: DateTime<Utc>,
    ) -> Result<String, RenderError> {
        let text = match (send.template_id, &send.template_body) {
            (Some(_), Some(body)) => body.clone(),
            (Some(id), None) => return Err(RenderError::TemplateDeleted(id)),
            (None, _) => built_in_text(send.locale.as_ref())?.to_owned(),
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
        let text = body.render(&self.engine, code.expose(), minutes_left, &send.variables)?;
        self.max_segments.admit(&text)?;
        Ok(text)
    }
}

/// The built-in text for a send without a template: its locale's language, English when
/// the verification named no locale.
///
/// # Errors
/// [`RenderError::UnsupportedLocale`]; never a fallback.
fn built_in_text(locale: Option<&TemplateLocale>) -> Result<&'static str, RenderError> {
    let language = locale.map_or(DEFAULT_LANGUAGE, TemplateLocale::language);
    default_template_text(language).ok_or_else(|| {
        RenderError::UnsupportedLocale(
            locale
                .map_or(DEFAULT_LANGUAGE, TemplateLocale::as_str)
                .to_owned(),
        )
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use secrecy::SecretString;
    use verify_common::db::deliveries::ClaimedSend;
    use verify_common::domain::{
        CodeSecret, DeliveryId, OtpCodeLength, PhoneNumber, SegmentCap, SmsEncoding, TemplateId,
        TemplateLocale, Variables, VerificationId, VerificationStatus,
    };

    use super::{RenderError, SmsRenderer};

    /// A pending send without a template, stored with `locale`.
    fn send_with_locale(locale: Option<&str>) -> ClaimedSend {
        ClaimedSend {
            delivery_id: DeliveryId::generate(),
            attempt: 1,
            verification_id: VerificationId::generate(),
            verification_status: VerificationStatus::Pending,
            to: PhoneNumber::parse("+14155550100").unwrap(),
            expires_at: Utc::now() + chrono::Duration::minutes(10),
            code_nonce: vec![7; 32],
            code_length: OtpCodeLength::parse(6).unwrap(),
            variables: Variables::default(),
            template_id: None,
            template_body: None,
            locale: locale.map(|tag| TemplateLocale::parse(tag).unwrap()),
            sender: None,
            trace_id: None,
        }
    }

    fn secret() -> CodeSecret {
        CodeSecret::parse(SecretString::from("unit-test-secret-0123456789")).unwrap()
    }

    fn renderer(max_segments: &str) -> SmsRenderer {
        SmsRenderer::new(SegmentCap::parse(max_segments).unwrap())
    }

    fn render(locale: Option<&str>) -> Result<String, RenderError> {
        renderer("3").render(&send_with_locale(locale), &secret(), Utc::now())
    }

    #[test]
    fn a_send_gets_the_built_in_text_of_its_locale_and_english_without_one() {
        let cases = [
            (None, "Your verification code is "),
            (Some("en-GB"), "Your verification code is "),
            (Some("es-MX"), "Tu código de verificación es "),
            (Some("pt_br"), "Seu código de verificação é "),
        ];
        for (locale, start) in cases {
            let text = render(locale).unwrap();
            assert!(text.starts_with(start), "{locale:?}: {text}");
        }
    }

    #[test]
    fn a_text_over_the_segment_cap_is_refused_never_cut_short() {
        let mut send = send_with_locale(None);
        send.template_id = Some(TemplateId::try_from(1).unwrap());
        send.template_body = Some("{{brand}}: {{code}}".to_owned());
        send.variables =
            Variables::parse(&serde_json::json!({ "brand": "a".repeat(152) })).unwrap();

        // 152 + 2 + 6 = 160 characters: one segment, exactly at a cap of one.
        let text = renderer("1").render(&send, &secret(), Utc::now()).unwrap();
        assert_eq!(text.chars().count(), 160);

        send.variables =
            Variables::parse(&serde_json::json!({ "brand": "a".repeat(153) })).unwrap();
        let error = renderer("1")
            .render(&send, &secret(), Utc::now())
            .unwrap_err();
        let RenderError::TooLong(too_long) = error else {
            panic!("expected TooLong, got {error:?}");
        };
        assert_eq!(too_long.shape.segments, 2);
        assert_eq!(too_long.shape.encoding, SmsEncoding::Gsm7);
        assert_eq!(too_long.cap.get(), 1);
        assert!(renderer("2").render(&send, &secret(), Utc::now()).is_ok());
    }

    #[test]
    fn a_locale_without_built_in_text_is_an_error_not_english() {
        let error = render(Some("sw-KE")).unwrap_err();
        assert!(
            matches!(&error, RenderError::UnsupportedLocale(locale) if locale == "sw-KE"),
            "{error:?}"
        );
    }
}
