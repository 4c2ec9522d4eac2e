//! Following a distribution task until it settles: poll, draw handled/total as a live
//! progress bar with the succeeded and failed counts, then print one summary.
//!
//! The bar is indicatif's, drawn on stderr and hidden when stderr is not a terminal, so a
//! pipe or a CI log gets only the summary on stdout.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::MissedTickBehavior;

use super::Ctl;
use super::client::{self, ClientError};
use super::output::{self, Format};
use super::tasks::{self, State, Task};

/// How often the task is polled: fast enough that the bar looks live, slow enough that a
/// 10,000-device task followed for minutes costs the API a few requests a second.
const POLL: Duration = Duration::from_millis(250);

/// Follows task `id` until it is Distributed (Ok) or Failed (an error, so exit status 1).
pub(super) async fn follow(ctl: &Ctl, id: &str) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    let outcome = poll(ctl, id, &bar).await;
    bar.finish_and_clear();
    let (answer, task) = outcome?;

    match ctl.format {
        Format::Json => output::json(&answer)?,
        Format::Table => summary(&task)?,
    }
    if task.state == State::Failed {
        let reason = task.failure.as_deref().unwrap_or("no reason given");
        anyhow::bail!("task {} failed: {reason}", task.id);
    }
    Ok(())
}

async fn poll(ctl: &Ctl, id: &str, bar: &ProgressBar) -> anyhow::Result<(serde_json::Value, Task)> {
    let path = tasks::path(id);
    let mut ticks = tokio::time::interval(POLL);
    // A slow answer delays the next poll rather than bunching the missed ones.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut styled = false;
    loop {
        ticks.tick().await;
        let answer = match ctl.client.get(&path).await {
            Ok(answer) => answer,
            // The API's own refusal (a wrong id, a revoked key) speaks for itself.
            Err(error @ ClientError::Api { .. }) => return Err(error.into()),
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "lost track of task {id}, which carries on without us \
                     (`meridian ctl tasks show {id} --watch` follows it again)"
                )));
            }
        };
        let task: Task = client::view(&answer)?;
        if !styled {
            bar.set_style(style(task.device_count));
            // Keeps the spinner and the elapsed time moving between polls.
            bar.enable_steady_tick(Duration::from_millis(100));
            styled = true;
        }
        bar.set_length(task.device_count);
        bar.set_position(task.handled);
        bar.set_message(format!(
            "{} succeeded, {} failed · {:?}",
            task.succeeded, task.failed, task.state
        ));
        if task.state.settled() {
            return Ok((answer, task));
        }
    }
}

/// The bar of a task with devices.
const BAR: &str = "{spinner} [{bar:40}] {pos}/{len} handled · {msg} [{elapsed}]";
/// A product-only task has nothing to count: a spinner alone.
const SPINNER: &str = "{spinner} product only · {msg} [{elapsed}]";

fn style(devices: u64) -> ProgressStyle {
    let template = if devices == 0 { SPINNER } else { BAR };
    // The templates are constants, checked by the unit test below.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn summary(task: &Task) -> std::io::Result<()> {
    output::line(format!(
        "task {} {:?}: {} handled, {} succeeded, {} failed",
        task.id,
        task.state,
        task.progress(),
        task.succeeded,
        task.failed
    ))?;
    if let Some(failure) = &task.failure {
        output::line(format!("reason: {failure}"))?;
    }
    if task.failed > 0 {
        output::line(format!(
            "why each device failed: meridian ctl tasks records {} -o records.csv",
            task.id
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        for template in [BAR, SPINNER] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}
