//! `verify-api`: serve the HTTP API, apply migrations, or manage API keys.

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use verify_api::{ApiConfig, Application, keys};
use verify_common::config::LogSettings;
use verify_common::telemetry::init_tracing;

#[derive(Debug, Parser)]
#[command(name = "verify-api", version, about = "Verify's HTTP API")]
struct Cli {
    #[command(flatten)]
    config: ApiConfig,
    #[command(flatten)]
    log: LogSettings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Create the database if needed and apply migrations, then exit.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Debug, Subcommand)]
enum KeyAction {
    /// Create a key and print it once.
    Create {
        #[arg(long)]
        name: String,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id.
    Revoke { id: Uuid },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log.format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => {
            let pool = verify_common::db::connect_pool(&cli.config.database)
                .await
                .context("connecting to Postgres")?;
            let applied = verify_common::db::migrate(&pool).await?;
            println!("migrations applied: {applied:?}");
            Ok(())
        }
        Command::Keys { action } => match action {
            KeyAction::Create { name } => {
                let key = keys::create_key(&cli.config.database, &name).await?;
                println!("{key}");
                eprintln!("Store this key now: it is not saved and cannot be shown again.");
                Ok(())
            }
            KeyAction::List => {
                for line in keys::list_keys(&cli.config.database).await? {
                    println!("{line}");
                }
                Ok(())
            }
            KeyAction::Revoke { id } => keys::revoke_key(&cli.config.database, id).await,
        },
    }
}

async fn serve(config: ApiConfig) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, "verify-api listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await?;
    tracing::info!("verify-api stopped");
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler succeeds on Unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
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
