//! Plaintext references: the queries computed directly from raw readings, with exact
//! medians. They share nothing with the operators but the row types and the emission rule,
//! and are what the private results are checked against.

use crate::q1::{Q1Row, SLICE_MINUTES};
use crate::q2::{Emit, Q2Row, Q2Window, RowFilter};
use mcloud_core::{GroupKey, Metric, Reading};
use std::collections::{BTreeMap, VecDeque};

const DAY: u64 = 86_400;

/// Load readings of each plug, sorted by time.
fn loads_by_plug(readings: &[Reading]) -> BTreeMap<GroupKey, Vec<(u64, u64)>> {
    let mut plugs: BTreeMap<GroupKey, Vec<(u64, u64)>> = BTreeMap::new();
    for r in readings.iter().filter(|r| r.metric == Metric::Load) {
        plugs.entry(r.group).or_default().push((r.ts, r.value));
    }
    for loads in plugs.values_mut() {
        loads.sort_unstable();
    }
    plugs
}

/// Average (fixed-point units) of a plug's readings in `[from, to)`.
fn average(loads: &[(u64, u64)], from: u64, to: u64) -> Option<f64> {
    let begin = loads.partition_point(|&(ts, _)| ts < from);
    let end = loads.partition_point(|&(ts, _)| ts < to);
    let inside = loads.get(begin..end).unwrap_or_default();
    let sum: u128 = inside.iter().map(|&(_, value)| u128::from(value)).sum();
    (!inside.is_empty()).then(|| sum as f64 / inside.len() as f64)
}

fn exact_median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        None
    } else if n % 2 == 1 {
        Some(values[n / 2])
    } else {
        Some((values[n / 2 - 1] + values[n / 2]) / 2.0)
    }
}

fn prediction(current: f64, history: Vec<f64>) -> u128 {
    let median = exact_median(history).unwrap_or(current);
    ((current + median) / 2.0).round() as u128
}

/// Q1 at each boundary of `boundaries`, from raw readings, in the operator's row order.
pub fn q1_reference(readings: &[Reading], boundaries: impl IntoIterator<Item = u64>) -> Vec<Q1Row> {
    let plugs = loads_by_plug(readings);
    let Some(first_ts) = plugs
        .values()
        .filter_map(|l| l.first())
        .map(|&(ts, _)| ts)
        .min()
    else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for t in boundaries {
        if t == 0 {
            continue;
        }
        for minutes in SLICE_MINUTES {
            let size = minutes * 60;
            let start = (t - 1) / size * size;
            let target = start + 2 * size;
            let earlier: Vec<u64> = (1..)
                .map_while(|day| target.checked_sub(day * DAY))
                .take_while(|&s| s + size > first_ts)
                .collect();
            // Per plug: the current average and each earlier day's average (None when empty).
            let mut per_plug: BTreeMap<GroupKey, (f64, Vec<Option<f64>>)> = BTreeMap::new();
            for (plug, loads) in &plugs {
                if let Some(current) = average(loads, start, t) {
                    let past = earlier
                        .iter()
                        .map(|&s| average(loads, s, s + size))
                        .collect();
                    per_plug.insert(*plug, (current, past));
                }
            }
            let mut houses: BTreeMap<u32, Vec<GroupKey>> = BTreeMap::new();
            for plug in per_plug.keys() {
                houses.entry(plug.house).or_default().push(*plug);
            }
            for (house, members) in houses {
                let current: f64 = members.iter().map(|p| per_plug[p].0).sum();
                // Every plug of the house, not only the current ones, counts on earlier days.
                let past: Vec<f64> = earlier
                    .iter()
                    .filter_map(|&s| {
                        let averages: Vec<f64> = plugs
                            .iter()
                            .filter(|(p, _)| p.house == house)
                            .filter_map(|(_, loads)| average(loads, s, s + size))
                            .collect();
                        (!averages.is_empty()).then(|| averages.iter().sum())
                    })
                    .collect();
                rows.push(Q1Row {
                    ts: target,
                    slice_minutes: minutes,
                    house,
                    household: None,
                    plug: None,
                    predicted: prediction(current, past),
                });
                for plug in members {
                    let (current, past) = &per_plug[&plug];
                    rows.push(Q1Row {
                        ts: target,
                        slice_minutes: minutes,
                        house,
                        household: Some(plug.household),
                        plug: Some(plug.plug),
                        predicted: prediction(*current, past.iter().flatten().copied().collect()),
                    });
                }
            }
        }
    }
    rows
}

