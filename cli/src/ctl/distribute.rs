//! `ctl distribute`: submits a distribution task (PROTOCOL §5) and, with `--wait`, follows it
//! until it settles. Every rule is checked by the API before anything moves.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::Ctl;
use super::output::{self, Format};
use super::tasks::Task;
use super::watch;

/// Which devices move and where. Without --devices or --csv the product alone is
/// distributed.
#[derive(clap::Args)]
pub(super) struct Args {
    /// The ProductKey of the devices.
    pk: String,
    /// DeviceNames, comma-separated (at most 10,000).
    #[arg(long, value_delimiter = ',', conflicts_with = "csv", value_name = "NAME,NAME,…")]
    devices: Vec<String>,
    /// A CSV file with the header `productKey,deviceName` (at most 1,000 rows); `tasks template`
    /// prints it.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Specified region: the destination instance. Optional for a cross-account task, which
    /// then uses the destination account's default public instance.
    #[arg(
        long,
        value_name = "ID",
        conflicts_with = "nearest",
        required_unless_present_any = ["nearest", "to_account"]
    )]
    instance: Option<String>,
    /// Nearest access: your instances, at most one per region; each device is bound to the
    /// nearest when it next bootstraps.
    #[arg(long, value_delimiter = ',', value_name = "ID,ID,…")]
    nearest: Vec<String>,
    /// Cross-account: the destination account, by ID or name.
    #[arg(long, requires = "code", value_name = "NAME_OR_ID")]
    to_account: Option<String>,
    /// Cross-account: the verification code the destination account requested
    /// (`codes request`), valid 5 minutes, single use.
    #[arg(long, requires = "to_account")]
    code: Option<String>,
    /// Follow the task with a progress bar until it settles: exit 0 when Distributed, 1 when
    /// Failed.
    #[arg(long)]
    wait: bool,
}

/// The API's task request.
#[derive(Serialize)]
struct TaskRequest {
    product: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    devices: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    csv: Option<String>,
    policy: Policy,
    #[serde(skip_serializing_if = "Option::is_none")]
    cross_account: Option<CrossAccount>,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Policy {
    Specified {
        #[serde(skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
    },
    Nearest {
        instances: Vec<String>,
    },
}

#[derive(Serialize)]
struct CrossAccount {
    account: String,
    code: String,
}

pub(super) async fn run(ctl: &Ctl, args: Args) -> anyhow::Result<()> {
    let csv = match &args.csv {
        Some(file) => Some(
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        ),
        None => None,
    };
    let policy = if args.nearest.is_empty() {
        Policy::Specified { instance: args.instance }
    } else {
        Policy::Nearest { instances: args.nearest }
    };
    let cross_account = match (args.to_account, args.code) {
        (Some(account), Some(code)) => Some(CrossAccount { account, code }),
        // clap makes each require the other.
        _ => None,
    };
    let request =
        TaskRequest { product: args.pk, devices: args.devices, csv, policy, cross_account };
    let answer = ctl.client.post("/v1/distribution-tasks", &request).await?;
    let task: Task = super::client::view(&answer)?;

    match ctl.format {
        // With --wait, the settled task is the one JSON document printed.
        Format::Json if args.wait => {}
        Format::Json => output::json(&answer)?,
        Format::Table => {
            let devices = match task.device_count {
                0 => "the product alone".to_owned(),
                1 => "1 device".to_owned(),
                count => format!("{count} devices"),
            };
            output::line(format!(
                "task {} submitted: {devices} of {} to {}",
                task.id,
                task.product,
                task.destination()
            ))?;
            if !args.wait {
                output::line(format!(
                    "follow it with: meridian ctl tasks show {} --watch",
                    task.id
                ))?;
            }
        }
    }
    if args.wait {
        return watch::follow(ctl, &task.id).await;
    }
    Ok(())
}
