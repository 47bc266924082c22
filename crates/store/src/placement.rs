//! Which sources hold a packet: weighted rendezvous (highest-random-weight) hashing.
//!
//! Every source gets a score for a packet, `score = w / -ln(u)` with `u = hash(key, source)`
//! uniform in (0, 1), and the packet goes to the `r` highest scores. With one copy a source
//! wins a share `w / Σw` of the packets; adding or removing a source only moves the packets
//! it wins or held (about 1/n of them), and the readers rank a packet's copies the same way
//! the writer placed them, with nothing stored but the records. The key is derived from the
//! packet's place (file version and packet id), never from its content, so equal packets of
//! two files land independently and a source learns nothing from what it is given.
//!
//! The weight is the product of a static part, from the source's configuration, and a
//! feedback factor the process learns from the operations it makes:
//!
//! ```text
//! w = device × b/(b+50) × availability × max(1 − load, 0.05) × 2t/(1+t) × feedback
//! ```
//!
//! - `device`: server 1, desktop 0.5, mobile 0.2, embedded 0.1. Devices further down hold
//!   less, are switched off more and pay for traffic with battery or a metered plan, so they
//!   should hold few copies even when they claim good links.
//! - `b/(b+50)`, `b` the bandwidth in Mbit/s: a 16 KiB packet is dominated by round trips
//!   well before a link is saturated, so bandwidth helps with diminishing returns (10 Mbit/s
//!   → 0.17, 100 → 0.67, 1000 → 0.95); a linear term would pile everything on one fat link.
//! - `availability`: the share of reads the source can serve at all.
//! - `1 − load`: the capacity left; never below 0.05, so a busy source still takes a little.
//! - `2t/(1+t)`, `t` the upload/download ratio the source accepts: storing a packet is upload
//!   to it, reading it is download; a source that accepts as much of one as of the other
//!   scores 1, one that mostly serves downloads tends to 0, one that takes uploads gladly
//!   tends to 2.
//! - `feedback` in [0.1, 1]: `(1 − e) × min(1, 2·best/latency)`, with `e` an exponentially
//!   weighted error rate and `latency` an exponentially weighted operation time, `best` the
//!   lowest of any source. Up to twice the best latency costs nothing (noise), beyond it the
//!   weight falls with the latency. A source that did not answer at all is *down* for a
//!   while: its weight drops to a millionth, so it is only chosen when fewer than `r` others
//!   exist, and it comes back to its learnt factor afterwards to be tried again.

use crate::source::{Device, SourceConfig};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Smallest feedback factor of a source that answers.
pub const MIN_FEEDBACK: f64 = 0.1;
/// The factor of a source that is down.
pub const DOWN_FACTOR: f64 = 1e-6;
/// How long a source that did not answer counts as down.
pub const DOWN_FOR: Duration = Duration::from_secs(10);
/// A weight is never zero, so that every source stays eligible and ranks are total.
const MIN_WEIGHT: f64 = 1e-12;
/// Weights of the newest outcome in the error rate and latency averages.
const ERROR_ALPHA: f64 = 0.2;
const LATENCY_ALPHA: f64 = 0.1;

/// What an operation on a source gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// It worked, in this time.
    Done(Duration),
    /// The source answered but lacked the blob (or held a corrupt one).
    Failed,
    /// The source did not answer or refused.
    Unavailable,
}

/// The static part of a source's weight, from its configuration (see the module's text).
pub fn base_weight(c: &SourceConfig) -> f64 {
    let device = match c.device {
        Device::Server => 1.0,
        Device::Desktop => 0.5,
        Device::Mobile => 0.2,
        Device::Embedded => 0.1,
    };
    let bandwidth = c.bandwidth_mbps / (c.bandwidth_mbps + 50.0);
    let load = (1.0 - c.load).max(0.05);
    let traffic = 2.0 * c.traffic_ratio / (1.0 + c.traffic_ratio);
    device * bandwidth * c.availability * load * traffic
}

/// The placement key of a packet of a file version.
pub fn placement_key(file: u64, packet: u32) -> u64 {
    mix(file ^ mix(u64::from(packet) ^ 0x7061_636b_6574))
}

