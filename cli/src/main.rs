//! `meridian`: the all-in-one daemon, the regional daemons, and the control-plane client.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod broker_daemon;
mod config;
mod ctl;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Move IoT fleets between regions, instances and accounts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process on the embedded store: control plane, bootstrap edge and
    /// one broker per configured instance.
    Up {
        #[arg(long, short, default_value = "deploy/meridian.toml", env = "MERIDIAN_CONFIG")]
        config: PathBuf,
    },
    /// Run one regional broker as its own daemon.
    Broker {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the control plane (admin API, internal watch API, task executor) and the global
    /// bootstrap edge as one daemon; brokers run as their own processes.
    Edge {
        #[arg(long, short, default_value = "deploy/meridian.toml", env = "MERIDIAN_CONFIG")]
        config: PathBuf,
    },
    /// Run one control-plane replica (admin API and task executor) on the shared NATS store;
    /// run as many as wanted, behind one address or several.
    Control {
        #[arg(long, short, default_value = "deploy/meridian.toml", env = "MERIDIAN_CONFIG")]
        config: PathBuf,
    },
    /// Run a stateless bootstrap edge whose routing table follows the shared NATS store; run as
    /// many as wanted, anywhere.
    BootstrapEdge {
        #[arg(long, short, default_value = "deploy/meridian.toml", env = "MERIDIAN_CONFIG")]
        config: PathBuf,
    },
    /// Talk to the control plane's admin API.
    Ctl(ctl::CtlArgs),
    /// Print the documented default configuration (of `up`/`edge`, or of a regional broker).
    GenerateConfig {
        /// Print the regional broker's configuration instead.
        #[arg(long)]
        broker: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();

    match cli.command {
        Command::GenerateConfig { broker: false } => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::GenerateConfig { broker: true } => {
            print!("{}", broker_daemon::DEFAULT_BROKER_CONFIG);
            Ok(())
        }
        Command::Up { config } => {
            let config = config::Config::load(&config)?;
            let run = up::run(config, up::Role::ALL, up::shutdown_signal());
            tokio::runtime::Runtime::new()?.block_on(run)
        }
        Command::Edge { config } => run_role(&config, up::Role::CONTROL_AND_EDGE),
        Command::Control { config } => run_role(&config, up::Role::CONTROL),
        Command::BootstrapEdge { config } => run_role(&config, up::Role::EDGE),
        Command::Broker { config } => {
            let config = broker_daemon::BrokerDaemonConfig::load(&config)?;
            let run = broker_daemon::run(config, up::shutdown_signal());
            tokio::runtime::Runtime::new()?.block_on(run)
        }
        Command::Ctl(args) => ctl::run(args),
    }
}

/// Runs the parts of the system `role` names, from the configuration at `path`.
fn run_role(path: &std::path::Path, role: up::Role) -> anyhow::Result<()> {
    let config = config::Config::load(path)?;
    tokio::runtime::Runtime::new()?.block_on(up::run(config, role, up::shutdown_signal()))
}
