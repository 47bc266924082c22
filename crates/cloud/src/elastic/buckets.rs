//! Buckets (key groups) and the state a bucket carries from one worker to the next.

use crate::sums::{add_into, BatchPartial, Cell, WindowSums};
use mcloud_core::reading::GroupKey;
use mcloud_core::{BatchId, Partial, Window};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The bucket of a plug. A fixed mixing function rather than std's randomly seeded hasher:
/// the map must mean the same in every process and after every restart.
pub fn bucket_of(key: &GroupKey, buckets: usize) -> usize {
    (plug_hash(key) % buckets.max(1) as u64) as usize
}

fn plug_hash(key: &GroupKey) -> u64 {
    let mut h = (u64::from(key.house) << 32) | u64::from(key.household);
    h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(key.plug);
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    h
}

/// [`bucket_of`] for many plugs: the same buckets, with the division replaced by a mask when
/// the bucket count is a power of two (the default), since workers do it for every record.
#[derive(Clone, Copy, Debug)]
pub struct BucketOf {
    buckets: u64,
    mask: Option<u64>,
}

impl BucketOf {
    pub fn new(buckets: usize) -> BucketOf {
        let buckets = buckets.max(1) as u64;
        BucketOf {
            buckets,
            mask: buckets.is_power_of_two().then(|| buckets - 1),
        }
    }

    pub fn of(&self, key: &GroupKey) -> usize {
        let h = plug_hash(key);
        (match self.mask {
            Some(mask) => h & mask,
            None => h % self.buckets,
        }) as usize
    }
}

/// Everything a bucket's owner holds: the committed sums of its open windows and the partials
/// of batches whose flag is not final yet. Both are plain sums, so two pieces of one bucket's
/// state (the old owner's and what the new owner aggregated before the handover finished) add
/// up to the state of the bucket.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BucketState {
    pub windows: BTreeMap<u64, WindowSums>,
    pub pending: HashMap<BatchId, BatchPartial>,
}

impl BucketState {
    /// Adds a committed batch's partial to the windows, except to those in `gathered`: the
    /// node holds their sums already.
    pub fn apply(
        &mut self,
        partial: BatchPartial,
        window_secs: u64,
        gathered: impl Fn(u64) -> bool,
    ) {
        // A worker's partials hold their cells in cell order, window first: each window is
        // looked up once per run of its cells rather than once per cell.
        let mut cells = partial.cells.into_iter().peekable();
        while let Some(((start, metric, group), p)) = cells.next() {
            let run = |c: &(Cell, Partial)| c.0 .0 == start;
            if gathered(start) {
                while cells.next_if(run).is_some() {}
                continue;
            }
            let groups = &mut self.windows.entry(start).or_default().groups;
            groups.entry((metric, group)).or_default().merge(&p);
            while let Some(((_, metric, group), p)) = cells.next_if(run) {
                groups.entry((metric, group)).or_default().merge(&p);
            }
        }
        for (cell, counts) in partial.histograms {
            let start = Window::containing(cell.0, window_secs).start;
            if gathered(start) {
                continue;
            }
            add_into(
                self.windows
                    .entry(start)
                    .or_default()
                    .histograms
                    .entry(cell)
                    .or_default(),
                &counts,
            );
        }
    }

    /// Adds another piece of the same bucket's state.
    pub fn merge(&mut self, other: BucketState) {
        for (start, w) in other.windows {
            self.windows.entry(start).or_default().merge(w);
        }
        self.pending.extend(other.pending);
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.pending.is_empty()
    }

    /// Open (window, metric, plug) groups held, the size that decides a handover's cost.
    pub fn groups(&self) -> usize {
        self.windows.values().map(|w| w.groups.len()).sum()
    }
}
