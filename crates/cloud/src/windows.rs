//! Pre-aggregation per (window, metric, plug) and the rules for when a window may be
//! computed. A batch is aggregated once, when it arrives, into its own partial; the partial
//! joins its windows only when the catalog says the batch's flag is TRUE, and is dropped when
//! it says ERROR. A window is ready when the watermark (moved only by the sensors' progress
//! reports, never by the data itself, so that batches in flight cannot close each other's
//! windows) passed its end plus grace, and no batch touching it is still undecided.

use crate::CloudError;
use mcloud_core::reading::{GroupKey, GroupLevel, Metric};
use mcloud_core::wire::{ComputeResponse, GroupPartial, ShareRecord, WindowPartial, WindowPending};
use mcloud_core::{BatchId, Partial, Window};
use std::collections::{BTreeMap, HashMap};

type Cell = (u64, Metric, GroupKey);

/// One batch's shares summed per (window start, metric, plug).
#[derive(Clone, Debug, Default)]
pub struct BatchPartial {
    cells: Vec<(Cell, Partial)>,
    windows: Vec<u64>,
}

impl BatchPartial {
    pub fn of(records: &[ShareRecord], window_secs: u64) -> BatchPartial {
        let mut cells: HashMap<Cell, Partial> = HashMap::new();
        for r in records {
            let start = Window::containing(r.ts, window_secs).start;
            cells
                .entry((start, r.metric, r.group))
                .or_default()
                .add_shares(&r.share);
        }
        let mut windows: Vec<u64> = cells.keys().map(|c| c.0).collect();
        windows.sort_unstable();
        windows.dedup();
        BatchPartial {
            cells: cells.into_iter().collect(),
            windows,
        }
    }
}

enum Stage {
    /// Accepted, being written to the values table: not yet acknowledged.
    Storing(BatchPartial),
    /// Durable and acknowledged; the flag is not final yet.
    Pending(BatchPartial),
    /// Final (TRUE or ERROR): remembered only to recognise retries.
    Done,
}

#[derive(Default)]
struct WindowState {
    undecided: u32,
    groups: HashMap<(Metric, GroupKey), Partial>,
    batches: u64,
    digest: u128,
}

/// Outcome of registering an upload.
pub enum Registered {
    New,
    Duplicate,
}

pub struct Windows {
    window_secs: u64,
    grace_secs: u64,
    watermark: u64,
    windows: BTreeMap<u64, WindowState>,
    batches: HashMap<BatchId, Stage>,
}

impl Windows {
    pub fn new(window_secs: u64, grace_secs: u64, watermark: u64) -> Windows {
        Windows {
            window_secs,
            grace_secs,
            watermark,
            windows: BTreeMap::new(),
            batches: HashMap::new(),
        }
    }

    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Windows ending at or before this are closed.
    pub fn closed_before(&self) -> u64 {
        self.watermark().saturating_sub(self.grace_secs)
    }

    pub fn is_known(&self, id: &BatchId) -> bool {
        self.batches.contains_key(id)
    }

    /// Claims a new batch for storing, or recognises a retry. Checks and claim happen under
    /// one lock, so a window cannot close between the check and the claim.
    pub fn register(
        &mut self,
        id: BatchId,
        partial: BatchPartial,
    ) -> Result<Registered, CloudError> {
        match self.batches.get(&id) {
            Some(Stage::Storing(_)) => return Err(CloudError::InProgress(id)),
            Some(_) => return Ok(Registered::Duplicate),
            None => {}
        }
        let closed_before = self.closed_before();
        if let Some(&start) = partial
            .windows
            .iter()
            .find(|&&s| s + self.window_secs <= closed_before)
        {
            return Err(CloudError::WindowClosed {
                id,
                window: Window {
                    start,
                    end: start + self.window_secs,
                },
                watermark: self.watermark(),
            });
        }
        for &start in &partial.windows {
            self.windows.entry(start).or_default().undecided += 1;
        }
        self.batches.insert(id, Stage::Storing(partial));
        Ok(Registered::New)
    }

