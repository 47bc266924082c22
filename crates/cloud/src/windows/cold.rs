//! Record sums of cold windows, kept after they were read back. Q1 asks for the same
//! earlier-day windows again within half an hour (its 1, 5 and 15 minute slices two slices
//! ahead cover the same half hour of the day before), and each read walks a window's
//! histograms, so a window's record sums are read once and then served from here. A sealed
//! window's sums never change, so nothing here goes stale; a window dropped by retention is
//! never asked for again and leaves by age.
//!
//! The last few windows read with their histograms are kept too: a collector behind the
//! stream slides Q2's hour and day ranges over the same entering window, one right after
//! the other, and decoding a window's histograms is most of a cold read's cost.

use super::{ColdStore, SealedWindow};
use crate::CloudError;
use mcloud_core::reading::{GroupKey, Metric};
use mcloud_core::Partial;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Bytes of record sums kept per cloud: at 100 plugs about 2,000 windows (17 hours), at the
/// full DEBS size (2,120 plugs) about 100 (50 minutes).
pub const SUMS_CACHE_BYTES: usize = 32 << 20;

/// Windows kept with their histograms (at the full DEBS size about 3.4 MB each).
const FULL_WINDOWS: usize = 4;

/// A cold store whose reads without histograms are cached.
pub struct CachedSums {
    inner: Box<dyn ColdStore>,
    budget: usize,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    windows: HashMap<u64, (SealedWindow, usize)>,
    /// Starts in the order they were read, the oldest first out.
    order: VecDeque<u64>,
    bytes: usize,
    reads: u64,
    /// The last windows read with their histograms, the newest last.
    full: VecDeque<(u64, SealedWindow)>,
    full_reads: u64,
}

impl CachedSums {
    /// Keeps at most `budget` bytes of record sums.
    pub fn new(inner: Box<dyn ColdStore>, budget: usize) -> CachedSums {
        CachedSums {
            inner,
            budget,
            cache: Mutex::default(),
        }
    }

    /// Reads that went to the store for record sums (for the tests).
    #[cfg(test)]
    pub fn store_reads(&self) -> u64 {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).reads
    }

    /// Reads that went to the store for histograms (for the tests).
    #[cfg(test)]
    pub fn full_store_reads(&self) -> u64 {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .full_reads
    }

    fn load_full(&self, start: u64) -> Result<Option<SealedWindow>, CloudError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, window)) = cache.full.iter().find(|(s, _)| *s == start) {
            return Ok(Some(window.clone()));
        }
        cache.full_reads += 1;
        let Some(window) = self.inner.load(start, true)? else {
            return Ok(None);
        };
        if cache.full.len() == FULL_WINDOWS {
            cache.full.pop_front();
        }
        cache.full.push_back((start, window.clone()));
        Ok(Some(window))
    }
}

/// What a window's record sums take in memory, roughly: each entry's key and sums, and the
/// map's own overhead.
fn weight(window: &SealedWindow) -> usize {
    let (sums, _, _) = window.parts();
    let entry = std::mem::size_of::<((Metric, GroupKey), Partial)>();
    sums.groups.len() * (entry + 16) + 64
}

