//! Cuts a stream of readings into batches that every cloud accepts, whatever the shape of
//! the data: a batch holds at most `batch_size` readings, and its upload body, counted with
//! the worst-case size of each record and histogram, never exceeds
//! [`UPLOAD_TARGET_BYTES`] (a fraction of the clouds' body limit).
//!
//! Counting readings alone is not enough: a batch of many slow plugs spans many 30 s
//! windows, and each (plug, window) adds a dense histogram of about as many bytes as 50
//! readings. Histograms complete when the stream passes their window; when more complete at
//! once than fit beside the readings, the rest wait in the batcher and leave first in the
//! next batches (histogram-only, if need be). While any wait, the batcher tells the sensor the
//! oldest of their windows, so the sensor's progress never closes a window whose histogram
//! has not left yet.

use crate::histograms::Histograms;
use crate::outbox::{PlainBatch, PlainHistogram};
use mcloud_core::wire::{
    upload_wire_bytes_max, HISTOGRAM_WINDOW_SECS, MAX_BATCH_RECORDS, UPLOAD_TARGET_BYTES,
};
use mcloud_core::Reading;
use std::collections::VecDeque;

/// One batch to send, and the oldest window start of histograms the batcher still holds.
pub struct Cut {
    pub batch: PlainBatch,
    pub held_back: Option<u64>,
}

pub struct Batcher<I> {
    sensor: u32,
    readings: I,
    batch_size: usize,
    histograms: Option<Histograms>,
    /// Completed histograms that did not fit in the batch they completed in.
    waiting: VecDeque<PlainHistogram>,
    /// The 30 s window of the newest reading: histograms complete when it moves on.
    window: Option<u64>,
    ended: bool,
    /// The largest body of so many records and histograms: plain shares', or robust
    /// reports' (several times larger: each carries its share of a proof).
    body_bytes_max: fn(usize, usize) -> usize,
}

impl<I: Iterator<Item = Reading>> Batcher<I> {
    /// Batches of sensor `sensor`.
    pub fn new(sensor: u32, readings: I, batch_size: usize, histograms: bool) -> Batcher<I> {
        Batcher {
            sensor,
            readings,
            batch_size: batch_size.clamp(1, MAX_BATCH_RECORDS),
            histograms: histograms.then(Histograms::default),
            waiting: VecDeque::new(),
            window: None,
            ended: false,
            body_bytes_max: upload_wire_bytes_max,
        }
    }

    /// Cuts batches whose robust reports (`mcloud_core::robust`) fit the byte target.
    pub fn robust(mut self, robust: bool) -> Batcher<I> {
        if robust {
            self.body_bytes_max = mcloud_core::robust::upload_wire_bytes_max;
        }
        self
    }

    fn fits(&self, readings: usize, histograms: usize) -> bool {
        readings + histograms <= MAX_BATCH_RECORDS
            && (self.body_bytes_max)(readings, histograms) <= UPLOAD_TARGET_BYTES
    }

    /// Moves waiting histograms into `out` while they fit beside `readings` readings.
    fn take_waiting(&mut self, readings: usize, out: &mut Vec<PlainHistogram>) {
        while !self.waiting.is_empty() && self.fits(readings, out.len() + 1) {
            out.extend(self.waiting.pop_front());
        }
    }

    fn cut(&mut self, readings: Vec<Reading>, histograms: Vec<PlainHistogram>) -> Option<Cut> {
        if readings.is_empty() && histograms.is_empty() {
            return None;
        }
        Some(Cut {
            batch: PlainBatch::with_histograms(self.sensor, readings, histograms),
            held_back: self.waiting.iter().map(|h| h.window_start).min(),
        })
    }
}

impl<I: Iterator<Item = Reading>> Iterator for Batcher<I> {
    type Item = Cut;

