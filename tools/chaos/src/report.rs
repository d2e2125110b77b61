//! The results as a person reads them (one table row per scenario, then every failed
//! check) and as a script reads them (JSON).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::scenarios::ScenarioReport;

const HEADERS: [&str; 13] = [
    "scenario",
    "accepted",
    "delivered",
    "lost",
    "stuck",
    "expired",
    "late",
    "dup/bound",
    "503",
    "other 5xx",
    "slowest ms",
    "recovery s",
    "result",
];

/// The table of figures, one row per scenario, then what failed and why.
pub fn table(reports: &[ScenarioReport]) -> String {
    let rows: Vec<[String; 13]> = reports.iter().map(row).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let gap = if i == 0 { "" } else { "  " };
            // Names left-aligned, figures right-aligned.
            if i == 0 {
                let _ = write!(out, "{gap}{cell:<width$}");
            } else {
                let _ = write!(out, "{gap}{cell:>width$}");
            }
        }
        out.push('\n');
    };
    line(&mut out, &HEADERS.map(str::to_owned));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule);
    for row in &rows {
        line(&mut out, row);
    }
    for report in reports {
        if let Some(error) = &report.error {
            let _ = writeln!(
                out,
                "\n{}: could not run to the end: {error}",
                report.scenario
            );
        }
        for check in report.checks.iter().filter(|c| !c.passed) {
            let _ = writeln!(
                out,
                "\n{}: FAILED {}: {}",
                report.scenario, check.guarantee, check.measured
            );
        }
    }
    out
}

fn row(report: &ScenarioReport) -> [String; 13] {
    let f = &report.figures;
    let slowest = if f.slowest_answer_during_fault_ms > 0 {
        f.slowest_answer_during_fault_ms.to_string()
    } else {
        "-".to_owned()
    };
    let recovery = f
        .recovery_secs
        .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"));
    [
        report.scenario.to_owned(),
        f.accepted.to_string(),
        f.delivered.to_string(),
        f.lost.to_string(),
        f.stuck.to_string(),
        f.expired_unsent.to_string(),
        f.sent_after_expiry.to_string(),
        format!("{}/{}", f.duplicates, f.duplicate_bound),
        f.answered_503.to_string(),
        f.server_errors.to_string(),
        slowest,
        recovery,
        if report.passed() { "pass" } else { "FAIL" }.to_owned(),
    ]
}

/// Writes every report, checks and events included, as pretty JSON.
///
/// # Errors
/// When the file cannot be written.
pub fn write_json(path: &Path, reports: &[ScenarioReport]) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(reports)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::table;
    use crate::audit::Figures;
    use crate::scenarios::{Check, ScenarioReport};

    fn report(lost: usize) -> ScenarioReport {
        ScenarioReport {
            scenario: "broker-outage",
            figures: Figures {
                accepted: 1200,
                delivered: 1200 - lost,
                lost,
                ..Figures::default()
            },
            checks: vec![Check {
                guarantee: "no accepted verification lost".to_owned(),
                passed: lost == 0,
                measured: format!("{lost} lost"),
            }],
            events: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn a_passing_scenario_is_one_row_marked_pass() {
        let text = table(&[report(0)]);
        let row = text
            .lines()
            .nth(2)
            .expect("a row under the header and rule");
        assert!(row.starts_with("broker-outage"), "{row}");
        assert!(row.ends_with("pass"), "{row}");
        assert!(!text.contains("FAILED"), "{text}");
    }

    #[test]
    fn a_failed_check_is_named_under_the_table_with_its_figure() {
        let text = table(&[report(3)]);
        assert!(
            text.lines().nth(2).is_some_and(|row| row.ends_with("FAIL")),
            "{text}"
        );
        assert!(
            text.contains("broker-outage: FAILED no accepted verification lost: 3 lost"),
            "{text}"
        );
    }

    #[test]
    fn columns_line_up_whatever_the_figures() {
        let text = table(&[report(0), report(12)]);
        let lengths: Vec<usize> = text.lines().take(4).map(|l| l.chars().count()).collect();
        assert!(lengths.windows(2).all(|w| w[0] == w[1]), "{text}");
    }
}
