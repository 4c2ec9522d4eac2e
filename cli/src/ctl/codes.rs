//! `ctl codes`: cross-account verification codes. The *destination* account requests one
//! and hands it to the source account, which passes it to `ctl distribute --code`.

use clap::Subcommand;
use serde::Deserialize;

use super::Ctl;
use super::output;

#[derive(Subcommand)]
pub(super) enum Command {
    /// Request a code that lets another account distribute devices to yours (single use).
    Request,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Code {
    code: String,
    expires_in_seconds: u64,
}

pub(super) async fn run(ctl: &Ctl, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Request => {
            let answer = ctl.client.post_empty("/v1/verification-codes").await?;
            ctl.show(&answer, |code: Code| {
                output::line(format!(
                    "verification code {} (valid {}, single use): hand it to the source account",
                    code.code,
                    output::seconds(code.expires_in_seconds)
                ))
            })
        }
    }
}
