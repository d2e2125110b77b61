//! The API's metrics: their names, and the handles requests record through.
//!
//! Every name is a constant here, so adding a metric is a constant, a line in
//! [`ApiMetrics::new`] describing it and a call where it happens. Requests are counted
//! by route *template* from the route table (`ENDPOINTS`, handed in at start-up, so this
//! module depends on no route), never by raw path, so ids and phone numbers never
//! become label values. The handles of each
//! route, method and common status are taken on first use and kept, so counting a
//! request takes no lock and copies no text.

use std::sync::OnceLock;
use std::time::Duration;

use verify_common::db::Pool;
use verify_common::domain::PhoneNumber;
use verify_common::domain::abuse::{Outcome, RuleMode};
use verify_common::metrics::{Counter, Gauge, Histogram, PoolGauges, Registry};
use warp::http::{Method, StatusCode};

/// Requests answered, by `route` template, `method` and `status`.
pub(crate) const HTTP_REQUESTS: &str = "verify_http_requests_total";
/// Time from a request's arrival to its answer, by `route` template and `method`.
pub(crate) const HTTP_REQUEST_DURATION: &str = "verify_http_request_duration_seconds";
/// Verifications started, by `country`.
pub(crate) const VERIFICATIONS_STARTED: &str = "verify_verifications_started_total";
/// Verifications approved by a right code, by `country`.
pub(crate) const VERIFICATIONS_APPROVED: &str = "verify_verifications_approved_total";
/// Verifications canceled through the API, by `country`.
pub(crate) const VERIFICATIONS_CANCELED: &str = "verify_verifications_canceled_total";
/// Verifications that expired unused, by `country`, counted by the expiry sweep.
pub(crate) const VERIFICATIONS_EXPIRED: &str = "verify_verifications_expired_total";
/// Code checks, by `outcome`.
pub(crate) const CHECKS: &str = "verify_checks_total";
/// What the abuse rules did, by `rule`, `action` and `mode`.
pub(crate) const ABUSE_DECISIONS: &str = "verify_abuse_decisions_total";
/// Sends the outbox relay's last round found unpublished past their due time.
pub(crate) const OUTBOX_BACKLOG: &str = "verify_outbox_backlog";

/// Delivery receipts received, by `provider` and `outcome`.
pub(crate) const RECEIPTS: &str = "verify_receipts_total";

/// The `route` label of a request whose path is no route's.
pub(crate) const UNMATCHED: &str = "unmatched";

/// The `country` label when a number's region cannot be told.
const UNKNOWN_COUNTRY: &str = "unknown";

/// Methods with a label of their own; any other is counted as `OTHER`, so a client
/// inventing methods cannot invent series.
const METHODS: [(Method, &str); 7] = [
    (Method::GET, "GET"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::PATCH, "PATCH"),
    (Method::DELETE, "DELETE"),
    (Method::HEAD, "HEAD"),
    (Method::OPTIONS, "OPTIONS"),
];
const OTHER_METHOD: &str = "OTHER";

/// Statuses whose counters each route keeps at hand; others are looked up per request.
const KEPT_STATUSES: [u16; 16] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 409, 410, 413, 422, 429, 503,
];

/// How a check ended, as `verify_checks_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckResult {
    /// The right code approved the verification.
    Approved,
    /// A wrong code (or a right one while the number is locked).
    WrongCode,
    /// The verification had expired.
    Expired,
    /// The verification was closed already (approved, canceled, out of attempts).
    Closed,
    /// No verification to check (an unknown id, or no verification for the number).
    NotFound,
}

impl CheckResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::WrongCode => "wrong_code",
            Self::Expired => "expired",
            Self::Closed => "closed",
            Self::NotFound => "not_found",
        }
    }
}

/// Who sent a delivery receipt, as `verify_receipts_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiptSource {
    /// Twilio's signed status callback.
    Twilio,
    /// The generic JSON receipt.
    Http,
}

/// What a delivery receipt did, as `verify_receipts_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiptOutcome {
    /// It moved its send to `delivered`.
    Delivered,
    /// It moved its send to `undelivered`.
    Undelivered,
    /// Its send already had a final status (a duplicate, or one arriving late).
    Unchanged,
    /// No send had its message id yet: held until one does.
    Held,
    /// Not a final status (`queued`, `sent`, …): nothing to record.
    Ignored,
}

impl ReceiptOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Unchanged => "unchanged",
            Self::Held => "held",
            Self::Ignored => "ignored",
        }
    }
}

/// One route template's handles for one method.
#[derive(Default)]
struct RouteSlot {
    duration: OnceLock<Histogram>,
    statuses: [OnceLock<Counter>; KEPT_STATUSES.len()],
}

/// The API's metrics and the registry they are rendered from.
pub(crate) struct ApiMetrics {
    registry: Registry,
    routes: RouteTable,
    /// One slot per route template (the last is [`UNMATCHED`]) and method (the last is
    /// [`OTHER_METHOD`]).
    slots: Box<[RouteSlot]>,
    pool: PoolGauges,
    outbox_backlog: Gauge,
}

