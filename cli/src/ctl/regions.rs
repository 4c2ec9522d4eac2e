//! `ctl regions`: the platform's regions, configured by the operator.

use clap::Subcommand;
use serde::Deserialize;

use super::Ctl;
use super::output::Table;

#[derive(Subcommand)]
pub(super) enum Command {
    /// List every region.
    List,
}

#[derive(Deserialize)]
struct List {
    regions: Vec<Region>,
}

#[derive(Deserialize)]
struct Region {
    id: String,
    display_name: String,
    latitude: f64,
    longitude: f64,
}

pub(super) async fn run(ctl: &Ctl, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List => {
            let answer = ctl.client.get("/v1/regions").await?;
            ctl.show(&answer, |list: List| {
                let mut table = Table::new(&["ID", "NAME", "LATITUDE", "LONGITUDE"]);
                for region in list.regions {
                    table.row([
                        region.id,
                        region.display_name,
                        format!("{:.2}", region.latitude),
                        format!("{:.2}", region.longitude),
                    ]);
                }
                table.print("no regions")
            })
        }
    }
}
