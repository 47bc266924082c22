//! What the operators may see: per-plug sums over 30-second windows, never single readings.
//!
//! A sensor reduces its load readings to one [`PlugWindow`] per 30 s window (count, sum and a
//! one-hot histogram per reading, summed), the clouds add shares of these up over a range, and
//! only the range totals are revealed. [`AggregateSource`] is that range query; the operators
//! read data through it alone, so the collector can answer it by asking the clouds while
//! [`MemorySource`] answers it from plaintext windows.

use crate::histogram::{self, BUCKETS};
use mcloud_core::{GroupKey, Metric, Reading};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// Length of the smallest revealed window, in seconds; every range is a multiple of it.
pub const WINDOW_SECS: u64 = 30;

/// Totals of one plug's load readings in one 30 s window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlugWindow {
    /// The plug.
    pub plug: GroupKey,
    /// Start of the window, Unix seconds, a multiple of [`WINDOW_SECS`].
    pub window_start: u64,
    /// Number of load readings.
    pub count: u64,
    /// Sum of the readings, fixed-point.
    pub sum: u128,
    /// Readings per load bucket, [`BUCKETS`] entries (see [`crate::histogram`]).
    pub histogram: Vec<u64>,
}

/// Number and fixed-point sum of one plug's load readings over a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountSum {
    /// Number of readings.
    pub count: u64,
    /// Sum of the readings, fixed-point.
    pub sum: u128,
}

impl CountSum {
    /// Average in fixed-point units, `None` without readings.
    pub fn average(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }
}

/// Why aggregates could not be had.
#[derive(Debug, Error)]
pub enum SourceError {
    /// A range must start and end on 30 s boundaries.
    #[error("range [{from}, {to}) is not aligned to {WINDOW_SECS}-second windows")]
    Unaligned { from: u64, to: u64 },
    /// A window must start on a 30 s boundary.
    #[error("window of plug {plug:?} starts at {window_start}, not a multiple of {WINDOW_SECS}")]
    WindowUnaligned { plug: GroupKey, window_start: u64 },
    /// Every histogram uses the shared bucket scheme.
    #[error("window of plug {plug:?} at {window_start}: histogram has {found} buckets, expected {BUCKETS}")]
    HistogramLength {
        plug: GroupKey,
        window_start: u64,
        found: usize,
    },
    /// A histogram counts every reading exactly once, so its total must equal the count.
    #[error("window of plug {plug:?} at {window_start}: histogram counts {histogram} readings, count is {count}")]
    HistogramCount {
        plug: GroupKey,
        window_start: u64,
        histogram: u64,
        count: u64,
    },
    /// Whatever went wrong behind the source (network, clouds, storage).
    #[error("aggregate source: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Range queries over revealed per-plug aggregates. Ranges are `[from, to)` in Unix seconds,
/// both multiples of [`WINDOW_SECS`]. Plugs without a reading in the range are left out.
///
/// Methods take `&mut self` so that an implementation may cache or hold connections.
/// Ranges the operators are about to ask for at one boundary, so that a remote source can
/// fetch them all in one round trip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub count_sums: Vec<(u64, u64)>,
    pub histograms: Vec<(u64, u64)>,
}

pub trait AggregateSource {
    /// Hint: calls to come will ask for these ranges (one boundary's worth). The default does
    /// nothing; a remote source fetches them together and answers the calls from what it
    /// fetched.
    fn prefetch(&mut self, _wanted: &Wanted) -> Result<(), SourceError> {
        Ok(())
    }

    /// How many boundaries ahead of the one being computed the driver announces with
    /// `prefetch`: a remote source keeps that many round trips in flight.
    fn lookahead(&self) -> usize {
        0
    }

