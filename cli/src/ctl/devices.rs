//! `ctl devices`: devices of the caller's products. A device's secret is shown once, in the
//! answer that creates it; nothing else ever prints it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use serde_json::json;

use super::Ctl;
use super::client::segment;
use super::output::{self, Table, fields};

#[derive(Subcommand)]
pub(super) enum Command {
    /// List the devices of a product.
    List { pk: String },
    /// Create devices with generated secrets, all or none.
    Create {
        pk: String,
        /// DeviceNames, unique in the product.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Create devices from a CSV file with a `deviceName` column and an optional
    /// `deviceSecret` column (at most 1,000 rows), all or none.
    Import {
        pk: String,
        #[arg(value_name = "FILE.csv")]
        file: PathBuf,
    },
    /// Show one device.
    Show { pk: String, name: String },
    /// Disable a device: it can no longer connect.
    Disable { pk: String, name: String },
    /// Enable a disabled device.
    Enable { pk: String, name: String },
    /// Delete a device (at its source, while it is not distributed).
    Delete { pk: String, name: String },
}

#[derive(Deserialize)]
struct List {
    devices: Vec<Device>,
}

#[derive(Deserialize)]
struct Device {
    #[serde(rename = "productKey")]
    product_key: String,
    #[serde(rename = "deviceName")]
    device_name: String,
    status: String,
    placement: Placement,
    created_at: u64,
}

/// The device table of `ctl devices list` and of a product view's devices: name, status,
/// placement, creation time.
pub(super) fn print_devices(
    devices: impl Iterator<Item = (String, String, Placement, u64)>,
) -> std::io::Result<()> {
    let mut table = Table::new(&["NAME", "STATUS", "PLACEMENT", "CREATED"]);
    for (name, status, placement, created_at) in devices {
        table.row([name, status, placement.text(), output::time(created_at)]);
    }
    table.print("no devices")
}

/// Where a device may connect; a task's policy has the same shape, less `home`.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum Placement {
    Home,
    Specified {
        instance: String,
    },
    Nearest {
        candidates: Vec<Candidate>,
    },
    /// A kind this client does not know yet; `--output json` shows it.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
pub(super) struct Candidate {
    instance: String,
}

impl Placement {
    pub(super) fn text(&self) -> String {
        match self {
            Placement::Home => "home".into(),
            Placement::Specified { instance } => format!("instance {instance}"),
            Placement::Nearest { candidates } => {
                let instances: Vec<&str> =
                    candidates.iter().map(|candidate| candidate.instance.as_str()).collect();
                format!("nearest of {}", instances.join(", "))
            }
            Placement::Other => "other".into(),
        }
    }
}

/// Devices just created, each with its secret.
#[derive(Deserialize)]
struct Created {
    devices: Vec<CreatedDevice>,
}

#[derive(Deserialize)]
struct CreatedDevice {
    #[serde(rename = "deviceName")]
    device_name: String,
    #[serde(rename = "deviceSecret")]
    device_secret: String,
}

pub(super) async fn run(ctl: &Ctl, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List { pk } => {
            let answer = ctl.client.get(&format!("{}/devices", product(&pk))).await?;
            ctl.show(&answer, |list: List| {
                print_devices(list.devices.into_iter().map(|device| {
                    (device.device_name, device.status, device.placement, device.created_at)
                }))
            })
        }
        Command::Create { pk, names } => {
            let devices: Vec<_> = names.iter().map(|name| json!({ "deviceName": name })).collect();
            let path = format!("{}/devices", product(&pk));
            let answer = ctl.client.post(&path, &json!({ "devices": devices })).await?;
            created(ctl, &answer)
        }
        Command::Import { pk, file } => {
            let csv = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let path = format!("{}/devices/import", product(&pk));
            let answer = ctl.client.post_csv(&path, csv).await?;
            created(ctl, &answer)
        }
        Command::Show { pk, name } => {
            let answer = ctl.client.get(&device(&pk, &name)).await?;
            ctl.show(&answer, |device: Device| {
                fields(&[
                    ("product", device.product_key),
                    ("name", device.device_name),
                    ("status", device.status),
                    ("placement", device.placement.text()),
                    ("created", output::time(device.created_at)),
                ])
            })
        }
        Command::Disable { pk, name } => {
            let answer = ctl.client.post_empty(&format!("{}/disable", device(&pk, &name))).await?;
            ctl.show(&answer, |device: Device| {
                output::line(format!("device {} disabled", device.device_name))
            })
        }
        Command::Enable { pk, name } => {
            let answer = ctl.client.post_empty(&format!("{}/enable", device(&pk, &name))).await?;
            ctl.show(&answer, |device: Device| {
                output::line(format!("device {} enabled ({})", device.device_name, device.status))
            })
        }
        Command::Delete { pk, name } => {
            ctl.client.delete(&device(&pk, &name)).await?;
            if ctl.format == output::Format::Table {
                output::line(format!("device {name} deleted"))?;
            }
            Ok(())
        }
    }
}

/// Prints devices with their secrets, and says this is the only time.
fn created(ctl: &Ctl, answer: &serde_json::Value) -> anyhow::Result<()> {
    ctl.show(answer, |created: Created| {
        let mut table = Table::new(&["NAME", "SECRET"]);
        for device in created.devices {
            table.row([device.device_name, device.device_secret]);
        }
        table.print("no devices created")
    })?;
    output::warn("device secrets are shown only this once: store them now");
    Ok(())
}

fn product(pk: &str) -> String {
    format!("/v1/products/{}", segment(pk))
}

fn device(pk: &str, name: &str) -> String {
    format!("{}/devices/{}", product(pk), segment(name))
}
