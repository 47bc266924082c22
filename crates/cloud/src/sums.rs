//! Sums of shares, the one representation every part of a cloud adds and hands on: a batch's
//! partial (what one batch adds to its windows), and a window's sums (what its committed
//! batches add up to), held by a worker per bucket, gathered by the node, stored sealed and
//! slid over by ranges. All of them are plain sums in a group, so pieces of one window's sums
//! from different workers, checkpoints or handovers simply add.

use mcloud_core::reading::{GroupKey, Metric};
use mcloud_core::{CountField, Partial, Window};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A record's window start, metric and plug.
pub type Cell = (u64, Metric, GroupKey);
/// A histogram's own 30 s window start and plug.
pub type HistogramCell = (u64, GroupKey);

/// One window's sums: per (metric, plug), and per plug histogram.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WindowSums {
    pub groups: HashMap<(Metric, GroupKey), Partial>,
    pub histograms: HashMap<HistogramCell, Vec<CountField>>,
}

impl WindowSums {
    pub fn merge(&mut self, other: WindowSums) {
        if self.is_empty() {
            // The first piece of a gather: kept as it is rather than rehashed entry by entry.
            *self = other;
            return;
        }
        self.groups.reserve(other.groups.len());
        for (k, p) in other.groups {
            self.groups.entry(k).or_default().merge(&p);
        }
        for (k, counts) in other.histograms {
            add_into(self.histograms.entry(k).or_default(), &counts);
        }
    }

    /// [`WindowSums::merge`] from sums that stay where they are.
    pub fn add(&mut self, other: &WindowSums) {
        for (k, p) in &other.groups {
            self.groups.entry(*k).or_default().merge(p);
        }
        for (k, counts) in &other.histograms {
            add_into(self.histograms.entry(*k).or_default(), counts);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.histograms.is_empty()
    }
}

/// One batch's shares summed per (window start, metric, plug), and its histogram shares.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BatchPartial {
    pub(crate) cells: Vec<(Cell, Partial)>,
    pub(crate) histograms: Vec<(HistogramCell, Vec<CountField>)>,
    pub(crate) windows: Vec<u64>,
}

impl BatchPartial {
    /// Straight per-record sums: the reference that tests compare the workers' grouping with.
    #[cfg(test)]
    pub(crate) fn of(
        records: &[mcloud_core::wire::ShareRecord],
        histograms: &[mcloud_core::wire::HistogramShare],
        window_secs: u64,
    ) -> BatchPartial {
        let mut cells: HashMap<Cell, Partial> = HashMap::new();
        for r in records {
            let start = Window::containing(r.ts, window_secs).start;
            cells
                .entry((start, r.metric, r.group))
                .or_default()
                .add_shares(&r.share);
        }
        let mut windows: Vec<u64> = cells.keys().map(|c| c.0).collect();
        windows.extend(
            histograms
                .iter()
                .map(|h| Window::containing(h.window_start, window_secs).start),
        );
        windows.sort_unstable();
        windows.dedup();
        BatchPartial {
            cells: cells.into_iter().collect(),
            histograms: histograms
                .iter()
                .map(|h| ((h.window_start, h.plug), h.counts.clone()))
                .collect(),
            windows,
        }
    }

    /// A partial from cells already summed (one bucket's share of a batch).
    pub(crate) fn with_windows(
        cells: Vec<(Cell, Partial)>,
        histograms: Vec<(HistogramCell, Vec<CountField>)>,
        window_secs: u64,
    ) -> BatchPartial {
        let mut windows: Vec<u64> = cells
            .iter()
            .map(|c| c.0 .0)
            .chain(
                histograms
                    .iter()
                    .map(|h| Window::containing(h.0 .0, window_secs).start),
            )
            .collect();
        windows.sort_unstable();
        windows.dedup();
        BatchPartial {
            cells,
            histograms,
            windows,
        }
    }
}

pub fn sub_from(total: &mut Vec<CountField>, part: &[CountField]) {
    if total.len() < part.len() {
        total.resize(part.len(), CountField::default());
    }
    for (t, p) in total.iter_mut().zip(part) {
        *t -= *p;
    }
}

pub fn add_into(total: &mut Vec<CountField>, part: &[CountField]) {
    if total.len() < part.len() {
        total.resize(part.len(), CountField::default());
    }
    for (t, p) in total.iter_mut().zip(part) {
        *t += *p;
    }
}