impl ColdStore for CachedSums {
    fn load(&self, start: u64, histograms: bool) -> Result<Option<SealedWindow>, CloudError> {
        if histograms {
            return self.load_full(start);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((window, _)) = cache.windows.get(&start) {
            return Ok(Some(window.clone()));
        }
        cache.reads += 1;
        let Some(window) = self.inner.load(start, false)? else {
            return Ok(None);
        };
        let bytes = weight(&window);
        if bytes > self.budget {
            return Ok(Some(window));
        }
        while cache.bytes + bytes > self.budget {
            let Some(oldest) = cache.order.pop_front() else {
                break;
            };
            if let Some((_, gone)) = cache.windows.remove(&oldest) {
                cache.bytes -= gone;
            }
        }
        cache.order.push_back(start);
        cache.bytes += bytes;
        cache.windows.insert(start, (window.clone(), bytes));
        Ok(Some(window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EncodedWindows, Store};
    use crate::sums::WindowSums;
    use mcloud_core::{CountField, Field};

    /// A window of `plugs` plugs' record sums and histograms.
    fn window(plugs: u32) -> SealedWindow {
        let mut sums = WindowSums::default();
        for plug in 0..plugs {
            let key = GroupKey {
                house: 1,
                household: 0,
                plug,
            };
            let x = Field::from(u128::from(plug) + 1);
            let partial = Partial {
                sum: x,
                sumsq: x * x,
                count: Field::from(1),
            };
            sums.groups.insert((Metric::Load, key), partial);
            sums.histograms
                .insert((0, key), vec![CountField::from(1); 195]);
        }
        SealedWindow::from_parts(sums, 1, u128::from(plugs))
    }

    /// Record sums are read from the store once and then served from memory, as the store
    /// holds them; histograms always come from the store; the oldest window leaves first when
    /// the budget is full.
    #[tokio::test]
    async fn record_sums_are_read_once_and_the_oldest_leave_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let mut encoded = EncodedWindows::default();
        for start in [0, 30, 60, 90] {
            encoded.add(start, &window(10)).unwrap();
        }
        store.save_sealed(encoded).await.unwrap();
        // Room for three windows of ten plugs' record sums.
        let budget = 3 * weight(&window(10)) + weight(&window(10)) / 2;
        let cached = CachedSums::new(Box::new(store), budget);

        for _ in 0..3 {
            let read = cached.load(30, false).unwrap().unwrap();
            let (sums, batches, digest) = read.parts();
            assert_eq!((sums.groups.len(), sums.histograms.len()), (10, 0));
            assert_eq!((batches, digest), (1, 10));
        }
        assert_eq!(cached.store_reads(), 1);
        let full = cached.load(30, true).unwrap().unwrap();
        assert_eq!(full.parts().0.histograms.len(), 10);
        assert_eq!(cached.full_store_reads(), 1);
        assert!(cached.load(120, false).unwrap().is_none(), "not stored");

        for start in [0, 60, 90] {
            cached.load(start, false).unwrap().unwrap();
        }
        // 30, 0, 60 and 90 were read in that order: 30 left to make room for 90.
        let before = cached.store_reads();
        cached.load(90, false).unwrap().unwrap();
        assert_eq!(cached.store_reads(), before);
        cached.load(30, false).unwrap().unwrap();
        assert_eq!(cached.store_reads(), before + 1);
    }

    /// The last windows read with histograms are served again from memory, the oldest of
    /// them leaving first, and equal what the store holds.
    #[tokio::test]
    async fn the_last_windows_read_with_histograms_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let mut encoded = EncodedWindows::default();
        let starts: Vec<u64> = (0..=FULL_WINDOWS as u64).map(|n| n * 30).collect();
        for &start in &starts {
            encoded.add(start, &window(3 + start as u32 / 30)).unwrap();
        }
        store.save_sealed(encoded).await.unwrap();
        let direct = store.read_sealed(60, true).unwrap().unwrap();
        let cached = CachedSums::new(Box::new(store), SUMS_CACHE_BYTES);

        for &start in &starts[..FULL_WINDOWS] {
            cached.load(start, true).unwrap().unwrap();
        }
        let again = cached.load(60, true).unwrap().unwrap();
        assert_eq!(cached.full_store_reads(), FULL_WINDOWS as u64);
        assert_eq!(again.parts().0.histograms, direct.parts().0.histograms);
        assert_eq!(again.parts().0.histograms.len(), 5);
        // One more window: the first read leaves.
        cached.load(starts[FULL_WINDOWS], true).unwrap().unwrap();
        cached.load(30, true).unwrap().unwrap();
        assert_eq!(cached.full_store_reads(), FULL_WINDOWS as u64 + 1);
        cached.load(0, true).unwrap().unwrap();
        assert_eq!(cached.full_store_reads(), FULL_WINDOWS as u64 + 2);
    }
}
