//! The recent past of every house at a glance, for a console: Q1's forecasts of a house's
//! load next to the load that came, and Q2's outlier shares at the last boundary.
//!
//! Computed through an [`AggregateSource`] like the queries themselves, so a console shows
//! what `mcloud analytics` would print over the same range, and nothing finer.

use crate::driver::{run_since, RowSink, RunOptions};
use crate::q1::Q1Row;
use crate::q2::{Emit, Q2Row, Q2};
use crate::source::{AggregateSource, CountSum, SourceError, Wanted, WINDOW_SECS};
use crate::AnalyticsError;
use mcloud_core::fixed::SCALE;
use mcloud_core::GroupKey;
use serde::Serialize;
use std::collections::BTreeMap;

/// The Q1 slice drawn: short enough to show the day's shape within an hour, long enough to
/// smooth a plug's on/off steps.
pub const SLICE_MINUTES: u64 = 5;
const SLICE_SECS: u64 = SLICE_MINUTES * 60;

/// How far back Q1 looks for the same slice on earlier days: a week covers every weekday
/// once, and asks each earlier slice once per range.
pub const HISTORY_DAYS: u64 = 7;

/// Every house's recent forecasts, load and outliers over `[from, to)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Recent {
    /// Start of the range, Unix seconds (a multiple of 30 s).
    pub from: u64,
    /// The last boundary: end of the range, Unix seconds.
    pub to: u64,
    /// The Q1 slice size of `forecast` and `actual`.
    pub slice_minutes: u64,
    /// In house order.
    pub houses: Vec<HouseRecent>,
}

/// One house's part of [`Recent`]. Loads are mean watts: the sum over the house's plugs of
/// each plug's average over the slice, the quantity Q1 predicts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HouseRecent {
    pub house: u32,
    /// (slice start, predicted load): for each slice, the latest prediction Q1 made for it
    /// at a boundary in `(from, to]`, two slices ahead.
    pub forecast: Vec<(u64, f64)>,
    /// (slice start, load) of every whole slice inside `[from, to)`.
    pub actual: Vec<(u64, f64)>,
    /// Q2's rows at `to`, 1 h window first.
    pub outliers: Vec<Outliers>,
}

/// A house's Q2 row at the last boundary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outliers {
    /// `1h` or `24h`.
    pub window: &'static str,
    /// Plugs whose median load exceeds the global median.
    pub above: u32,
    /// Plugs with a reading in the window.
    pub plugs: u32,
}

/// Keeps the house rows of one slice size, the latest prediction per (house, slice).
struct Forecasts(BTreeMap<u32, BTreeMap<u64, u128>>);

impl RowSink for Forecasts {
    fn q1_rows(&mut self, rows: Vec<Q1Row>) -> Result<(), AnalyticsError> {
        for row in rows {
            if row.slice_minutes == SLICE_MINUTES && row.plug.is_none() {
                self.0
                    .entry(row.house)
                    .or_default()
                    .insert(row.ts, row.predicted);
            }
        }
        Ok(())
    }
    fn q2_rows(&mut self, _rows: Vec<Q2Row>) -> Result<(), AnalyticsError> {
        Ok(())
    }
}

fn house(houses: &mut BTreeMap<u32, HouseRecent>, id: u32) -> &mut HouseRecent {
    houses.entry(id).or_insert_with(|| HouseRecent {
        house: id,
        ..HouseRecent::default()
    })
}

fn watts(fixed: f64) -> f64 {
    fixed / SCALE as f64
}

/// A source whose data begins at `kept_from` (the clouds' retention horizon): a range
/// reaching further back is asked from `kept_from` on, where the clouds would refuse it.
struct Kept<'a, S: ?Sized> {
    inner: &'a mut S,
    kept_from: u64,
}

impl<S: AggregateSource + ?Sized> Kept<'_, S> {
    fn clamp(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        let from = from.max(self.kept_from);
        (from < to).then_some((from, to))
    }
}

impl<S: AggregateSource + ?Sized> AggregateSource for Kept<'_, S> {
    fn prefetch(&mut self, wanted: &Wanted) -> Result<(), SourceError> {
        let clamp = |ranges: &[(u64, u64)]| -> Vec<(u64, u64)> {
            ranges
                .iter()
                .filter_map(|&(f, t)| self.clamp(f, t))
                .collect()
        };
        let wanted = Wanted {
            count_sums: clamp(&wanted.count_sums),
            histograms: clamp(&wanted.histograms),
        };
        self.inner.prefetch(&wanted)
    }
    fn lookahead(&self) -> usize {
        self.inner.lookahead()
    }
    fn count_sum(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<GroupKey, CountSum>, SourceError> {
        match self.clamp(from, to) {
            Some((from, to)) => self.inner.count_sum(from, to),
            None => Ok(BTreeMap::new()),
        }
    }
    fn histograms(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<GroupKey, Vec<u64>>, SourceError> {
        match self.clamp(from, to) {
            Some((from, to)) => self.inner.histograms(from, to),
            None => Ok(BTreeMap::new()),
        }
    }
}

/// [`Recent`] over `[from, to)`; both must be multiples of 30 s with `from < to`. Q1's
/// forecasts draw on the same slices of the [`HISTORY_DAYS`] days before. Nothing before
/// `kept_from` is asked for (a multiple of 30 s; 0 when all data is kept): Q1's history and
/// Q2's 24-hour window then begin there.
pub fn recent<S: AggregateSource + ?Sized>(
    source: &mut S,
    kept_from: u64,
    from: u64,
    to: u64,
) -> Result<Recent, AnalyticsError> {
    if kept_from % WINDOW_SECS != 0 {
        return Err(AnalyticsError::UnalignedBoundary(kept_from));
    }
    let source = &mut Kept {
        inner: source,
        kept_from,
    };
    if from % WINDOW_SECS != 0 || from >= to {
        return Err(AnalyticsError::UnalignedBoundary(from));
    }
    if to % WINDOW_SECS != 0 {
        return Err(AnalyticsError::UnalignedBoundary(to));
    }
    let mut forecasts = Forecasts(BTreeMap::new());
    let options = RunOptions {
        q1: true,
        q2: false,
        emit: Emit::Every,
    };
    // Boundaries from `from + 30` to `to`, the ones `[from, to - 1]` spans.
    let history_from = from.saturating_sub(HISTORY_DAYS * 86_400).max(kept_from);
    run_since(source, history_from, from, to - 1, options, &mut forecasts)?;

    let mut houses: BTreeMap<u32, HouseRecent> = BTreeMap::new();
    for (id, predictions) in forecasts.0 {
        house(&mut houses, id).forecast = predictions
            .into_iter()
            .map(|(ts, p)| (ts, watts(p as f64)))
            .collect();
    }
    let mut slice = from.div_ceil(SLICE_SECS) * SLICE_SECS;
    while slice + SLICE_SECS <= to {
        let mut loads: BTreeMap<u32, f64> = BTreeMap::new();
        for (plug, cs) in source.count_sum(slice, slice + SLICE_SECS)? {
            if let Some(average) = cs.average() {
                *loads.entry(plug.house).or_default() += average;
            }
        }
        for (id, load) in loads {
            house(&mut houses, id).actual.push((slice, watts(load)));
        }
        slice += SLICE_SECS;
    }
    for row in Q2::new(Emit::Every).at(source, to)? {
        house(&mut houses, row.house).outliers.push(Outliers {
            window: row.window.label(),
            above: row.above,
            plugs: row.plugs,
        });
    }
    Ok(Recent {
        from,
        to,
        slice_minutes: SLICE_MINUTES,
        houses: houses.into_values().collect(),
    })
}
