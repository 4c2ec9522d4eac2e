//! `ctl tasks`: distribution tasks: their progress, a retry, the per-device record CSV and
//! the device-list template.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;

use super::Ctl;
use super::client::segment;
use super::devices::Placement;
use super::output::{self, Format, Table, fields};
use super::watch;

#[derive(Subcommand)]
pub(super) enum Command {
    /// List your distribution tasks.
    List,
    /// Show a task; with --watch, follow it with a progress bar until it settles.
    Show {
        id: String,
        /// Follow the task until it is Distributed (exit 0) or Failed (exit 1).
        #[arg(long)]
        watch: bool,
    },
    /// Retry a stuck or failed task: it resumes where it stopped, never moving a device twice.
    Retry {
        id: String,
        /// Follow the task until it settles.
        #[arg(long)]
        watch: bool,
    },
    /// Download a task's per-device record: productKey,deviceName,result,reason.
    Records {
        id: String,
        /// Write the CSV to FILE instead of stdout.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the CSV template for `distribute --csv`.
    Template,
}

/// A task as the API shows it: counts, not the device list.
#[derive(Deserialize)]
pub(super) struct Task {
    pub(super) id: String,
    pub(super) product: String,
    pub(super) policy: Placement,
    #[serde(default)]
    pub(super) destination_account: Option<String>,
    pub(super) state: State,
    pub(super) device_count: u64,
    pub(super) handled: u64,
    pub(super) succeeded: u64,
    pub(super) failed: u64,
    #[serde(default)]
    pub(super) failure: Option<String>,
    pub(super) attempts: u32,
    pub(super) created_at: u64,
    pub(super) updated_at: u64,
}

/// PROTOCOL §5 task states; `Debug` is the API's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub(super) enum State {
    Initializing,
    Distributing,
    /// Done; the records say which devices moved and why others did not.
    Distributed,
    Failed,
}

impl State {
    pub(super) fn settled(self) -> bool {
        matches!(self, State::Distributed | State::Failed)
    }
}

impl Task {
    /// Where the task sends devices, and to whom.
    pub(super) fn destination(&self) -> String {
        match &self.destination_account {
            Some(account) => format!("{} of account {account}", self.policy.text()),
            None => self.policy.text(),
        }
    }

    /// `3/10`, or `product only` for a task without devices.
    pub(super) fn progress(&self) -> String {
        if self.device_count == 0 {
            "product only".into()
        } else {
            format!("{}/{}", self.handled, self.device_count)
        }
    }
}

#[derive(Deserialize)]
struct List {
    tasks: Vec<Task>,
    /// Tasks whose stored records no longer decode; the API names them and says why.
    #[serde(default)]
    broken: Vec<Broken>,
}

#[derive(Deserialize)]
struct Broken {
    id: String,
    message: String,
}

pub(super) async fn run(ctl: &Ctl, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List => {
            let answer = ctl.client.get("/v1/distribution-tasks").await?;
            ctl.show(&answer, |list: List| {
                let mut table = Table::new(&[
                    "ID",
                    "PRODUCT",
                    "DESTINATION",
                    "STATE",
                    "HANDLED",
                    "SUCCEEDED",
                    "FAILED",
                    "CREATED",
                ]);
                for task in list.tasks {
                    table.row([
                        task.id.clone(),
                        task.product.clone(),
                        task.destination(),
                        format!("{:?}", task.state),
                        task.progress(),
                        task.succeeded.to_string(),
                        task.failed.to_string(),
                        output::time(task.created_at),
                    ]);
                }
                let dash = || "-".to_owned();
                for broken in list.broken {
                    eprintln!("warning: {}", broken.message);
                    let state = "unreadable".to_owned();
                    table.row([broken.id, dash(), dash(), state, dash(), dash(), dash(), dash()]);
                }
                table.print("no distribution tasks")
            })
        }
        Command::Show { id, watch: true } => watch::follow(ctl, &id).await,
        Command::Show { id, watch: false } => {
            let answer = ctl.client.get(&path(&id)).await?;
            ctl.show(&answer, show)
        }
        Command::Retry { id, watch } => {
            let answer = ctl.client.post_empty(&format!("{}/retry", path(&id))).await?;
            if watch {
                if ctl.format == Format::Table {
                    output::line(format!("task {id} resumed"))?;
                }
                return watch::follow(ctl, &id).await;
            }
            ctl.show(&answer, |task: Task| {
                output::line(format!(
                    "task {} resumed at {} (attempt {}); follow it with \
                     `meridian ctl tasks show {} --watch`",
                    task.id,
                    task.progress(),
                    task.attempts,
                    task.id
                ))
            })
        }
        Command::Records { id, out } => {
            let csv = ctl.client.get_text(&format!("{}/records.csv", path(&id))).await?;
            match out {
                Some(file) => {
                    std::fs::write(&file, &csv)
                        .with_context(|| format!("writing {}", file.display()))?;
                    // Header aside, one line per record: the API writes no multi-line fields.
                    let records = csv.lines().count().saturating_sub(1);
                    output::line(format!("wrote {records} records to {}", file.display()))?;
                }
                None => output::raw(&csv)?,
            }
            Ok(())
        }
        Command::Template => {
            let csv = ctl.client.get_text("/v1/distribution-tasks/template.csv").await?;
            output::raw(&csv)?;
            Ok(())
        }
    }
}

/// The API path of one task.
pub(super) fn path(id: &str) -> String {
    format!("/v1/distribution-tasks/{}", segment(id))
}

fn show(task: Task) -> std::io::Result<()> {
    fields(&[
        ("id", task.id.clone()),
        ("product", task.product.clone()),
        ("destination", task.destination()),
        ("state", format!("{:?}", task.state)),
        ("handled", task.progress()),
        ("succeeded", task.succeeded.to_string()),
        ("failed", task.failed.to_string()),
        ("failure", task.failure.clone().unwrap_or_default()),
        ("retries", task.attempts.to_string()),
        ("created", output::time(task.created_at)),
        ("updated", output::time(task.updated_at)),
    ])
}
