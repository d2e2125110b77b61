//! The figures of a run: the JSON document scripts read (`--json`), the summary table
//! people read, and the verdict (which findings make the run a failure).
//!
//! Rates are per second of the window they happened in: `sent_per_sec` over the time POSTs
//! were leaving, `accepted_per_sec` over the send window (run start to the last POST's
//! answer) and `delivered_per_sec` over the delivery
//! window (run start to the last first-SMS arrival at the sink), so a backlog that drains
//! after the sends stop lowers the delivery rate instead of hiding in it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::check::CheckFigures;
use crate::latency::{LatencySummary, format_ms};
use crate::tally::Failures;

/// How many lost verification ids a report lists.
pub const LOST_IDS_LISTED: usize = 20;

/// Everything a run found. Field names are the JSON keys; latencies are in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// verify-api's base URL.
    pub api: String,
    /// verify-sink's base URL.
    pub sink: String,
    /// `open` (fixed rate) or `closed` (fixed concurrency).
    pub mode: &'static str,
    /// Open loop: POSTs per second asked for.
    pub offered_rate: Option<f64>,
    /// Closed loop: POSTs in flight.
    pub concurrency: Option<usize>,
    /// How long POSTs were sent.
    pub duration_secs: f64,
    /// Longest wait for outstanding SMS after the last POST.
    pub drain_secs: f64,
    /// Whether codes were checked.
    pub check: bool,
    /// Whether every POST carried a `client_ip` and a `client_id`.
    pub client_signals: bool,
    /// The template every verification used.
    pub template_id: i64,
    /// The run's first phone number (`--numbers-from` repeats the run's numbers).
    pub first_number: String,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,

    /// POSTs sent.
    pub sent: u64,
    /// POSTs answered 202.
    pub accepted: u64,
    /// Accepted verifications whose SMS reached the sink.
    pub delivered: u64,
    /// Accepted verifications whose SMS had not reached the sink when the drain ended.
    pub lost: u64,
    /// SMS beyond the first for one verification.
    pub duplicates: u64,
    /// Some lost verification ids, for looking them up.
    pub lost_ids: Vec<String>,
    /// First SMS stamped by the sink before their POST: the two clocks disagree.
    pub arrived_before_sent: u64,

    /// Run start to the last POST leaving, at least the duration.
    pub sending_secs: f64,
    /// Run start to the last POST's answer.
    pub send_window_secs: f64,
    /// Run start to the last first-SMS arrival.
    pub delivery_window_secs: f64,
    /// `sent` over `sending_secs`: the rate actually offered.
    pub sent_per_sec: f64,
    /// `accepted` over the send window.
    pub accepted_per_sec: f64,
    /// `delivered` over the delivery window.
    pub delivered_per_sec: f64,

    /// Failed POSTs by HTTP status (`decode` for a 202 without the expected JSON).
    pub errors: BTreeMap<String, u64>,
    /// POSTs without an answer: `connect`, `timeout`, `other`.
    pub transport_errors: BTreeMap<String, u64>,
    /// The first error detail seen per status or kind, e.g. `"429": "rate_limited"`.
    pub error_examples: BTreeMap<String, String>,

    /// Due time (open loop) or send time (closed loop) to the API's answer.
    pub api_latency_ms: LatencySummary,
    /// Due or send time to the SMS's arrival at the sink.
    pub end_to_end_ms: LatencySummary,
    /// `--check`: one check request.
    pub check_latency_ms: Option<LatencySummary>,
    /// Open loop: how late POSTs left against their schedule (the tool's own lag).
    pub send_lag_ms: Option<LatencySummary>,
    /// `--check`: how the checks went.
    pub checks: Option<CheckReport>,

    /// Findings that make the run a failure (the process exits 1).
    pub problems: Vec<String>,
    /// Findings worth knowing that do not fail the run.
    pub warnings: Vec<String>,
}

/// Check outcomes and failed checks by status or kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckReport {
    /// Outcomes.
    #[serde(flatten)]
    pub figures: CheckFigures,
    /// Run start to the last check's answer.
    pub window_secs: f64,
    /// Approved checks over that window.
    pub approved_per_sec: f64,
    /// Failed checks by HTTP status or transport error kind.
    pub errors: BTreeMap<String, u64>,
}

/// Failure counts keyed for JSON: statuses (and `decode`), then transport kinds.
pub fn failure_maps(failures: &Failures) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut statuses: BTreeMap<String, u64> = failures
        .statuses
        .iter()
        .map(|(status, n)| (status.to_string(), *n))
        .collect();
    if failures.decode > 0 {
        statuses.insert("decode".to_owned(), failures.decode);
    }
    let transport = failures
        .transport
        .iter()
        .map(|(kind, n)| (kind.as_str().to_owned(), *n))
        .collect();
    (statuses, transport)
}

/// A send lag p99 beyond this means the tool, not the system, limited the offered rate.
const LAG_WARNING_MS: f64 = 100.0;