    /// The batch is durable: it now waits for its flag.
    pub fn stored(&mut self, id: BatchId) {
        if let Some(stage) = self.batches.get_mut(&id) {
            if let Stage::Storing(partial) = std::mem::replace(stage, Stage::Done) {
                *stage = Stage::Pending(partial);
            }
        }
    }

    /// Storing failed: forget the batch as if it never came.
    pub fn abort(&mut self, id: BatchId) {
        if let Some(Stage::Storing(partial)) = self.batches.remove(&id) {
            for start in &partial.windows {
                if let Some(w) = self.windows.get_mut(start) {
                    w.undecided -= 1;
                }
            }
        }
    }

    /// A batch found in the values table after a restart.
    pub fn restore(&mut self, id: BatchId, partial: BatchPartial) {
        if self.batches.contains_key(&id) {
            return;
        }
        for &start in &partial.windows {
            self.windows.entry(start).or_default().undecided += 1;
        }
        self.batches.insert(id, Stage::Pending(partial));
    }

    pub fn advance(&mut self, ts: u64) {
        self.watermark = self.watermark.max(ts);
    }

    pub fn undecided_ids(&self) -> Vec<BatchId> {
        self.batches
            .iter()
            .filter(|(_, s)| matches!(s, Stage::Pending(_)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Applies a final flag: TRUE adds the batch to its windows, ERROR drops it.
    pub fn decide(&mut self, id: BatchId, committed: bool) {
        let Some(stage) = self.batches.get_mut(&id) else {
            return;
        };
        if !matches!(stage, Stage::Pending(_)) {
            return;
        }
        let Stage::Pending(partial) = std::mem::replace(stage, Stage::Done) else {
            return;
        };
        for &start in &partial.windows {
            if let Some(w) = self.windows.get_mut(&start) {
                w.undecided -= 1;
                if committed {
                    w.batches += 1;
                    w.digest ^= id.0;
                }
            }
        }
        if committed {
            for ((start, metric, group), p) in partial.cells {
                if let Some(w) = self.windows.get_mut(&start) {
                    w.groups.entry((metric, group)).or_default().merge(&p);
                }
            }
        }
    }

    pub fn compute(
        &self,
        party: u16,
        parties: u16,
        from: u64,
        to: u64,
        level: GroupLevel,
    ) -> ComputeResponse {
        let closed_before = self.closed_before();
        let mut ready = Vec::new();
        let mut pending = Vec::new();
        for (&start, w) in self.windows.range(from..to.max(from)) {
            let window = Window {
                start,
                end: start + self.window_secs,
            };
            let closed = window.end <= closed_before;
            if !closed || w.undecided > 0 {
                pending.push(WindowPending {
                    window,
                    closed,
                    pending_batches: w.undecided as u64,
                });
                continue;
            }
            let mut groups: BTreeMap<_, Partial> = BTreeMap::new();
            for ((metric, key), p) in &w.groups {
                groups
                    .entry((*metric, level.project(*key)))
                    .or_default()
                    .merge(p);
            }
            ready.push(WindowPartial {
                window,
                batches: w.batches,
                batch_digest: w.digest,
                groups: groups
                    .into_iter()
                    .map(|((metric, group), partial)| GroupPartial {
                        metric,
                        group,
                        partial,
                    })
                    .collect(),
            });
        }
        ComputeResponse {
            party,
            parties,
            window_secs: self.window_secs,
            closed_before,
            ready,
            pending,
        }
    }

    /// Counts for the status page.
    pub fn summary(&self) -> serde_json::Value {
        let undecided = self
            .batches
            .values()
            .filter(|s| !matches!(s, Stage::Done))
            .count();
        serde_json::json!({
            "watermark": self.watermark(),
            "closed_before": self.closed_before(),
            "windows": self.windows.len(),
            "batches": self.batches.len(),
            "undecided_batches": undecided,
        })
    }
}
