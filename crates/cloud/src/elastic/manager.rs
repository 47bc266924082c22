//! The elastic manager's rules, as a pure function of one period's utilisations, so they can
//! be tested without threads or clocks.
//!
//! * average above UUT: provision, in one step, as many workers as bring the average to TUT;
//! * average below LUT: decommission down to the count that brings it to TUT;
//! * otherwise, standard deviation above UIT: move buckets from the busiest to the idlest
//!   worker while each move improves the projected deviation by more than MIT.
//!
//! Scaling is refused within the cool-down after the last scaling step; with LUT < TUT < UUT
//! a step always lands strictly between the two triggers, which is the hysteresis.

use super::worker::WorkerId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Serialize)]
pub struct Thresholds {
    /// Upper utilisation threshold: above it, provision.
    pub uut: f64,
    /// Lower utilisation threshold: below it, decommission.
    pub lut: f64,
    /// Target utilisation after a scaling step.
    pub tut: f64,
    /// Imbalance (std-dev of utilisation) above which buckets are moved.
    pub uit: f64,
    /// Least projected improvement of the std-dev for a move to be worth it.
    pub mit: f64,
    pub min_workers: usize,
    pub max_workers: usize,
    #[serde(serialize_with = "secs")]
    pub cooldown: Duration,
    /// Most buckets one balancing round moves.
    pub max_moves: usize,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            uut: 0.9,
            lut: 0.5,
            tut: 0.6,
            uit: 0.2,
            mit: 0.02,
            min_workers: 1,
            max_workers: 8,
            cooldown: Duration::from_secs(5),
            max_moves: 64,
        }
    }
}

impl Thresholds {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0 < self.lut && self.lut < self.tut && self.tut < self.uut && self.uut <= 1.0) {
            return Err(format!(
                "need 0 < LUT < TUT < UUT <= 1, got LUT {} TUT {} UUT {}",
                self.lut, self.tut, self.uut
            ));
        }
        if self.min_workers == 0 || self.min_workers > self.max_workers {
            return Err(format!(
                "need 1 <= min workers <= max workers, got {} and {}",
                self.min_workers, self.max_workers
            ));
        }
        Ok(())
    }
}

/// One period's measurements.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Busy fraction of each worker over the period.
    pub utilisation: BTreeMap<WorkerId, f64>,
    /// Records per bucket over the period, by owner.
    pub bucket_load: BTreeMap<WorkerId, Vec<(usize, u64)>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    None,
    /// Scaling wanted but refused: the last step is too recent.
    CoolingDown {
        wanted: usize,
    },
    Provision {
        add: usize,
    },
    Decommission {
        remove: Vec<WorkerId>,
    },
    Balance {
        moves: Vec<(usize, WorkerId, WorkerId)>,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::None => "none",
            Action::CoolingDown { .. } => "cooldown",
            Action::Provision { .. } => "provision",
            Action::Decommission { .. } => "decommission",
            Action::Balance { .. } => "balance",
        }
    }

    pub fn is_scaling(&self) -> bool {
        matches!(self, Action::Provision { .. } | Action::Decommission { .. })
    }
}