impl Report {
    /// Fills `problems` and `warnings` from the figures.
    pub fn assess(&mut self) {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let failed =
            self.errors.values().sum::<u64>() + self.transport_errors.values().sum::<u64>();
        if self.accepted == 0 {
            problems.push(format!(
                "nothing was accepted: {} POSTs, {failed} failed ({})",
                self.sent,
                self.error_summary()
            ));
        } else if failed > 0 {
            warnings.push(format!(
                "{failed} of {} POSTs failed ({})",
                self.sent,
                self.error_summary()
            ));
        }
        if self.lost > 0 {
            let examples = self
                .lost_ids
                .iter()
                .take(5)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            problems.push(format!(
                "{} accepted verifications had no SMS at the sink {} s after the last POST (e.g. {examples})",
                self.lost, self.drain_secs
            ));
        }
        if let Some(checks) = &self.checks {
            let f = &checks.figures;
            if f.wrong > 0 {
                problems.push(format!(
                    "{} checks with the code from the SMS were not approved",
                    f.wrong
                ));
            }
            if f.unreadable > 0 {
                problems.push(format!(
                    "{} SMS held no code of the verification's length",
                    f.unreadable
                ));
            }
            if f.failed > 0 {
                warnings.push(format!("{} check requests failed", f.failed));
            }
        }
        if self.duplicates > 0 {
            warnings.push(format!(
                "{} duplicate SMS (more than one for a verification)",
                self.duplicates
            ));
        }
        if self.arrived_before_sent > 0 {
            warnings.push(format!(
                "{} SMS were stamped by the sink before their POST was sent: the sink's clock \
                 differs from this machine's, so end-to-end latency is wrong",
                self.arrived_before_sent
            ));
        }
        if let Some(lag) = self.send_lag_ms.as_ref().and_then(|lag| lag.p99)
            && lag > LAG_WARNING_MS
        {
            warnings.push(format!(
                "POSTs left up to {} ms late (p99), so the offered rate was not applied on time: \
                 every --max-in-flight slot was taken by a slow answer, or the load tool was \
                 short of CPU (their latency still counts from the schedule)",
                format_ms(Some(lag))
            ));
        }
        if self.interrupted {
            warnings.push("interrupted with Ctrl-C: the figures cover part of the run".to_owned());
        }
        self.problems = problems;
        self.warnings = warnings;
    }

    /// `429 ×3 (rate_limited), timeout ×1` style summary of the POST failures.
    fn error_summary(&self) -> String {
        let parts: Vec<String> = self
            .errors
            .iter()
            .chain(&self.transport_errors)
            .map(|(key, n)| match self.error_examples.get(key) {
                Some(example) if !example.is_empty() => format!("{key} ×{n} ({example})"),
                _ => format!("{key} ×{n}"),
            })
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// Writes the report as pretty JSON to `path`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        json.push('\n');
        std::fs::write(path, json)
    }

    /// The summary table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let pacing = match (self.offered_rate, self.concurrency) {
            (Some(rate), _) => format!("open loop at {rate}/s"),
            (None, Some(concurrency)) => format!("closed loop, {concurrency} in flight"),
            (None, None) => self.mode.to_owned(),
        };
        let _ = writeln!(
            out,
            "verify-load: {pacing} for {} s (drain up to {} s){}{}; template {}; numbers from {}",
            self.duration_secs,
            self.drain_secs,
            if self.check { "; checking codes" } else { "" },
            if self.client_signals {
                "; with client signals"
            } else {
                ""
            },
            self.template_id,
            self.first_number
        );
        out.push('\n');

        let per_sec = |value: f64| format!("{value:.1}");
        let mut counts = Table::new(["", "count", "per s", "window s"]);
        counts.row([
            "sent".to_owned(),
            self.sent.to_string(),
            per_sec(self.sent_per_sec),
            format!("{:.2}", self.sending_secs),
        ]);
        counts.row([
            "accepted (202)".to_owned(),
            self.accepted.to_string(),
            per_sec(self.accepted_per_sec),
            format!("{:.2}", self.send_window_secs),
        ]);
        counts.row([
            "delivered (SMS at sink)".to_owned(),
            self.delivered.to_string(),
            per_sec(self.delivered_per_sec),
            format!("{:.2}", self.delivery_window_secs),
        ]);
        counts.row([
            "lost".to_owned(),
            self.lost.to_string(),
            String::new(),
            String::new(),
        ]);
        counts.row([
            "duplicate SMS".to_owned(),
            self.duplicates.to_string(),
            String::new(),
            String::new(),
        ]);
        counts.row([
            "failed POSTs".to_owned(),
            (self.errors.values().sum::<u64>() + self.transport_errors.values().sum::<u64>())
                .to_string(),
            String::new(),
            String::new(),
        ]);
        if let Some(checks) = &self.checks {
            let f = &checks.figures;
            counts.row([
                "checks approved".to_owned(),
                f.approved.to_string(),
                per_sec(checks.approved_per_sec),
                format!("{:.2}", checks.window_secs),
            ]);
            for (label, n) in [
                ("checks wrong", f.wrong),
                ("checks failed", f.failed),
                ("SMS without a code", f.unreadable),
                ("never checked (no SMS)", f.not_delivered),
            ] {
                counts.row([
                    label.to_owned(),
                    n.to_string(),
                    String::new(),
                    String::new(),
                ]);
            }
        }
        out.push_str(&counts.render());
        if !self.errors.is_empty() || !self.transport_errors.is_empty() {
            let _ = writeln!(out, "errors: {}", self.error_summary());
        }
        out.push('\n');

        let mut latency =
            Table::new(["latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"]);
        let mut add = |label: &str, s: &LatencySummary| {
            latency.row([
                label.to_owned(),
                s.count.to_string(),
                format_ms(s.p50),
                format_ms(s.p90),
                format_ms(s.p99),
                format_ms(s.p999),
                format_ms(s.max),
            ]);
        };
        add("API POST", &self.api_latency_ms);
        add("POST to SMS at sink", &self.end_to_end_ms);
        if let Some(check) = &self.check_latency_ms {
            add("check", check);
        }
        if let Some(lag) = &self.send_lag_ms {
            add("send lag (tool)", lag);
        }
        out.push_str(&latency.render());

        if !self.lost_ids.is_empty() {
            let _ = writeln!(out, "\nlost ids: {}", self.lost_ids.join(" "));
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        for problem in &self.problems {
            let _ = writeln!(out, "FAILED: {problem}");
        }
        out
    }
}

