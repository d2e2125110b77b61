//! `verify-chaos`: run the fault-injection scenarios and print the table.

use std::process::ExitCode;

use clap::Parser;
use verify_chaos::report::{table, write_json};
use verify_chaos::scenarios::{self, ScenarioReport};
use verify_chaos::{ChaosSettings, Harness};

#[tokio::main]
async fn main() -> ExitCode {
    let settings = ChaosSettings::parse();
    match run(settings).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("verify-chaos: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs every selected scenario; true when all passed.
async fn run(settings: ChaosSettings) -> anyhow::Result<bool> {
    let selected = settings.selected();
    let json = settings.json.clone();
    let mut harness = Harness::start(settings).await?;
    let mut reports: Vec<ScenarioReport> = Vec::new();
    let mut failure = None;
    for name in selected {
        println!("\n== {} ==", name.as_str());
        let report = tokio::select! {
            report = scenarios::run(name, &mut harness) => report,
            _ = tokio::signal::ctrl_c() => {
                failure = Some(anyhow::anyhow!("interrupted"));
                break;
            }
        };
        println!("    {}", if report.passed() { "pass" } else { "FAIL" });
        reports.push(report);
        if let Err(error) = harness.restore().await {
            failure = Some(error.context("the system could not be restored between scenarios"));
            break;
        }
    }
    harness.shut_down().await;
    println!("\n{}", table(&reports));
    if let Some(path) = json {
        write_json(&path, &reports)?;
    }
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(reports.iter().all(ScenarioReport::passed))
}
