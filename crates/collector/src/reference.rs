//! The plaintext reference: the same statistics computed directly from the readings, which
//! the private pipeline must reproduce to the last fixed-point unit.

use crate::combine::{Revealed, RevealedWindow};
use mcloud_core::reading::{GroupId, GroupLevel, Metric};
use mcloud_core::{Reading, Revealed as Totals, Window};
use std::collections::BTreeMap;

pub struct Reference {
    window_secs: u64,
    level: GroupLevel,
    groups: BTreeMap<(Window, Metric, GroupId), Totals>,
}

impl Reference {
    pub fn new(window_secs: u64, level: GroupLevel) -> Reference {
        Reference {
            window_secs,
            level,
            groups: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, r: &Reading) {
        let window = Window::containing(r.ts, self.window_secs);
        self.groups
            .entry((window, r.metric, self.level.project(r.group)))
            .or_default()
            .add_value(r.value);
    }

    /// Every group's totals, by (window, metric, group).
    pub fn groups(&self) -> impl Iterator<Item = (&(Window, Metric, GroupId), &Totals)> {
        self.groups.iter()
    }

    pub fn records(&self) -> u64 {
        self.groups.values().map(|t| t.count).sum()
    }

    /// What a collector must reveal under the minimum-count policy, for comparing with a
    /// result that only exists as output (a collector in another process).
    pub fn expected(&self, min_count: u64) -> Revealed {
        let mut windows: Vec<RevealedWindow> = Vec::new();
        for (&(window, metric, group), totals) in &self.groups {
            if windows.last().map(|w| w.window) != Some(window) {
                windows.push(RevealedWindow {
                    window,
                    batches: 0,
                    groups: Vec::new(),
                    withheld: 0,
                });
            }
            let Some(w) = windows.last_mut() else {
                continue;
            };
            if totals.count < min_count {
                w.withheld += 1;
            } else {
                w.groups.push(crate::combine::RevealedGroup {
                    metric,
                    group,
                    totals: *totals,
                });
            }
        }
        Revealed {
            windows,
            not_ready: Vec::new(),
            implausible: Vec::new(),
        }
    }
}

/// How the revealed aggregates compare with the reference.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub matched: u64,
    pub withheld: u64,
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Compares every revealed group with the reference, and every reference group with what was
/// revealed or withheld: nothing may be missing, extra or off by one unit.
pub fn check(revealed: &Revealed, reference: &Reference, min_count: u64) -> CheckReport {
    let mut report = CheckReport::default();
    let mut seen = std::collections::BTreeSet::new();
    for (window, why) in &revealed.not_ready {
        report.problems.push(format!(
            "window [{}, {}) was never revealed: {why}",
            window.start, window.end
        ));
    }
    for withheld in &revealed.implausible {
        report
            .problems
            .push(format!("withheld as implausible: {withheld}"));
    }
    for RevealedWindow { window, groups, .. } in &revealed.windows {
        for g in groups {
            let key = (*window, g.metric, g.group);
            seen.insert(key);
            match reference.groups.get(&key) {
                Some(expected) if *expected == g.totals => report.matched += 1,
                Some(expected) => report.problems.push(format!(
                    "window {} {} {:?}: revealed {:?}, reference {:?}",
                    window.start, g.metric, g.group, g.totals, expected
                )),
                None => report.problems.push(format!(
                    "window {} {} {:?}: revealed a group the reference does not have",
                    window.start, g.metric, g.group
                )),
            }
        }
    }
    for (key, expected) in &reference.groups {
        if seen.contains(key) {
            continue;
        }
        let revealed_window = revealed.windows.iter().any(|w| w.window == key.0);
        if expected.count < min_count && revealed_window {
            report.withheld += 1;
        } else {
            report.problems.push(format!(
                "window {} {} {:?}: reference has {} records but nothing was revealed",
                key.0.start, key.1, key.2, expected.count
            ));
        }
    }
    let withheld_revealed = revealed.withheld();
    if withheld_revealed != report.withheld {
        report.problems.push(format!(
            "collector withheld {withheld_revealed} groups, the reference expects {}",
            report.withheld
        ));
    }
    report
}