    /// Per-plug number and sum of load readings in `[from, to)`.
    fn count_sum(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<GroupKey, CountSum>, SourceError>;

    /// Per-plug load histograms ([`BUCKETS`] entries) of `[from, to)`.
    fn histograms(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<GroupKey, Vec<u64>>, SourceError>;
}

fn check_range(from: u64, to: u64) -> Result<(), SourceError> {
    if from % WINDOW_SECS != 0 || to % WINDOW_SECS != 0 {
        return Err(SourceError::Unaligned { from, to });
    }
    Ok(())
}

/// What a sensor computes locally before sharing: one window per plug and 30 s window with
/// readings, from the load readings among `readings` (any order). Sorted by window, then plug.
pub fn windows_from_readings<'a>(
    readings: impl IntoIterator<Item = &'a Reading>,
) -> Vec<PlugWindow> {
    let mut windows: BTreeMap<(u64, GroupKey), PlugWindow> = BTreeMap::new();
    for reading in readings {
        if reading.metric != Metric::Load {
            continue;
        }
        let window_start = reading.ts - reading.ts % WINDOW_SECS;
        let window = windows
            .entry((window_start, reading.group))
            .or_insert_with(|| PlugWindow {
                plug: reading.group,
                window_start,
                count: 0,
                sum: 0,
                histogram: vec![0; BUCKETS],
            });
        window.count += 1;
        window.sum += u128::from(reading.value);
        window.histogram[histogram::bucket_of(reading.value)] += 1;
    }
    windows.into_values().collect()
}

/// One window's histogram, keeping only the buckets in use (most windows hold a few readings).
type SparseHistogram = Vec<(usize, u64)>;

/// A running histogram sum over the last range asked for, so that sliding a range by one
/// window costs one window added and one removed.
struct Sliding {
    from: u64,
    to: u64,
    plugs: BTreeMap<GroupKey, (u64, Vec<u64>)>,
}

/// An [`AggregateSource`] over plaintext windows, summing them the way the clouds sum shares.
pub struct MemorySource {
    /// Per plug, cumulative (count, sum) after each of its windows, by window start.
    prefix: BTreeMap<GroupKey, Vec<(u64, u64, u128)>>,
    histograms: BTreeMap<u64, Vec<(GroupKey, SparseHistogram)>>,
    /// Keyed by range length: the operators slide fixed-length windows.
    sliding: HashMap<u64, Sliding>,
}

impl MemorySource {
    /// Checks and indexes windows; windows of the same plug and start are added up.
    pub fn new(windows: impl IntoIterator<Item = PlugWindow>) -> Result<MemorySource, SourceError> {
        let mut merged: BTreeMap<(GroupKey, u64), PlugWindow> = BTreeMap::new();
        for window in windows {
            validate(&window)?;
            match merged.entry((window.plug, window.window_start)) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(window);
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    let total = slot.get_mut();
                    total.count = total.count.saturating_add(window.count);
                    total.sum = total.sum.saturating_add(window.sum);
                    histogram::add_into(&mut total.histogram, &window.histogram);
                }
            }
        }
        let mut prefix: BTreeMap<GroupKey, Vec<(u64, u64, u128)>> = BTreeMap::new();
        let mut histograms: BTreeMap<u64, Vec<(GroupKey, SparseHistogram)>> = BTreeMap::new();
        for ((plug, start), window) in merged {
            if window.count == 0 {
                continue;
            }
            let cumulative = prefix.entry(plug).or_default();
            let (count, sum) = cumulative.last().map_or((0, 0), |&(_, c, s)| (c, s));
            cumulative.push((
                start,
                count.saturating_add(window.count),
                sum.saturating_add(window.sum),
            ));
            let sparse = window
                .histogram
                .iter()
                .enumerate()
                .filter(|(_, &count)| count > 0)
                .map(|(bucket, &count)| (bucket, count))
                .collect();
            histograms.entry(start).or_default().push((plug, sparse));
        }
        Ok(MemorySource {
            prefix,
            histograms,
            sliding: HashMap::new(),
        })
    }

    /// Adds (or, with `remove`, takes away) every window starting in `[from, to)`.
    fn apply(
        &self,
        plugs: &mut BTreeMap<GroupKey, (u64, Vec<u64>)>,
        from: u64,
        to: u64,
        remove: bool,
    ) {
        for windows in self.histograms.range(from..to).map(|(_, w)| w) {
            for (plug, sparse) in windows {
                let (total, histogram) =
                    plugs.entry(*plug).or_insert_with(|| (0, vec![0; BUCKETS]));
                for &(bucket, count) in sparse {
                    if remove {
                        histogram[bucket] = histogram[bucket].saturating_sub(count);
                        *total = total.saturating_sub(count);
                    } else {
                        histogram[bucket] = histogram[bucket].saturating_add(count);
                        *total = total.saturating_add(count);
                    }
                }
            }
        }
        if remove {
            plugs.retain(|_, (total, _)| *total > 0);
        }
    }
}

