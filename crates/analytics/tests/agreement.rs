//! Private operators against the plaintext references, on synthetic multi-day data and on
//! the real DEBS samples (skipped when absent). Run with `--nocapture` for the figures.

use mcloud_analytics::{
    q2_agreement, run_readings, run_reference, windows_from_readings, Emit, MemorySource, Output,
    Q1Row, RunOptions, Q1,
};
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::Reading;
use std::collections::BTreeMap;

fn synthetic(days: u64, interval_secs: u64) -> Vec<Reading> {
    Synthetic::new(SyntheticConfig {
        houses: 2,
        households_per_house: 2,
        plugs_per_household: 2,
        duration_secs: days * 86_400,
        interval_secs,
        seed: 7,
        ..Default::default()
    })
    .collect()
}

fn sample(name: &str) -> Option<Vec<Reading>> {
    let path = mcloud_core::samples::sample_file(name)?;
    Some(mcloud_core::csv::read_file(&path).unwrap())
}

type Q1Key = (u64, u64, u32, Option<u32>, Option<u32>);

fn q1_index(rows: &[Q1Row]) -> BTreeMap<Q1Key, u128> {
    rows.iter()
        .map(|r| {
            (
                (r.ts, r.slice_minutes, r.house, r.household, r.plug),
                r.predicted,
            )
        })
        .collect()
}

/// Every Q1 row of one output has a twin in the other within one fixed-point unit.
fn assert_q1_equal(private: &Output, exact: &Output) {
    assert!(!exact.q1.is_empty());
    let (private, exact) = (q1_index(&private.q1), q1_index(&exact.q1));
    assert_eq!(private.len(), exact.len());
    for (key, predicted) in &exact {
        let got = private.get(key).copied();
        assert!(
            got.is_some_and(|g| g.abs_diff(*predicted) <= 1),
            "{key:?}: private {got:?}, exact {predicted}"
        );
    }
}

fn q1_only() -> RunOptions {
    RunOptions {
        q1: true,
        q2: false,
        emit: Emit::Every,
    }
}

fn q2_every() -> RunOptions {
    RunOptions {
        q1: false,
        q2: true,
        emit: Emit::Every,
    }
}

fn check_q2(name: &str, readings: &[Reading]) -> f64 {
    let private = run_readings(readings, q2_every()).unwrap();
    let exact = run_reference(readings, q2_every());
    let agreement = q2_agreement(&private.q2, &exact.q2);
    println!(
        "Q2 agreement {name}: {}/{} = {:.4}",
        agreement.identical,
        agreement.total,
        agreement.ratio()
    );
    assert!(agreement.total > 0);
    agreement.ratio()
}

#[test]
fn q1_matches_reference_on_synthetic_days() {
    let readings = synthetic(3, 30);
    let private = run_readings(&readings, q1_only()).unwrap();
    let exact = run_reference(&readings, q1_only());
    assert_q1_equal(&private, &exact);
    println!("Q1 synthetic 3 days: {} rows identical", exact.q1.len());
}

#[test]
fn history_changes_synthetic_predictions() {
    let readings = synthetic(3, 30);
    let first = readings[0].ts;
    // Evening of the third day: plugs with a daily rhythm differ from the day before.
    let t = first + 2 * 86_400 + 19 * 3_600;
    let mut source = MemorySource::new(windows_from_readings(&readings)).unwrap();
    let with_history = Q1::new(first).at(&mut source, t).unwrap();
    let without_history = Q1::new(t - 3 * 3_600).at(&mut source, t).unwrap();
    assert_eq!(with_history.len(), without_history.len());
    let differing = with_history
        .iter()
        .zip(&without_history)
        .filter(|(a, b)| a.predicted != b.predicted)
        .count();
    println!(
        "Q1 synthetic: {differing}/{} predictions moved by history",
        with_history.len()
    );
    assert!(differing > with_history.len() / 4);
}

#[test]
fn q2_agrees_with_exact_medians_on_synthetic_days() {
    let readings = synthetic(3, 30);
    assert!(check_q2("synthetic 3 days", &readings) >= 0.99);
}

#[test]
fn q1_matches_reference_on_real_samples() {
    for name in [
        "smartgrid_input_2seconds.csv",
        "sorted100M.60.h0.hh9.p0.csv",
        "sorted100M.csv",
    ] {
        let Some(readings) = sample(name) else {
            return;
        };
        let private = run_readings(&readings, q1_only()).unwrap();
        let exact = run_reference(&readings, q1_only());
        assert_q1_equal(&private, &exact);
        println!("Q1 {name}: {} rows identical", exact.q1.len());
    }
}

#[test]
fn q2_agrees_with_exact_medians_on_real_samples() {
    for name in [
        "smartgrid_input_2seconds.csv",
        "sorted100M.60.h0.hh9.p0.csv",
        "sorted100M.csv",
    ] {
        let Some(readings) = sample(name) else {
            return;
        };
        assert!(check_q2(name, &readings) >= 0.99, "{name}");
    }
}

#[test]
fn changes_only_equals_the_operators_change_emission() {
    let readings = synthetic(2, 600);
    let options = |emit| RunOptions {
        q1: false,
        q2: true,
        emit,
    };
    let every =
        mcloud_analytics::run_readings(&readings, options(mcloud_analytics::Emit::Every)).unwrap();
    let changes =
        mcloud_analytics::run_readings(&readings, options(mcloud_analytics::Emit::Changes))
            .unwrap();
    assert!(changes.q2.len() < every.q2.len());
    assert_eq!(mcloud_analytics::changes_only(&every.q2), changes.q2);
}
