//! Writing revealed aggregates: CSV (one line per group and window), JSON, or a table.

use crate::combine::Revealed;
use mcloud_core::reading::GroupId;
use std::io::{self, Write};

pub const CSV_HEADER: &str =
    "window_start,window_end,metric,house_id,household_id,plug_id,count,sum,mean,variance";

fn opt(v: Option<u32>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

pub fn write_csv(out: &mut impl Write, revealed: &Revealed) -> io::Result<()> {
    writeln!(out, "{CSV_HEADER}")?;
    for w in &revealed.windows {
        for g in &w.groups {
            let GroupId {
                house,
                household,
                plug,
            } = g.group;
            writeln!(
                out,
                "{},{},{},{},{},{},{},{},{:.6},{:.6}",
                w.window.start,
                w.window.end,
                g.metric,
                house,
                opt(household),
                opt(plug),
                g.totals.count,
                g.totals.sum_decimal(),
                g.totals.mean(),
                g.totals.variance()
            )?;
        }
    }
    Ok(())
}

pub fn write_json(out: &mut impl Write, revealed: &Revealed) -> io::Result<()> {
    let windows: Vec<_> = revealed
        .windows
        .iter()
        .map(|w| {
            serde_json::json!({
                "window_start": w.window.start,
                "window_end": w.window.end,
                "batches": w.batches,
                "withheld_groups": w.withheld,
                "groups": w.groups.iter().map(|g| serde_json::json!({
                    "metric": g.metric,
                    "house_id": g.group.house,
                    "household_id": g.group.household,
                    "plug_id": g.group.plug,
                    "count": g.totals.count,
                    "sum": g.totals.sum_decimal(),
                    "mean": g.totals.mean(),
                    "variance": g.totals.variance(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let implausible: Vec<_> = revealed
        .implausible
        .iter()
        .map(|i| {
            serde_json::json!({
                "window_start": i.window.start,
                "window_end": i.window.end,
                "metric": i.metric,
                "house_id": i.group.house,
                "household_id": i.group.household,
                "plug_id": i.group.plug,
                "code": i.error.code(),
                "error": i.error.to_string(),
            })
        })
        .collect();
    serde_json::to_writer_pretty(
        &mut *out,
        &serde_json::json!({ "windows": windows, "implausible": implausible }),
    )?;
    writeln!(out)
}

/// A compact human summary: per window, per metric, the total and the number of groups.
pub fn write_table(out: &mut impl Write, revealed: &Revealed) -> io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>6} {:>7} {:>10} {:>16} {:>12}",
        "window", "metric", "groups", "records", "sum", "mean"
    )?;
    for w in &revealed.windows {
        for metric in mcloud_core::Metric::ALL {
            let mut total = mcloud_core::Revealed::default();
            let mut groups = 0;
            for g in w.groups.iter().filter(|g| g.metric == metric) {
                groups += 1;
                total.count += g.totals.count;
                total.sum += g.totals.sum;
                total.sumsq += g.totals.sumsq;
            }
            if groups == 0 {
                continue;
            }
            writeln!(
                out,
                "{:>12} {:>6} {:>7} {:>10} {:>16} {:>12.3}",
                w.window.start,
                metric,
                groups,
                total.count,
                total.sum_decimal(),
                total.mean()
            )?;
        }
    }
    Ok(())
}
