//! The plots the binary draws: the elasticity plot of the ramp demo and the soak plot. Text is
//! drawn with DejaVu Sans, built into the binary (plotters' `ab_glyph` renderer reads no
//! system fonts), so a plot reads the same on every machine: a title per panel, units on both
//! axes, a legend, and the thresholds named.

use crate::ramp::Row;
use anyhow::{anyhow, Result};
use mcloud_cloud::elastic::Thresholds;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;
const FONT: &str = "sans-serif";
/// Openly licensed (Bitstream Vera licence, beside the file).
const FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Registers the built-in font once per process.
fn fonts() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the built-in plot font does not load"))
    }
}

/// A panel with a title, labelled axes and light grid lines, x from 0 to `x_end`.
fn panel<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
    x_end: f64,
    y_end: f64,
    x_desc: &str,
    y_desc: &str,
) -> Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_end.max(1e-9), 0.0..y_end.max(1e-9))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(chart)
}

fn line(
    chart: &mut Chart<'_, '_>,
    points: impl IntoIterator<Item = (f64, f64)>,
    style: ShapeStyle,
    label: &str,
) -> Result<()> {
    chart
        .draw_series(LineSeries::new(points, style))
        .map_err(|e| anyhow!("{e}"))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    Ok(())
}

/// A legend box at `position` (a macro: the legend needs the chart and its backend to share
/// one lifetime, which a function over `Chart` cannot promise its callers).
macro_rules! legend {
    ($chart:expr, $position:expr) => {
        $chart
            .configure_series_labels()
            .position($position)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(|e| anyhow!("{e}"))
    };
}