/// SplitMix64's finaliser: a bijection whose output bits all depend on all input bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `u = hash(key, source)` in (0, 1), never 0 or 1 so `ln u` is finite and negative.
fn unit(key: u64, source: u8) -> f64 {
    let h = mix(key ^ mix(u64::from(source) ^ 0x736f_7572_6365_0000));
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

#[derive(Clone, Debug, Default)]
struct Health {
    /// Averaged operation time in microseconds; None before the first.
    latency_us: Option<f64>,
    errors: f64,
    down_until: Option<Instant>,
}

/// The sources' weights and what this process learnt about them.
#[derive(Debug)]
pub struct Placement {
    ids: Vec<u8>,
    base: Vec<f64>,
    health: Mutex<Vec<Health>>,
}

impl Placement {
    /// Sources with their static weights (see [`base_weight`]).
    pub fn new(sources: &[(u8, f64)]) -> Placement {
        Placement {
            ids: sources.iter().map(|s| s.0).collect(),
            base: sources.iter().map(|s| s.1).collect(),
            health: Mutex::new(vec![Health::default(); sources.len()]),
        }
    }

    fn health(&self) -> MutexGuard<'_, Vec<Health>> {
        // The health is plain numbers: one a panicking holder left half-updated is still fine.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn position(&self, source: u8) -> Option<usize> {
        self.ids.iter().position(|&s| s == source)
    }

    /// Every source's weight now, static part times feedback.
    pub fn weights(&self) -> Vec<(u8, f64)> {
        let now = Instant::now();
        let health = self.health();
        let best = health
            .iter()
            .filter_map(|h| h.latency_us)
            .fold(f64::INFINITY, f64::min);
        self.ids
            .iter()
            .zip(&self.base)
            .zip(health.iter())
            .map(|((&id, &base), h)| (id, (base * feedback(h, best, now)).max(MIN_WEIGHT)))
            .collect()
    }

    /// The feedback factor of `source` now (1 for a source not configured).
    pub fn feedback(&self, source: u8) -> f64 {
        let Some(i) = self.position(source) else {
            return 1.0;
        };
        let health = self.health();
        let best = health
            .iter()
            .filter_map(|h| h.latency_us)
            .fold(f64::INFINITY, f64::min);
        feedback(&health[i], best, Instant::now())
    }

    /// All sources, most preferred first, for the packet with this key.
    pub fn rank(&self, key: u64) -> Vec<u8> {
        rank(&self.weights(), key)
    }

    /// The `r` sources (or all, if fewer) a packet with this key goes to, most preferred first.
    pub fn choose(&self, key: u64, r: usize) -> Vec<u8> {
        let mut ranked = self.rank(key);
        ranked.truncate(r);
        ranked
    }

    /// Learns from an operation on `source`.
    pub fn record(&self, source: u8, outcome: Outcome) {
        self.record_many(&[(source, outcome)]);
    }

    /// Learns from operations, in order, under one lock.
    pub fn record_many(&self, outcomes: &[(u8, Outcome)]) {
        if outcomes.is_empty() {
            return;
        }
        let mut health = self.health();
        for &(source, outcome) in outcomes {
            if let Some(i) = self.position(source) {
                learn(&mut health[i], outcome);
            }
        }
    }
}

fn learn(h: &mut Health, outcome: Outcome) {
    let failed = match outcome {
        Outcome::Done(took) => {
            let us = took.as_secs_f64() * 1e6;
            h.latency_us = Some(match h.latency_us {
                Some(avg) => avg + LATENCY_ALPHA * (us - avg),
                None => us,
            });
            h.down_until = None;
            0.0
        }
        Outcome::Failed => 1.0,
        Outcome::Unavailable => {
            h.down_until = Some(Instant::now() + DOWN_FOR);
            1.0
        }
    };
    h.errors += ERROR_ALPHA * (failed - h.errors);
}

