//! `ctl audit`: the caller's audit log, oldest first.

use serde::Deserialize;

use super::Ctl;
use super::output::{self, Table};

#[derive(Deserialize)]
struct Log {
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    at: u64,
    action: String,
    target: String,
}

pub(super) async fn run(ctl: &Ctl) -> anyhow::Result<()> {
    let answer = ctl.client.get("/v1/audit").await?;
    ctl.show(&answer, |log: Log| {
        let mut table = Table::new(&["AT", "ACTION", "TARGET"]);
        for entry in log.entries {
            table.row([output::time(entry.at), entry.action, entry.target]);
        }
        table.print("no audit entries")
    })
}
