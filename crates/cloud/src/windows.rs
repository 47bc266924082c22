//! Which windows may be answered, and the answers. The workers sum each batch into its
//! windows (see `elastic`); here the node keeps, per batch, the windows it touches and its
//! flag's fate, and per window how many of its batches are undecided. A window is ready when the watermark (moved only by the sensors' progress
//! reports, never by the data itself, so that batches in flight cannot close each other's
//! windows) passed its end plus grace, and no batch touching it is still undecided.

use crate::sums::{add_into, sub_from, WindowSums};
use crate::CloudError;
use mcloud_core::disclosure::{block_start, Census, ScopeRules};
use mcloud_core::reading::{GroupKey, GroupLevel, Metric};
use mcloud_core::wire::{
    ComputeResponse, GroupPartial, PlugRange, RangeResponse, WindowPartial, WindowPending,
};
use mcloud_core::{BatchId, CountField, Partial, Window};
use std::collections::{BTreeMap, BTreeSet, HashMap};

mod archived;
mod cold;
pub use archived::{Needed, MAX_HOURS_WITHOUT, MAX_HOURS_WITH_HISTOGRAMS};

/// Ranges kept for sliding.
const RANGE_CACHE: usize = 16;

/// Running per-plug sums over a range of windows.
#[derive(Default)]
struct RangeSums {
    from: u64,
    to: u64,
    with_histograms: bool,
    batches: i64,
    digest: u128,
    plugs: BTreeMap<GroupKey, PlugSums>,
}

#[derive(Default)]
struct PlugSums {
    /// Windows of the range in which the plug has data: at 0 it left the range.
    windows: i64,
    load: Partial,
    histogram: Vec<CountField>,
}

/// Why a RANGE is not answered.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error(transparent)]
    NotReady(#[from] NotReady),
    #[error("the range starts at {from}, before the retention horizon {horizon}: windows before it are no longer kept")]
    PastRetention { from: u64, horizon: u64 },
    /// The archive hours a request needs must be read back first (the node does, then asks
    /// again).
    #[error("archived hours {:?} are not read back", .0.hours)]
    NotLoaded(Needed),
    #[error("the range reaches {hours} archived hours; ask for at most {limit} at once")]
    TooManyArchivedHours { hours: usize, limit: usize },
    #[error(transparent)]
    Storage(CloudError),
}

/// Why a RANGE cannot be answered yet.
#[derive(Debug, thiserror::Error)]
#[error("window [{}, {}) is not computable yet: {reason}", window.start, window.end)]
pub struct NotReady {
    pub window: Window,
    pub reason: String,
}

enum Stage {
    /// Accepted, being written to the values table: not yet acknowledged.
    Storing(Vec<u64>),
    /// Durable and acknowledged; the flag is not final yet.
    Pending(Vec<u64>),
    /// Final, TRUE (committed) or ERROR: remembered to recognise retries and to replay
    /// the batch to a worker that replaces a failed one, until its last window (`last`)
    /// passes the retention horizon.
    Done { committed: bool, last: u64 },
}

/// A window's bookkeeping; its sums stay empty until the workers' are gathered (sealed).
#[derive(Default)]
struct WindowState {
    undecided: u32,
    sums: WindowSums,
    batches: u64,
    digest: u128,
    /// The workers' sums of this window are gathered here: it may be answered.
    sealed: bool,
    /// Sealed, and its sums left memory for the cold store.
    cold: bool,
}

/// Where sealed windows' sums are read back once they left memory (the values table).
pub trait ColdStore: Send {
    /// The window starting at `start`; without its histograms unless `histograms`.
    fn load(&self, start: u64, histograms: bool) -> Result<Option<SealedWindow>, CloudError>;
}

/// How long a sealed window's sums stay in memory, counted back from the newest sealed
/// window. Ranges slide over the recent past (Q2's hour, Q1's current slices); older windows
/// are read back from the values table when a range leaves them or a query reaches back, so
/// a cloud's memory does not grow with the length of its history.
pub const HOT_SECS: u64 = 2 * 3600;

/// A sealed window as stored, so a restarted node answers it without its batches.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct SealedWindow {
    sums: WindowSums,
    batches: u64,
    digest: u128,
}

impl SealedWindow {
    /// A window as read back from its parts (the store's decoding without histograms).
    pub(crate) fn from_parts(sums: WindowSums, batches: u64, digest: u128) -> SealedWindow {
        SealedWindow {
            sums,
            batches,
            digest,
        }
    }

    pub(crate) fn parts(&self) -> (&WindowSums, u64, u128) {
        (&self.sums, self.batches, self.digest)
    }
}

/// The window starts a batch touches, given its records' timestamps and its histograms'
/// window starts.
pub fn touched(times: impl IntoIterator<Item = u64>, window_secs: u64) -> Vec<u64> {
    let mut windows: Vec<u64> = times
        .into_iter()
        .map(|ts| Window::containing(ts, window_secs).start)
        .collect();
    windows.sort_unstable();
    windows.dedup();
    windows
}

