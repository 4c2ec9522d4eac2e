//! `meridian`: the all-in-one daemon, the regional daemons, and the control-plane client.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod config;
mod up;

use std::path::PathBuf;

use anyhow::bail;
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
    /// Run the global bootstrap edge (and the admin API beside it) as its own daemon.
    Edge {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Talk to the control plane's admin API.
    Ctl,
    /// Print the documented default configuration.
    GenerateConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();

    match cli.command {
        Command::GenerateConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Up { config } => {
            let config = config::Config::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(up::run(config, up::shutdown_signal()))
        }
        Command::Broker { .. } => bail!("`meridian broker` is not implemented yet (issue 5)"),
        Command::Edge { .. } => bail!("`meridian edge` is not implemented yet (issue 5)"),
        Command::Ctl => bail!("`meridian ctl` is not implemented yet (issue 5)"),
    }
}