/// The readings of one sliding window, as exact multisets per plug and overall.
struct WindowState {
    length: u64,
    inside: VecDeque<(u64, GroupKey, u64)>,
    plugs: BTreeMap<GroupKey, Multiset>,
    all: Multiset,
}

/// Values with their multiplicities: insert and remove are O(log n) (a sorted `Vec` costs a
/// memmove of the whole window per reading, quadratic over a 24 h window), and the median is a
/// walk over the distinct values.
#[derive(Default)]
struct Multiset {
    counts: BTreeMap<u64, u64>,
    len: u64,
}

impl Multiset {
    fn insert(&mut self, value: u64) {
        *self.counts.entry(value).or_default() += 1;
        self.len += 1;
    }

    fn remove(&mut self, value: u64) {
        if let Some(n) = self.counts.get_mut(&value) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&value);
            }
            self.len -= 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Twice the median, exact: the sum of the values at ranks (n-1)/2 and n/2.
    fn doubled_median(&self) -> Option<u128> {
        if self.len == 0 {
            return None;
        }
        let (low, high) = ((self.len - 1) / 2, self.len / 2);
        let (mut seen, mut low_value) = (0, None);
        for (&value, &n) in &self.counts {
            seen += n;
            if low_value.is_none() && seen > low {
                low_value = Some(value);
            }
            if seen > high {
                return low_value.map(|l| u128::from(l) + u128::from(value));
            }
        }
        None
    }
}

impl WindowState {
    fn add(&mut self, ts: u64, plug: GroupKey, value: u64) {
        self.inside.push_back((ts, plug, value));
        self.plugs.entry(plug).or_default().insert(value);
        self.all.insert(value);
    }

    fn expire(&mut self, before: u64) {
        while let Some(&(ts, plug, value)) = self.inside.front() {
            if ts >= before {
                break;
            }
            self.inside.pop_front();
            if let Some(values) = self.plugs.get_mut(&plug) {
                values.remove(value);
                if values.is_empty() {
                    self.plugs.remove(&plug);
                }
            }
            self.all.remove(value);
        }
    }

    fn rows(&self, window: Q2Window, t: u64) -> Vec<Q2Row> {
        let Some(global) = self.all.doubled_median() else {
            return Vec::new();
        };
        let mut houses: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        for (plug, values) in &self.plugs {
            let (above, plugs) = houses.entry(plug.house).or_default();
            *plugs += 1;
            if values.doubled_median().is_some_and(|m| m > global) {
                *above += 1;
            }
        }
        houses
            .into_iter()
            .map(|(house, (above, plugs))| Q2Row {
                ts_start: t.saturating_sub(self.length),
                ts_stop: t,
                window,
                house,
                above,
                plugs,
            })
            .collect()
    }
}

/// Q2 at each boundary of `boundaries` (ascending), from raw readings with exact medians.
pub fn q2_reference(
    readings: &[Reading],
    boundaries: impl IntoIterator<Item = u64>,
    emit: Emit,
) -> Vec<Q2Row> {
    let mut loads: Vec<(u64, GroupKey, u64)> = readings
        .iter()
        .filter(|r| r.metric == Metric::Load)
        .map(|r| (r.ts, r.group, r.value))
        .collect();
    loads.sort_unstable();
    let mut states: Vec<(Q2Window, WindowState, usize)> = Q2Window::ALL
        .iter()
        .map(|&w| {
            let state = WindowState {
                length: w.secs(),
                inside: VecDeque::new(),
                plugs: BTreeMap::new(),
                all: Multiset::default(),
            };
            (w, state, 0)
        })
        .collect();
    let mut filter = RowFilter::new(emit);
    let mut rows = Vec::new();
    for t in boundaries {
        for (window, state, next) in &mut states {
            while let Some(&(ts, plug, value)) = loads.get(*next) {
                if ts >= t {
                    break;
                }
                state.add(ts, plug, value);
                *next += 1;
            }
            state.expire(t.saturating_sub(state.length));
            rows.extend(filter.filter(*window, state.rows(*window, t)));
        }
    }
    rows
}
