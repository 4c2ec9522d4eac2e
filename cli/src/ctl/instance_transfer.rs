//! `ctl transfer instances` and `ctl transfer organisation`: instance transfer orders (PROTOCOL
//! §7), which work in batches with one result per order, and an organisation admin's
//! read-only window on its members. A batch in which any order failed exits with status 1
//! after printing every result.

use clap::Subcommand;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Ctl;
use super::client::segment;
use super::output::{self, Table, fields};

#[derive(Subcommand)]
pub(super) enum Command {
    /// Offer instances to another account, one order each; the destination has 24 hours to
    /// confirm. Needs a fresh code of your own account (`codes request`) as identity check.
    Create {
        /// The destination account, by ID or name.
        #[arg(long, value_name = "NAME_OR_ID")]
        to: String,
        /// A verification code your account requested with `codes request`.
        #[arg(long)]
        code: String,
        /// Your instances to transfer.
        #[arg(required = true, value_name = "INSTANCE")]
        instances: Vec<String>,
    },
    /// List orders you are the source or the destination of.
    List,
    /// Show one order.
    Show { id: String },
    /// Confirm orders offered to you: the instances, with their products and devices, become
    /// yours.
    Confirm {
        #[arg(required = true, value_name = "ORDER")]
        orders: Vec<String>,
    },
    /// Cancel orders you made, before they are confirmed.
    Cancel {
        #[arg(required = true, value_name = "ORDER")]
        orders: Vec<String>,
    },
    /// Reject orders offered to you.
    Reject {
        #[arg(required = true, value_name = "ORDER")]
        orders: Vec<String>,
    },
}

#[derive(Subcommand)]
pub(super) enum OrganisationCommand {
    /// Your organisation members' instances.
    Instances,
    /// Your organisation members' instance transfer orders.
    Orders,
}

#[derive(Deserialize)]
struct Order {
    id: String,
    instance: String,
    source: String,
    destination: String,
    state: String,
    created_at: u64,
    expires_at: u64,
    #[serde(default)]
    settled_at: Option<u64>,
}

#[derive(Deserialize)]
struct Orders {
    orders: Vec<Order>,
}

#[derive(Deserialize)]
struct Results {
    results: Vec<OrderResult>,
}

#[derive(Deserialize)]
struct OrderResult {
    target: String,
    status: u16,
    #[serde(default)]
    order: Option<Order>,
    #[serde(default)]
    message: Option<String>,
}

pub(super) async fn run(ctl: &Ctl, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create { to, code, instances } => {
            let body = json!({ "destination": to, "instances": instances, "code": code });
            let answer = ctl.client.post("/v1/instance-transfers", &body).await?;
            results(ctl, &answer)
        }
        Command::List => {
            let answer = ctl.client.get("/v1/instance-transfers").await?;
            ctl.show(&answer, |orders: Orders| orders_table(orders, "no instance transfers"))
        }
        Command::Show { id } => {
            let path = format!("/v1/instance-transfers/{}", segment(&id));
            let answer = ctl.client.get(&path).await?;
            ctl.show(&answer, |order: Order| {
                fields(&[
                    ("id", order.id),
                    ("instance", order.instance),
                    ("source", order.source),
                    ("destination", order.destination),
                    ("state", order.state),
                    ("created", output::time(order.created_at)),
                    ("expires", output::time(order.expires_at)),
                    ("settled", output::time(order.settled_at.unwrap_or(0))),
                ])
            })
        }
        Command::Confirm { orders } => settle(ctl, "confirm", orders).await,
        Command::Cancel { orders } => settle(ctl, "cancel", orders).await,
        Command::Reject { orders } => settle(ctl, "reject", orders).await,
    }
}

pub(super) async fn organisation(ctl: &Ctl, command: OrganisationCommand) -> anyhow::Result<()> {
    match command {
        OrganisationCommand::Instances => {
            #[derive(Deserialize)]
            struct Instances {
                instances: Vec<Instance>,
            }
            #[derive(Deserialize)]
            struct Instance {
                id: String,
                owner: String,
                region: String,
                expires_at: u64,
            }
            let answer = ctl.client.get("/v1/organisation/instances").await?;
            ctl.show(&answer, |list: Instances| {
                let mut table = Table::new(&["ID", "OWNER", "REGION", "EXPIRES"]);
                for instance in list.instances {
                    table.row([
                        instance.id,
                        instance.owner,
                        instance.region,
                        output::time(instance.expires_at),
                    ]);
                }
                table.print("no instances")
            })
        }
        OrganisationCommand::Orders => {
            let answer = ctl.client.get("/v1/organisation/instance-transfers").await?;
            ctl.show(&answer, |orders: Orders| orders_table(orders, "no instance transfers"))
        }
    }
}

async fn settle(ctl: &Ctl, action: &str, orders: Vec<String>) -> anyhow::Result<()> {
    let path = format!("/v1/instance-transfers/{action}");
    let answer = ctl.client.post(&path, &json!({ "orders": orders })).await?;
    results(ctl, &answer)
}

/// Prints one line per order; fails if any order did.
fn results(ctl: &Ctl, answer: &Value) -> anyhow::Result<()> {
    let parsed: Results = super::client::view(answer)?;
    ctl.show(answer, |results: Results| {
        let mut table = Table::new(&["FOR", "STATUS", "ORDER", "STATE", "EXPIRES", "MESSAGE"]);
        for result in results.results {
            let (order, state, expires) = match &result.order {
                Some(order) => {
                    (order.id.clone(), order.state.clone(), output::time(order.expires_at))
                }
                None => (String::new(), String::new(), String::new()),
            };
            table.row([
                result.target,
                result.status.to_string(),
                order,
                state,
                expires,
                result.message.unwrap_or_default(),
            ]);
        }
        table.print("no results")
    })?;
    let failed = parsed.results.iter().filter(|result| result.status >= 300).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} orders failed", parsed.results.len());
    }
    Ok(())
}

fn orders_table(orders: Orders, empty: &str) -> std::io::Result<()> {
    let mut table =
        Table::new(&["ID", "INSTANCE", "SOURCE", "DESTINATION", "STATE", "CREATED", "EXPIRES"]);
    for order in orders.orders {
        table.row([
            order.id,
            order.instance,
            order.source,
            order.destination,
            order.state,
            output::time(order.created_at),
            output::time(order.expires_at),
        ]);
    }
    table.print(empty)
}
