//! The elasticity plot. Drawn without text (no font is needed, so none is shipped): the top
//! panel holds offered load (grey) and throughput (blue) on one scale, and the number of
//! workers (black steps, own scale); the bottom panel the average utilisation (red), its
//! standard deviation (orange) and the UUT, TUT and LUT lines (dashed green).

use crate::ramp::Row;
use anyhow::{anyhow, Result};
use mcloud_cloud::elastic::Thresholds;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 800;

pub fn elasticity(path: &Path, rows: &[Row], t: &Thresholds) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2);
    let end = rows.last().map(|r| r.time).unwrap_or(1.0).max(1.0);
    let peak_rate = rows
        .iter()
        .map(|r| r.offered.max(r.throughput))
        .fold(1.0, f64::max);
    let peak_workers = rows.iter().map(|r| r.workers).max().unwrap_or(1).max(1) as f64 + 1.0;

    let top = top.margin(20, 20, 30, 30);
    let mut load = ChartBuilder::on(&top)
        .build_cartesian_2d(0.0..end, 0.0..peak_rate * 1.1)
        .map_err(|e| err(&e))?;
    grid(&mut load, end, peak_rate * 1.1).map_err(|e| err(&e))?;
    load.draw_series(LineSeries::new(
        rows.iter().map(|r| (r.time, r.offered)),
        ShapeStyle::from(&RGBColor(150, 150, 150)).stroke_width(3),
    ))
    .map_err(|e| err(&e))?;
    load.draw_series(LineSeries::new(
        rows.iter().map(|r| (r.time, r.throughput)),
        ShapeStyle::from(&BLUE).stroke_width(2),
    ))
    .map_err(|e| err(&e))?;
    let mut workers = ChartBuilder::on(&top)
        .build_cartesian_2d(0.0..end, 0.0..peak_workers)
        .map_err(|e| err(&e))?;
    let mut steps = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            steps.push((r.time, rows[i - 1].workers as f64));
        }
        steps.push((r.time, r.workers as f64));
    }
    workers
        .draw_series(LineSeries::new(
            steps,
            ShapeStyle::from(&BLACK).stroke_width(3),
        ))
        .map_err(|e| err(&e))?;

    let bottom = bottom.margin(20, 20, 30, 30);
    let mut util = ChartBuilder::on(&bottom)
        .build_cartesian_2d(0.0..end, 0.0..1.05)
        .map_err(|e| err(&e))?;
    grid(&mut util, end, 1.0).map_err(|e| err(&e))?;
    for level in [t.uut, t.tut, t.lut] {
        util.draw_series(DashedLineSeries::new(
            [(0.0, level), (end, level)],
            8,
            6,
            ShapeStyle::from(&RGBColor(0, 140, 0)).stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
    }
    util.draw_series(LineSeries::new(
        rows.iter().map(|r| (r.time, r.std_dev)),
        ShapeStyle::from(&RGBColor(255, 150, 0)).stroke_width(2),
    ))
    .map_err(|e| err(&e))?;
    util.draw_series(LineSeries::new(
        rows.iter().map(|r| (r.time, r.average)),
        ShapeStyle::from(&RED).stroke_width(3),
    ))
    .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Light lines every tenth of each axis and a frame, in place of labelled axes.
fn grid<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    x_end: f64,
    y_end: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let light = ShapeStyle::from(&RGBColor(225, 225, 225)).stroke_width(1);
    for i in 0..=10 {
        let x = x_end * f64::from(i) / 10.0;
        let y = y_end * f64::from(i) / 10.0;
        chart.draw_series(LineSeries::new([(x, 0.0), (x, y_end)], light))?;
        chart.draw_series(LineSeries::new([(0.0, y), (x_end, y)], light))?;
    }
    Ok(())
}

/// The soak plot, drawn without text like the elasticity plot: the top panel holds every
/// process's resident memory, the bottom its data directory's size, both over the run's
/// seconds (one colour per process, the same in both panels; the figures are in the CSV).
/// One process's samples: (seconds, resident MB, disk MB).
pub type SoakSeries = (String, Vec<(f64, f64, f64)>);

pub fn soak(path: &Path, series: &[SoakSeries]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2);
    let points = || series.iter().flat_map(|(_, v)| v.iter());
    let end = points().map(|p| p.0).fold(1.0, f64::max);
    let rss = points().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let disk = points().map(|p| p.2).fold(1.0, f64::max) * 1.1;
    for (area, peak, pick) in [(top, rss, 1usize), (bottom, disk, 2usize)] {
        let area = area.margin(20, 20, 30, 30);
        let mut chart = ChartBuilder::on(&area)
            .build_cartesian_2d(0.0..end, 0.0..peak)
            .map_err(|e| err(&e))?;
        grid(&mut chart, end, peak).map_err(|e| err(&e))?;
        for (i, (_, v)) in series.iter().enumerate() {
            let colour = Palette99::pick(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(
                    v.iter().map(|p| (p.0, if pick == 1 { p.1 } else { p.2 })),
                    colour,
                ))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
