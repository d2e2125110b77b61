//! What delivering one job decided, for the consumer to carry out: [`Outcome`], and
//! when the job is given up, the [`DeadLetterReason`] written on its dead letter.

use std::fmt;
use std::time::Duration;

use verify_common::domain::{DeliveryId, SmsTooLong, TemplateId};

/// What the consumer must do with the job's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished (sent, closed as no longer wanted, or nothing to do): ack.
    Done,
    /// Try again after this delay: republish to a delay queue, then ack.
    RetryLater(Duration),
    /// The send failed for a reason an operator can fix (already recorded, where there
    /// is a send to record it on): dead-letter the job with this reason.
    DeadLetter(DeadLetterReason),
}

/// Why a worker gives up on a job and dead-letters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The message is not a send job this build can read.
    UnreadablePayload(String),
    /// The job names a delivery that does not exist.
    DeliveryMissing(DeliveryId),
    /// The verification's template was deleted.
    TemplateMissing(TemplateId),
    /// The verification's stored locale is not a language tag.
    LocaleInvalid(String),
    /// The verification names no template and this build has no built-in text for its
    /// locale.
    LocaleUnsupported(String),
    /// The template cannot be rendered with the verification's variables.
    RenderFailed(String),
    /// The rendered text takes more SMS segments than `VERIFY_SMS_MAX_SEGMENTS` allows
    /// (lowered since the verification started); it is not sent, in part or at all.
    MessageTooLong(SmsTooLong),
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
            Self::LocaleInvalid(_) => "locale_invalid",
            Self::LocaleUnsupported(_) => "locale_unsupported",
            Self::RenderFailed(_) => "render_failed",
            Self::MessageTooLong(_) => "message_too_long",
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
            Self::LocaleInvalid(locale) => {
                write!(f, "the stored locale {locale:?} is not a language tag")
            }
            Self::LocaleUnsupported(locale) => {
                write!(f, "there is no built-in text for locale {locale}")
            }
            Self::MessageTooLong(too_long) => {
                write!(f, "not sent: {too_long} (VERIFY_SMS_MAX_SEGMENTS)")
            }
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

#[cfg(test)]
mod tests {
    use verify_common::domain::{DeliveryId, SegmentCap, TemplateId};

    use super::DeadLetterReason;

    #[test]
    fn every_reason_has_its_own_stable_code() {
        let reasons = [
            DeadLetterReason::UnreadablePayload("bad".into()),
            DeadLetterReason::DeliveryMissing(DeliveryId::generate()),
            DeadLetterReason::TemplateMissing(TemplateId::try_from(7).unwrap()),
            DeadLetterReason::LocaleInvalid("english".into()),
            DeadLetterReason::LocaleUnsupported("sw-KE".into()),
            DeadLetterReason::RenderFailed("missing variable".into()),
            DeadLetterReason::ProviderRejected("400".into()),
            DeadLetterReason::AttemptsExhausted {
                attempts: 3,
                last_error: "503".into(),
            },
            DeadLetterReason::ExpiresBeforeRetry("503".into()),
            DeadLetterReason::MessageTooLong(
                SegmentCap::parse("3")
                    .unwrap()
                    .admit(&"a".repeat(460))
                    .unwrap_err(),
            ),
        ];
        let codes: Vec<&str> = reasons.iter().map(DeadLetterReason::code).collect();
        assert_eq!(
            codes,
            [
                "unreadable_payload",
                "delivery_missing",
                "template_missing",
                "locale_invalid",
                "locale_unsupported",
                "render_failed",
                "provider_rejected",
                "attempts_exhausted",
                "expires_before_retry",
                "message_too_long"
            ]
        );
        assert_eq!(
            reasons[2].to_string(),
            "template 7 no longer exists",
            "the text recorded as the send's last error"
        );
        assert_eq!(
            reasons[4].to_string(),
            "there is no built-in text for locale sw-KE"
        );
        assert_eq!(reasons[7].to_string(), "gave up after 3 attempts: 503");
        assert_eq!(
            reasons[9].to_string(),
            "not sent: the message takes 4 SMS segments (GSM-7, 460 characters); the cap is 3 \
             (VERIFY_SMS_MAX_SEGMENTS)"
        );
    }
}
