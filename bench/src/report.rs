//! `meridian-bench report`: reads the scenarios' JSON results from the output directory and
//! writes the Markdown tables (Meridian vs Mosquitto vs rumqttd, with ratios) to
//! `<out>/report.md` and the PNG plots to the image directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

use crate::brokers::BrokerKind;
use crate::connect::ConnectRun;
use crate::hold::HoldRun;
use crate::migrate::MigrateRun;
use crate::plot;
use crate::stats::human_us;
use crate::throughput::ThroughputRun;

#[derive(Clone, Debug, clap::Args)]
pub struct ReportArgs {
    /// Where the PNG plots go.
    #[arg(long, default_value = "docs/img")]
    pub img: PathBuf,
}

pub fn run(out: &Path, args: &ReportArgs) -> Result<()> {
    plot::init_fonts()?;
    std::fs::create_dir_all(&args.img)?;
    let mut md = String::new();
    let _ = writeln!(md, "{}\n", machine());
    if let Some(runs) = load::<ConnectRun>(out, "connect")? {
        connect(&mut md, &runs, &args.img)?;
    }
    if let Some(runs) = load::<ThroughputRun>(out, "throughput")? {
        throughput(&mut md, &runs, &args.img)?;
    }
    if let Some(runs) = load::<ThroughputRun>(out, "throughput-rate")? {
        throughput_rate(&mut md, &runs, &args.img)?;
    }
    if let Some(runs) = load::<HoldRun>(out, "hold")? {
        hold(&mut md, &runs);
    }
    if let Some(runs) = load::<MigrateRun>(out, "migrate")? {
        migrate(&mut md, &runs, &args.img)?;
    }
    let path = out.join("report.md");
    std::fs::write(&path, &md)?;
    print!("{md}");
    eprintln!("wrote {} and plots in {}", path.display(), args.img.display());
    Ok(())
}

fn load<T: DeserializeOwned>(out: &Path, name: &str) -> Result<Option<Vec<T>>> {
    let path = out.join(format!("{name}.json"));
    let Ok(bytes) = std::fs::read(&path) else { return Ok(None) };
    let document: serde_json::Value = serde_json::from_slice(&bytes)?;
    let runs = serde_json::from_value(document["runs"].clone())
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(runs))
}

/// Cores, memory and kernel of this machine.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Machine: {cores} cores, {memory_gib:.1} GiB, kernel {}.", kernel.trim())
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() { format!("{:.2}×", a / b) } else { "–".into() }
}

