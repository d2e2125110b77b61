//! The `verify-sink` binary: the fake SMS provider as a process, for run scripts, docker
//! compose, and load and chaos tools. All behaviour lives in the library.
#![forbid(unsafe_code)]

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use verify_sink::{Sink, SinkSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = SinkSettings::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Colours only on a terminal; run scripts pipe logs into files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    tracing::info!(?settings, "starting verify-sink");
    let sink = Sink::bind(settings).await?;
    tracing::info!(addr = %sink.local_addr(), url = %sink.base_url(), "verify-sink listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    sink.run_until_stopped(shutdown).await?;
    tracing::info!("verify-sink stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM (docker stop sends the latter).
async fn cancel_on_signal(shutdown: CancellationToken) {
    if let Err(error) = wait_for_signal().await {
        // Without signal handling the process could only be killed; stopping now is the
        // less surprising failure.
        tracing::error!(%error, "cannot listen for shutdown signals; stopping");
    }
    shutdown.cancel();
}

#[cfg(unix)]
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
