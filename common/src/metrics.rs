//! Prometheus metrics: one registry per application, rendered in the text exposition
//! format, and the Postgres pool gauges both the API and the workers report.
//!
//! Each application (the API, a worker) owns a [`Registry`] instead of installing a
//! process-global recorder: the tests run several applications in one process at once,
//! and each must report only its own numbers. A binary runs one application, so there
//! its registry is the process's. No global recorder is installed, so nothing records
//! through the `metrics` macros; code records through handles taken from its
//! application's registry.
//!
//! Handles whose labels are fixed are taken once and kept by whoever records, so
//! recording is an atomic add with no lookup. Handles whose label is only known at the
//! event (a country, a provider's status) are looked up in the registry then; labels are
//! `&'static str`, so no label text is copied per event.
//!
//! Nothing here knows HTTP: the API and the workers serve [`Registry::render`] on their
//! own routes.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

use crate::db::Pool;

pub use metrics::{Counter, Gauge, Histogram};

/// Upper bounds of the buckets of every `_seconds` histogram: from a millisecond (a
/// request answered from memory) to ten seconds (a provider at its timeout).
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often [`run_upkeep`] folds recorded histogram samples into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The Postgres pool's connections by `state` (`in_use`, `idle`).
pub const DB_POOL_CONNECTIONS: &str = "verify_db_pool_connections";
/// The most connections the pool opens.
pub const DB_POOL_MAX_CONNECTIONS: &str = "verify_db_pool_max_connections";
/// Callers waiting for a pool connection.
pub const DB_POOL_WAITING: &str = "verify_db_pool_waiting";

/// Recorded metrics are attributed to this target (the Prometheus recorder ignores it).
const METADATA: Metadata<'static> = Metadata::new("verify", Level::INFO, None);

/// One application's metrics. Cheap to clone: clones share the same numbers.
#[derive(Clone)]
pub struct Registry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry whose `_seconds` histograms have [`SECONDS_BUCKETS`].
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        Self {
            recorder: Arc::new(recorder),
            handle,
        }
    }

    /// The counter `name` with `labels`; registers it (at zero) on first use.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    /// The counter `name` with labels whose values are not `'static` (a rule id read from
    /// the database). Copies the values: keep it off paths taken per request.
    pub fn counter_owned(&self, name: &'static str, labels: &[(&'static str, String)]) -> Counter {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(label, value)| Label::new(*label, SharedString::from(value.clone())))
            .collect();
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// The gauge `name` with `labels`; registers it (at zero) on first use.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// The histogram `name` with `labels`; registers it on first use.
    pub fn histogram(
        &self,
        name: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Histogram {
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    /// Sets the `# HELP` text of a metric.
    pub fn describe(&self, name: &'static str, help: &'static str) {
        // The exporter keeps one description per name, whatever the kind.
        self.recorder
            .describe_counter(name.into(), None, SharedString::from(help));
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets; [`run_upkeep`] calls it on a
    /// timer so samples do not pile up between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(label, value)| Label::from_static_parts(label, value))
        .collect();
    Key::from_parts(name, labels)
}

/// Runs the registry's upkeep every few seconds until `shutdown`.
pub async fn run_upkeep(registry: Registry, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(UPKEEP_INTERVAL) => registry.run_upkeep(),
        }
    }
}

/// The Postgres pool gauges of one pool, taken once and set at each scrape.
#[derive(Clone)]
pub struct PoolGauges {
    pool: Pool,
    in_use: Gauge,
    idle: Gauge,
    max: Gauge,
    waiting: Gauge,
}

impl PoolGauges {
    /// Registers the gauges of `pool` in `registry`.
    pub fn new(registry: &Registry, pool: Pool) -> Self {
        registry.describe(
            DB_POOL_CONNECTIONS,
            "Postgres connections the pool holds, by state.",
        );
        registry.describe(
            DB_POOL_MAX_CONNECTIONS,
            "The most Postgres connections the pool opens.",
        );
        registry.describe(
            DB_POOL_WAITING,
            "Callers waiting for a Postgres connection.",
        );
        Self {
            pool,
            in_use: registry.gauge(DB_POOL_CONNECTIONS, &[("state", "in_use")]),
            idle: registry.gauge(DB_POOL_CONNECTIONS, &[("state", "idle")]),
            max: registry.gauge(DB_POOL_MAX_CONNECTIONS, &[]),
            waiting: registry.gauge(DB_POOL_WAITING, &[]),
        }
    }

    /// Reads the pool's state now (no query: deadpool counts it in memory).
    pub fn sample(&self) {
        let status = self.pool.status();
        let idle = status.available;
        self.idle.set(idle as f64);
        self.in_use.set(status.size.saturating_sub(idle) as f64);
        self.max.set(status.max_size as f64);
        self.waiting.set(status.waiting as f64);
    }
}
