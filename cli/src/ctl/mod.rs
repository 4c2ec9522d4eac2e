//! `meridian ctl`: a client of the control plane's admin API, one file per command group.
//!
//! Every command is one or a few API calls; the rules (DeviceName uniqueness, PROTOCOL §5
//! distribution rules, account isolation) are the API's, and its refusals are shown as
//! `error: <message> (HTTP <status>)` with exit status 1. Usage errors exit with 2 (clap).
//!
//! What it does not do: hold state between runs, or retry a refused call. The API key comes
//! from a flag or the environment each time and is only ever put in a request header.

mod accounts;
mod audit;
mod client;
mod codes;
mod devices;
mod distribute;
mod instance_transfer;
mod instances;
mod output;
mod products;
mod regions;
mod tasks;
mod transfer;
mod usage;
mod watch;

use std::io;

use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::Value;

use client::{BaseUrl, Client, Secret};
use output::Format;

/// `meridian ctl [global flags] <group> <command>`.
#[derive(Args)]
pub(crate) struct CtlArgs {
    #[command(flatten)]
    global: Global,
    /// Boxed: `distribute`'s flags make the command large, and `main`'s `Command` enum
    /// holds these arguments inline.
    #[command(subcommand)]
    command: Box<CtlCommand>,
}

/// Flags every command takes, before or after the command name.
#[derive(Args)]
#[command(next_help_heading = "Global options")]
struct Global {
    /// The admin API's base URL.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_URL",
        default_value = "http://127.0.0.1:8081",
        value_name = "URL"
    )]
    url: BaseUrl,
    /// Your account's API key. Prefer the environment variable: a flag shows in `ps`.
    // `hide_env_values`: `--help` would otherwise print the key from the environment.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<Secret>,
    /// The operator token, for `accounts create` and `instances create` only.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_OPERATOR_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    operator_token: Option<Secret>,
    /// How to print results: aligned columns, or the API's JSON.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table, value_name = "FORMAT")]
    output: Format,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Accounts: create one (operator), show yours, add an API key.
    #[command(subcommand)]
    Accounts(accounts::Command),
    /// The platform's regions.
    #[command(subcommand)]
    Regions(regions::Command),
    /// Your instances; provisioning one for an account (operator).
    #[command(subcommand)]
    Instances(instances::Command),
    /// Your products, and the read-only copies distributed to you.
    #[command(subcommand)]
    Products(products::Command),
    /// Devices of your products.
    #[command(subcommand)]
    Devices(devices::Command),
    /// Cross-account verification codes.
    #[command(subcommand)]
    Codes(codes::Command),
    /// Distribute devices (or a product alone) to another instance, region or account.
    Distribute(distribute::Args),
    /// Distribution tasks: progress, retry, per-device records.
    #[command(subcommand)]
    Tasks(tasks::Command),
    /// Ownership transfers: device transfer orders and product views, instance transfer
    /// orders, the transfer allow-list (operator).
    #[command(subcommand)]
    Transfer(transfer::Command),
    /// Usage of your instances: connections, connected time, messages.
    Usage,
    /// Your account's audit log, oldest first.
    Audit,
}

/// Runs one `ctl` command. On failure prints `error: …` and exits with status 1 here, not
/// through `main`'s `Result`, whose `Error: {:?}` form would not be the documented one.
pub(crate) fn run(args: CtlArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = runtime.block_on(execute(args));
    drop(runtime);
    let Err(error) = outcome else { return Ok(()) };
    if broken_pipe(&error) {
        // The reader went away (`| head`): there is no one left to tell.
        return Ok(());
    }
    eprintln!("error: {error:#}");
    std::process::exit(1);
}

async fn execute(args: CtlArgs) -> anyhow::Result<()> {
    let Global { url, api_key, operator_token, output } = args.global;
    let ctl = Ctl { client: Client::new(url, api_key, operator_token), format: output };
    match *args.command {
        CtlCommand::Accounts(command) => accounts::run(&ctl, command).await,
        CtlCommand::Regions(command) => regions::run(&ctl, command).await,
        CtlCommand::Instances(command) => instances::run(&ctl, command).await,
        CtlCommand::Products(command) => products::run(&ctl, command).await,
        CtlCommand::Devices(command) => devices::run(&ctl, command).await,
        CtlCommand::Codes(command) => codes::run(&ctl, command).await,
        CtlCommand::Distribute(args) => distribute::run(&ctl, args).await,
        CtlCommand::Tasks(command) => tasks::run(&ctl, command).await,
        CtlCommand::Transfer(command) => transfer::run(&ctl, command).await,
        CtlCommand::Usage => usage::run(&ctl).await,
        CtlCommand::Audit => audit::run(&ctl).await,
    }
}

/// What every command works with: the API and the chosen output format.
struct Ctl {
    client: Client,
    format: Format,
}

impl Ctl {
    /// Prints an answer: as it came for `--output json`, else through `table` over the typed
    /// view `T` of it.
    fn show<T: DeserializeOwned>(
        &self,
        answer: &Value,
        table: impl FnOnce(T) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        match self.format {
            Format::Json => output::json(answer)?,
            Format::Table => table(client::view(answer)?)?,
        }
        Ok(())
    }
}

fn broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
