//! `meridian-bench`: the benchmark harness comparing Meridian's broker with Mosquitto and
//! rumqttd on this machine's loopback (issue 7; results and method in `docs/BENCHMARKS.md`).
//!
//! Each scenario (`connect`, `throughput`, `hold`, `migrate`) starts the brokers it measures,
//! drives them with the load generator in [`mqtt`], writes a JSON result and prints a summary;
//! `report` turns the JSON results into Markdown tables and PNG plots. `serve-broker`,
//! `hold-worker` and `serve-world` are the processes the scenarios start; nobody runs them by
//! hand. What it does not do: talk to anything but loopback addresses, or assert on timings.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod brokers;
mod connect;
mod fleet;
mod hold;
mod migrate;
mod mqtt;
mod plot;
mod procfs;
mod report;
mod serve;
mod sources;
mod stats;
mod store;
mod throughput;
mod world;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Benchmarks Meridian's broker against Mosquitto and rumqttd on loopback")]
struct Cli {
    /// Where JSON results are written (and `report` reads them).
    #[arg(long, global = true, default_value = "target/bench")]
    out: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// CONNECT rate and CONNACK latency.
    Connect(connect::ConnectArgs),
    /// Messages per second and end-to-end latency: p2p, fan-in, fan-out.
    Throughput(throughput::ThroughputArgs),
    /// Idle connections held through a keepalive period; broker memory per connection.
    Hold(hold::HoldArgs),
    /// A fleet moved between regions by one distribution task (Meridian only).
    Migrate(migrate::MigrateArgs),
    /// The registry on NATS JetStream against redb: writes, feed lag, a distribution (issue 13).
    Store(store::StoreArgs),
    /// Markdown tables and PNG plots from the JSON results in --out.
    Report(report::ReportArgs),
    /// Meridian's broker in its own process (started by the scenarios).
    #[command(hide = true)]
    ServeBroker(serve::ServeArgs),
    /// One client process of the hold scenario (started by `hold`).
    #[command(hide = true)]
    HoldWorker(hold::WorkerArgs),
    /// Registry, control plane, edge and two brokers for `migrate` (started by it).
    #[command(hide = true)]
    ServeWorld(world::WorldArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Connect(args) => save(&cli.out, "connect", &connect::run(&args).await?),
            Command::Throughput(args) => {
                // Fixed-rate runs are a separate result, so one output directory holds both.
                let name = if args.rate.is_some() { "throughput-rate" } else { "throughput" };
                save(&cli.out, name, &throughput::run(&args).await?)
            }
            Command::Hold(args) => save(&cli.out, "hold", &hold::run(&args).await?),
            Command::Migrate(args) => save(&cli.out, "migrate", &migrate::run(&args).await?),
            Command::Store(args) => save(&cli.out, "store", &store::run(&args).await?),
            Command::Report(args) => report::run(&cli.out, &args),
            Command::ServeWorld(args) => world::serve_world(args).await,
            Command::ServeBroker(args) => serve::serve_broker(args).await,
            Command::HoldWorker(args) => hold::worker(args).await,
        }
    })
}

/// Writes `<out>/<name>.json` with the machine it ran on.
fn save<T: Serialize>(out: &Path, name: &str, runs: &T) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let path = out.join(format!("{name}.json"));
    let document = serde_json::json!({ "scenario": name, "runs": runs });
    std::fs::write(&path, serde_json::to_vec_pretty(&document)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
