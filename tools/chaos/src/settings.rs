//! Command-line flags: which scenarios, how long, and where the private services live.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::pumping::PumpingShape;

/// The fault-injection suite's settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "verify-chaos",
    version,
    about = "Runs Verify's real processes against a private Postgres and RabbitMQ, injects \
             crashes and outages, and audits every accepted verification against the SMS sink"
)]
pub struct ChaosSettings {
    /// Short scenarios, about a minute each (what CI runs); without it each fault lasts
    /// as long as the reliability guarantees name (a 60 s broker or provider outage).
    #[arg(long)]
    pub quick: bool,
    /// Run only these scenarios, in the order given (default: all).
    #[arg(long = "scenario", value_enum)]
    pub scenarios: Vec<ScenarioName>,
    /// Directory holding the verify-api, verify-worker and verify-sink binaries.
    #[arg(long, env = "VERIFY_CHAOS_BIN_DIR", default_value = "target/debug")]
    pub bin_dir: PathBuf,
    /// Scratch directory for the private Postgres cluster, broker node and process logs;
    /// emptied at start. Must be under /tmp.
    #[arg(
        long,
        env = "VERIFY_CHAOS_WORK_DIR",
        default_value = "/tmp/verify-chaos"
    )]
    pub work_dir: PathBuf,
    /// Port of the private Postgres cluster.
    #[arg(long, default_value_t = 26432)]
    pub pg_port: u16,
    /// Directory with initdb and pg_ctl (default: the newest /usr/lib/postgresql/*/bin).
    #[arg(long, env = "VERIFY_CHAOS_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// AMQP port of the private broker; the next port is its Erlang distribution port and
    /// the ten after that are for rabbitmqctl.
    #[arg(long, default_value_t = 26672)]
    pub amqp_port: u16,
    /// Port of the private broker's own epmd, so the system's epmd is never touched.
    #[arg(long, default_value_t = 26369)]
    pub epmd_port: u16,
    /// Directory with rabbitmq-server and rabbitmqctl.
    #[arg(
        long,
        env = "VERIFY_CHAOS_RABBITMQ_BIN",
        default_value = "/usr/lib/rabbitmq/bin"
    )]
    pub rabbitmq_bin: PathBuf,
    /// Port verify-api listens on.
    #[arg(long, default_value_t = 26080)]
    pub api_port: u16,
    /// Port verify-sink listens on.
    #[arg(long, default_value_t = 26090)]
    pub sink_port: u16,
    /// Worker processes running at the start of each scenario.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=16))]
    pub workers: u16,
    /// Verifications started per second while a scenario runs.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub rate: u32,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl ChaosSettings {
    /// The scenarios to run, in order.
    pub fn selected(&self) -> Vec<ScenarioName> {
        if self.scenarios.is_empty() {
            ScenarioName::value_variants().to_vec()
        } else {
            self.scenarios.clone()
        }
    }

    /// How long a dependency stays down in the outage scenarios.
    pub fn outage(&self) -> Duration {
        Duration::from_secs(if self.quick { 15 } else { 60 })
    }

    /// The pumping simulation's traffic: hundreds of attack requests and fewer legitimate
    /// ones in the short form, about three times as many in the full one.
    pub fn pumping(&self) -> PumpingShape {
        if self.quick {
            PumpingShape {
                attack: 300,
                legitimate: 200,
                rate: 50,
            }
        } else {
            PumpingShape {
                attack: 1_000,
                legitimate: 600,
                rate: 50,
            }
        }
    }

    /// How long traffic runs before and after a fault.
    pub fn calm(&self) -> Duration {
        Duration::from_secs(if self.quick { 5 } else { 10 })
    }
}

/// The faults the suite knows how to inject, one scenario each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// RabbitMQ stopped while requests keep arriving; the outbox relays after it returns.
    BrokerOutage,
    /// verify-api killed with -9 repeatedly under load, so some commits never see a publish.
    ApiCrash,
    /// Workers killed with -9 repeatedly under load, mid-send.
    WorkerKill,
    /// Connections terminated and dependencies restarted under load.
    ConnectionsCut,
    /// Postgres stopped while requests keep arriving: 503 with Retry-After, then recovery.
    PostgresOutage,
    /// The SMS provider failing (5xx, hangs, 429 with Retry-After), then recovering.
    ProviderOutage,
    /// SIGTERM to workers and the API under load: drain, exit 0, nothing lost or doubled.
    GracefulShutdown,
    /// The API and workers started before Postgres and RabbitMQ: they wait, then serve.
    ColdStart,
    /// SMS pumping to one prefix from many addresses, mixed with legitimate sign-ups: the
    /// default abuse rules stop the attack and refuse no legitimate request.
    Pumping,
    /// The producer's webhook endpoint down while receipts come late, under load: every
    /// event delivered once it is back, no SMS slowed.
    WebhookOutage,
}

impl ScenarioName {
    /// The name as typed on the command line and printed in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BrokerOutage => "broker-outage",
            Self::ApiCrash => "api-crash",
            Self::WorkerKill => "worker-kill",
            Self::ConnectionsCut => "connections-cut",
            Self::PostgresOutage => "postgres-outage",
            Self::ProviderOutage => "provider-outage",
            Self::GracefulShutdown => "graceful-shutdown",
            Self::ColdStart => "cold-start",
            Self::Pumping => "pumping",
            Self::WebhookOutage => "webhook-outage",
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, ValueEnum};

    use super::{ChaosSettings, ScenarioName};

    #[test]
    fn the_command_line_definition_is_consistent() {
        ChaosSettings::command().debug_assert();
    }

    #[test]
    fn every_scenario_name_round_trips_through_the_command_line() {
        for scenario in ScenarioName::value_variants() {
            let parsed = ScenarioName::from_str(scenario.as_str(), false).expect("a known name");
            assert_eq!(parsed, *scenario);
        }
    }
}
