//! The table of every route ([`ENDPOINTS`]) and `endpoint!`, the only way routes are
//! declared: it builds a route's path-and-method filter and refuses to compile unless the
//! route is listed, so the table cannot miss a route. The integration tests walk the table
//! and prove that every route needing a key refuses a request without one.

/// Which answer shape a route belongs to, and with it whether it needs an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `/v1/…`: errors are `{"error": {code, message, field}}`; needs a key.
    Native,
    /// PortaText's paths: errors are `{success: false, error_description: […]}`; needs a key.
    PortaText,
    /// Liveness and readiness probes, the metrics scrape and the API's OpenAPI document:
    /// open to everyone.
    Probe,
    /// Providers' delivery receipts: native error shape, but no API key (a provider
    /// cannot send one); a signature or token of the provider's is required instead.
    Receipt,
}

impl Family {
    /// Whether requests must present a valid API key.
    pub fn needs_key(self) -> bool {
        matches!(self, Self::Native | Self::PortaText)
    }
}

/// One route: method, path (`{}` for a parameter) and family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub family: Family,
}

const fn route(method: &'static str, path: &'static str, family: Family) -> Endpoint {
    Endpoint {
        method,
        path,
        family,
    }
}

/// Every route the API serves. `endpoint!` checks at compile time that each route it
/// builds is listed here, and the tests check that each listed route is served.
pub const ENDPOINTS: &[Endpoint] = &[
    route("GET", "/healthz", Family::Probe),
    route("GET", "/readyz", Family::Probe),
    route("GET", "/metrics", Family::Probe),
    route("GET", "/openapi.json", Family::Probe),
    route("POST", "/callbacks/twilio/status", Family::Receipt),
    route("POST", "/callbacks/http/status", Family::Receipt),
    route("POST", "/v1/verifications", Family::Native),
    route("POST", "/v1/verifications/check", Family::Native),
    route("GET", "/v1/verifications/{}", Family::Native),
    route("GET", "/v1/verifications/{}/events", Family::Native),
    route("POST", "/v1/verifications/{}/check", Family::Native),
    route("POST", "/v1/verifications/{}/resend", Family::Native),
    route("POST", "/v1/verifications/{}/cancel", Family::Native),
    route("GET", "/v1/templates", Family::Native),
    route("POST", "/v1/templates", Family::Native),
    route("POST", "/v1/templates/preview", Family::Native),
    route("GET", "/v1/templates/{}", Family::Native),
    route("PATCH", "/v1/templates/{}", Family::Native),
    route("PUT", "/v1/templates/{}", Family::Native),
    route("DELETE", "/v1/templates/{}", Family::Native),
    route("GET", "/v1/abuse/rules", Family::Native),
    route("PUT", "/v1/abuse/rules/{}", Family::Native),
    route("DELETE", "/v1/abuse/rules/{}", Family::Native),
    route("GET", "/v1/abuse/allow", Family::Native),
    route("POST", "/v1/abuse/allow", Family::Native),
    route("DELETE", "/v1/abuse/allow/{}", Family::Native),
    route("GET", "/v1/abuse/blocks", Family::Native),
    route("DELETE", "/v1/abuse/blocks/{}", Family::Native),
    route("GET", "/v1/webhooks", Family::Native),
    route("POST", "/v1/webhooks", Family::Native),
    route("GET", "/v1/webhooks/{}", Family::Native),
    route("PATCH", "/v1/webhooks/{}", Family::Native),
    route("DELETE", "/v1/webhooks/{}", Family::Native),
    route("GET", "/v1/stats", Family::Native),
    route("POST", "/number_verify/{}", Family::PortaText),
    route("GET", "/number_verify/{}", Family::PortaText),
    route("GET", "/templates", Family::PortaText),
    route("POST", "/templates", Family::PortaText),
    route("GET", "/templates/{}", Family::PortaText),
    route("PUT", "/templates/{}", Family::PortaText),
    route("PATCH", "/templates/{}", Family::PortaText),
    route("DELETE", "/templates/{}", Family::PortaText),
];

/// Whether `ENDPOINTS` lists this route; evaluated at compile time by `endpoint!`.
pub(super) const fn is_listed(method: &str, path: &str, family: Family) -> bool {
    let mut i = 0;
    while i < ENDPOINTS.len() {
        let listed = &ENDPOINTS[i];
        if same_text(listed.method, method)
            && same_text(listed.path, path)
            && listed.family as u8 == family as u8
        {
            return true;
        }
        i += 1;
    }
    false
}

const fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `endpoint!(Family METHOD "segment" / String / …)`: the filter matching that path and
/// method, extracting the `String` parameters. Fails to compile unless the route is in
/// [`ENDPOINTS`]. Keyed routes chain `extract::caller` right after it.
macro_rules! endpoint {
    ($family:ident $method:ident $($segment:tt)/+) => {{
        const _: () = assert!(
            $crate::routes::table::is_listed(
                stringify!($method),
                concat!($("/", endpoint!(@path $segment)),+),
                $crate::routes::table::Family::$family,
            ),
            "every route must be listed in routes::ENDPOINTS"
        );
        warp::path!($($segment)/+).and(endpoint!(@method $method))
    }};
    (@path String) => { "{}" };
    (@path $literal:literal) => { $literal };
    (@method GET) => { warp::get() };
    (@method POST) => { warp::post() };
    (@method PUT) => { warp::put() };
    (@method PATCH) => { warp::patch() };
    (@method DELETE) => { warp::delete() };
}

#[cfg(test)]
mod tests {
    use super::ENDPOINTS;

    #[test]
    fn no_route_is_listed_twice() {
        for (i, a) in ENDPOINTS.iter().enumerate() {
            for b in &ENDPOINTS[i + 1..] {
                assert!(
                    (a.method, a.path) != (b.method, b.path),
                    "{} {} is listed twice",
                    a.method,
                    a.path
                );
            }
        }
    }
}