pub fn mean_std(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Workers needed to carry `total` busy time at the target utilisation.
fn workers_for(total: f64, t: &Thresholds) -> usize {
    ((total / t.tut).ceil() as usize).clamp(t.min_workers, t.max_workers)
}

/// Applies the rules. `since_scaling` is the time since the last provisioning or
/// decommissioning step (None if there was none).
pub fn decide(sample: &Sample, t: &Thresholds, since_scaling: Option<Duration>) -> Action {
    let n = sample.utilisation.len();
    if n == 0 {
        return Action::None;
    }
    let (avg, std) = mean_std(sample.utilisation.values().copied());
    let total = avg * n as f64;
    let cooling = since_scaling.is_some_and(|d| d < t.cooldown);
    if avg > t.uut && n < t.max_workers {
        let target = workers_for(total, t).max(n + 1);
        if cooling {
            return Action::CoolingDown { wanted: target };
        }
        return Action::Provision { add: target - n };
    }
    if avg < t.lut && n > t.min_workers {
        let target = workers_for(total, t);
        if target < n {
            if cooling {
                return Action::CoolingDown { wanted: target };
            }
            let mut by_load: Vec<(f64, WorkerId)> =
                sample.utilisation.iter().map(|(w, u)| (*u, *w)).collect();
            by_load.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            return Action::Decommission {
                remove: by_load.iter().take(n - target).map(|(_, w)| *w).collect(),
            };
        }
    }
    if std > t.uit && n > 1 {
        let moves = balance(sample, t);
        if !moves.is_empty() {
            return Action::Balance { moves };
        }
    }
    Action::None
}

/// Greedy balancing: repeatedly move from the busiest to the idlest worker the bucket whose
/// load comes closest to halving their gap, while the deviation improves by more than MIT.
fn balance(sample: &Sample, t: &Thresholds) -> Vec<(usize, WorkerId, WorkerId)> {
    let mut util = sample.utilisation.clone();
    // A bucket's share of its owner's busy time, in proportion to its records.
    let mut load: BTreeMap<WorkerId, Vec<(usize, f64)>> = BTreeMap::new();
    for (w, buckets) in &sample.bucket_load {
        let u = util.get(w).copied().unwrap_or(0.0);
        let records: u64 = buckets.iter().map(|(_, r)| r).sum();
        if records == 0 {
            continue;
        }
        load.insert(
            *w,
            buckets
                .iter()
                .filter(|(_, r)| *r > 0)
                .map(|(b, r)| (*b, u * *r as f64 / records as f64))
                .collect(),
        );
    }
    let mut moves = Vec::new();
    while moves.len() < t.max_moves {
        let (_, std) = mean_std(util.values().copied());
        let Some((&busiest, &hi)) = util.iter().max_by(|a, b| a.1.total_cmp(b.1)) else {
            break;
        };
        let Some((&idlest, &lo)) = util.iter().min_by(|a, b| a.1.total_cmp(b.1)) else {
            break;
        };
        if busiest == idlest {
            break;
        }
        let gap = (hi - lo) / 2.0;
        let Some(candidates) = load.get_mut(&busiest) else {
            break;
        };
        let Some((i, &(bucket, l))) = candidates
            .iter()
            .enumerate()
            .filter(|(_, (_, l))| *l < 2.0 * gap)
            .min_by(|a, b| (a.1 .1 - gap).abs().total_cmp(&(b.1 .1 - gap).abs()))
        else {
            break;
        };
        let mut projected = util.clone();
        projected.insert(busiest, hi - l);
        projected.insert(idlest, lo + l);
        let (_, new_std) = mean_std(projected.values().copied());
        if std - new_std <= t.mit {
            break;
        }
        candidates.swap_remove(i);
        load.entry(idlest).or_default().push((bucket, l));
        util = projected;
        moves.push((bucket, busiest, idlest));
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(utils: &[f64]) -> Sample {
        Sample {
            utilisation: utils
                .iter()
                .enumerate()
                .map(|(i, u)| (i as WorkerId, *u))
                .collect(),
            bucket_load: utils
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    (
                        i as WorkerId,
                        (0..16).map(|b| (i * 16 + b, 100)).collect::<Vec<_>>(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn provisioning_is_load_aware() {
        let t = Thresholds::default();
        // Two workers fully busy carry 2.0 of work: at 0.6 that is four workers, in one step.
        assert_eq!(
            decide(&sample(&[1.0, 1.0]), &t, None),
            Action::Provision { add: 2 }
        );
        assert_eq!(
            decide(&sample(&[0.95]), &t, None),
            Action::Provision { add: 1 }
        );
    }

    #[test]
    fn decommissioning_lands_near_the_target_and_picks_the_idlest() {
        let t = Thresholds::default();
        // 4 workers at 0.2 carry 0.8: two workers at 0.4 would do... ceil(0.8 / 0.6) = 2.
        let action = decide(&sample(&[0.2, 0.25, 0.15, 0.2]), &t, None);
        assert_eq!(action, Action::Decommission { remove: vec![2, 0] });
    }

    #[test]
    fn cooldown_stops_flapping() {
        let t = Thresholds::default();
        let recent = Some(Duration::from_secs(1));
        assert!(matches!(
            decide(&sample(&[1.0, 1.0]), &t, recent),
            Action::CoolingDown { .. }
        ));
        assert!(matches!(
            decide(&sample(&[0.1, 0.1]), &t, recent),
            Action::CoolingDown { .. }
        ));
        // Between LUT and UUT nothing scales, whatever the history.
        assert_eq!(decide(&sample(&[0.7, 0.6]), &t, None), Action::None);
    }

    #[test]
    fn scaling_never_overshoots_into_the_opposite_rule() {
        let t = Thresholds::default();
        for total in 1..=60 {
            for n in 1..=8usize {
                let avg = total as f64 / 10.0 / n as f64;
                if avg > 1.0 {
                    continue;
                }
                let s = sample(&vec![avg; n]);
                let after = match decide(&s, &t, None) {
                    Action::Provision { add } => n + add,
                    Action::Decommission { remove } => n - remove.len(),
                    _ => continue,
                };
                let new_avg = avg * n as f64 / after as f64;
                // Capped by the worker limits, the new average may stay outside the band;
                // otherwise it lies inside [LUT, UUT] and the next period does not scale back.
                if after > t.min_workers && after < t.max_workers {
                    assert!(
                        new_avg <= t.uut && new_avg >= t.lut * 0.5,
                        "n {n} avg {avg} -> {after} workers at {new_avg}"
                    );
                    let again = decide(&sample(&vec![new_avg; after]), &t, None);
                    assert!(!again.is_scaling() || new_avg < t.lut, "{again:?}");
                }
            }
        }
    }

    #[test]
    fn balancing_moves_from_busiest_to_idlest_while_it_helps() {
        let t = Thresholds::default();
        let s = sample(&[0.8, 0.2]);
        let Action::Balance { moves } = decide(&s, &t, None) else {
            panic!("expected balancing");
        };
        assert!(!moves.is_empty());
        assert!(moves.iter().all(|(_, from, to)| *from == 0 && *to == 1));
        // 16 buckets of 0.05 each: moving 6 brings both to 0.5.
        assert_eq!(moves.len(), 6);
    }
}
