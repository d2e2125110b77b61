//! `verify-worker`: consume send jobs until SIGINT or SIGTERM.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use verify_common::config::LogSettings;
use verify_common::telemetry::init_tracing;
use verify_worker::{Worker, WorkerConfig};

#[derive(Debug, Parser)]
#[command(name = "verify-worker", version, about = "Verify's SMS send worker")]
struct Cli {
    #[command(flatten)]
    config: WorkerConfig,
    #[command(flatten)]
    log: LogSettings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log.format);
    let worker = Worker::build(cli.config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    tracing::info!("verify-worker started");
    worker.run_until_stopped(shutdown).await;
    tracing::info!("verify-worker stopped");
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn cancel_on_signal(token: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler succeeds on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