/// Columns aligned on the widest cell: the first left-aligned, numbers right-aligned.
struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    fn new(header: [&str; N]) -> Table<N> {
        Table {
            rows: vec![header.map(str::to_owned)],
        }
    }

    fn row(&mut self, cells: [String; N]) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths = [0_usize; N];
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
                if i == 0 {
                    let _ = write!(line, "{cell:<width$}");
                } else {
                    let _ = write!(line, "  {cell:>width$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::{CheckReport, Report};
    use crate::check::CheckFigures;
    use crate::latency::LatencySummary;

    fn report() -> Report {
        Report {
            api: "http://127.0.0.1:8080".to_owned(),
            sink: "http://127.0.0.1:9090".to_owned(),
            mode: "open",
            offered_rate: Some(1_000.0),
            duration_secs: 20.0,
            drain_secs: 30.0,
            template_id: 7,
            client_signals: false,
            first_number: "+12122000000".to_owned(),
            sent: 20_000,
            accepted: 19_990,
            delivered: 19_990,
            send_window_secs: 20.01,
            delivery_window_secs: 20.05,
            sent_per_sec: 999.5,
            accepted_per_sec: 999.0,
            delivered_per_sec: 997.0,
            errors: BTreeMap::from([("429".to_owned(), 10)]),
            error_examples: BTreeMap::from([("429".to_owned(), "rate_limited".to_owned())]),
            api_latency_ms: LatencySummary {
                count: 20_000,
                mean: Some(2.0),
                p50: Some(1.5),
                p90: Some(3.0),
                p99: Some(9.5),
                p999: Some(20.0),
                max: Some(31.0),
            },
            ..Report::default()
        }
    }

    #[test]
    fn the_json_has_the_keys_scripts_read() {
        let json = serde_json::to_value(report()).unwrap();
        for key in [
            "accepted",
            "delivered",
            "lost",
            "accepted_per_sec",
            "delivered_per_sec",
            "errors",
            "transport_errors",
            "api_latency_ms",
            "end_to_end_ms",
            "check_latency_ms",
            "checks",
            "offered_rate",
            "concurrency",
            "duration_secs",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["errors"]["429"], 10);
        assert_eq!(json["api_latency_ms"]["p99"], 9.5);
        assert!(json["end_to_end_ms"]["p99"].is_null());
        assert!(json["concurrency"].is_null());
    }

    #[test]
    fn a_clean_run_has_no_problems_but_mentions_failed_posts() {
        let mut report = report();
        report.assess();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(
            report.warnings,
            ["10 of 20000 POSTs failed (429 ×10 (rate_limited))"]
        );
    }

    #[test]
    fn lost_sms_wrong_checks_and_nothing_accepted_fail_the_run() {
        let mut report = report();
        report.lost = 2;
        report.lost_ids = vec!["a".to_owned(), "b".to_owned()];
        report.checks = Some(CheckReport {
            figures: CheckFigures {
                approved: 5,
                wrong: 1,
                ..CheckFigures::default()
            },
            ..CheckReport::default()
        });
        report.assess();
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        assert!(report.problems[0].contains("(e.g. a, b)"));

        let mut report = super::Report {
            accepted: 0,
            sent: 3,
            ..Report::default()
        };
        report.assess();
        assert!(report.problems[0].starts_with("nothing was accepted"));
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let mut report = report();
        report.assess();
        let table = report.render();
        let lines: Vec<&str> = table.lines().collect();
        let header = lines
            .iter()
            .find(|l| l.starts_with("latency (ms)"))
            .unwrap();
        let api = lines.iter().find(|l| l.starts_with("API POST")).unwrap();
        assert_eq!(header.len(), api.len(), "\n{table}");
        assert!(api.ends_with("31.0"), "{api}");
        assert!(table.contains("accepted (202)"));
        assert!(table.contains("warning: 10 of 20000 POSTs failed"));
    }
}
