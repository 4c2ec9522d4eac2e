//! `ctl usage`: what each of the caller's instances accounted for, as its broker last
//! reported it. A distributed device counts at its destination from the moment it arrives.

use serde::Deserialize;

use super::Ctl;
use super::output::{self, Table};

#[derive(Deserialize)]
struct List {
    usage: Vec<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    instance: String,
    connections: u64,
    connects_total: u64,
    connected_seconds: u64,
    messages_in: u64,
    messages_out: u64,
    updated_at: u64,
}

pub(super) async fn run(ctl: &Ctl) -> anyhow::Result<()> {
    let answer = ctl.client.get("/v1/usage").await?;
    ctl.show(&answer, |list: List| {
        let mut table = Table::new(&[
            "INSTANCE",
            "CONNECTIONS",
            "CONNECTS",
            "CONNECTED",
            "MESSAGES IN",
            "MESSAGES OUT",
            "REPORTED",
        ]);
        for usage in list.usage {
            table.row([
                usage.instance,
                usage.connections.to_string(),
                usage.connects_total.to_string(),
                output::seconds(usage.connected_seconds),
                usage.messages_in.to_string(),
                usage.messages_out.to_string(),
                output::time(usage.updated_at),
            ]);
        }
        table.print("no instances")
    })
}
