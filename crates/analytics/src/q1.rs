//! Q1, load prediction, from revealed (count, sum) ranges.
//!
//! At boundary T, for every slice size, the slice s_i holding T-1 is averaged over
//! [start of s_i, T) and the prediction for s_{i+2} is the mean of that average and the
//! median of the same slice on earlier days. Earlier days' slices are complete, so their
//! per-plug sums are asked for once and kept.

use crate::source::{AggregateSource, CountSum, WINDOW_SECS};
use crate::AnalyticsError;
use mcloud_core::GroupKey;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

/// Slice sizes of Q1, in minutes.
pub const SLICE_MINUTES: [u64; 5] = [1, 5, 15, 60, 120];

const DAY: u64 = 86_400;

/// One prediction: a plug's, or a house's when `household` and `plug` are `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Q1Row {
    /// Start of the predicted slice s_{i+2}, Unix seconds.
    pub ts: u64,
    /// Slice size in minutes.
    pub slice_minutes: u64,
    /// House id.
    pub house: u32,
    /// Household id, `None` on a house row.
    pub household: Option<u32>,
    /// Plug id, `None` on a house row.
    pub plug: Option<u32>,
    /// Predicted load, fixed-point (rounded to the nearest unit).
    pub predicted: u128,
}

/// Median of a list, mean of the two middle values for an even count.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The prediction formula, with the fallback to the current average without history.
fn predict(current: f64, mut history: Vec<f64>) -> u128 {
    let median = median(&mut history).unwrap_or(current);
    to_fixed((current + median) / 2.0)
}

/// Rounds a non-negative fixed-point quantity to whole units (saturating, never panics).
fn to_fixed(value: f64) -> u128 {
    value.round() as u128
}

/// Per-plug averages over one range, and per-house sums of them.
struct Averages {
    plugs: BTreeMap<GroupKey, f64>,
    houses: BTreeMap<u32, f64>,
}

impl Averages {
    fn new(sums: &BTreeMap<GroupKey, CountSum>) -> Averages {
        let plugs: BTreeMap<GroupKey, f64> = sums
            .iter()
            .filter_map(|(plug, cs)| Some((*plug, cs.average()?)))
            .collect();
        let mut houses = BTreeMap::new();
        for (plug, average) in &plugs {
            *houses.entry(plug.house).or_insert(0.0) += average;
        }
        Averages { plugs, houses }
    }
}

/// The Q1 operator. Memory grows with plugs × slices seen, never with readings.
pub struct Q1 {
    history_from: u64,
    /// Averages of complete slices, by (slice seconds, slice start).
    completed: BTreeMap<(u64, u64), Averages>,
}

impl Q1 {
    /// `history_from`: no data exists before this Unix time, so earlier days' slices that end
    /// before it are not asked for. Pass the start of the data: every earlier day back to it
    /// is asked for once per slice.
    pub fn new(history_from: u64) -> Q1 {
        Q1 {
            history_from,
            completed: BTreeMap::new(),
        }
    }

    /// The count/sum ranges `at(t)` will ask for: each slice's current part, and the earlier
    /// days' slices not yet cached.
    pub fn wanted(&self, t: u64, out: &mut Vec<(u64, u64)>) {
        if t == 0 || t % WINDOW_SECS != 0 {
            return;
        }
        for minutes in SLICE_MINUTES {
            let size = minutes * 60;
            let start = (t - 1) - (t - 1) % size;
            out.push((start, t));
            let target = start + 2 * size;
            for day in 1.. {
                let Some(earlier) = target.checked_sub(day * DAY) else {
                    break;
                };
                if earlier + size <= self.history_from {
                    break;
                }
                if !self.completed.contains_key(&(size, earlier)) {
                    out.push((earlier, earlier + size));
                }
            }
        }
    }

    /// Predictions at boundary `t` (a multiple of 30 s), for every slice size, plug and house:
    /// per slice size, each house row followed by its plugs' rows.
    pub fn at<S: AggregateSource + ?Sized>(
        &mut self,
        source: &mut S,
        t: u64,
    ) -> Result<Vec<Q1Row>, AnalyticsError> {
        if t == 0 || t % WINDOW_SECS != 0 {
            return Err(AnalyticsError::UnalignedBoundary(t));
        }
        let mut rows = Vec::new();
        for minutes in SLICE_MINUTES {
            let size = minutes * 60;
            let start = (t - 1) - (t - 1) % size;
            let current = Averages::new(&source.count_sum(start, t)?);
            if current.plugs.is_empty() {
                continue;
            }
            let target = start + 2 * size;
            let mut history = Vec::new();
            for day in 1.. {
                let Some(earlier) = target.checked_sub(day * DAY) else {
                    break;
                };
                if earlier + size <= self.history_from {
                    break;
                }
                if let Entry::Vacant(slot) = self.completed.entry((size, earlier)) {
                    slot.insert(Averages::new(&source.count_sum(earlier, earlier + size)?));
                }
                history.push((size, earlier));
            }
            let history: Vec<&Averages> = history
                .iter()
                .filter_map(|key| self.completed.get(key))
                .collect();
            let row = |house, household, plug, predicted| Q1Row {
                ts: target,
                slice_minutes: minutes,
                house,
                household,
                plug,
                predicted,
            };
            for (&house, &average) in &current.houses {
                let past = history.iter().filter_map(|a| a.houses.get(&house)).copied();
                rows.push(row(house, None, None, predict(average, past.collect())));
                for (plug, &average) in current.plugs.range(house_range(house)) {
                    let past = history.iter().filter_map(|a| a.plugs.get(plug)).copied();
                    rows.push(row(
                        house,
                        Some(plug.household),
                        Some(plug.plug),
                        predict(average, past.collect()),
                    ));
                }
            }
        }
        Ok(rows)
    }
}

/// All plug keys of one house, for a `BTreeMap` range.
fn house_range(house: u32) -> std::ops::RangeInclusive<GroupKey> {
    GroupKey {
        house,
        household: 0,
        plug: 0,
    }..=GroupKey {
        house,
        household: u32::MAX,
        plug: u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_count_is_mean_of_middle_values() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn without_history_the_prediction_is_the_current_average() {
        assert_eq!(predict(20_000.0, vec![]), 20_000);
        assert_eq!(predict(20_000.0, vec![100_000.0]), 60_000);
    }
}
