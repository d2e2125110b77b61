//! Shared state handed to every handler, and the filter that injects it.

use std::convert::Infallible;
use std::sync::Arc;

use upon::Engine;
use verify_common::config::ApiSettings;
use verify_common::db::Pool;
use verify_common::db::starts::SendLimit;
use verify_common::domain::{CodeSecret, OtpPolicy, SegmentCap};
use warp::Filter;

use crate::abuse::AbuseControls;
use crate::auth::ApiKeys;
use crate::group_commit::Starts;
use crate::metrics::ApiMetrics;
use crate::outbox::Outbox;
use crate::receipts::ReceiptKeys;
use crate::template_cache::TemplateCache;

/// Everything handlers need. Cheap to clone (all shared parts are behind `Arc`s).
#[derive(Clone)]
pub(crate) struct AppState {
    pub pool: Pool,
    pub outbox: Arc<Outbox>,
    pub starts: Starts,
    pub secret: CodeSecret,
    pub otp: OtpPolicy,
    /// Most SMS segments a rendered message may take.
    pub max_segments: SegmentCap,
    pub send_limit: SendLimit,
    pub api: Arc<ApiSettings>,
    pub templates: Arc<Engine<'static>>,
    pub template_cache: Arc<TemplateCache>,
    pub api_keys: Arc<ApiKeys>,
    pub abuse: Arc<AbuseControls>,
    pub receipt_keys: Arc<ReceiptKeys>,
    /// Webhook endpoints may be on internal addresses (local runs and tests only).
    pub webhooks_allow_private: bool,
    pub metrics: Arc<ApiMetrics>,
}

/// A filter that hands a clone of the state to the handler.
pub(crate) fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}