    fn next(&mut self) -> Option<Cut> {
        let mut histograms = Vec::new();
        self.take_waiting(0, &mut histograms);
        if !self.waiting.is_empty() {
            return self.cut(Vec::new(), histograms);
        }
        let mut readings = Vec::new();
        while !self.ended
            && readings.len() < self.batch_size
            && self.fits(readings.len() + 1, histograms.len())
        {
            let Some(reading) = self.readings.next() else {
                self.ended = true;
                break;
            };
            if let Some(h) = self.histograms.as_mut() {
                h.add(&reading);
                let window = reading.ts - reading.ts % HISTOGRAM_WINDOW_SECS;
                if self.window.is_some_and(|w| window > w) {
                    self.waiting.extend(h.complete_before(reading.ts));
                }
                self.window = Some(self.window.map_or(window, |w| w.max(window)));
            }
            readings.push(reading);
            self.take_waiting(readings.len(), &mut histograms);
            if !self.waiting.is_empty() {
                break;
            }
        }
        if self.ended {
            if let Some(h) = self.histograms.as_mut() {
                self.waiting.extend(h.drain());
            }
            self.take_waiting(readings.len(), &mut histograms);
        }
        self.cut(readings, histograms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcloud_core::wire::HISTOGRAM_WIRE_BYTES_MAX;
    use mcloud_core::{GroupKey, Metric};

    /// `plugs` plugs, each reading once per `interval` seconds, for `secs` seconds.
    fn stream(plugs: u32, interval: u64, secs: u64) -> impl Iterator<Item = Reading> {
        (0..secs).step_by(interval as usize).flat_map(move |ts| {
            (0..plugs).map(move |plug| Reading {
                id: ts * 10_000 + u64::from(plug),
                ts: 1_000_000_020 + ts,
                value: u64::from(plug) * 1000 + ts % 7,
                metric: Metric::Load,
                group: GroupKey {
                    house: 0,
                    household: plug / 50,
                    plug,
                },
            })
        })
    }

    fn check_shape(plugs: u32, interval: u64, secs: u64, batch_size: usize) {
        let cuts: Vec<Cut> =
            Batcher::new(1, stream(plugs, interval, secs), batch_size, true).collect();
        let mut readings = 0;
        let mut histograms = std::collections::HashMap::new();
        for cut in &cuts {
            let b = &cut.batch;
            assert!(b.readings.len() <= batch_size);
            let bytes = upload_wire_bytes_max(b.readings.len(), b.histograms.len());
            assert!(
                bytes <= UPLOAD_TARGET_BYTES,
                "a batch may encode to {bytes} bytes"
            );
            readings += b.readings.len();
            for h in &b.histograms {
                let n: u64 = h.counts.iter().sum();
                assert!(histograms.insert((h.plug, h.window_start), n).is_none());
            }
        }
        let expected = stream(plugs, interval, secs).count();
        assert_eq!(readings, expected);
        assert_eq!(histograms.values().sum::<u64>(), expected as u64);
        let windows = secs / HISTOGRAM_WINDOW_SECS.max(interval);
        assert_eq!(histograms.len() as u64, windows * u64::from(plugs));
    }

    /// A house of many slow plugs: one 4096-reading batch would span ~38 minutes and carry
    /// thousands of histograms, far beyond the clouds' body limit.
    #[test]
    fn many_slow_plugs_stay_under_the_body_limit() {
        check_shape(107, 60, 6 * 3600, 4096);
    }

    /// A few fast plugs: batches are cut by count, histograms ride along.
    #[test]
    fn few_fast_plugs_are_cut_by_count() {
        check_shape(3, 1, 3600, 4096);
        let sizes: Vec<usize> = Batcher::new(1, stream(3, 1, 3600), 4096, true)
            .map(|c| c.batch.readings.len())
            .collect();
        assert!(sizes[..sizes.len() - 1].iter().all(|&n| n == 4096));
    }

    /// More plugs than one batch can carry histograms for at once: some histograms wait and
    /// leave in the next batches, and the batcher names the oldest window that waits.
    #[test]
    fn histograms_that_do_not_fit_wait_for_the_next_batch() {
        let per_batch = UPLOAD_TARGET_BYTES / HISTOGRAM_WIRE_BYTES_MAX;
        let plugs = (per_batch + per_batch / 2) as u32;
        check_shape(plugs, 30, 120, 1_000_000);
        let cuts: Vec<Cut> = Batcher::new(1, stream(plugs, 30, 120), 1_000_000, true).collect();
        assert!(cuts.iter().any(|c| c.held_back.is_some()));
        assert!(cuts.iter().any(|c| c.batch.readings.is_empty()));
    }

    #[test]
    fn without_histograms_only_the_count_cuts() {
        let cuts: Vec<Cut> = Batcher::new(1, stream(10, 1, 100), 64, false).collect();
        assert_eq!(cuts.len(), 1000usize.div_ceil(64));
        assert!(cuts
            .iter()
            .all(|c| c.batch.histograms.is_empty() && c.held_back.is_none()));
    }

    /// A restarted sensor cuts its input again and drops the batches it had taken: what
    /// follows is what the first run would have sent next, histograms of the windows open
    /// at the restart included.
    #[test]
    fn cutting_again_and_skipping_continues_the_same_batches() {
        let content = |c: Cut| (c.batch.readings, c.batch.histograms, c.held_back);
        let whole: Vec<_> = Batcher::new(1, stream(7, 1, 600), 50, true)
            .map(content)
            .collect();
        for taken in [1, 13, 40, whole.len() - 1] {
            let rest: Vec<_> = Batcher::new(1, stream(7, 1, 600), 50, true)
                .skip(taken)
                .map(content)
                .collect();
            assert_eq!(rest, whole[taken..], "after {taken} batches");
        }
    }
}