impl ApiMetrics {
    /// Registers the API's metrics in `registry`, with the gauges of `pool`; requests
    /// are counted under the templates of `routes` (`/v1/verifications/{}`).
    pub(crate) fn new(
        registry: Registry,
        pool: Pool,
        routes: impl IntoIterator<Item = &'static str>,
    ) -> Self {
        for (name, help) in [
            (
                HTTP_REQUESTS,
                "HTTP requests answered, by route template, method and status.",
            ),
            (
                HTTP_REQUEST_DURATION,
                "Seconds from a request's arrival to its answer.",
            ),
            (
                VERIFICATIONS_STARTED,
                "Verifications started, by the number's country.",
            ),
            (
                VERIFICATIONS_APPROVED,
                "Verifications approved by a right code.",
            ),
            (
                VERIFICATIONS_CANCELED,
                "Verifications canceled through the API.",
            ),
            (
                VERIFICATIONS_EXPIRED,
                "Verifications that expired unused, by the number's country.",
            ),
            (CHECKS, "Code checks, by outcome."),
            (
                ABUSE_DECISIONS,
                "Abuse rule outcomes (block, shadow_block, monitor).",
            ),
            (
                OUTBOX_BACKLOG,
                "Sends the outbox relay last found unpublished past their due time.",
            ),
            (
                RECEIPTS,
                "Delivery receipts received, by provider and what they did.",
            ),
        ] {
            registry.describe(name, help);
        }
        let routes = RouteTable::new(routes);
        let slots = (0..(routes.len() + 1) * (METHODS.len() + 1))
            .map(|_| RouteSlot::default())
            .collect();
        Self {
            pool: PoolGauges::new(&registry, pool),
            outbox_backlog: registry.gauge(OUTBOX_BACKLOG, &[]),
            registry,
            routes,
            slots,
        }
    }

    /// Counts an answered request to `path` and its duration.
    pub(crate) fn request(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let (route_at, route) = self.routes.find(path);
        let (method_at, method) = METHODS
            .iter()
            .position(|(known, _)| known == method)
            .map_or((METHODS.len(), OTHER_METHOD), |at| (at, METHODS[at].1));
        let slot = &self.slots[route_at * (METHODS.len() + 1) + method_at];
        let labels = [("route", route), ("method", method)];
        slot.duration
            .get_or_init(|| self.registry.histogram(HTTP_REQUEST_DURATION, &labels))
            .record(elapsed.as_secs_f64());
        let code = status.as_u16();
        let status_label = status_label(code);
        let count = || {
            self.registry.counter(
                HTTP_REQUESTS,
                &[labels[0], labels[1], ("status", status_label)],
            )
        };
        match KEPT_STATUSES.iter().position(|kept| *kept == code) {
            Some(at) => slot.statuses[at].get_or_init(count).increment(1),
            None => count().increment(1),
        }
    }

    /// Counts a verification started to a number of `country` (see [`country_of`]).
    pub(crate) fn verification_started(&self, country: &'static str) {
        self.registry
            .counter(VERIFICATIONS_STARTED, &[("country", country)])
            .increment(1);
    }

    /// Counts a verification to `to` approved.
    pub(crate) fn verification_approved(&self, to: &PhoneNumber) {
        self.registry
            .counter(VERIFICATIONS_APPROVED, &[("country", country_of(to))])
            .increment(1);
    }

    /// Counts a verification to `to` canceled.
    pub(crate) fn verification_canceled(&self, to: &PhoneNumber) {
        self.registry
            .counter(VERIFICATIONS_CANCELED, &[("country", country_of(to))])
            .increment(1);
    }

    /// Counts a verification to `to` that expired unused.
    pub(crate) fn verification_expired(&self, to: &PhoneNumber) {
        self.registry
            .counter(VERIFICATIONS_EXPIRED, &[("country", country_of(to))])
            .increment(1);
    }

    /// Counts a check and how it ended.
    pub(crate) fn check(&self, result: CheckResult) {
        self.registry
            .counter(CHECKS, &[("outcome", result.as_str())])
            .increment(1);
    }

    /// Counts `count` outcomes of the rule `rule` applying in `mode`. Rule ids come from
    /// the database, so they are copied: callers add up outcomes first and report them
    /// in batches, not per request.
    pub(crate) fn abuse_decisions(&self, rule: &str, outcome: Outcome, mode: RuleMode, count: u64) {
        self.registry
            .counter_owned(
                ABUSE_DECISIONS,
                &[
                    ("rule", rule.to_owned()),
                    ("action", outcome.as_str().to_owned()),
                    ("mode", mode.as_str().to_owned()),
                ],
            )
            .increment(count);
    }