/// What one scope of one request may see: its rules, and which (metric, plug) cells its
/// token reaches in that scope.
pub struct View<'a> {
    pub policy: [u8; 32],
    pub rules: &'a ScopeRules,
    pub keep: &'a (dyn Fn(Metric, GroupKey) -> bool + Sync),
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
    ranges: Vec<RangeSums>,
    /// Without one, every window stays in memory.
    cold_store: Option<Box<dyn ColdStore>>,
    /// Windows not sealed yet: every RANGE and COMPUTE first asks which may be sealed, and
    /// scanning all windows for them made each request cost as much as the history is long.
    unsealed: BTreeSet<u64>,
    /// Windows starting before this were dropped by the retention policy.
    retained_from: u64,
    archived: archived::Archived,
    /// When each batch not settled yet arrived (wall clock, ms; a restored one: when it was
    /// restored). A batch is settled once its flag is final here or its windows are sealed:
    /// the catalog may forget the flags of batches settled at every cloud.
    received: HashMap<BatchId, u64>,
    /// Final batches whose shares the values table still holds, by their last window: once
    /// every window up to it is sealed and stored, the shares can go (`take_foldable`).
    unfolded: BTreeSet<(u64, BatchId)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Windows {
    pub fn new(window_secs: u64, grace_secs: u64, watermark: u64) -> Windows {
        Windows {
            window_secs,
            grace_secs,
            watermark,
            windows: BTreeMap::new(),
            batches: HashMap::new(),
            ranges: Vec::new(),
            cold_store: None,
            unsealed: BTreeSet::new(),
            retained_from: 0,
            archived: archived::Archived::default(),
            received: HashMap::new(),
            unfolded: BTreeSet::new(),
        }
    }

    /// Final batches every window of which is sealed (all windows before the first unsealed
    /// one are), with their last window's start: their shares are in the sealed sums. Taken
    /// out; `untake` puts them back if the values table could not drop them.
    pub fn take_foldable(&mut self) -> Vec<(BatchId, u64)> {
        let bound = (self.first_unsealed().unwrap_or(u64::MAX), BatchId(0));
        let later = self.unfolded.split_off(&bound);
        std::mem::replace(&mut self.unfolded, later)
            .into_iter()
            .map(|(last, id)| (id, last))
            .collect()
    }

    pub fn untake(&mut self, batches: Vec<(BatchId, u64)>) {
        self.unfolded
            .extend(batches.into_iter().map(|(id, last)| (last, id)));
    }

    /// After a restart: a batch the values table holds folded (its windows were sealed and stored).
    pub fn restore_folded(&mut self, id: BatchId, last: u64) {
        self.batches.entry(id).or_insert(Stage::Done {
            committed: false,
            last,
        });
    }

    /// Every batch that arrived before this (wall clock, ms) is settled here; now when none
    /// is waiting.
    pub fn settled_before(&self) -> u64 {
        self.received.values().copied().min().unwrap_or_else(now_ms)
    }

    /// The earliest window not sealed yet: retention stops before it, or a window whose
    /// batches are still in flight (a fast replay moves event time far ahead of them) would
    /// be dropped before its sums exist.
    pub fn first_unsealed(&self) -> Option<u64> {
        self.unsealed.first().copied()
    }

    /// Windows starting before this were dropped (0: none ever was).
    pub fn retained_from(&self) -> u64 {
        self.retained_from
    }

    /// Drops every sealed window starting before `horizon` and every batch whose last window
    /// starts before it, and refuses ranges reaching before it from now on; returns the
    /// dropped windows and batches, for the values table to drop too. A window that old
    /// and still unsealed (a batch whose flag never became final) goes too: nothing can
    /// read it any more.
    pub fn forget_before(&mut self, horizon: u64) -> (Vec<u64>, Vec<BatchId>) {
        if horizon <= self.retained_from {
            return (Vec::new(), Vec::new());
        }
        self.retained_from = horizon;
        let kept = self.windows.split_off(&horizon);
        let windows: Vec<u64> = std::mem::replace(&mut self.windows, kept)
            .into_keys()
            .collect();
        self.unsealed = self.unsealed.split_off(&horizon);
        let mut batches = Vec::new();
        self.batches.retain(|id, stage| {
            let last = match stage {
                Stage::Done { last, .. } => *last,
                // A batch every window of which is sealed and gone can add to nothing.
                Stage::Pending(w) => w.last().copied().unwrap_or(0),
                Stage::Storing(_) => return true,
            };
            let keep = last >= horizon;
            if !keep {
                batches.push(*id);
            }
            keep
        });
        for id in &batches {
            self.received.remove(id);
        }
        self.unfolded = self.unfolded.split_off(&(horizon, BatchId(0)));
        // Sliding a cached range would subtract windows that are gone, unless the archive
        // has them.
        if self.archived.from.is_none() {
            self.ranges.retain(|r| r.from >= horizon);
        }
        (windows, batches)
    }

    /// After a restart: what the values table says was dropped before.
    pub fn restore_retained_from(&mut self, horizon: u64) {
        self.retained_from = self.retained_from.max(horizon);
    }

    /// The archive holds `hours` and, from `from` on, every window dropped (after a restart,
    /// or once hours were archived).
    pub fn note_archived(&mut self, from: u64, hours: impl IntoIterator<Item = u64>) {
        let earliest = self.archived.from.map_or(from, |f| f.min(from));
        self.archived.from = Some(earliest);
        self.archived.hours.extend(hours);
    }

    /// The archived hours a COMPUTE over [from, to) reads that are not read back, as far
    /// back as the archive reaches (a COMPUTE answers the blocks there are; the horizon
    /// moves by whole blocks). COMPUTE sums no histograms.
    pub fn compute_needs(&self, from: u64, to: u64) -> Result<Option<Needed>, RangeError> {
        let Some(archived_from) = self.archived.from else {
            return Ok(None);
        };
        let from = from.max(archived_from);
        if from >= self.retained_from {
            return Ok(None);
        }
        archived::needed(&self.archived, &[(from, to)], self.retained_from, false)
    }

    /// Archived hours read back for a request that needs `needed`.
    pub fn load_archived(&mut self, read: Vec<(u64, Vec<(u64, SealedWindow)>)>, needed: &Needed) {
        self.archived.load(read, needed.histograms, &needed.all);
    }

    /// The archive's part of the status page.
    pub fn archive_summary(&self, on: bool) -> serde_json::Value {
        self.archived.summary(on)
    }

    /// The windows starting in [from, to): archived ones read back, then those held here.
    fn windows_in(&self, from: u64, to: u64) -> impl Iterator<Item = (&u64, &WindowState)> {
        let to = to.max(from);
        self.archived
            .windows
            .range(from..to)
            .chain(self.windows.range(from..to))
    }

    fn window(&self, start: u64) -> Option<&WindowState> {
        self.windows
            .get(&start)
            .or_else(|| self.archived.windows.get(&start))
    }

    /// How many windows and batches are remembered (the status page shows they stay flat).
    pub fn remembered(&self) -> (usize, usize) {
        (self.windows.len(), self.batches.len())
    }

    /// From now on, sealed windows older than [`HOT_SECS`] leave memory and are read back
    /// from `store`, which holds every sealed window.
    pub fn keep_cold_in(&mut self, store: Box<dyn ColdStore>) {
        self.cold_store = Some(Box::new(cold::CachedSums::new(
            store,
            cold::SUMS_CACHE_BYTES,
        )));
        self.cool();
    }

    /// Drops the sums of sealed windows more than [`HOT_SECS`] older than the newest sealed
    /// one (they are in the cold store).
    pub fn cool(&mut self) {
        if self.cold_store.is_none() {
            return;
        }
        let Some(newest) = self
            .windows
            .iter()
            .rev()
            .find(|(_, w)| w.sealed)
            .map(|(s, _)| *s)
        else {
            return;
        };
        let Some(before) = newest.checked_sub(HOT_SECS) else {
            return;
        };
        for (_, w) in self.windows.range_mut(..before) {
            if w.sealed && !w.cold {
                w.sums = WindowSums::default();
                w.cold = true;
            }
        }
    }

    /// A sealed window's sums: from memory, or read back from the cold store. A window read
    /// back comes without its histograms unless `histograms`: most reads of cold windows
    /// (Q1's earlier days' slices, COMPUTE) need only the record sums, and turning a
    /// window's histograms into field elements is most of a read's cost.
    fn sums_of<'a>(
        &self,
        start: u64,
        w: &'a WindowState,
        histograms: bool,
    ) -> Result<std::borrow::Cow<'a, WindowSums>, CloudError> {
        if !w.cold {
            return Ok(std::borrow::Cow::Borrowed(&w.sums));
        }
        let stored = match &self.cold_store {
            Some(store) => store.load(start, histograms)?,
            None => None,
        };
        stored
            .map(|s| std::borrow::Cow::Owned(s.sums))
            .ok_or_else(|| CloudError::Storage(format!("sealed window {start} is not stored")))
    }

    /// Closed windows with every batch decided whose sums still sit in the workers.
    pub fn sealable(&self) -> Vec<u64> {
        let Some(last) = self.closed_before().checked_sub(self.window_secs) else {
            return Vec::new();
        };
        self.unsealed
            .range(..=last)
            .filter(|start| self.windows.get(start).is_some_and(|w| w.undecided == 0))
            .copied()
            .collect()
    }

    /// Takes in the workers' final sums of a closed, decided window.
    pub fn seal(&mut self, start: u64, sums: WindowSums) {
        if let Some(w) = self.windows.get_mut(&start) {
            if w.sealed || w.undecided > 0 {
                return;
            }
            w.sums.merge(sums);
            w.sealed = true;
            self.unsealed.remove(&start);
        }
    }

    /// A sealed window's sums and batches, to be stored.
    pub fn sealed_window(&self, start: u64) -> Option<SealedWindow> {
        let w = self.windows.get(&start).filter(|w| w.sealed)?;
        Some(SealedWindow {
            sums: w.sums.clone(),
            batches: w.batches,
            digest: w.digest,
        })
    }

    /// A window sealed before a restart: answered from what was stored. Its batches, restored
    /// afterwards, neither hold it open nor add to it again.
    /// A sealed window found in the values table; a `cold` one keeps its fingerprint here
    /// and its sums only there.
    pub fn restore_sealed(&mut self, start: u64, stored: SealedWindow, cold: bool) {
        self.unsealed.remove(&start);
        self.windows.insert(
            start,
            WindowState {
                undecided: 0,
                sums: if cold {
                    WindowSums::default()
                } else {
                    stored.sums
                },
                batches: stored.batches,
                digest: stored.digest,
                sealed: true,
                cold,
            },
        );
    }

    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Windows ending at or before this are closed.
    pub fn closed_before(&self) -> u64 {
        self.watermark().saturating_sub(self.grace_secs)
    }

    /// The final flag of a batch: Some(true) committed, Some(false) ERROR, None undecided.
    pub fn outcome(&self, id: &BatchId) -> Option<bool> {
        match self.batches.get(id) {
            Some(Stage::Done { committed, .. }) => Some(*committed),
            _ => None,
        }
    }

    /// Windows whose sums were gathered from the workers.
    pub fn sealed(&self) -> Vec<u64> {
        self.windows
            .iter()
            .filter(|(_, w)| w.sealed)
            .map(|(s, _)| *s)
            .collect()
    }

    pub fn is_known(&self, id: &BatchId) -> bool {
        self.batches.contains_key(id)
    }

    /// Claims a new batch for storing, or recognises a retry. Checks and claim happen under
    /// one lock, so a window cannot close between the check and the claim.
    pub fn register(&mut self, id: BatchId, windows: Vec<u64>) -> Result<Registered, CloudError> {
        match self.batches.get(&id) {
            Some(Stage::Storing(_)) => return Err(CloudError::InProgress(id)),
            Some(_) => return Ok(Registered::Duplicate),
            None => {}
        }
        let closed_before = self.closed_before();
        if let Some(&start) = windows
            .iter()
            .find(|&&s| s.saturating_add(self.window_secs) <= closed_before)
        {
            return Err(CloudError::WindowClosed {
                id,
                window: Window {
                    start,
                    end: start.saturating_add(self.window_secs),
                },
                watermark: self.watermark(),
            });
        }
        for &start in &windows {
            let w = self.windows.entry(start).or_default();
            w.undecided += 1;
            if !w.sealed {
                self.unsealed.insert(start);
            }
        }
        self.batches.insert(id, Stage::Storing(windows));
        self.received.insert(id, now_ms());
        Ok(Registered::New)
    }

    /// The batch is durable: it now waits for its flag.
    pub fn stored(&mut self, id: BatchId) {
        if let Some(stage) = self.batches.get_mut(&id) {
            if let Stage::Storing(windows) = stage {
                *stage = Stage::Pending(std::mem::take(windows));
            }
        }
    }

    /// Storing failed: forget the batch as if it never came.
    pub fn abort(&mut self, id: BatchId) {
        self.received.remove(&id);
        if let Some(Stage::Storing(windows)) = self.batches.remove(&id) {
            for start in &windows {
                if let Some(w) = self.windows.get_mut(start) {
                    w.undecided -= 1;
                }
            }
        }
    }

    /// A batch found in the values table after a restart.
    pub fn restore(&mut self, id: BatchId, windows: Vec<u64>) {
        if self.batches.contains_key(&id) {
            return;
        }
        // Its windows are sealed: what it added is in their stored sums and nothing more can
        // be, so its flag is not needed (and is not replayed to a rebuilt worker).
        if windows
            .iter()
            .all(|s| self.windows.get(s).is_some_and(|w| w.sealed))
        {
            let last = windows.last().copied().unwrap_or(0);
            self.batches.insert(
                id,
                Stage::Done {
                    committed: false,
                    last,
                },
            );
            self.unfolded.insert((last, id));
            return;
        }
        self.received.insert(id, now_ms());
        for &start in &windows {
            let w = self.windows.entry(start).or_default();
            if !w.sealed {
                w.undecided += 1;
                self.unsealed.insert(start);
            }
        }
        self.batches.insert(id, Stage::Pending(windows));
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

    /// Applies a final flag: TRUE counts the batch in its windows' fingerprints, ERROR drops
    /// it; either way its windows wait for it no longer.
    pub fn decide(&mut self, id: BatchId, committed: bool) {
        let Some(stage) = self.batches.get_mut(&id) else {
            return;
        };
        if !matches!(stage, Stage::Pending(_)) {
            return;
        }
        let Stage::Pending(windows) = stage else {
            return;
        };
        let windows = std::mem::take(windows);
        self.received.remove(&id);
        let last = windows.last().copied().unwrap_or(0);
        *stage = Stage::Done { committed, last };
        self.unfolded.insert((last, id));
        for &start in &windows {
            // Only a window restored sealed can be sealed with a batch still pending in it:
            // its stored sums already hold the batch.
            if let Some(w) = self.windows.get_mut(&start).filter(|w| !w.sealed) {
                w.undecided -= 1;
                if committed {
                    w.batches += 1;
                    w.digest ^= id.0;
                }
            }
        }
    }

    /// Per-plug load sums (and histograms, if asked) over the windows in [from, to), which
    /// must all be closed and decided. Analytics ask for sliding and growing ranges at every
    /// output boundary, so recent answers are kept and the nearest one is slid to the new
    /// range (add the windows that enter, subtract those that leave) instead of summing a
    /// day of windows again.
    pub fn range(
        &mut self,
        party: u16,
        parties: u16,
        from: u64,
        to: u64,
        with_histograms: bool,
        view: &View<'_>,
    ) -> Result<RangeResponse, RangeError> {
        self.archived.check_reach(from, self.retained_from)?;
        let closed_before = self.closed_before();
        if to > closed_before {
            return Err(RangeError::NotReady(NotReady {
                window: Window::containing(closed_before, self.window_secs),
                reason: format!(
                    "the range ends at {to}, windows are closed only up to {closed_before}"
                ),
            }));
        }
        if let Some((&start, w)) = self
            .windows
            .range(from..to)
            .find(|(_, w)| w.undecided > 0 || !w.sealed)
        {
            let reason = if w.undecided > 0 {
                format!("{} batches undecided", w.undecided)
            } else {
                "its sums are being gathered from the workers".to_string()
            };
            return Err(RangeError::NotReady(NotReady {
                window: Window {
                    start,
                    end: start.saturating_add(self.window_secs),
                },
                reason,
            }));
        }
        let step = self.window_secs;
        let windows_between = |a: u64, b: u64| a.abs_diff(b) / step;
        let fresh_cost = windows_between(from, to);
        let nearest = self
            .ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.with_histograms == with_histograms)
            .map(|(i, r)| (windows_between(r.from, from) + windows_between(r.to, to), i))
            .min();
        let nearest = nearest
            .filter(|(cost, _)| *cost < fresh_cost)
            .map(|(_, i)| i);
        let old = nearest.map(|i| (self.ranges[i].from, self.ranges[i].to));
        if from.min(old.map_or(from, |(f, _)| f)) < self.retained_from {
            let touched = archived::slid(old, (from, to));
            let needed = archived::needed(
                &self.archived,
                &touched,
                self.retained_from,
                with_histograms,
            )?;
            if let Some(needed) = needed {
                return Err(RangeError::NotLoaded(needed));
            }
        }
        let mut sums = match nearest {
            Some(i) => self.ranges.remove(i),
            None => RangeSums {
                from,
                to: from,
                with_histograms,
                ..RangeSums::default()
            },
        };
        if let Err(e) = self.slide(&mut sums, from, to) {
            // A half-slid range is wrong: it is dropped, not cached.
            return Err(RangeError::Storage(e));
        }
        let min_windows = i64::from(view.rules.min_data_windows);
        let response = RangeResponse {
            party,
            parties,
            policy: view.policy,
            from,
            to,
            batches: sums.batches as u64,
            batch_digest: sums.digest,
            plugs: sums
                .plugs
                .iter()
                .filter(|(plug, p)| p.windows >= min_windows && (view.keep)(Metric::Load, **plug))
                .map(|(plug, p)| PlugRange {
                    plug: *plug,
                    load: p.load,
                    histogram: p.histogram.clone(),
                })
                .collect(),
        };
        self.ranges.push(sums);
        if self.ranges.len() > RANGE_CACHE {
            self.ranges.remove(0);
        }
        Ok(response)
    }

    /// Moves `sums` from its range to [from, to).
    fn slide(&self, sums: &mut RangeSums, from: u64, to: u64) -> Result<(), CloudError> {
        // Windows only in the old range leave, windows only in the new one enter.
        let (old_from, old_to) = (sums.from, sums.to);
        let leave: Vec<u64> = self
            .windows_in(old_from, old_to)
            .map(|(s, _)| *s)
            .filter(|s| !(from..to).contains(s))
            .collect();
        let enter: Vec<u64> = self
            .windows_in(from, to)
            .map(|(s, _)| *s)
            .filter(|s| !(old_from..old_to).contains(s))
            .collect();
        for start in leave {
            self.apply_window(sums, start, false)?;
        }
        for start in enter {
            self.apply_window(sums, start, true)?;
        }
        sums.from = from;
        sums.to = to;
        Ok(())
    }

    fn apply_window(&self, sums: &mut RangeSums, start: u64, add: bool) -> Result<(), CloudError> {
        let Some(w) = self.window(start) else {
            return Ok(());
        };
        let window_sums = self.sums_of(start, w, sums.with_histograms)?;
        if add {
            sums.batches += w.batches as i64;
        } else {
            sums.batches -= w.batches as i64;
        }
        sums.digest ^= w.digest;
        let sign = if add { 1 } else { -1 };
        let mut touched = std::collections::BTreeSet::new();
        for ((metric, plug), p) in &window_sums.groups {
            if *metric == Metric::Load {
                touched.insert(*plug);
                let entry = &mut sums.plugs.entry(*plug).or_default().load;
                if add {
                    entry.merge(p);
                } else {
                    entry.unmerge(p);
                }
            }
        }
        if sums.with_histograms {
            for ((_, plug), counts) in &window_sums.histograms {
                touched.insert(*plug);
                let entry = &mut sums.plugs.entry(*plug).or_default().histogram;
                if add {
                    add_into(entry, counts);
                } else {
                    sub_from(entry, counts);
                }
            }
        }
        for plug in touched {
            let gone = sums.plugs.get_mut(&plug).is_some_and(|p| {
                p.windows += sign;
                p.windows == 0
            });
            if gone {
                sums.plugs.remove(&plug);
            }
        }
        Ok(())
    }

    /// COMPUTE over the windows starting in [from, to), summed per block of `view`'s scope
    /// and filtered by it: a block is ready when it is closed and every window in it is
    /// sealed and decided; of a ready block only the cells the policy lets `view` see leave.
    /// Also returns the fewest plugs behind any revealed cell (0 if none), for the audit log.
    pub fn compute(
        &self,
        party: u16,
        parties: u16,
        from: u64,
        to: u64,
        level: GroupLevel,
        view: &View<'_>,
    ) -> Result<(ComputeResponse, u64, std::time::Duration), CloudError> {
        let closed_before = self.closed_before();
        let mut fewest = u64::MAX;
        // Time spent on the policy (counting contributors, choosing cells), for the benchmark.
        let mut policy = std::time::Duration::ZERO;
        let block_secs = view.rules.block_secs(self.window_secs);
        let mut blocks: BTreeMap<u64, Vec<(u64, &WindowState)>> = BTreeMap::new();
        // The node reads them back first; summing without them would leave them out.
        match self.compute_needs(from, to) {
            Ok(None) => {}
            Ok(Some(needed)) => {
                return Err(CloudError::Archive(format!(
                    "archived hours {:?} are not read back",
                    needed.hours
                )))
            }
            Err(e) => return Err(CloudError::Archive(e.to_string())),
        }
        for (&start, w) in self.windows_in(from, to) {
            blocks
                .entry(block_start(start, block_secs))
                .or_default()
                .push((start, w));
        }
        let mut ready = Vec::new();
        let mut pending = Vec::new();
        for (start, windows) in blocks {
            let window = Window {
                start,
                end: start.saturating_add(block_secs),
            };
            let closed = window.end <= closed_before;
            let undecided: u64 = windows.iter().map(|(_, w)| w.undecided as u64).sum();
            if !closed || undecided > 0 || windows.iter().any(|(_, w)| !w.sealed) {
                pending.push(WindowPending {
                    window,
                    closed,
                    pending_batches: undecided,
                });
                continue;
            }
            let mut groups: BTreeMap<_, Partial> = BTreeMap::new();
            let mut census = Census::default();
            let (mut batches, mut batch_digest) = (0, 0);
            let mut kept = Vec::new();
            for (start, w) in windows {
                batches += w.batches;
                batch_digest ^= w.digest;
                kept.clear();
                for ((metric, key), p) in &self.sums_of(start, w, false)?.groups {
                    if !(view.keep)(*metric, *key) {
                        continue;
                    }
                    groups
                        .entry((*metric, level.project(*key)))
                        .or_default()
                        .merge(p);
                    kept.push((*metric, *key));
                }
                // Counted apart from the sums so the clock is read once per window.
                let counting = std::time::Instant::now();
                for &(metric, key) in &kept {
                    census.add(start, metric, key);
                }
                policy += counting.elapsed();
            }
            let choosing = std::time::Instant::now();
            let revealable = census.revealable(view.rules, level);
            let total = groups.len() as u64;
            groups.retain(|cell, _| revealable.contains_key(cell));
            if let Some(least) = revealable.values().min() {
                fewest = fewest.min(*least as u64);
            }
            policy += choosing.elapsed();
            ready.push(WindowPartial {
                window,
                batches,
                batch_digest,
                withheld: total - groups.len() as u64,
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
        let answer = ComputeResponse {
            party,
            parties,
            policy: view.policy,
            noisy: false,
            window_secs: self.window_secs,
            closed_before,
            ready,
            pending,
        };
        Ok((answer, if fewest == u64::MAX { 0 } else { fewest }, policy))
    }

    /// Counts for the status page.
    pub fn summary(&self) -> serde_json::Value {
        let unsealed = self.windows.values().filter(|w| !w.sealed).count();
        let undecided = self
            .batches
            .values()
            .filter(|s| !matches!(s, Stage::Done { .. }))
            .count();
        serde_json::json!({
            "watermark": self.watermark(),
            "closed_before": self.closed_before(),
            "windows": self.windows.len(),
            "batches": self.batches.len(),
            "undecided_batches": undecided,
            "windows_in_workers": unsealed,
            "windows_in_cold_store": self.windows.values().filter(|w| w.cold).count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcloud_core::share::record_values;
    use mcloud_core::wire::ShareRecord;

    fn record(key: u64, ts: u64, plug: u32, value: u64) -> ShareRecord {
        ShareRecord {
            key,
            ts,
            metric: Metric::Load,
            group: GroupKey {
                house: 0,
                household: 0,
                plug,
            },
            share: record_values(value),
        }
    }

    static OWNER: std::sync::LazyLock<ScopeRules> =
        std::sync::LazyLock::new(|| mcloud_core::disclosure::DisclosurePolicy::default().owner);

    /// The owner's view of every plug.
    fn everything() -> View<'static> {
        View {
            policy: [0; 32],
            rules: &OWNER,
            keep: &|_, _| true,
        }
    }

    /// Window `n` (of 30 s): three plugs reading `value`, `value + 1` and `value + 2`, the
    /// first plug's histogram at `count` in every bucket, committed and sealed in each of
    /// `into`.
    fn seal_window_of_three(into: &mut [&mut Windows], n: u64, value: u64, count: u64) {
        let start = n * 30;
        let records: Vec<ShareRecord> = (0..3)
            .map(|plug| record(n * 3 + plug + 1, start + plug, plug as u32, value + plug))
            .collect();
        let mut sums = sums_of(&records);
        sums.histograms.insert(
            (start, records[0].group),
            vec![CountField::from(count); mcloud_core::histogram::BUCKETS],
        );
        for w in into.iter_mut() {
            let id = BatchId(u128::from(n) + 1);
            assert!(matches!(w.register(id, vec![start]), Ok(Registered::New)));
            w.stored(id);
            w.decide(id, true);
            w.advance(start + 30);
            w.seal(start, sums.clone());
        }
    }

    /// What the workers would gather for a window: the committed records summed.
    fn sums_of(records: &[ShareRecord]) -> WindowSums {
        let mut sums = WindowSums::default();
        for r in records {
            sums.groups
                .entry((r.metric, r.group))
                .or_default()
                .add_shares(&r.share);
        }
        sums
    }

    /// A batch is foldable once it is final and every window up to its last is sealed, not
    /// before; taken once; and one past the retention horizon is no longer offered.
    #[test]
    fn batches_fold_once_every_window_up_to_their_last_is_sealed() {
        let mut w = Windows::new(30, 0, 0);
        let (a, b, c) = (BatchId(1), BatchId(2), BatchId(3));
        for (id, windows) in [(a, vec![0, 30]), (b, vec![30, 60]), (c, vec![90])] {
            assert!(matches!(w.register(id, windows), Ok(Registered::New)));
            w.stored(id);
        }
        w.decide(a, true);
        w.decide(c, false);
        w.advance(120);
        // Window 30 waits for b: only a's first window seals, and a is not foldable yet.
        w.seal(0, WindowSums::default());
        w.seal(30, WindowSums::default());
        assert!(w.take_foldable().is_empty());
        w.decide(b, true);
        for start in [30, 60] {
            w.seal(start, WindowSums::default());
        }
        assert_eq!(w.take_foldable(), vec![(a, 30), (b, 60)]);
        assert!(w.take_foldable().is_empty());
        w.seal(90, WindowSums::default());
        let folded = w.take_foldable();
        assert_eq!(folded, vec![(c, 90)]);
        w.untake(folded);
        w.forget_before(120);
        assert!(w.take_foldable().is_empty());
    }

    /// With one party the shares are the values, so sliding sums can be checked exactly
    /// against sums taken from scratch over any sequence of ranges.
    #[test]
    fn sliding_ranges_equal_fresh_sums() {
        let mut w = Windows::new(30, 0, 0);
        let mut key = 0;
        let mut gathered = Vec::new();
        for batch in 0..40u64 {
            let records: Vec<ShareRecord> = (0..10)
                .map(|i| {
                    key += 1;
                    record(key, batch * 30 + i, (i % 3) as u32, key * 7)
                })
                .collect();
            let id = BatchId(batch as u128 + 1);
            let windows = touched(records.iter().map(|r| r.ts), 30);
            assert!(matches!(w.register(id, windows), Ok(Registered::New)));
            w.stored(id);
            let committed = batch % 7 != 3;
            w.decide(id, committed);
            gathered.push((
                batch * 30,
                if committed {
                    sums_of(&records)
                } else {
                    WindowSums::default()
                },
            ));
        }
        w.advance(40 * 30);
        assert_eq!(w.sealable().len(), 40);
        for (start, sums) in gathered {
            w.seal(start, sums);
        }
        let ranges = [
            (0, 300),
            (30, 330),
            (60, 360),
            (0, 600),
            (300, 1200),
            (90, 120),
            (0, 1200),
            (600, 630),
        ];
        for (from, to) in ranges {
            let slid = w.range(0, 1, from, to, false, &everything()).unwrap();
            let mut fresh = Windows::new(30, 0, 40 * 30);
            std::mem::swap(&mut fresh.windows, &mut w.windows);
            let expected = fresh.range(0, 1, from, to, false, &everything()).unwrap();
            std::mem::swap(&mut fresh.windows, &mut w.windows);
            assert_eq!(slid, expected, "range [{from}, {to})");
            let count: u128 = slid.plugs.iter().map(|p| u128::from(p.load.count)).sum();
            let windows = (from..to).step_by(30).filter(|s| (s / 30) % 7 != 3).count();
            assert_eq!(count, windows as u128 * 10, "range [{from}, {to})");
        }
    }

    /// Windows past the hot horizon leave memory; ranges sliding over them and COMPUTE read
    /// them back from a real values table and answer exactly what an all-in-memory node
    /// answers.
    #[tokio::test]
    async fn cold_windows_answer_like_hot_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::store::Store::open(dir.path()).unwrap();
        let windows = 4 * HOT_SECS / 30;
        let mut cold = Windows::new(30, 0, 0);
        let mut hot = Windows::new(30, 0, 0);
        for n in 0..windows {
            let start = n * 30;
            seal_window_of_three(&mut [&mut cold, &mut hot], n, n * 11, n);
            let mut stored = crate::store::EncodedWindows::default();
            stored
                .add(start, &cold.sealed_window(start).unwrap())
                .unwrap();
            store.save_sealed(stored).await.unwrap();
        }
        cold.keep_cold_in(Box::new(store.clone()));
        let in_store = cold.summary()["windows_in_cold_store"].as_u64().unwrap();
        // Windows starting more than HOT_SECS before the newest one left memory.
        assert_eq!(in_store, windows - 1 - HOT_SECS / 30);
        let span = windows * 30;
        for step in 0..((span - 3600) / (8 * 30)) {
            let to = 3600 + step * 8 * 30;
            for (from, histograms) in [
                (to - 3600, true),
                (to.saturating_sub(3 * 3600), true),
                (to / 2 / 30 * 30, false),
            ] {
                assert_eq!(
                    cold.range(0, 1, from, to, histograms, &everything())
                        .unwrap(),
                    hot.range(0, 1, from, to, histograms, &everything())
                        .unwrap(),
                    "range [{from}, {to})"
                );
            }
        }
        assert_eq!(
            cold.compute(0, 1, 0, span, GroupLevel::House, &everything())
                .unwrap()
                .0,
            hot.compute(0, 1, 0, span, GroupLevel::House, &everything())
                .unwrap()
                .0
        );
    }

    /// Windows that went to the archive answer exactly what an all-in-memory node answers
    /// once their hours are read back: ranges sliding over the horizon, ranges of past days
    /// that make the node let hours go (and with them the ranges it kept over them), and
    /// COMPUTE. Before the archive begins, a range is refused by name; unread hours are
    /// never summed as if empty.
    #[test]
    fn archived_windows_answer_like_hot_ones() {
        const HOURS: u64 = 60;
        let mut hot = Windows::new(30, 0, 0);
        let mut archived = Windows::new(30, 0, 0);
        let mut files: BTreeMap<u64, Vec<(u64, SealedWindow)>> = BTreeMap::new();
        for n in 0..HOURS * 120 {
            let start = n * 30;
            seal_window_of_three(&mut [&mut hot, &mut archived], n, n * 7, n % 5);
            files
                .entry(start - start % 3600)
                .or_default()
                .push((start, archived.sealed_window(start).unwrap()));
        }
        // Hour 0 was dropped before the cloud archived; hours 1 to 54 went to the archive.
        let horizon = 55 * 3600;
        archived.note_archived(3600, (1..55).map(|h| h * 3600));
        archived.forget_before(horizon);
        let read_back = |w: &mut Windows, needed: &Needed| {
            let read = needed
                .hours
                .iter()
                .map(|h| {
                    let windows = files[h]
                        .iter()
                        .map(|(start, s)| {
                            let copy: SealedWindow =
                                postcard::from_bytes(&postcard::to_stdvec(s).unwrap()).unwrap();
                            (*start, copy)
                        })
                        .collect();
                    (*h, windows)
                })
                .collect();
            w.load_archived(read, needed);
        };
        // As the node asks: read back what a range needs, then ask again.
        let ask = |w: &mut Windows, from: u64, to: u64, histograms: bool| {
            for _ in 0..3 {
                match w.range(0, 1, from, to, histograms, &everything()) {
                    Err(RangeError::NotLoaded(needed)) => read_back(w, &needed),
                    other => return other,
                }
            }
            panic!("range [{from}, {to}) still needs hours after reading them back");
        };
        let unread = archived.range(0, 1, 7200, 10_800, false, &everything());
        assert!(
            matches!(&unread, Err(RangeError::NotLoaded(n)) if n.hours == vec![7200]),
            "{:?}",
            unread.map(|r| r.plugs.len())
        );
        assert!(matches!(
            ask(&mut archived, 1800, 7200, false),
            Err(RangeError::PastRetention { horizon: 3600, .. })
        ));
        assert!(matches!(
            ask(&mut archived, 25 * 3600, horizon, true),
            Err(RangeError::TooManyArchivedHours {
                hours: 30,
                limit: MAX_HOURS_WITH_HISTOGRAMS
            })
        ));
        // A day from hour 1 is kept for sliding; a day of later hours takes the memory
        // budget, so the first hours are let go; sliding the kept day reads back only the
        // hour it leaves.
        let day = |from: u64| (from, from + 86_400);
        for (from, to) in [day(3600), day(28 * 3600), day(3600 + 1800)] {
            assert_eq!(
                ask(&mut archived, from, to, true).unwrap(),
                hot.range(0, 1, from, to, true, &everything()).unwrap(),
                "range [{from}, {to})"
            );
        }
        for step in 0..((HOURS - 25) * 3) {
            let to = 25 * 3600 + step * 1200;
            for (from, histograms) in [
                (to - 24 * 3600, true),
                (to - 86_400 + 600, false),
                (to.saturating_sub(2 * 86_400).max(3600), false),
                ((to - 3600) / 2 / 30 * 30 + 3600, true),
            ] {
                let to = if histograms { to } else { from + 300 };
                assert_eq!(
                    ask(&mut archived, from, to, histograms).unwrap(),
                    hot.range(0, 1, from, to, histograms, &everything())
                        .unwrap(),
                    "range [{from}, {to})"
                );
            }
        }
        let span = HOURS * 3600;
        let needed = archived.compute_needs(0, span).unwrap().unwrap();
        assert!(!needed.histograms);
        assert_eq!(needed.all, (1..55).map(|h| h * 3600).collect::<Vec<_>>());
        assert!(archived
            .compute(0, 1, 3600, span, GroupLevel::House, &everything())
            .is_err());
        read_back(&mut archived, &needed);
        assert_eq!(archived.compute_needs(0, span).unwrap(), None);
        assert_eq!(
            archived
                .compute(0, 1, 3600, span, GroupLevel::House, &everything())
                .unwrap()
                .0,
            hot.compute(0, 1, 3600, span, GroupLevel::House, &everything())
                .unwrap()
                .0
        );
    }
}
