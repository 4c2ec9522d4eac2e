//! `ctl accounts`: account creation by the operator, the caller's own account, more API keys.

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::Ctl;
use super::output::{self, fields};

#[derive(Subcommand)]
pub(super) enum Command {
    /// Create an account and its first API key (needs the operator token).
    Create {
        /// Account ID: lower-case letters, digits and `-`.
        #[arg(long)]
        id: String,
        /// Display name, unique; cross-account tasks may name the account by it.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// The verified legal entity; required for enterprise accounts.
        #[arg(long, required_if_eq("kind", "enterprise"))]
        entity: Option<String>,
    },
    /// Show the account your API key belongs to.
    Show,
    /// Create another API key for your account.
    CreateKey,
}

#[derive(Clone, Copy, Debug, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(super) enum Kind {
    Individual,
    Enterprise,
}

/// An account as the API shows it, the fields a person reads.
#[derive(Deserialize)]
struct Account {
    id: String,
    name: String,
    kind: String,
    #[serde(default)]
    verified_entity: Option<String>,
    #[serde(default)]
    organisation: Option<String>,
    created_at: u64,
}

/// The answers that carry a new key.
#[derive(Deserialize)]
struct Created {
    account: Account,
    api_key: String,
}

#[derive(Deserialize)]
struct NewKey {
    api_key: String,
}

const SHOWN_ONCE: &str = "this API key is shown only this once (the control plane keeps only \
                          its hash): store it now, e.g. as MERIDIAN_API_KEY in a secret manager";

pub(super) async fn run(ctl: &Ctl, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create { id, name, kind, entity } => {
            #[derive(Serialize)]
            struct NewAccount {
                id: String,
                name: String,
                kind: Kind,
                #[serde(skip_serializing_if = "Option::is_none")]
                verified_entity: Option<String>,
            }
            let body = NewAccount { id, name, kind, verified_entity: entity };
            let answer = ctl.client.post_as_operator("/v1/accounts", &body).await?;
            ctl.show(&answer, |created: Created| {
                output::line(format!(
                    "created account {} ({}, {})",
                    created.account.id, created.account.name, created.account.kind
                ))?;
                output::line(format!("API key: {}", created.api_key))
            })?;
            output::warn(SHOWN_ONCE);
        }
        Command::Show => {
            let answer = ctl.client.get("/v1/account").await?;
            ctl.show(&answer, |account: Account| {
                fields(&[
                    ("id", account.id),
                    ("name", account.name),
                    ("kind", account.kind),
                    ("verified entity", account.verified_entity.unwrap_or_default()),
                    ("organisation", account.organisation.unwrap_or_default()),
                    ("created", output::time(account.created_at)),
                ])
            })?;
        }
        Command::CreateKey => {
            let answer = ctl.client.post_empty("/v1/api-keys").await?;
            ctl.show(&answer, |key: NewKey| output::line(format!("API key: {}", key.api_key)))?;
            output::warn(SHOWN_ONCE);
        }
    }
    Ok(())
}
