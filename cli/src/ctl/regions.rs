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
    /// What the region-pinned bootstrap answers for the region, if the operator set one.
    #[serde(default)]
    public_endpoint: Option<Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    host: String,
    tcp_port: u16,
}

pub(super) async fn run(ctl: &Ctl, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List => {
            let answer = ctl.client.get("/v1/regions").await?;
            ctl.show(&answer, |list: List| {
                let mut table =
                    Table::new(&["ID", "NAME", "LATITUDE", "LONGITUDE", "PUBLIC ENDPOINT"]);
                for region in list.regions {
                    table.row([
                        region.id,
                        region.display_name,
                        format!("{:.2}", region.latitude),
                        format!("{:.2}", region.longitude),
                        region.public_endpoint.map_or_else(
                            || "-".to_owned(),
                            |endpoint| format!("{}:{}", endpoint.host, endpoint.tcp_port),
                        ),
                    ]);
                }
                table.print("no regions")
            })
        }
    }
}
