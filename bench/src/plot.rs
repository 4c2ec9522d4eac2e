//! PNG plots with `plotters` (bitmap backend; text drawn with `ab_glyph` from a font compiled
//! into the binary, so no fontconfig or system fonts are needed): latency CDFs and the migrate
//! reconnect curve.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::brokers::BrokerKind;
use crate::connect::ConnectRun;
use crate::migrate::MigrateRun;
use crate::throughput::{Pattern, ThroughputRun};

const FONT: &str = "sans-serif";

/// Registers the bundled font under the family name plotters asks for by default.
pub fn init_fonts() -> Result<()> {
    plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|_| anyhow!("bundled font rejected"))
}

fn color(kind: BrokerKind) -> RGBColor {
    match kind {
        BrokerKind::Meridian => RGBColor(0, 114, 178),
        BrokerKind::Mosquitto => RGBColor(213, 94, 0),
        BrokerKind::Rumqttd => RGBColor(0, 158, 115),
    }
}

/// One CDF line: broker and (latency µs, quantile) points.
type Line<'a> = (BrokerKind, &'a [(u64, f64)]);

fn cdf_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    lines: &[Line<'_>],
) -> Result<()> {
    let max_ms = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0 as f64 / 1e3))
        .fold(1.0f64, f64::max);
    let min_ms = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0 as f64 / 1e3))
        .fold(f64::INFINITY, f64::min)
        .clamp(0.001, 1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(40)
        .build_cartesian_2d((min_ms * 0.8..max_ms * 1.25).log_scale(), 0f64..1.0)
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log)")
        .y_desc("fraction")
        .label_style((FONT, 12))
        .x_label_formatter(&|v| format_ms(*v))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    for (kind, points) in lines {
        let style = ShapeStyle::from(&color(*kind)).stroke_width(2);
        let data = points.iter().map(|(us, q)| ((*us).max(1) as f64 / 1e3, *q));
        chart
            .draw_series(LineSeries::new(data, style))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(kind.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

fn format_ms(v: f64) -> String {
    if v >= 1.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// CONNACK latency CDF, one line per broker (the round with the median connect rate).
pub fn connect_cdf(path: &Path, runs: &[&ConnectRun]) -> Result<()> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let lines: Vec<Line<'_>> =
        runs.iter().map(|run| (run.broker, run.latency.cdf.as_slice())).collect();
    cdf_panel(&root, "connect: CONNACK latency CDF", &lines)?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

/// End-to-end latency CDFs: a row per pattern, a column per (QoS, payload size).
pub fn throughput_cdf(path: &Path, runs: &[ThroughputRun]) -> Result<()> {
    let mut patterns: Vec<Pattern> = Vec::new();
    let mut columns: Vec<(u8, usize)> = Vec::new();
    for run in runs {
        if !patterns.contains(&run.pattern) {
            patterns.push(run.pattern);
        }
        if !columns.contains(&(run.qos, run.size)) {
            columns.push((run.qos, run.size));
        }
    }
    let root = BitMapBackend::new(path, (420 * columns.len() as u32, 320 * patterns.len() as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let panels = root.split_evenly((patterns.len(), columns.len()));
    for (r, pattern) in patterns.iter().enumerate() {
        for (c, (qos, size)) in columns.iter().enumerate() {
            let lines: Vec<Line<'_>> = runs
                .iter()
                .filter(|run| run.pattern == *pattern && run.qos == *qos && run.size == *size)
                .map(|run| (run.broker, run.latency.cdf.as_slice()))
                .collect();
            let title = format!("{} QoS {qos} {size} B", pattern.name());
            cdf_panel(&panels[r * columns.len() + c], &title, &lines)?;
        }
    }
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

/// Devices arrived at the destination over time: cumulative (left) and per 100 ms (right).
pub fn migrate_curve(path: &Path, run: &MigrateRun) -> Result<()> {
    let root = BitMapBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let (left, right) = root.split_horizontally(550);
    let end = run.curve.last().map_or(1.0, |p| p.0) * 1.05;
    let blue = ShapeStyle::from(&color(BrokerKind::Meridian)).stroke_width(2);

    let mut chart = ChartBuilder::on(&left)
        .caption(format!("migrate {} devices: arrived at destination", run.devices), (FONT, 18))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..end, 0u64..(run.devices as u64 + run.devices as u64 / 20))
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the task was submitted")
        .y_desc("devices")
        .label_style((FONT, 12))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    let cumulative = std::iter::once((0.0, 0)).chain(run.curve.iter().map(|p| (p.0, p.2)));
    chart.draw_series(LineSeries::new(cumulative, blue)).map_err(|e| anyhow!("{e:?}"))?;

    let peak = run.curve.iter().map(|p| p.1 * 10).max().unwrap_or(1);
    let mut chart = ChartBuilder::on(&right)
        .caption("reconnect rate (per second, 100 ms bins)", (FONT, 18))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..end, 0u64..(peak + peak / 10 + 1))
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the task was submitted")
        .y_desc("devices / s")
        .label_style((FONT, 12))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    let rate = run.curve.iter().map(|p| (p.0, p.1 * 10));
    chart.draw_series(LineSeries::new(rate, blue)).map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}
