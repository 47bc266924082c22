//! Q2, outliers, from revealed histograms over whole sliding windows.
//!
//! For each window [T-W, T) the source reveals one histogram per plug; plug medians and the
//! global median (of the sum of all plugs' histograms) are estimated from them. A plug is an
//! outlier when its median estimate exceeds the global one. Only whole-window histograms are
//! asked for, so nothing finer than W is ever revealed to this operator.

use crate::histogram::{self, BUCKETS};
use crate::source::{AggregateSource, WINDOW_SECS};
use crate::AnalyticsError;
use std::collections::BTreeMap;

/// The two Q2 sliding windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Q2Window {
    /// One hour.
    Hour,
    /// 24 hours.
    Day,
}

impl Q2Window {
    /// Both windows, in output order.
    pub const ALL: [Q2Window; 2] = [Q2Window::Hour, Q2Window::Day];

    /// Length in seconds.
    pub fn secs(self) -> u64 {
        match self {
            Q2Window::Hour => 3_600,
            Q2Window::Day => 86_400,
        }
    }

    /// Name in the output (`1h`, `24h`).
    pub fn label(self) -> &'static str {
        match self {
            Q2Window::Hour => "1h",
            Q2Window::Day => "24h",
        }
    }
}

/// When Q2 writes a house's row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Emit {
    /// Only when the house's percentage differs from its last row (or it had none, or it
    /// reappears after a boundary without plugs).
    #[default]
    Changes,
    /// At every boundary.
    Every,
}

/// One house's outlier share in one window. The percentage is kept as the exact fraction
/// `above / plugs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Q2Row {
    /// T - W.
    pub ts_start: u64,
    /// T.
    pub ts_stop: u64,
    /// Which window.
    pub window: Q2Window,
    /// House id.
    pub house: u32,
    /// Plugs of the house whose median exceeds the global median.
    pub above: u32,
    /// Plugs of the house with a reading in the window (at least 1).
    pub plugs: u32,
}

impl Q2Row {
    /// Percentage (0-100) of the house's plugs above the global median.
    pub fn percentage(&self) -> f64 {
        100.0 * f64::from(self.above) / f64::from(self.plugs.max(1))
    }

    /// Whether two rows state the same percentage (1/2 and 2/4 do).
    pub fn same_percentage(&self, other: &Q2Row) -> bool {
        u64::from(self.above) * u64::from(other.plugs)
            == u64::from(other.above) * u64::from(self.plugs)
    }
}

/// Keeps the last row per (window, house) and decides which rows to write.
#[derive(Default)]
pub(crate) struct RowFilter {
    emit: Emit,
    last: BTreeMap<(Q2Window, u32), Q2Row>,
}

impl RowFilter {
    pub(crate) fn new(emit: Emit) -> RowFilter {
        RowFilter {
            emit,
            last: BTreeMap::new(),
        }
    }

    /// Filters one window's rows at one boundary (all its houses, in house order).
    pub(crate) fn filter(&mut self, window: Q2Window, rows: Vec<Q2Row>) -> Vec<Q2Row> {
        // Houses without plugs in this window are forgotten, so they get a row on return.
        self.last
            .retain(|(w, house), _| *w != window || rows.iter().any(|r| r.house == *house));
        let mut out = Vec::new();
        for row in rows {
            let changed = self
                .last
                .insert((window, row.house), row)
                .is_none_or(|last| !last.same_percentage(&row));
            if changed || self.emit == Emit::Every {
                out.push(row);
            }
        }
        out
    }
}

/// The Q2 operator. Memory: one histogram per plug while a boundary is evaluated, and the
/// last row per house.
pub struct Q2 {
    filter: RowFilter,
}

impl Q2 {
    /// An operator writing rows as `emit` says.
    pub fn new(emit: Emit) -> Q2 {
        Q2 {
            filter: RowFilter::new(emit),
        }
    }