fn feedback(h: &Health, best_latency_us: f64, now: Instant) -> f64 {
    if h.down_until.is_some_and(|t| now < t) {
        return DOWN_FACTOR;
    }
    let latency = match h.latency_us {
        Some(l) if l > 0.0 && best_latency_us.is_finite() => (2.0 * best_latency_us / l).min(1.0),
        _ => 1.0,
    };
    ((1.0 - h.errors) * latency).clamp(MIN_FEEDBACK, 1.0)
}

/// Sources by descending score `w / -ln(u)` for `key`; ties (equal weights and hashes,
/// which practically never happen) go to the lower id.
pub fn rank(weights: &[(u8, f64)], key: u64) -> Vec<u8> {
    let mut scored: Vec<(f64, u8)> = weights
        .iter()
        .map(|&(id, w)| (w.max(MIN_WEIGHT) / -unit(key, id).ln(), id))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEYS: u64 = 60_000;

    fn shares(weights: &[(u8, f64)], r: usize) -> HashMap<u8, f64> {
        let mut n = HashMap::new();
        for k in 0..KEYS {
            for s in rank(weights, placement_key(42, k as u32))
                .into_iter()
                .take(r)
            {
                *n.entry(s).or_insert(0.0) += 1.0 / KEYS as f64;
            }
        }
        n
    }

    #[test]
    fn one_copy_goes_to_each_source_in_proportion_to_its_weight() {
        let weights = [(1, 1.0), (2, 2.0), (3, 4.0), (4, 1.0)];
        let total: f64 = weights.iter().map(|w| w.1).sum();
        let got = shares(&weights, 1);
        for (id, w) in weights {
            let want = w / total;
            assert!(
                (got[&id] - want).abs() < 0.01,
                "source {id}: {} vs {want}",
                got[&id]
            );
        }
    }

    #[test]
    fn two_copies_favour_heavier_sources_and_are_distinct() {
        let weights = [(1, 1.0), (2, 2.0), (3, 4.0), (4, 0.5)];
        let got = shares(&weights, 2);
        assert!(got[&4] < got[&1] && got[&1] < got[&2] && got[&2] < got[&3]);
        let sum: f64 = got.values().sum();
        assert!((sum - 2.0).abs() < 1e-6);
        for k in 0..1000 {
            let r = rank(&weights, placement_key(1, k));
            let mut distinct = r[..2].to_vec();
            distinct.dedup();
            assert_eq!(distinct.len(), 2);
            assert_eq!(r.len(), 4);
        }
    }

    #[test]
    fn adding_or_removing_a_source_moves_about_one_in_n_packets() {
        let ten: Vec<(u8, f64)> = (0..10).map(|i| (i, 1.0)).collect();
        let mut eleven = ten.clone();
        eleven.push((10, 1.0));
        for r in [1usize, 2] {
            let mut moved = 0;
            for k in 0..KEYS {
                let key = placement_key(9, k as u32);
                let mut before = rank(&ten, key)[..r].to_vec();
                let mut after = rank(&eleven, key)[..r].to_vec();
                before.sort_unstable();
                after.sort_unstable();
                if before != after {
                    moved += 1;
                    // Whatever moved, moved to the new source.
                    assert!(after.contains(&10), "key {k}: {before:?} -> {after:?}");
                    let kept = before.iter().filter(|s| after.contains(s)).count();
                    assert_eq!(kept, r - 1);
                }
            }
            // Each of the r copies moves with probability 1/11.
            let share = moved as f64 / KEYS as f64;
            let want = r as f64 / 11.0;
            assert!(
                (share - want).abs() < 0.015,
                "r={r}: moved {share}, want {want}"
            );
        }
        // Removing a source only moves the packets it held.
        let nine: Vec<(u8, f64)> = ten.iter().copied().filter(|s| s.0 != 3).collect();
        let mut moved = 0;
        for k in 0..KEYS {
            let key = placement_key(9, k as u32);
            let before = rank(&ten, key)[0];
            let after = rank(&nine, key)[0];
            if before != after {
                assert_eq!(before, 3);
                moved += 1;
            }
        }
        let share = moved as f64 / KEYS as f64;
        assert!((share - 0.1).abs() < 0.01, "moved {share}");
    }

    #[test]
    fn the_weight_formula_orders_sources_as_documented() {
        let server = SourceConfig::local(1, "/x");
        let w = |f: &dyn Fn(&mut SourceConfig)| {
            let mut c = server.clone();
            f(&mut c);
            base_weight(&c)
        };
        let base = base_weight(&server);
        assert!(base > 0.0);
        assert!(w(&|c| c.device = Device::Mobile) < w(&|c| c.device = Device::Desktop));
        assert!(w(&|c| c.device = Device::Desktop) < base);
        assert!(w(&|c| c.bandwidth_mbps = 10.0) < w(&|c| c.bandwidth_mbps = 1000.0));
        // Ten times the bandwidth is far less than ten times the weight.
        assert!(w(&|c| c.bandwidth_mbps = 1000.0) < 2.0 * w(&|c| c.bandwidth_mbps = 100.0));
        assert!(w(&|c| c.availability = 0.5) < base);
        assert!(w(&|c| c.load = 0.9) < w(&|c| c.load = 0.1));
        assert!(w(&|c| c.load = 1.0) > 0.0);
        assert!(w(&|c| c.traffic_ratio = 0.2) < base);
        assert!(w(&|c| c.traffic_ratio = 5.0) > base);
    }

    fn owned(p: &Placement, r: usize) -> HashMap<u8, usize> {
        let mut n = HashMap::new();
        for k in 0..20_000u32 {
            for s in p.choose(placement_key(5, k), r) {
                *n.entry(s).or_insert(0) += 1;
            }
        }
        n
    }

    #[test]
    fn feedback_moves_packets_away_from_slow_or_failing_sources() {
        let p = Placement::new(&[(1, 1.0), (2, 1.0), (3, 1.0)]);
        let even = owned(&p, 1);
        for s in [1, 2, 3] {
            assert!((even[&s] as f64 / 20_000.0 - 1.0 / 3.0).abs() < 0.02);
        }
        // Source 2 answers ten times slower than the others.
        for _ in 0..50 {
            p.record(1, Outcome::Done(Duration::from_micros(100)));
            p.record(2, Outcome::Done(Duration::from_micros(1000)));
            p.record(3, Outcome::Done(Duration::from_micros(120)));
        }
        assert!((p.feedback(2) - 0.2).abs() < 0.05, "{}", p.feedback(2));
        assert_eq!(p.feedback(3), 1.0);
        let slow = owned(&p, 1);
        assert!(slow[&2] * 3 < even[&2], "{slow:?}");
        // Source 3 starts failing: its error rate pulls it down to the floor.
        for _ in 0..30 {
            p.record(3, Outcome::Failed);
        }
        assert_eq!(p.feedback(3), MIN_FEEDBACK);
        let failing = owned(&p, 1);
        assert!(failing[&1] > 14_000 && failing[&3] < 2_000, "{failing:?}");
        // Successes bring it back.
        for _ in 0..40 {
            p.record(3, Outcome::Done(Duration::from_micros(100)));
        }
        assert!(p.feedback(3) > 0.95);
    }

    #[test]
    fn a_down_source_is_only_used_when_too_few_others_exist() {
        let p = Placement::new(&[(1, 1.0), (2, 1.0), (3, 1.0)]);
        p.record(2, Outcome::Unavailable);
        assert_eq!(p.feedback(2), DOWN_FACTOR);
        let two = owned(&p, 2);
        assert_eq!(two.get(&2), None, "{two:?}");
        // Three copies on three sources: the down one must be among them.
        let three = owned(&p, 3);
        assert_eq!(three[&2], 20_000);
        for k in 0..100 {
            let ranked = p.rank(placement_key(5, k));
            assert_eq!(ranked.last(), Some(&2));
        }
        // It answers again: it is back.
        p.record(2, Outcome::Done(Duration::from_micros(10)));
        assert!(p.feedback(2) > DOWN_FACTOR);
        assert!(owned(&p, 1).get(&2).is_some_and(|&n| n > 1000));
    }
}
