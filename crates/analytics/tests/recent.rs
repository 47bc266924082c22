//! The console's view of the recent past against the plaintext references: forecasts are
//! Q1's predictions, loads are the slices' per-plug averages summed per house, outliers are
//! Q2's rows at the last boundary.

use mcloud_analytics::recent::{recent, HouseRecent, SLICE_MINUTES};
use mcloud_analytics::reference::{q1_reference, q2_reference};
use mcloud_analytics::{
    boundaries, windows_from_readings, AggregateSource, CountSum, Emit, MemorySource, Q2Row,
    SourceError,
};
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::GroupKey;
use mcloud_core::{Metric, Reading, SCALE};
use std::collections::BTreeMap;

fn readings() -> Vec<Reading> {
    Synthetic::new(SyntheticConfig {
        houses: 3,
        households_per_house: 2,
        plugs_per_household: 2,
        duration_secs: 27 * 3600,
        interval_secs: 60,
        seed: 11,
        ..Default::default()
    })
    .collect()
}

/// The house's outlier shares are the reference Q2 rows of that house.
fn assert_outliers_equal(house: &HouseRecent, q2: &[Q2Row]) {
    let want: Vec<(&str, u32, u32)> = q2
        .iter()
        .filter(|r| r.house == house.house)
        .map(|r| (r.window.label(), r.above, r.plugs))
        .collect();
    let got: Vec<(&str, u32, u32)> = house
        .outliers
        .iter()
        .map(|o| (o.window, o.above, o.plugs))
        .collect();
    assert_eq!(got, want, "house {}", house.house);
}

#[test]
fn recent_forecasts_loads_and_outliers_equal_the_references() {
    let readings = readings();
    let first = readings.iter().map(|r| r.ts).min().unwrap();
    // In the second day, so forecasts draw on the first.
    let from = (first / 300 + 4) * 300 + 30 + 86_400;
    let to = from + 3600 + 150;
    let mut source = MemorySource::new(windows_from_readings(&readings)).unwrap();
    let got = recent(&mut source, 0, from, to).unwrap();
    assert_eq!((got.from, got.to), (from, to));
    assert_eq!(got.houses.len(), 3);

    // Q1's history reaches back to the data's first day; a slice that began before `from`
    // is averaged from its start.
    let before_to: Vec<Reading> = readings.iter().filter(|r| r.ts < to).copied().collect();
    let mut forecast: BTreeMap<u32, BTreeMap<u64, u128>> = BTreeMap::new();
    for row in q1_reference(&before_to, boundaries(from, to - 1)) {
        if row.slice_minutes == SLICE_MINUTES && row.plug.is_none() {
            forecast
                .entry(row.house)
                .or_default()
                .insert(row.ts, row.predicted);
        }
    }
    // Per (house, slice): per plug (count, sum).
    let slice = SLICE_MINUTES * 60;
    let mut plugs: BTreeMap<(u32, u64), BTreeMap<_, (u64, u128)>> = BTreeMap::new();
    for r in readings.iter().filter(|r| r.metric == Metric::Load) {
        let start = r.ts - r.ts % slice;
        if start >= from && start + slice <= to {
            let cs = plugs
                .entry((r.group.house, start))
                .or_default()
                .entry(r.group)
                .or_default();
            cs.0 += 1;
            cs.1 += u128::from(r.value);
        }
    }
    let q2 = q2_reference(&readings, [to], Emit::Every);
    let mut moved_by_history = 0;

    for house in &got.houses {
        let want = &forecast[&house.house];
        assert_eq!(house.forecast.len(), want.len(), "house {}", house.house);
        for (ts, watts) in &house.forecast {
            let exact = want[ts] as f64 / SCALE as f64;
            assert!(
                (watts - exact).abs() <= 1.0 / SCALE as f64,
                "house {} at {ts}: {watts} W, reference {exact} W",
                house.house
            );
        }
        let slices: Vec<u64> = house.actual.iter().map(|(ts, _)| *ts).collect();
        // [k·300 + 30, k·300 + 3780) holds the eleven whole slices from (k + 1)·300.
        assert_eq!(slices.len(), 11);
        for (ts, watts) in &house.actual {
            let exact: f64 = plugs[&(house.house, *ts)]
                .values()
                .map(|(count, sum)| *sum as f64 / *count as f64)
                .sum::<f64>()
                / SCALE as f64;
            assert!(
                (watts - exact).abs() < 1e-6,
                "house {} slice {ts}: {watts} W, reference {exact} W",
                house.house
            );
        }
        // Without history a forecast is the load two slices before; the first day moves them.
        let actual: BTreeMap<u64, f64> = house.actual.iter().copied().collect();
        moved_by_history += house
            .forecast
            .iter()
            .filter(|(ts, w)| {
                actual
                    .get(&(ts - 2 * slice))
                    .is_some_and(|a| (a - w).abs() > 0.01)
            })
            .count();
        assert_outliers_equal(house, &q2);
    }
    assert!(
        moved_by_history > 10,
        "{moved_by_history} forecasts moved by the first day"
    );
}

#[test]
fn a_range_off_the_30_second_grid_is_refused() {
    let mut source = MemorySource::new(windows_from_readings(&readings())).unwrap();
    assert!(recent(&mut source, 0, 45, 3600).is_err());
    assert!(recent(&mut source, 0, 3600, 3600).is_err());
    assert!(recent(&mut source, 0, 30, 3615).is_err());
    assert!(recent(&mut source, 15, 30, 3600).is_err());
}

/// Refuses ranges that begin before a retention horizon, as a cloud does (410).
struct Retained {
    inner: MemorySource,
    horizon: u64,
}

impl AggregateSource for Retained {
    fn count_sum(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<GroupKey, CountSum>, SourceError> {
        if from < self.horizon {
            return Err(SourceError::Unaligned { from, to });
        }
        self.inner.count_sum(from, to)
    }
    fn histograms(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<GroupKey, Vec<u64>>, SourceError> {
        if from < self.horizon {
            return Err(SourceError::Unaligned { from, to });
        }
        self.inner.histograms(from, to)
    }
}

#[test]
fn nothing_before_the_retention_horizon_is_asked_for() {
    let readings = readings();
    let first = readings.iter().map(|r| r.ts).min().unwrap();
    let horizon = (first / 300 + 30) * 300;
    let (from, to) = (horizon + 86_400 - 3600, horizon + 86_400);
    let mut source = Retained {
        inner: MemorySource::new(windows_from_readings(&readings)).unwrap(),
        horizon,
    };
    assert!(recent(&mut source, 0, from, to).is_err());
    let got = recent(&mut source, horizon, from, to).unwrap();
    // Q2's 24-hour window and Q1's history begin at the horizon.
    let kept: Vec<Reading> = readings
        .iter()
        .filter(|r| r.ts >= horizon)
        .copied()
        .collect();
    let q2 = q2_reference(&kept, [to], Emit::Every);
    for house in &got.houses {
        assert_outliers_equal(house, &q2);
    }
}
