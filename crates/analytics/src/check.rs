//! Comparing the private Q1 output with the plaintext reference.

use crate::q1::Q1Row;
use std::collections::BTreeMap;

type Key = (u64, u64, u32, Option<u32>, Option<u32>);

fn key(r: &Q1Row) -> Key {
    (r.ts, r.slice_minutes, r.house, r.household, r.plug)
}

/// Every difference between two Q1 outputs: a row present in only one of them, or a
/// prediction that differs by more than `tolerance` fixed-point units. Empty when they agree.
pub fn q1_mismatches(private: &[Q1Row], reference: &[Q1Row], tolerance: u128) -> Vec<String> {
    let index = |rows: &[Q1Row]| -> BTreeMap<Key, u128> {
        rows.iter().map(|r| (key(r), r.predicted)).collect()
    };
    let (private, reference) = (index(private), index(reference));
    let mut problems = Vec::new();
    for (k, p) in &private {
        match reference.get(k) {
            Some(r) if p.abs_diff(*r) <= tolerance => {}
            Some(r) => problems.push(format!("Q1 {k:?}: private {p}, reference {r}")),
            None => problems.push(format!("Q1 {k:?}: private row the reference does not have")),
        }
    }
    for k in reference.keys().filter(|k| !private.contains_key(k)) {
        problems.push(format!(
            "Q1 {k:?}: reference row missing from the private output"
        ));
    }
    problems
}
