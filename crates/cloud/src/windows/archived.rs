//! Windows past the retention horizon, as far as the archive holds them and requests have
//! read them back. A range slides from a kept one by the windows that enter and leave it, so
//! it needs only the hours of those; a COMPUTE needs every hour it covers, without
//! histograms. Read-back hours stay for later requests (Q1 asks for the same slices of past
//! days at every boundary, Q2's day slides one window at a time) within a memory budget.

use super::{RangeError, SealedWindow, WindowState};
use crate::store::Archive;
use std::collections::{BTreeMap, BTreeSet};

/// Memory that read-back windows may keep between requests; a request's own hours stay
/// while it is answered, whatever they take. Unit tests' windows are small: their budget is
/// too, so that hours are let go there as well.
const MAX_LOADED_BYTES: usize = if cfg!(test) { 1 << 20 } else { 128 << 20 };

/// Most archived hours one request may read back at once: a day with histograms (a day not
/// aligned to hours spans 25 files), a week without.
pub const MAX_HOURS_WITH_HISTOGRAMS: usize = 26;
pub const MAX_HOURS_WITHOUT: usize = 7 * 24;

/// Archived hours a request needs read back first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needed {
    /// Those not read back yet.
    pub hours: Vec<u64>,
    /// Every hour the request reads: none of them is let go to make room for the others.
    pub all: Vec<u64>,
    pub histograms: bool,
}

struct Loaded {
    starts: Vec<u64>,
    histograms: bool,
    bytes: usize,
}

#[derive(Default)]
pub(super) struct Archived {
    /// Windows dropped from here on were archived first (None: this cloud does not archive,
    /// or never dropped anything yet).
    pub(super) from: Option<u64>,
    /// The hours that have an archive file.
    pub(super) hours: BTreeSet<u64>,
    loaded: BTreeMap<u64, Loaded>,
    loaded_bytes: usize,
    pub(super) windows: BTreeMap<u64, WindowState>,
}

/// What a window's sums take in memory, roughly: a cell per group and a count per bucket.
fn bytes_of(w: &WindowState) -> usize {
    let histograms: usize = w.sums.histograms.values().map(Vec::len).sum();
    64 + 96 * w.sums.groups.len() + 8 * histograms + 48 * w.sums.histograms.len()
}

impl Archived {
    /// Refuses a request starting at `from` before what the archive holds.
    pub(super) fn check_reach(&self, from: u64, retained_from: u64) -> Result<(), RangeError> {
        match self.from {
            _ if from >= retained_from => Ok(()),
            Some(archived_from) if from >= archived_from => Ok(()),
            archived_from => Err(RangeError::PastRetention {
                from,
                horizon: archived_from.unwrap_or(retained_from),
            }),
        }
    }

    /// The archived hours holding windows that start in [from, to) (before `retained_from`).
    pub(super) fn hours_in(&self, from: u64, to: u64, retained_from: u64) -> Vec<u64> {
        let first = Archive::hour_of(from);
        let end = to.min(retained_from).max(first);
        self.hours.range(first..end).copied().collect()
    }

    /// Of `hours`, those not read back (or read back without the histograms asked for).
    pub(super) fn missing(&self, hours: &[u64], histograms: bool) -> Vec<u64> {
        hours
            .iter()
            .filter(|h| {
                self.loaded
                    .get(h)
                    .is_none_or(|l| histograms && !l.histograms)
            })
            .copied()
            .collect()
    }

    /// Takes in hours read back for a request that needs `needed` (histograms dropped
    /// unless it asks for them), then lets go of hours read before while the budget is
    /// passed, never one of `needed`.
    pub(super) fn load(
        &mut self,
        read: Vec<(u64, Vec<(u64, SealedWindow)>)>,
        histograms: bool,
        needed: &[u64],
    ) {
        for (hour, windows) in read {
            self.forget(hour);
            let mut loaded = Loaded {
                starts: Vec::with_capacity(windows.len()),
                histograms,
                bytes: 0,
            };
            for (start, mut w) in windows {
                if !histograms {
                    w.sums.histograms.clear();
                }
                let state = WindowState {
                    undecided: 0,
                    sums: w.sums,
                    batches: w.batches,
                    digest: w.digest,
                    sealed: true,
                    cold: false,
                };
                loaded.bytes += bytes_of(&state);
                loaded.starts.push(start);
                self.windows.insert(start, state);
            }
            self.loaded_bytes += loaded.bytes;
            self.loaded.insert(hour, loaded);
        }
        while self.loaded_bytes > MAX_LOADED_BYTES {
            let Some(&hour) = self.loaded.keys().find(|h| !needed.contains(h)) else {
                break;
            };
            self.forget(hour);
        }
    }

    fn forget(&mut self, hour: u64) {
        if let Some(loaded) = self.loaded.remove(&hour) {
            self.loaded_bytes -= loaded.bytes;
            for start in loaded.starts {
                self.windows.remove(&start);
            }
        }
    }

    pub(super) fn summary(&self, on: bool) -> serde_json::Value {
        serde_json::json!({
            "on": on,
            "archived_from": self.from,
            "hours": self.hours.len(),
            "hours_read_back": self.loaded.len(),
            "bytes_read_back": self.loaded_bytes,
        })
    }
}

/// The archived hours a request over `intervals` needs, refused when they are more than
/// one request may read back.
pub(super) fn needed(
    archived: &Archived,
    intervals: &[(u64, u64)],
    retained_from: u64,
    histograms: bool,
) -> Result<Option<Needed>, RangeError> {
    let mut hours: Vec<u64> = intervals
        .iter()
        .flat_map(|&(from, to)| archived.hours_in(from, to, retained_from))
        .collect();
    hours.sort_unstable();
    hours.dedup();
    let limit = if histograms {
        MAX_HOURS_WITH_HISTOGRAMS
    } else {
        MAX_HOURS_WITHOUT
    };
    if hours.len() > limit {
        return Err(RangeError::TooManyArchivedHours {
            hours: hours.len(),
            limit,
        });
    }
    let missing = archived.missing(&hours, histograms);
    Ok((!missing.is_empty()).then_some(Needed {
        hours: missing,
        all: hours,
        histograms,
    }))
}

/// Windows from `old` that `new` leaves, and those it adds: what sliding one into the
/// other touches.
pub(super) fn slid(old: Option<(u64, u64)>, new: (u64, u64)) -> Vec<(u64, u64)> {
    let Some((old_from, old_to)) = old else {
        return vec![new];
    };
    let (from, to) = new;
    let mut out = Vec::new();
    // Leaving: [old_from, old_to) minus [from, to); entering: [from, to) minus the old.
    for (a, b, c, d) in [(old_from, old_to, from, to), (from, to, old_from, old_to)] {
        if a < c.min(b) {
            out.push((a, c.min(b)));
        }
        if d.max(a) < b {
            out.push((d.max(a), b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::slid;

    #[test]
    fn a_slide_touches_only_what_enters_and_leaves() {
        assert_eq!(slid(None, (10, 20)), vec![(10, 20)]);
        assert_eq!(slid(Some((0, 10)), (5, 15)), vec![(0, 5), (10, 15)]);
        assert_eq!(slid(Some((0, 30)), (10, 20)), vec![(0, 10), (20, 30)]);
        assert_eq!(slid(Some((10, 20)), (0, 30)), vec![(0, 10), (20, 30)]);
        assert_eq!(slid(Some((0, 10)), (20, 30)), vec![(0, 10), (20, 30)]);
        assert_eq!(slid(Some((0, 10)), (0, 10)), Vec::<(u64, u64)>::new());
    }
}
