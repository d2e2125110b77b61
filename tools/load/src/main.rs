//! The `verify-load` binary: parse the flags, run, print the summary, write the JSON, and
//! exit 0 (all good), 1 (the run found problems: lost SMS, nothing accepted, wrong checks)
//! or 2 (the run could not be made: unreachable API or sink, refused key, bad flags).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use verify_load::LoadSettings;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = LoadSettings::parse();
    let json = settings.json.clone();
    let report = match verify_load::run(settings).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("verify-load: error: {error:#}");
            return ExitCode::from(2);
        }
    };
    println!("\n{}", report.render());
    if let Some(path) = json {
        if let Err(error) = report.write_json(&path) {
            eprintln!("verify-load: error: writing {}: {error}", path.display());
            return ExitCode::from(2);
        }
        eprintln!("verify-load: figures written to {}", path.display());
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