    /// Counts a delivery receipt from `source` that ended in `outcome`. Receipts that
    /// failed their signature or token are not receipts: the HTTP metrics count them
    /// as 403s of their route.
    pub(crate) fn receipt(&self, source: ReceiptSource, outcome: ReceiptOutcome) {
        let provider = match source {
            ReceiptSource::Twilio => "twilio",
            ReceiptSource::Http => "http",
        };
        self.registry
            .counter(
                RECEIPTS,
                &[("provider", provider), ("outcome", outcome.as_str())],
            )
            .increment(1);
    }

    /// The registry these metrics are kept in.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The outbox backlog gauge, set by the relay after each round.
    pub(crate) fn outbox_backlog(&self) -> &Gauge {
        &self.outbox_backlog
    }

    /// Every metric in the Prometheus text format, the pool gauges read now.
    pub(crate) fn render(&self) -> String {
        self.pool.sample();
        self.registry.render()
    }
}

/// The `country` label of a number: its region (`GB`, `001` for non-geographic).
pub(crate) fn country_of(to: &PhoneNumber) -> &'static str {
    to.class()
        .map_or(UNKNOWN_COUNTRY, |class| class.region.as_str())
}

/// Every status code from 100 to 599 as three digits, so a status label is a slice of
/// a constant rather than a string made per request.
const STATUS_DIGITS: [u8; 1500] = {
    let mut digits = [0u8; 1500];
    let mut i = 0;
    while i < 500 {
        let code = 100 + i;
        digits[i * 3] = b'0' + (code / 100) as u8;
        digits[i * 3 + 1] = b'0' + (code / 10 % 10) as u8;
        digits[i * 3 + 2] = b'0' + (code % 10) as u8;
        i += 1;
    }
    digits
};
const STATUS_TEXT: &str = match std::str::from_utf8(&STATUS_DIGITS) {
    Ok(text) => text,
    Err(_) => panic!("status digits are ASCII"),
};

/// `"404"` for 404; http's `StatusCode` only allows 100–999, and codes past 599 are
/// not HTTP's, so they share `"other"`.
fn status_label(code: u16) -> &'static str {
    match usize::from(code) {
        code @ 100..=599 => {
            let at = (code - 100) * 3;
            &STATUS_TEXT[at..at + 3]
        }
        _ => "other",
    }
}

/// Route templates, each once, most specific first.
struct RouteTable {
    templates: Vec<(&'static str, Vec<&'static str>)>,
}

impl RouteTable {
    fn new(paths: impl IntoIterator<Item = &'static str>) -> Self {
        let mut templates: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for path in paths {
            if templates.iter().all(|(known, _)| *known != path) {
                templates.push((path, path.split('/').skip(1).collect()));
            }
        }
        // A literal segment beats a parameter (`/v1/verifications/check` is not the id
        // `check`): more literal segments first.
        templates.sort_by_key(|(_, segments)| {
            std::cmp::Reverse(segments.iter().filter(|s| **s != "{}").count())
        });
        Self { templates }
    }

    fn len(&self) -> usize {
        self.templates.len()
    }

    /// The index and template of the route `path` belongs to; the index past the last
    /// template and [`UNMATCHED`] when there is none.
    fn find(&self, path: &str) -> (usize, &'static str) {
        let matches = |segments: &[&str]| {
            let mut parts = path.split('/').skip(1);
            segments.iter().all(|segment| match parts.next() {
                Some(part) => {
                    if *segment == "{}" {
                        !part.is_empty()
                    } else {
                        *segment == part
                    }
                }
                None => false,
            }) && parts.next().is_none()
        };
        self.templates
            .iter()
            .position(|(_, segments)| matches(segments))
            .map_or((self.templates.len(), UNMATCHED), |at| {
                (at, self.templates[at].0)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::{RouteTable, UNMATCHED, status_label};

    #[test]
    fn paths_are_counted_by_their_route_template() {
        let table = RouteTable::new([
            "/metrics",
            "/v1/verifications",
            "/v1/verifications/{}",
            "/v1/verifications/check",
            "/v1/verifications/{}/check",
            "/v1/verifications/{}/cancel",
            "/number_verify/{}",
        ]);
        for (path, expected) in [
            ("/v1/verifications", "/v1/verifications"),
            ("/v1/verifications/check", "/v1/verifications/check"),
            ("/v1/verifications/0190f4", "/v1/verifications/{}"),
            (
                "/v1/verifications/0190f4/check",
                "/v1/verifications/{}/check",
            ),
            ("/number_verify/14155550100", "/number_verify/{}"),
            ("/metrics", "/metrics"),
            ("/v1/verifications/", UNMATCHED),
            ("/v1/nothing", UNMATCHED),
            ("/", UNMATCHED),
            ("/v1/verifications/a/b/c", UNMATCHED),
        ] {
            assert_eq!(table.find(path).1, expected, "{path}");
        }
    }

    #[test]
    fn status_labels_are_the_codes_digits() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(404), "404");
        assert_eq!(status_label(599), "599");
        assert_eq!(status_label(100), "100");
        assert_eq!(status_label(999), "other");
    }
}
