//! `ctl transfer`: ownership transfers. Device transfer orders (PROTOCOL §6) and the product views
//! a destination manages its devices under; instance transfer orders (PROTOCOL §7, in
//! [`super::instance_transfer`]); and, for the operator, the transfer allow-list and
//! organisations. Every rule is the API's; its refusals come back as they are.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Ctl;
use super::client::segment;
use super::devices::{Placement, print_devices};
use super::instance_transfer;
use super::output::{self, Format, Table, fields};

#[derive(Subcommand)]
pub(super) enum Command {
    /// Device transfer orders: create, list, accept, reject, cancel.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Read-only views of products you received devices of, and those devices.
    #[command(subcommand)]
    Views(ViewsCommand),
    /// Instance transfer orders, in batches: create, confirm, cancel, reject.
    #[command(subcommand)]
    Instances(instance_transfer::Command),
    /// Your organisation members' instances and orders, read-only (organisation admins).
    #[command(subcommand)]
    Organisation(instance_transfer::OrganisationCommand),
    /// Allow an account to transfer devices out (needs the operator token).
    Allow { account: String },
    /// Take an account off the transfer allow-list (needs the operator token).
    Disallow { account: String },
    /// List the transfer allow-list (needs the operator token).
    AllowList,
    /// Set an account's organisation (needs the operator token).
    SetOrganisation {
        account: String,
        /// The organisation; without it the account leaves its organisation.
        #[arg(long)]
        organisation: Option<String>,
        /// Make the account its organisation's admin (read-only window on its members).
        #[arg(long, requires = "organisation")]
        admin: bool,
    },
}

#[derive(Subcommand)]
pub(super) enum DevicesCommand {
    /// Offer up to 100 devices of one published product to another account.
    Create {
        /// The ProductKey of the devices.
        pk: String,
        /// The destination account, by ID or name.
        #[arg(long, value_name = "NAME_OR_ID")]
        to: String,
        /// DeviceNames, comma-separated (at most 100).
        #[arg(
            long,
            value_delimiter = ',',
            conflicts_with = "csv",
            required_unless_present = "csv",
            value_name = "NAME,NAME,…"
        )]
        devices: Vec<String>,
        /// A CSV file with the header `productKey,deviceName` (at most 100 rows);
        /// `transfer devices template` prints it.
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
        /// Keep the devices' tags at the destination.
        #[arg(long)]
        with_tags: bool,
    },
    /// List orders you are the source or the destination of.
    List,
    /// Show one order.
    Show { id: String },
    /// Accept an order offered to you: the devices become yours.
    Accept { id: String },
    /// Reject an order offered to you.
    Reject { id: String },
    /// Cancel an order you made, before it is accepted.
    Cancel { id: String },
    /// Print the CSV template for `--csv`.
    Template,
}

#[derive(Subcommand)]
pub(super) enum ViewsCommand {
    /// List your product views.
    List,
    /// Show one product view (everything but the ProductKey).
    Show { view: String },
    /// List your devices under a product view.
    Devices { view: String },
    /// Show one of your devices under a product view.
    Device { view: String, name: String },
    /// Disable a device: it can no longer connect.
    Disable { view: String, name: String },
    /// Enable a disabled device.
    Enable { view: String, name: String },
    /// Delete a device.
    Delete { view: String, name: String },
}

/// An order as the API shows it to one side.
#[derive(Deserialize)]
struct Transfer {
    id: String,
    side: String,
    source: String,
    destination: String,
    #[serde(default)]
    product: Option<String>,
    product_name: String,
    devices: Vec<String>,
    with_tags: bool,
    state: String,
    #[serde(default)]
    product_view: Option<String>,
    created_at: u64,
    updated_at: u64,
}

impl Transfer {
    /// The product as the caller may see it: its key (source) or its name (destination).
    fn product(&self) -> String {
        match &self.product {
            Some(key) => format!("{key} ({})", self.product_name),
            None => self.product_name.clone(),
        }
    }

    /// The other side of the order.
    fn counterpart(&self) -> String {
        match self.side.as_str() {
            "source" => format!("to {}", self.destination),
            _ => format!("from {}", self.source),
        }
    }
}

#[derive(Deserialize)]
struct View {
    id: String,
    name: String,
    owner: String,
    home_instance: String,
    published: bool,
    granted_at: u64,
}

#[derive(Deserialize)]
struct ViewDevice {
    #[serde(rename = "deviceName")]
    device_name: String,
    status: String,
    placement: Placement,
    created_at: u64,
}

