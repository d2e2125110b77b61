//! Domain types: each one is valid by construction, so the rest of the code never re-checks.

pub mod abuse;
pub mod api_key;
pub mod delivery;
pub mod numbering;
pub mod otp;
pub mod phone_number;
pub mod receipt;
pub mod sender;
pub mod sms;
pub mod stats;
pub mod template;
pub mod trace;
pub mod variables;
pub mod verification;
pub mod webhook;

pub use delivery::{AttemptLogEntry, AttemptOutcome, DeliveryId, DeliveryStatus};
pub use numbering::{NumberClass, NumberType, Region, RegionError};
pub use otp::{CodeSecret, OtpCode, OtpCodeLength, OtpError, OtpPolicy};
pub use phone_number::{PhoneNumber, PhoneNumberError};
pub use receipt::{MessageId, Receipt, ReceiptError, ReceiptErrorCode, ReceiptStatus};
pub use sender::{Sender, SenderError};
pub use sms::{SegmentCap, SegmentCapError, SmsEncoding, SmsShape, SmsTooLong};
pub use stats::{
    DurationHistogram, HistogramError, StatsGroupBy, StatsGroupByError, StatsWindow,
    StatsWindowError,
};
pub use template::{
    InvalidTemplateId, TemplateBody, TemplateDescription, TemplateError, TemplateId,
    TemplateLocale, TemplateName, default_template_text, new_template_engine,
};
pub use trace::{SpanId, TraceId, TraceParent, TraceParentError};
pub use variables::{VariableError, Variables};
pub use verification::{CheckOutcome, VerificationId, VerificationStatus};
pub use webhook::{WebhookError, WebhookEvent, WebhookSecret, WebhookUrl};