/// Top: offered load and throughput (readings/s, left axis) and the number of workers (right
/// axis). Bottom: the workers' average utilisation, its standard deviation, and the UUT, TUT
/// and LUT the elastic manager steers by.
pub fn elasticity(path: &Path, rows: &[Row], t: &Thresholds) -> Result<()> {
    fonts()?;
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2);
    let end = rows.last().map(|r| r.time).unwrap_or(1.0).max(1.0);
    let peak_rate = rows
        .iter()
        .map(|r| r.offered.max(r.throughput))
        .fold(1.0, f64::max)
        * 1.1;
    let peak_workers = rows.iter().map(|r| r.workers).max().unwrap_or(1).max(1) as f64 + 1.0;

    let mut load = ChartBuilder::on(&top)
        .caption(
            "Offered load, throughput and workers (one cloud)",
            (FONT, 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..peak_rate)
        .map_err(|e| err(&e))?
        .set_secondary_coord(0.0..end, 0.0..peak_workers);
    load.configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .x_desc("time (s)")
        .y_desc("readings/s")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(|e| err(&e))?;
    load.configure_secondary_axes()
        .y_desc("workers")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(|e| err(&e))?;
    let grey = ShapeStyle::from(&RGBColor(150, 150, 150)).stroke_width(3);
    load.draw_series(LineSeries::new(
        rows.iter().map(|r| (r.time, r.offered)),
        grey,
    ))
    .map_err(|e| err(&e))?
    .label("offered load (readings/s)")
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], grey));
    let blue = ShapeStyle::from(&BLUE).stroke_width(2);
    load.draw_series(LineSeries::new(
        rows.iter().map(|r| (r.time, r.throughput)),
        blue,
    ))
    .map_err(|e| err(&e))?
    .label("throughput (readings/s)")
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], blue));
    let mut steps = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            steps.push((r.time, rows[i - 1].workers as f64));
        }
        steps.push((r.time, r.workers as f64));
    }
    let black = ShapeStyle::from(&BLACK).stroke_width(3);
    load.draw_secondary_series(LineSeries::new(steps, black))
        .map_err(|e| err(&e))?
        .label("workers (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], black));
    load.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(|e| err(&e))?;

    let mut util = panel(
        &bottom,
        "Worker utilisation against the thresholds",
        end,
        1.05,
        "time (s)",
        "utilisation (busy fraction)",
    )?;
    let green = ShapeStyle::from(&RGBColor(0, 140, 0)).stroke_width(2);
    for (name, level) in [("UUT", t.uut), ("TUT", t.tut), ("LUT", t.lut)] {
        util.draw_series(DashedLineSeries::new(
            [(0.0, level), (end, level)],
            8,
            6,
            green,
        ))
        .map_err(|e| err(&e))?;
        util.draw_series(std::iter::once(Text::new(
            format!("{name} {level:.2}"),
            (end * 0.995, level + 0.01),
            TextStyle::from((FONT, 14)).color(&RGBColor(0, 110, 0)).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Right,
                    plotters::style::text_anchor::VPos::Bottom,
                ),
            ),
        )))
        .map_err(|e| err(&e))?;
    }
    line(
        &mut util,
        rows.iter().map(|r| (r.time, r.average)),
        ShapeStyle::from(&RED).stroke_width(3),
        "average utilisation",
    )?;
    line(
        &mut util,
        rows.iter().map(|r| (r.time, r.std_dev)),
        ShapeStyle::from(&RGBColor(255, 150, 0)).stroke_width(2),
        "standard deviation across workers",
    )?;
    legend!(util, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One process's samples in a soak run.
pub struct ProcessSeries {
    pub name: String,
    /// (seconds, resident MB, data directory MB, open files)
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// The sensor's committed load per interval of a soak run.
pub struct CommitPoint {
    /// End of the interval, seconds since the start.
    pub secs: f64,
    pub readings_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The soak plot: committed throughput against the offered rate and commit latency (top),
/// then each process's resident memory, data directory size and open files, with the SIGKILLs
/// marked as vertical lines in every panel.
pub fn soak(
    path: &Path,
    processes: &[ProcessSeries],
    commits: &[CommitPoint],
    offered: f64,
    kills: &[f64],
) -> Result<()> {
    fonts()?;
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT * 3 / 2)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((3, 2));
    let end = processes
        .iter()
        .flat_map(|p| p.points.iter().map(|q| q.0))
        .chain(commits.iter().map(|c| c.secs))
        .fold(1.0, f64::max);
    let killed = ShapeStyle::from(&RGBColor(230, 120, 120)).stroke_width(1);
    let mark_kills = |chart: &mut Chart<'_, '_>, top: f64| -> Result<()> {
        for &k in kills {
            chart
                .draw_series(DashedLineSeries::new([(k, 0.0), (k, top)], 4, 4, killed))
                .map_err(|e| err(&e))?;
        }
        Ok(())
    };

    let peak = commits
        .iter()
        .map(|c| c.readings_per_s)
        .fold(offered, f64::max)
        * 1.15;
    let mut rate = panel(
        &areas[0],
        "Committed readings per second",
        end,
        peak,
        "time (s)",
        "readings/s",
    )?;
    mark_kills(&mut rate, peak)?;
    line(
        &mut rate,
        [(0.0, offered), (end, offered)],
        ShapeStyle::from(&RGBColor(150, 150, 150)).stroke_width(2),
        "offered",
    )?;
    line(
        &mut rate,
        commits.iter().map(|c| (c.secs, c.readings_per_s)),
        ShapeStyle::from(&BLUE).stroke_width(2),
        "committed",
    )?;
    legend!(rate, SeriesLabelPosition::LowerRight)?;

    let peak = commits.iter().map(|c| c.p99_ms).fold(1.0, f64::max) * 1.15;
    let mut latency = panel(
        &areas[1],
        "Batch commit latency (sensor to flag TRUE)",
        end,
        peak,
        "time (s)",
        "latency (ms)",
    )?;
    mark_kills(&mut latency, peak)?;
    line(
        &mut latency,
        commits.iter().map(|c| (c.secs, c.p99_ms)),
        ShapeStyle::from(&RED).stroke_width(2),
        "p99",
    )?;
    line(
        &mut latency,
        commits.iter().map(|c| (c.secs, c.p50_ms)),
        ShapeStyle::from(&RGBColor(0, 120, 0)).stroke_width(2),
        "p50",
    )?;
    legend!(latency, SeriesLabelPosition::UpperRight)?;

    type Pick = fn(&(f64, f64, f64, f64)) -> f64;
    let panels: [(&str, &str, Pick); 3] = [
        ("Resident memory per process", "RSS (MB)", |p| p.1),
        ("Data directory size per process", "disk (MB)", |p| p.2),
        ("Open files per process", "open files", |p| p.3),
    ];
    for (i, (title, unit, pick)) in panels.into_iter().enumerate() {
        let peak = processes
            .iter()
            .flat_map(|p| p.points.iter().map(pick))
            .fold(1.0, f64::max)
            * 1.15;
        let mut chart = panel(&areas[2 + i], title, end, peak, "time (s)", unit)?;
        mark_kills(&mut chart, peak)?;
        for (c, p) in processes.iter().enumerate() {
            line(
                &mut chart,
                p.points.iter().map(|q| (q.0, pick(q))),
                Palette99::pick(c).stroke_width(2),
                &p.name,
            )?;
        }
        legend!(chart, SeriesLabelPosition::UpperLeft)?;
    }

    // The sixth panel names what the dashed lines are.
    let note = &areas[5];
    let style = TextStyle::from((FONT, 16)).color(&BLACK);
    let lines = [
        format!("{} processes SIGKILLed and restarted,", kills.len()),
        "one every kill interval (dashed red lines).".to_string(),
        format!("Offered load: {offered:.0} readings/s."),
        "Latency: from a batch's release to its flag TRUE,".to_string(),
        "per 30 s interval, retries included.".to_string(),
    ];
    for (i, l) in lines.iter().enumerate() {
        note.draw(&Text::new(
            l.as_str(),
            (30, 40 + 28 * i as i32),
            style.clone(),
        ))
        .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