fn connect(md: &mut String, runs: &[ConnectRun], img: &Path) -> Result<()> {
    let brokers = brokers_in(runs.iter().map(|r| r.broker));
    let _ = writeln!(md, "### connect\n");
    let _ = writeln!(
        md,
        "{} clients per round, {} round(s); median round by rate (rates of all rounds in brackets).\n",
        runs.first().map_or(0, |r| r.clients),
        runs.iter().map(|r| r.round).max().map_or(0, |r| r + 1)
    );
    let _ = writeln!(
        md,
        "| broker | connects/s | vs Mosquitto | p50 | p90 | p99 | max | failures | broker CPU/connect | load |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    let mut medians = BTreeMap::new();
    let mut chosen = Vec::new();
    for kind in &brokers {
        let mut mine: Vec<&ConnectRun> = runs.iter().filter(|r| r.broker == *kind).collect();
        mine.sort_by(|a, b| a.rate_per_s.total_cmp(&b.rate_per_s));
        let Some(run) = mine.get(mine.len() / 2).copied() else { continue };
        medians.insert(*kind, run.rate_per_s);
        chosen.push(run);
    }
    let mosquitto = medians.get(&BrokerKind::Mosquitto).copied().unwrap_or(f64::NAN);
    for run in &chosen {
        let all: Vec<String> = runs
            .iter()
            .filter(|r| r.broker == run.broker)
            .map(|r| format!("{:.0}", r.rate_per_s))
            .collect();
        let failures: u64 = run.failed.values().sum();
        let _ = writeln!(
            md,
            "| {} | {:.0} ({}) | {} | {} | {} | {} | {} | {} | {:.1} µs | {:.1} |",
            run.broker,
            run.rate_per_s,
            all.join(", "),
            ratio(run.rate_per_s, mosquitto),
            human_us(run.latency.p50_us),
            human_us(run.latency.p90_us),
            human_us(run.latency.p99_us),
            human_us(run.latency.max_us),
            if failures == 0 { "0".to_owned() } else { format!("{failures} {:?}", run.failed) },
            run.broker_cpu_us,
            run.load1
        );
    }
    let path = img.join("connect-cdf.png");
    plot::connect_cdf(&path, &chosen)?;
    let _ = writeln!(md, "\n![CONNACK latency CDF](img/connect-cdf.png)\n");
    Ok(())
}

fn throughput(md: &mut String, runs: &[ThroughputRun], img: &Path) -> Result<()> {
    let brokers = brokers_in(runs.iter().map(|r| r.broker));
    let _ = writeln!(md, "### throughput\n");
    if let Some(first) = runs.first() {
        let _ = writeln!(
            md,
            "p2p: {n} pairs; fan-in: {n} publishers → 1 subscriber; fan-out: 1 publisher → {n} subscribers. \
             Deliveries per second (p50 / p99 end-to-end latency).\n",
            n = first.publishers.max(first.subscribers)
        );
    }
    let mut header = "| pattern | QoS | payload |".to_owned();
    let mut rule = "|---|---|---|".to_owned();
    for kind in &brokers {
        let _ = write!(header, " {kind} msg/s (p50 / p99) |");
        rule.push_str("---|");
    }
    header.push_str(" Meridian/Mosquitto msg/s | Meridian p99 no worse | lost (M / Mo / R) | broker CPU/msg (M / Mo / R) |");
    rule.push_str("---|---|---|---|");
    let _ = writeln!(md, "{header}\n{rule}");
    let mut configs: Vec<(crate::throughput::Pattern, u8, usize)> = Vec::new();
    for run in runs {
        if !configs.contains(&(run.pattern, run.qos, run.size)) {
            configs.push((run.pattern, run.qos, run.size));
        }
    }
    let mut met = 0;
    for (pattern, qos, size) in &configs {
        let find = |kind: BrokerKind| {
            runs.iter().find(|r| {
                r.broker == kind && r.pattern == *pattern && r.qos == *qos && r.size == *size
            })
        };
        let _ = write!(md, "| {} | {qos} | {size} B |", pattern.name());
        for kind in &brokers {
            match find(*kind) {
                Some(r) => {
                    let _ = write!(
                        md,
                        " {:.0} ({} / {}) |",
                        r.msgs_per_s,
                        human_us(r.latency.p50_us),
                        human_us(r.latency.p99_us)
                    );
                }
                None => md.push_str(" – |"),
            }
        }
        let meridian = find(BrokerKind::Meridian);
        let mosquitto = find(BrokerKind::Mosquitto);
        let (speed, p99) = match (meridian, mosquitto) {
            (Some(m), Some(o)) => {
                // A configuration where Meridian lost QoS 1 messages does not count as met.
                let ok = m.msgs_per_s >= 2.0 * o.msgs_per_s
                    && m.latency.p99_us <= o.latency.p99_us
                    && (m.qos == 0 || m.lost == 0);
                met += usize::from(ok);
                (
                    ratio(m.msgs_per_s, o.msgs_per_s),
                    if m.latency.p99_us <= o.latency.p99_us { "yes" } else { "no" },
                )
            }
            _ => ("–".into(), "–"),
        };
        let lost: Vec<String> = [BrokerKind::Meridian, BrokerKind::Mosquitto, BrokerKind::Rumqttd]
            .iter()
            .map(|k| find(*k).map_or("–".into(), |r| r.lost.to_string()))
            .collect();
        let cpu: Vec<String> = [BrokerKind::Meridian, BrokerKind::Mosquitto, BrokerKind::Rumqttd]
            .iter()
            .map(|k| find(*k).map_or("–".into(), |r| format!("{:.2}", r.broker_cpu_us)))
            .collect();
        let _ = writeln!(md, " {speed} | {p99} | {} | {} µs |", lost.join(" / "), cpu.join(" / "));
    }
    let _ = writeln!(
        md,
        "\nTarget (≥ 2× Mosquitto's msg/s with p99 no worse, and no QoS 1 message lost) met in \
         {met} of {} configurations.\n",
        configs.len()
    );
    let path = img.join("throughput-cdf.png");
    plot::throughput_cdf(&path, runs)?;
    let _ = writeln!(md, "![end-to-end latency CDFs](img/throughput-cdf.png)\n");
    Ok(())
}

/// The same configurations at one fixed offered rate: latency compared at equal load.
fn throughput_rate(md: &mut String, runs: &[ThroughputRun], img: &Path) -> Result<()> {
    let brokers = brokers_in(runs.iter().map(|r| r.broker));
    let rate = runs.first().and_then(|r| r.rate).unwrap_or(f64::NAN);
    let _ = writeln!(md, "### throughput at a fixed rate\n");
    let _ = writeln!(
        md,
        "{rate:.0} messages/s offered over all publishers on an open-loop schedule (latency from \
         the scheduled send time). Delivered/s, then p50 / p99 / p99.9 end-to-end latency.\n"
    );
    let mut header = "| pattern | QoS | payload |".to_owned();
    let mut rule = "|---|---|---|".to_owned();
    for kind in &brokers {
        let _ = write!(header, " {kind} |");
        rule.push_str("---|");
    }
    header.push_str(" Meridian p99 no worse than Mosquitto |");
    rule.push_str("---|");
    let _ = writeln!(md, "{header}\n{rule}");
    let mut configs: Vec<(crate::throughput::Pattern, u8, usize)> = Vec::new();
    for run in runs {
        if !configs.contains(&(run.pattern, run.qos, run.size)) {
            configs.push((run.pattern, run.qos, run.size));
        }
    }
    for (pattern, qos, size) in &configs {
        let find = |kind: BrokerKind| {
            runs.iter().find(|r| {
                r.broker == kind && r.pattern == *pattern && r.qos == *qos && r.size == *size
            })
        };
        let _ = write!(md, "| {} | {qos} | {size} B |", pattern.name());
        for kind in &brokers {
            match find(*kind) {
                Some(r) => {
                    let _ = write!(
                        md,
                        " {:.0}/s, {} / {} / {}{} |",
                        r.msgs_per_s,
                        human_us(r.latency.p50_us),
                        human_us(r.latency.p99_us),
                        human_us(r.latency.p999_us),
                        if r.lost > 0 { format!(", {} lost", r.lost) } else { String::new() }
                    );
                }
                None => md.push_str(" – |"),
            }
        }
        let verdict = match (find(BrokerKind::Meridian), find(BrokerKind::Mosquitto)) {
            (Some(m), Some(o)) if m.latency.p99_us <= o.latency.p99_us => "yes",
            (Some(_), Some(_)) => "no",
            _ => "–",
        };
        let _ = writeln!(md, " {verdict} |");
    }
    let path = img.join("throughput-rate-cdf.png");
    plot::throughput_cdf(&path, runs)?;
    let _ =
        writeln!(md, "\n![end-to-end latency CDFs at a fixed rate](img/throughput-rate-cdf.png)\n");
    Ok(())
}

fn hold(md: &mut String, runs: &[HoldRun]) {
    let _ = writeln!(md, "### hold\n");
    if let Some(first) = runs.first() {
        let _ = writeln!(
            md,
            "{} idle connections, keepalive {} s, held {:.0} s with a PINGREQ every {} s.\n",
            first.requested,
            first.keepalive_s,
            first.hold_s,
            first.keepalive_s / 2
        );
    }
    let _ = writeln!(
        md,
        "| broker | connected | alive after hold | RSS before | RSS connected | RSS after hold | bytes/connection | after hold | vs Mosquitto |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let mosquitto = runs
        .iter()
        .find(|r| r.broker == BrokerKind::Mosquitto)
        .map_or(f64::NAN, |r| r.bytes_per_connection_held);
    for run in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.0} | {:.0} | {} |",
            run.broker,
            run.connected,
            run.alive,
            run.rss_before_kib as f64 / 1024.0,
            run.rss_connected_kib as f64 / 1024.0,
            run.rss_held_kib as f64 / 1024.0,
            run.bytes_per_connection,
            run.bytes_per_connection_held,
            ratio(run.bytes_per_connection_held, mosquitto)
        );
    }
    let _ = writeln!(md);
}

