//! Buckets (key groups) and the state a bucket carries from one worker to the next.

use crate::sums::{add_into, BatchPartial, WindowSums};
use mcloud_core::reading::GroupKey;
use mcloud_core::{BatchId, Window};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The bucket of a plug. A fixed mixing function rather than std's randomly seeded hasher:
/// the map must mean the same in every process and after every restart.
pub fn bucket_of(key: &GroupKey, buckets: usize) -> usize {
    let mut h = (u64::from(key.house) << 32) | u64::from(key.household);
    h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(key.plug);
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    (h % buckets.max(1) as u64) as usize
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
    pub fn apply(&mut self, partial: BatchPartial, window_secs: u64, gathered: &HashSet<u64>) {
        for ((start, metric, group), p) in partial.cells {
            if gathered.contains(&start) {
                continue;
            }
            self.windows
                .entry(start)
                .or_default()
                .groups
                .entry((metric, group))
                .or_default()
                .merge(&p);
        }
        for (cell, counts) in partial.histograms {
            let start = Window::containing(cell.0, window_secs).start;
            if gathered.contains(&start) {
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