pub(super) async fn run(ctl: &Ctl, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Devices(command) => devices(ctl, command).await,
        Command::Views(command) => views(ctl, command).await,
        Command::Instances(command) => instance_transfer::run(ctl, command).await,
        Command::Organisation(command) => instance_transfer::organisation(ctl, command).await,
        Command::Allow { account } => {
            let path = format!("/v1/operator/transfer-allow-list/{}", segment(&account));
            let answer = ctl.client.as_operator(Method::PUT, &path, None).await?;
            ctl.show(&answer, |entry: AllowListEntry| {
                output::line(format!("account {} may transfer devices out", entry.account))
            })
        }
        Command::Disallow { account } => {
            let path = format!("/v1/operator/transfer-allow-list/{}", segment(&account));
            ctl.client.as_operator(Method::DELETE, &path, None).await?;
            if ctl.format == Format::Table {
                output::line(format!("account {account} may no longer transfer devices out"))?;
            }
            Ok(())
        }
        Command::AllowList => {
            #[derive(Deserialize)]
            struct List {
                accounts: Vec<AllowListEntry>,
            }
            let path = "/v1/operator/transfer-allow-list";
            let answer = ctl.client.as_operator(Method::GET, path, None).await?;
            ctl.show(&answer, |list: List| {
                let mut table = Table::new(&["ACCOUNT", "ADDED"]);
                for entry in list.accounts {
                    table.row([entry.account, output::time(entry.added_at)]);
                }
                table.print("no account may transfer devices out")
            })
        }
        Command::SetOrganisation { account, organisation, admin } => {
            #[derive(Deserialize)]
            struct Account {
                id: String,
                #[serde(default)]
                organisation: Option<String>,
                organisation_admin: bool,
            }
            let path = format!("/v1/operator/accounts/{}/organisation", segment(&account));
            let body = json!({ "organisation": organisation, "admin": admin });
            let answer = ctl.client.as_operator(Method::PUT, &path, Some(&body)).await?;
            ctl.show(&answer, |account: Account| match account.organisation {
                Some(organisation) => output::line(format!(
                    "account {} is in organisation {organisation}{}",
                    account.id,
                    if account.organisation_admin { ", as its admin" } else { "" }
                )),
                None => output::line(format!("account {} is in no organisation", account.id)),
            })
        }
    }
}

#[derive(Deserialize)]
struct AllowListEntry {
    account: String,
    added_at: u64,
}

async fn devices(ctl: &Ctl, command: DevicesCommand) -> anyhow::Result<()> {
    match command {
        DevicesCommand::Create { pk, to, devices, csv, with_tags } => {
            #[derive(Serialize)]
            struct Request {
                product: String,
                destination: String,
                #[serde(skip_serializing_if = "Vec::is_empty")]
                devices: Vec<String>,
                #[serde(skip_serializing_if = "Option::is_none")]
                csv: Option<String>,
                with_tags: bool,
            }
            let csv = match &csv {
                Some(file) => Some(
                    std::fs::read_to_string(file)
                        .with_context(|| format!("reading {}", file.display()))?,
                ),
                None => None,
            };
            let request = Request { product: pk, destination: to, devices, csv, with_tags };
            let answer = ctl.client.post("/v1/device-transfers", &request).await?;
            ctl.show(&answer, |transfer: Transfer| {
                output::line(format!(
                    "transfer {} created: {} device(s) of {} to {}, pending until {} accepts it",
                    transfer.id,
                    transfer.devices.len(),
                    transfer.product(),
                    transfer.destination,
                    transfer.destination
                ))
            })
        }
        DevicesCommand::List => {
            #[derive(Deserialize)]
            struct List {
                transfers: Vec<Transfer>,
            }
            let answer = ctl.client.get("/v1/device-transfers").await?;
            ctl.show(&answer, |list: List| {
                let mut table =
                    Table::new(&["ID", "SIDE", "WITH", "PRODUCT", "DEVICES", "STATE", "CREATED"]);
                for transfer in list.transfers {
                    table.row([
                        transfer.id.clone(),
                        transfer.side.clone(),
                        transfer.counterpart(),
                        transfer.product(),
                        transfer.devices.len().to_string(),
                        transfer.state.clone(),
                        output::time(transfer.created_at),
                    ]);
                }
                table.print("no device transfers")
            })
        }
        DevicesCommand::Show { id } => {
            let answer = ctl.client.get(&transfer_path(&id)).await?;
            ctl.show(&answer, show_transfer)
        }
        DevicesCommand::Accept { id } => {
            let answer = ctl.client.post_empty(&format!("{}/accept", transfer_path(&id))).await?;
            ctl.show(&answer, |transfer: Transfer| {
                output::line(format!(
                    "transfer {} accepted: {} device(s) are yours, under product view {} \
                     (`meridian ctl transfer views devices {}`)",
                    transfer.id,
                    transfer.devices.len(),
                    transfer.product_view.as_deref().unwrap_or("-"),
                    transfer.product_view.as_deref().unwrap_or("-"),
                ))
            })
        }
        DevicesCommand::Reject { id } => {
            let answer = ctl.client.post_empty(&format!("{}/reject", transfer_path(&id))).await?;
            ctl.show(&answer, |transfer: Transfer| {
                output::line(format!("transfer {} rejected", transfer.id))
            })
        }
        DevicesCommand::Cancel { id } => {
            let answer = ctl.client.post_empty(&format!("{}/cancel", transfer_path(&id))).await?;
            ctl.show(&answer, |transfer: Transfer| {
                output::line(format!("transfer {} cancelled", transfer.id))
            })
        }
        DevicesCommand::Template => {
            output::raw(&ctl.client.get_text("/v1/device-transfers/template.csv").await?)?;
            Ok(())
        }
    }
}

