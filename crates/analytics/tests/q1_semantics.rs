//! Q1 on hand-made data, checked against values worked out by hand, for both the private
//! operator and the plaintext reference.

use mcloud_analytics::reference::q1_reference;
use mcloud_analytics::{windows_from_readings, MemorySource, Q1Row, Q1};
use mcloud_core::{GroupKey, Metric, Reading, SCALE};

/// 2013-09-01 00:00 UTC, a multiple of a day.
const BASE: u64 = 1_377_993_600;
const DAY: u64 = 86_400;

fn load(ts: u64, plug: u32, watts: u64) -> Reading {
    Reading {
        id: 0,
        ts,
        value: watts * SCALE,
        metric: Metric::Load,
        group: GroupKey {
            house: 7,
            household: 1,
            plug,
        },
    }
}

/// Rows at boundary `t` from the operator, after checking the reference gives the same.
fn rows_at(readings: &[Reading], t: u64) -> Vec<Q1Row> {
    let mut source = MemorySource::new(windows_from_readings(readings)).unwrap();
    let mut q1 = Q1::new(BASE);
    let private = q1.at(&mut source, t).unwrap();
    assert_eq!(private, q1_reference(readings, [t]));
    private
}

fn find(rows: &[Q1Row], minutes: u64, plug: Option<u32>) -> Option<u128> {
    rows.iter()
        .find(|r| r.slice_minutes == minutes && r.plug == plug)
        .map(|r| r.predicted)
}

#[test]
fn median_term_of_history_is_used() {
    // Day 0 had 100 W in the 1-minute slice two ahead of the current one; today 20 W.
    let readings = [load(BASE + 125, 1, 100), load(BASE + DAY + 10, 1, 20)];
    let rows = rows_at(&readings, BASE + DAY + 30);
    assert_eq!(rows[0].ts, BASE + DAY + 120);
    assert_eq!(find(&rows, 1, Some(1)), Some(60 * SCALE as u128));
    // The 5-minute slice two ahead starts at 10 min: no earlier reading, so no median term.
    assert_eq!(find(&rows, 5, Some(1)), Some(20 * SCALE as u128));
}

#[test]
fn median_of_even_history_is_mean_of_middle_values() {
    let readings = [
        load(BASE + 125, 1, 40),
        load(BASE + DAY + 125, 1, 100),
        load(BASE + 2 * DAY + 10, 1, 20),
    ];
    let rows = rows_at(&readings, BASE + 2 * DAY + 30);
    // (20 + (40 + 100) / 2) / 2
    assert_eq!(find(&rows, 1, Some(1)), Some(45 * SCALE as u128));
}

#[test]
fn empty_slices_of_earlier_days_are_left_out() {
    // Day 1 has a reading, but not in the slice that matters: it must not count as 0 W.
    let readings = [
        load(BASE + 125, 1, 40),
        load(BASE + DAY + 600, 1, 999),
        load(BASE + 2 * DAY + 10, 1, 20),
    ];
    let rows = rows_at(&readings, BASE + 2 * DAY + 30);
    assert_eq!(find(&rows, 1, Some(1)), Some(30 * SCALE as u128));
}

#[test]
fn without_any_history_prediction_is_current_average() {
    let readings = [load(BASE + 5, 1, 10), load(BASE + 20, 1, 15)];
    let rows = rows_at(&readings, BASE + 30);
    for minutes in [1, 5, 15, 60, 120] {
        assert_eq!(find(&rows, minutes, Some(1)), Some(12_500), "{minutes}");
    }
}

#[test]
fn plugs_without_a_current_reading_get_no_prediction() {
    let readings = [load(BASE + 5, 1, 10), load(BASE + 65, 2, 15)];
    let rows = rows_at(&readings, BASE + 90);
    // 1-minute slice [60, 90): only plug 2; 5-minute slice [0, 90): both.
    assert_eq!(find(&rows, 1, Some(1)), None);
    assert_eq!(find(&rows, 1, Some(2)), Some(15_000));
    assert_eq!(find(&rows, 5, Some(1)), Some(10_000));
}

#[test]
fn house_rows_sum_plug_averages() {
    // Current: plug 1 averages 20 W, plug 2 10 W; day 0 only plug 1 had 100 W in the slice.
    let readings = [
        load(BASE + 125, 1, 100),
        load(BASE + DAY + 5, 1, 10),
        load(BASE + DAY + 15, 1, 30),
        load(BASE + DAY + 20, 2, 10),
    ];
    let rows = rows_at(&readings, BASE + DAY + 30);
    let house: Vec<&Q1Row> = rows
        .iter()
        .filter(|r| r.slice_minutes == 1 && r.plug.is_none())
        .collect();
    assert_eq!(house.len(), 1);
    assert_eq!((house[0].house, house[0].household), (7, None));
    // (30 + 100) / 2
    assert_eq!(house[0].predicted, 65 * SCALE as u128);
    // The house row comes first, then its plugs.
    let minute: Vec<Option<u32>> = rows
        .iter()
        .filter(|r| r.slice_minutes == 1)
        .map(|r| r.plug)
        .collect();
    assert_eq!(minute, vec![None, Some(1), Some(2)]);
}

#[test]
fn misaligned_boundaries_are_errors_not_panics() {
    let mut source = MemorySource::new(Vec::new()).unwrap();
    let mut q1 = Q1::new(0);
    assert!(q1.at(&mut source, 31).is_err());
    assert!(q1.at(&mut source, 0).is_err());
    assert!(q1.at(&mut source, 30).unwrap().is_empty());
}
