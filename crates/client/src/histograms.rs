//! The sensor's own load histograms: each load reading counts in its plug's 30 s window, and
//! a window's histogram leaves the sensor once, when the stream has moved past the window,
//! instead of once per batch that happens to carry some of its readings.

use crate::outbox::PlainHistogram;
use mcloud_core::histogram::{bucket_of, BUCKETS};
use mcloud_core::wire::HISTOGRAM_WINDOW_SECS;
use mcloud_core::{GroupKey, Metric, Reading, Window};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Histograms {
    open: BTreeMap<(u64, GroupKey), Vec<u64>>,
}

impl Histograms {
    pub fn add(&mut self, r: &Reading) {
        if r.metric != Metric::Load {
            return;
        }
        let start = Window::containing(r.ts, HISTOGRAM_WINDOW_SECS).start;
        self.open
            .entry((start, r.group))
            .or_insert_with(|| vec![0; BUCKETS])[bucket_of(r.value)] += 1;
    }

    /// Takes the histograms of windows that end at or before `ts`: with the input in time
    /// order, no reading of theirs can follow.
    pub fn complete_before(&mut self, ts: u64) -> Vec<PlainHistogram> {
        let Some(first_open) = (ts + 1).checked_sub(HISTOGRAM_WINDOW_SECS) else {
            return Vec::new();
        };
        let keep = self.open.split_off(&(first_open, GroupKey::MIN));
        let done = std::mem::replace(&mut self.open, keep);
        done.into_iter().map(Self::plain).collect()
    }

    /// Takes every histogram (end of stream).
    pub fn drain(&mut self) -> Vec<PlainHistogram> {
        std::mem::take(&mut self.open)
            .into_iter()
            .map(Self::plain)
            .collect()
    }

    fn plain(((window_start, plug), counts): ((u64, GroupKey), Vec<u64>)) -> PlainHistogram {
        PlainHistogram {
            plug,
            window_start,
            counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(ts: u64, plug: u32, value: u64) -> Reading {
        Reading {
            id: ts * 100 + plug as u64,
            ts,
            value,
            metric: Metric::Load,
            group: GroupKey {
                house: 0,
                household: 0,
                plug,
            },
        }
    }

    #[test]
    fn windows_complete_once_the_stream_passes_them() {
        let mut h = Histograms::default();
        for ts in [0, 10, 29, 30, 59, 60] {
            h.add(&load(ts, 1, 1000));
        }
        assert!(h.complete_before(29).is_empty());
        let done = h.complete_before(30);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].window_start, 0);
        assert_eq!(done[0].counts.iter().sum::<u64>(), 3);
        assert_eq!(h.complete_before(61).len(), 1);
        let rest = h.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].window_start, 60);
    }
}