async fn views(ctl: &Ctl, command: ViewsCommand) -> anyhow::Result<()> {
    match command {
        ViewsCommand::List => {
            #[derive(Deserialize)]
            struct List {
                product_views: Vec<View>,
            }
            let answer = ctl.client.get("/v1/product-views").await?;
            ctl.show(&answer, |list: List| {
                let mut table = Table::new(&["VIEW", "NAME", "OWNER", "HOME", "GRANTED"]);
                for view in list.product_views {
                    table.row([
                        view.id,
                        view.name,
                        view.owner,
                        view.home_instance,
                        output::time(view.granted_at),
                    ]);
                }
                table.print("no product views")
            })
        }
        ViewsCommand::Show { view } => {
            let answer = ctl.client.get(&view_path(&view)).await?;
            ctl.show(&answer, |view: View| {
                fields(&[
                    ("view", view.id),
                    ("name", view.name),
                    ("owner", view.owner),
                    ("home instance", view.home_instance),
                    ("published", view.published.to_string()),
                    ("granted", output::time(view.granted_at)),
                ])
            })
        }
        ViewsCommand::Devices { view } => {
            #[derive(Deserialize)]
            struct List {
                devices: Vec<ViewDevice>,
            }
            let answer = ctl.client.get(&format!("{}/devices", view_path(&view))).await?;
            ctl.show(&answer, |list: List| {
                print_devices(list.devices.into_iter().map(|device| {
                    (device.device_name, device.status, device.placement, device.created_at)
                }))
            })
        }
        ViewsCommand::Device { view, name } => {
            let answer = ctl.client.get(&view_device_path(&view, &name)).await?;
            ctl.show(&answer, |device: ViewDevice| {
                fields(&[
                    ("name", device.device_name),
                    ("status", device.status),
                    ("placement", device.placement.text()),
                    ("created", output::time(device.created_at)),
                ])
            })
        }
        ViewsCommand::Disable { view, name } => set_enabled(ctl, &view, &name, false).await,
        ViewsCommand::Enable { view, name } => set_enabled(ctl, &view, &name, true).await,
        ViewsCommand::Delete { view, name } => {
            ctl.client.delete(&view_device_path(&view, &name)).await?;
            if ctl.format == Format::Table {
                output::line(format!("device {name} deleted"))?;
            }
            Ok(())
        }
    }
}

async fn set_enabled(ctl: &Ctl, view: &str, name: &str, enabled: bool) -> anyhow::Result<()> {
    let action = if enabled { "enable" } else { "disable" };
    let path = format!("{}/{action}", view_device_path(view, name));
    let answer = ctl.client.post_empty(&path).await?;
    ctl.show(&answer, |device: ViewDevice| {
        output::line(format!("device {} {action}d ({})", device.device_name, device.status))
    })
}

fn show_transfer(transfer: Transfer) -> std::io::Result<()> {
    fields(&[
        ("id", transfer.id.clone()),
        ("side", transfer.side.clone()),
        ("source", transfer.source.clone()),
        ("destination", transfer.destination.clone()),
        ("product", transfer.product()),
        ("devices", transfer.devices.join(", ")),
        ("with tags", transfer.with_tags.to_string()),
        ("state", transfer.state.clone()),
        ("product view", transfer.product_view.clone().unwrap_or_default()),
        ("created", output::time(transfer.created_at)),
        ("updated", output::time(transfer.updated_at)),
    ])
}

fn transfer_path(id: &str) -> String {
    format!("/v1/device-transfers/{}", segment(id))
}

fn view_path(view: &str) -> String {
    format!("/v1/product-views/{}", segment(view))
}

fn view_device_path(view: &str, name: &str) -> String {
    format!("{}/devices/{}", view_path(view), segment(name))
}