fn migrate(md: &mut String, runs: &[MigrateRun], img: &Path) -> Result<()> {
    let _ = writeln!(md, "### migrate\n");
    let _ = writeln!(
        md,
        "| devices | notify rate | all at destination | per-device p50 / p99 / max | notifies received | lost | failed attempts | task settled | load |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for run in runs {
        let failures: u64 = run.failures.values().sum();
        let _ = writeln!(
            md,
            "| {} | {}/s | {} | {} / {} / {} | {} | {} | {} {} | {} ({} succeeded, {} failed) | {:.1} |",
            run.devices,
            run.notify_rate,
            run.all_reconnected_s.map_or("no".into(), |s| format!("{s:.2} s")),
            human_us(run.reconnect.p50_us),
            human_us(run.reconnect.p99_us),
            human_us(run.reconnect.max_us),
            run.notifies,
            run.lost,
            failures,
            if failures == 0 { String::new() } else { format!("{:?}", run.failures) },
            run.task_settled_s.map_or("–".into(), |s| format!("{s:.2} s")),
            run.task_succeeded,
            run.task_failed,
            run.load1
        );
    }
    let _ = writeln!(md);
    for run in runs {
        let name = format!("migrate-{}-{}.png", run.devices, run.notify_rate);
        plot::migrate_curve(&img.join(&name), run)?;
        let _ = writeln!(
            md,
            "![migrate reconnect curve, notify rate {}/s](img/{name})\n",
            run.notify_rate
        );
    }
    Ok(())
}

fn brokers_in(kinds: impl Iterator<Item = BrokerKind>) -> Vec<BrokerKind> {
    let mut seen = Vec::new();
    for kind in kinds {
        if !seen.contains(&kind) {
            seen.push(kind);
        }
    }
    seen
}
