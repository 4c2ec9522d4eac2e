//! `ctl instances`: the caller's instances, each in one region, and their provisioning by the
//! operator (a tenant owns, renews and transfers instances; only the operator creates one and
//! chooses the endpoint its devices are sent to).

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::Ctl;
use super::client::segment;
use super::output::{self, Table, fields};

#[derive(Subcommand)]
pub(super) enum Command {
    /// List your instances.
    List,
    /// Provision an instance in a region for an account (needs the operator token): the
    /// endpoint is the broker the operator runs for it.
    Create {
        /// The account that will own the instance.
        #[arg(long)]
        owner: String,
        /// Instance ID: lower-case letters, digits and `-`.
        #[arg(long)]
        id: String,
        /// Region ID, as `regions list` shows it.
        #[arg(long)]
        region: String,
        /// Host devices connect to (a DNS name or an IP address).
        #[arg(long)]
        host: String,
        /// MQTT port.
        #[arg(long, default_value_t = 1883)]
        port: u16,
        /// MQTT over TLS port, if the instance has one.
        #[arg(long)]
        tls_port: Option<u16>,
        #[arg(long, value_enum, default_value_t = Edition::Public)]
        edition: Edition,
        /// Lifetime in days (the API's default is 365).
        #[arg(long)]
        lifetime_days: Option<u64>,
    },
    /// Show one instance.
    Show { id: String },
    /// Extend an instance's lifetime (refused while a transfer order is pending on it).
    Renew {
        id: String,
        /// Days to add to its expiry.
        #[arg(long)]
        days: u64,
    },
}

#[derive(Clone, Copy, Debug, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(super) enum Edition {
    Public,
    Enterprise,
}

#[derive(Deserialize)]
struct List {
    instances: Vec<Instance>,
}

#[derive(Deserialize)]
struct Instance {
    id: String,
    region: String,
    owner: String,
    edition: String,
    endpoint: Endpoint,
    created_at: u64,
    expires_at: u64,
}

#[derive(Deserialize, Serialize)]
struct Endpoint {
    host: String,
    tcp_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_port: Option<u16>,
}

impl Endpoint {
    fn text(&self) -> String {
        match self.tls_port {
            Some(tls) => format!("{}:{} (TLS {tls})", self.host, self.tcp_port),
            None => format!("{}:{}", self.host, self.tcp_port),
        }
    }
}

pub(super) async fn run(ctl: &Ctl, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List => {
            let answer = ctl.client.get("/v1/instances").await?;
            ctl.show(&answer, |list: List| {
                let mut table =
                    Table::new(&["ID", "REGION", "EDITION", "ENDPOINT", "CREATED", "EXPIRES"]);
                for instance in list.instances {
                    table.row([
                        instance.id,
                        instance.region,
                        instance.edition,
                        instance.endpoint.text(),
                        output::time(instance.created_at),
                        output::time(instance.expires_at),
                    ]);
                }
                table.print("no instances")
            })
        }
        Command::Create { owner, id, region, host, port, tls_port, edition, lifetime_days } => {
            #[derive(Serialize)]
            struct ProvisionedInstance {
                owner: String,
                id: String,
                region: String,
                edition: Edition,
                endpoint: Endpoint,
                #[serde(skip_serializing_if = "Option::is_none")]
                lifetime_days: Option<u64>,
            }
            let endpoint = Endpoint { host, tcp_port: port, tls_port };
            let body = ProvisionedInstance { owner, id, region, edition, endpoint, lifetime_days };
            let answer = ctl.client.post_as_operator("/v1/operator/instances", &body).await?;
            ctl.show(&answer, |instance: Instance| {
                output::line(format!(
                    "created instance {} in {} for {}, endpoint {}",
                    instance.id,
                    instance.region,
                    instance.owner,
                    instance.endpoint.text()
                ))
            })
        }
        Command::Show { id } => {
            let answer = ctl.client.get(&format!("/v1/instances/{}", segment(&id))).await?;
            ctl.show(&answer, show)
        }
        Command::Renew { id, days } => {
            let path = format!("/v1/instances/{}/renew", segment(&id));
            let answer = ctl.client.post(&path, &serde_json::json!({ "days": days })).await?;
            ctl.show(&answer, |instance: Instance| {
                output::line(format!(
                    "instance {} renewed: expires {}",
                    instance.id,
                    output::time(instance.expires_at)
                ))
            })
        }
    }
}

fn show(instance: Instance) -> std::io::Result<()> {
    fields(&[
        ("id", instance.id),
        ("region", instance.region),
        ("owner", instance.owner),
        ("edition", instance.edition),
        ("endpoint", instance.endpoint.text()),
        ("created", output::time(instance.created_at)),
        ("expires", output::time(instance.expires_at)),
    ])
}