    /// Rows at boundary `t` (a multiple of 30 s): the 1 h window's houses, then the 24 h
    /// window's, each in house order.
    pub fn at<S: AggregateSource + ?Sized>(
        &mut self,
        source: &mut S,
        t: u64,
    ) -> Result<Vec<Q2Row>, AnalyticsError> {
        if t == 0 || t % WINDOW_SECS != 0 {
            return Err(AnalyticsError::UnalignedBoundary(t));
        }
        let mut out = Vec::new();
        for window in Q2Window::ALL {
            let ts_start = t.saturating_sub(window.secs());
            let histograms = source.histograms(ts_start, t)?;
            let mut global = vec![0; BUCKETS];
            for (plug, histogram) in &histograms {
                if histogram.len() != BUCKETS {
                    return Err(AnalyticsError::HistogramLength {
                        plug: *plug,
                        found: histogram.len(),
                    });
                }
                histogram::add_into(&mut global, histogram);
            }
            let Some(global_median) = histogram::median(&global) else {
                out.extend(self.filter.filter(window, Vec::new()));
                continue;
            };
            let mut houses: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
            for (plug, histogram) in &histograms {
                let Some(median) = histogram::median(histogram) else {
                    continue;
                };
                let (above, plugs) = houses.entry(plug.house).or_default();
                *plugs += 1;
                if median > global_median {
                    *above += 1;
                }
            }
            let rows = houses
                .into_iter()
                .map(|(house, (above, plugs))| Q2Row {
                    ts_start,
                    ts_stop: t,
                    window,
                    house,
                    above,
                    plugs,
                })
                .collect();
            out.extend(self.filter.filter(window, rows));
        }
        Ok(out)
    }
}

/// Reduces rows emitted at every boundary (`Emit::Every`, in boundary order) to the rows
/// `Emit::Changes` would have written: a house's row when its percentage changed, when it is
/// new, or when it comes back after a boundary without plugs.
pub fn changes_only(every: &[Q2Row]) -> Vec<Q2Row> {
    let mut last: BTreeMap<(Q2Window, u32), Q2Row> = BTreeMap::new();
    let mut out = Vec::new();
    for row in every {
        let key = (row.window, row.house);
        let keep = match last.get(&key) {
            Some(prev) => prev.ts_stop + WINDOW_SECS != row.ts_stop || !prev.same_percentage(row),
            None => true,
        };
        if keep {
            out.push(*row);
        }
        last.insert(key, *row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts_stop: u64, house: u32, above: u32, plugs: u32) -> Q2Row {
        Q2Row {
            ts_start: ts_stop - 3600,
            ts_stop,
            window: Q2Window::Hour,
            house,
            above,
            plugs,
        }
    }

    #[test]
    fn change_only_emission_skips_repeated_percentages() {
        let mut filter = RowFilter::new(Emit::Changes);
        let first = filter.filter(Q2Window::Hour, vec![row(3600, 1, 1, 2), row(3600, 2, 0, 1)]);
        assert_eq!(first.len(), 2);
        // 2/4 is the same 50 % as 1/2: no row; house 2 changes.
        let second = filter.filter(Q2Window::Hour, vec![row(3630, 1, 2, 4), row(3630, 2, 1, 1)]);
        assert_eq!(second, vec![row(3630, 2, 1, 1)]);
        // House 1 disappears, then comes back with the same percentage: it gets a row.
        assert!(filter
            .filter(Q2Window::Hour, vec![row(3660, 2, 1, 1)])
            .is_empty());
        let back = filter.filter(Q2Window::Hour, vec![row(3690, 1, 1, 2), row(3690, 2, 1, 1)]);
        assert_eq!(back, vec![row(3690, 1, 1, 2)]);
    }

    #[test]
    fn emit_every_writes_every_boundary() {
        let mut filter = RowFilter::new(Emit::Every);
        assert_eq!(
            filter
                .filter(Q2Window::Hour, vec![row(3600, 1, 1, 2)])
                .len(),
            1
        );
        assert_eq!(
            filter
                .filter(Q2Window::Hour, vec![row(3630, 1, 1, 2)])
                .len(),
            1
        );
    }
}
