//! Tracing set-up shared by the binaries, and the one place that decides which log lines
//! may be written at all.
//!
//! `RUST_LOG` picks the levels, with one exception: third-party crates whose debug and
//! trace output carries request data are held at `info` or quieter, whatever `RUST_LOG`
//! asks for (see [`QUIET_TARGETS`]). Our own crates never log a full phone number, a code
//! or its nonce at any level, so with that cap no level of `RUST_LOG` puts them in the log.

use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogFormat;

/// Third-party log targets (and everything below them) that never log above `info`, and
/// what each would otherwise write:
/// - `tokio_postgres`: every statement's parameters, at debug: full phone numbers, code
///   nonces (which with the secret give the code), template variables;
/// - `warp`: every path segment it tries to match, at trace: the number in a PortaText
///   path;
/// - `reqwest`: with verbose connections, the raw bytes sent to the SMS provider, at
///   trace: message bodies with their codes, and the provider's credentials.
///
/// The other crates that see such data were read and run at trace, and log none of it:
/// `postgres_protocol` and `deadpool` log nothing, hyper 1 logs only when built with an
/// unstable flag, `hyper_util` logs addresses, `h2` leaves header fields and data out of
/// its frame logs, `lapin` logs AMQP methods but not message bodies or credentials,
/// `amq_protocol_tcp` logs host and port, and `rustls` logs handshakes, not application
/// data.
pub const QUIET_TARGETS: [&str; 3] = ["tokio_postgres", "warp", "reqwest"];

/// The most a [`QUIET_TARGETS`] crate may log.
const QUIET_LEVEL: LevelFilter = LevelFilter::INFO;

/// Installs the global subscriber: `RUST_LOG` filters (default `info`, also when it does
/// not parse), text or JSON lines on stderr, and `log` records (tokio-postgres logs
/// through `log`) go through the same filter. Calling it twice is harmless (the second
/// call is ignored), which tests rely on.
pub fn init_tracing(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").unwrap_or_default();
    // Colours only on a terminal: piped into files or log collectors they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_tracing_to(format, &directives, ansi, std::io::stderr);
}

/// Installs the global subscriber writing to `writer` (see [`log_subscriber`]).
/// [`init_tracing`] uses it with stderr; tests use it to capture every line a process
/// writes. Returns false when a global subscriber was already installed (this one is
/// then dropped).
pub fn init_tracing_to<W>(format: LogFormat, directives: &str, ansi: bool, writer: W) -> bool
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    log_subscriber(format, directives, ansi, writer)
        .try_init()
        .is_ok()
}

/// A subscriber writing lines to `writer`, filtered by `directives` (the `RUST_LOG`
/// syntax; `info` when empty or unparsable) with [`QUIET_TARGETS`] capped at `info`.
pub fn log_subscriber<W>(
    format: LogFormat,
    directives: &str,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let chosen = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse(directives)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let capped = QUIET_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, target| targets.with_target(*target, QUIET_LEVEL),
    );
    // Both must let an event through, so the cap holds however specific a `RUST_LOG`
    // directive is (`tokio_postgres::query=trace` included), and a quieter one still wins.
    let filter = chosen.and(capped);
    let layer = fmt::layer().with_ansi(ansi).with_writer(writer);
    match format {
        LogFormat::Text => Box::new(tracing_subscriber::registry().with(layer.with_filter(filter))),
        LogFormat::Json => {
            Box::new(tracing_subscriber::registry().with(layer.json().with_filter(filter)))
        }
    }
}

/// For tests: logs only when `TEST_LOG` is set, so passing runs stay quiet.
pub fn init_test_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        init_tracing(LogFormat::Text);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex, PoisonError};

    use super::log_subscriber;
    use crate::config::LogFormat;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
                .into_owned()
        }
    }

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a subscriber built from `directives` writes for a few events.
    fn logged(directives: &str) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = log_subscriber(LogFormat::Text, directives, false, move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "tokio_postgres::query", "statement parameters");
            tracing::trace!(target: "warp::filters::path", "path segment");
            tracing::info!(target: "tokio_postgres::connection", "server notice");
            tracing::trace!(target: "verify_api::routes", "our own trace");
        });
        lines.text()
    }

    #[test]
    fn quiet_targets_stay_at_info_however_loud_or_specific_the_directives() {
        for directives in ["trace", "trace,tokio_postgres::query=trace,warp=trace"] {
            let text = logged(directives);
            assert!(
                !text.contains("statement parameters"),
                "{directives}: {text}"
            );
            assert!(!text.contains("path segment"), "{directives}: {text}");
            assert!(text.contains("server notice"), "{directives}: {text}");
            assert!(text.contains("our own trace"), "{directives}: {text}");
        }
    }

    /// What a subscriber in `format` writes for an event in a span whose second field is
    /// recorded after the span was entered, as a request's verification id is.
    fn logged_in_span(format: LogFormat) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = log_subscriber(format, "info", false, move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                verification_id = tracing::field::Empty
            );
            let _entered = span.enter();
            span.record("verification_id", "0190c0de-0000-7000-8000-000000000000");
            tracing::info!("verification started");
        });
        lines.text()
    }

    #[test]
    fn both_formats_print_the_span_fields_of_every_line_including_late_ones() {
        let text = logged_in_span(LogFormat::Text);
        assert!(
            text.contains("trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"")
                || text.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{text}"
        );
        assert!(
            text.contains("0190c0de-0000-7000-8000-000000000000"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(logged_in_span(LogFormat::Json).trim()).unwrap();
        assert_eq!(json["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            json["span"]["verification_id"],
            "0190c0de-0000-7000-8000-000000000000"
        );
    }

    #[test]
    fn a_quieter_directive_for_a_quiet_target_still_wins() {
        let text = logged("trace,tokio_postgres=warn");
        assert!(!text.contains("server notice"), "{text}");
        assert!(text.contains("our own trace"), "{text}");
    }

    #[test]
    fn empty_or_unparsable_directives_mean_info() {
        for directives in ["", "=nonsense=[", "info"] {
            let text = logged(directives);
            assert!(text.contains("server notice"), "{directives:?}: {text}");
            assert!(!text.contains("our own trace"), "{directives:?}: {text}");
        }
    }
}
