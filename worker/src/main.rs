//! `verify-worker`: consume send jobs until SIGINT or SIGTERM, or inspect and replay the
//! dead-letter queue (`verify-worker dlq list|replay`).

use std::collections::BTreeSet;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use verify_common::config::LogSettings;
use verify_common::domain::DeliveryId;
use verify_common::telemetry::init_tracing;
use verify_worker::dlq::{ReplayOptions, ReplaySelection, list_dead_letters, replay_dead_letters};
use verify_worker::{Worker, WorkerConfig};

#[derive(Debug, Parser)]
#[command(name = "verify-worker", version, about = "Verify's SMS send worker")]
struct Cli {
    #[command(flatten)]
    config: WorkerConfig,
    #[command(flatten)]
    log: LogSettings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume send jobs until SIGINT or SIGTERM (the default).
    Serve,
    /// Inspect or replay the dead-letter queue (needs only the RabbitMQ and database
    /// settings).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// Show dead-lettered jobs, oldest first, leaving them in the queue.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move dead-lettered jobs back to the work queue; failed sends whose verification
    /// is still open are re-armed first, the others are skipped.
    Replay {
        /// Every dead-lettered job.
        #[arg(
            long,
            required_unless_present = "delivery",
            conflicts_with = "delivery"
        )]
        all: bool,
        /// Only the jobs of these deliveries (the send ids in `sends` of a verification).
        #[arg(long, num_args = 1..)]
        delivery: Vec<Uuid>,
        /// Say what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove skipped jobs from the queue instead of leaving them there. Unreadable
        /// messages always stay.
        #[arg(long)]
        discard_skipped: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log.format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Dlq { action } => dlq(&cli.config, action).await,
    }
}

async fn dlq(config: &WorkerConfig, action: DlqAction) -> anyhow::Result<()> {
    match action {
        DlqAction::List { limit, json } => {
            let listing = list_dead_letters(&config.rabbit, limit)
                .await
                .context("reading the dead-letter queue")?;
            if json {
                eprintln!("{}: {} messages", listing.queue, listing.depth);
                print!("{}", listing.to_json_lines());
            } else {
                print!("{}", listing.to_table());
            }
        }
        DlqAction::Replay {
            all,
            delivery,
            dry_run,
            discard_skipped,
        } => {
            let selection = if all {
                ReplaySelection::All
            } else {
                ReplaySelection::Deliveries(
                    delivery
                        .into_iter()
                        .map(DeliveryId::from_uuid)
                        .collect::<BTreeSet<_>>(),
                )
            };
            let pool = verify_common::db::connect_pool(&config.database)
                .await
                .context("connecting to Postgres")?;
            let options = ReplayOptions {
                selection,
                dry_run,
                discard_skipped,
            };
            let report = replay_dead_letters(&pool, &config.rabbit, &options)
                .await
                .context("replaying the dead-letter queue")?;
            print!("{report}");
        }
    }
    Ok(())
}

async fn serve(config: WorkerConfig) -> anyhow::Result<()> {
    let worker = Worker::build(config).await?;
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
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command, DlqAction};

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn without_a_subcommand_the_worker_serves() {
        let cli = Cli::try_parse_from(["verify-worker"]).unwrap();
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["verify-worker", "--concurrency", "4"]).unwrap();
        assert_eq!(cli.config.worker.concurrency, 4);
    }

    #[test]
    fn dlq_commands_parse_and_replay_needs_a_selection() {
        let cli = Cli::try_parse_from(["verify-worker", "dlq", "list", "--limit", "3", "--json"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Dlq {
                action: DlqAction::List {
                    limit: 3,
                    json: true
                }
            })
        ));
        let id = "0190c0de-0000-7000-8000-000000000000";
        let cli = Cli::try_parse_from([
            "verify-worker",
            "dlq",
            "replay",
            "--delivery",
            id,
            "--dry-run",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Dlq {
                action: DlqAction::Replay { all: false, dry_run: true, ref delivery, .. }
            }) if delivery.len() == 1
        ));
        assert!(Cli::try_parse_from(["verify-worker", "dlq", "replay"]).is_err());
        assert!(
            Cli::try_parse_from(["verify-worker", "dlq", "replay", "--all", "--delivery", id])
                .is_err()
        );
    }
}