fn validate(window: &PlugWindow) -> Result<(), SourceError> {
    let (plug, window_start) = (window.plug, window.window_start);
    if window_start % WINDOW_SECS != 0 {
        return Err(SourceError::WindowUnaligned { plug, window_start });
    }
    if window.histogram.len() != BUCKETS {
        return Err(SourceError::HistogramLength {
            plug,
            window_start,
            found: window.histogram.len(),
        });
    }
    let counted = window
        .histogram
        .iter()
        .fold(0u64, |acc, &c| acc.saturating_add(c));
    if counted != window.count {
        return Err(SourceError::HistogramCount {
            plug,
            window_start,
            histogram: counted,
            count: window.count,
        });
    }
    Ok(())
}

impl AggregateSource for MemorySource {
    fn count_sum(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<GroupKey, CountSum>, SourceError> {
        check_range(from, to)?;
        let mut out = BTreeMap::new();
        if from >= to {
            return Ok(out);
        }
        let before = |cumulative: &[(u64, u64, u128)], ts: u64| {
            let index = cumulative.partition_point(|&(start, _, _)| start < ts);
            index
                .checked_sub(1)
                .map_or((0, 0), |i| (cumulative[i].1, cumulative[i].2))
        };
        for (plug, cumulative) in &self.prefix {
            let (count_from, sum_from) = before(cumulative, from);
            let (count_to, sum_to) = before(cumulative, to);
            if count_to > count_from {
                out.insert(
                    *plug,
                    CountSum {
                        count: count_to - count_from,
                        sum: sum_to.saturating_sub(sum_from),
                    },
                );
            }
        }
        Ok(out)
    }

    fn histograms(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<GroupKey, Vec<u64>>, SourceError> {
        check_range(from, to)?;
        if from >= to {
            return Ok(BTreeMap::new());
        }
        let length = to - from;
        let mut sliding = match self.sliding.remove(&length) {
            Some(s) if s.from <= from && from <= s.to => s,
            _ => Sliding {
                from,
                to: from,
                plugs: BTreeMap::new(),
            },
        };
        self.apply(&mut sliding.plugs, sliding.to, to, false);
        self.apply(&mut sliding.plugs, sliding.from, from, true);
        sliding.from = from;
        sliding.to = to;
        let out = sliding
            .plugs
            .iter()
            .map(|(plug, (_, histogram))| (*plug, histogram.clone()))
            .collect();
        // The operators use a couple of lengths; anything else only needs to not pile up.
        if self.sliding.len() >= 8 {
            self.sliding.clear();
        }
        self.sliding.insert(length, sliding);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(ts: u64, plug: u32, value: u64) -> Reading {
        Reading {
            id: 0,
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
    fn ranges_are_sums_of_windows() {
        let readings = [
            reading(0, 1, 5_000),
            reading(10, 1, 7_000),
            reading(35, 1, 1_000),
            reading(95, 2, 0),
        ];
        let windows = windows_from_readings(&readings);
        assert_eq!(windows.len(), 3);
        let mut source = MemorySource::new(windows).unwrap();
        let sums = source.count_sum(0, 60).unwrap();
        assert_eq!(sums.len(), 1);
        let plug1 = GroupKey {
            house: 0,
            household: 0,
            plug: 1,
        };
        assert_eq!(
            sums[&plug1],
            CountSum {
                count: 3,
                sum: 13_000
            }
        );
        assert_eq!(source.count_sum(30, 120).unwrap().len(), 2);
        // Sliding a fixed-length range must give what a fresh sum gives.
        let slid = source.histograms(0, 60).unwrap();
        assert_eq!(slid[&plug1].iter().sum::<u64>(), 3);
        let slid = source.histograms(30, 90).unwrap();
        assert_eq!(slid[&plug1].iter().sum::<u64>(), 1);
        let slid = source.histograms(60, 120).unwrap();
        assert_eq!(slid.len(), 1);
        assert!(source.count_sum(1, 30).is_err());
    }

    #[test]
    fn rejects_inconsistent_windows() {
        let mut window = windows_from_readings(&[reading(0, 1, 5)]).remove(0);
        window.count = 2;
        assert!(matches!(
            MemorySource::new([window.clone()]),
            Err(SourceError::HistogramCount { .. })
        ));
        window.histogram.pop();
        assert!(matches!(
            MemorySource::new([window]),
            Err(SourceError::HistogramLength { .. })
        ));
    }
}
