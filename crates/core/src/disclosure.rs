//! The disclosure policy: what each scope of caller may learn, decided by every cloud before
//! anything leaves it. One policy per deployment, the same at every cloud; every answer
//! carries the policy's hash and the collector refuses to combine answers whose hashes differ.
//!
//! # Cells and contributors
//!
//! A revealed *cell* is one (time block, metric, group) sum. Its *contributors* are the
//! distinct plugs whose readings it holds (a plug is the device that made a reading, whichever
//! gateway uploaded it); the clouds count them from the metadata that travels in the clear, so
//! every cloud counts the same and withholds the same cells.
//!
//! # Why no sequence of allowed requests isolates a small set of plugs
//!
//! - *Across time*: a scope sees time only in blocks of `stride_windows` windows, aligned to
//!   multiples of the block length. A request must start at a block boundary, so any two
//!   requests reveal either the same block or disjoint blocks: overlapping ranges cannot be
//!   differenced into a finer piece.
//! - *Within a block, across levels*: a house is the disjoint union of its households. Per
//!   (block, metric, house) the cells revealed are the house H (if it has enough
//!   contributors) and a set R of households, chosen by [`Census::revealable`] so that the
//!   households left out, U, together have enough contributors or none. Every linear
//!   combination of revealed cells is then a combination of the atoms {h : h ∈ R} and ΣU
//!   (H − Σ R = ΣU), each of which has at least `min_contributors` plugs or is empty. The
//!   rule is the same for a house- and a household-level request, so asking both changes
//!   nothing. `proptest` checks this by brute force (see the tests).
//! - *Repetition*: one principal may see one cell at most `max_reveals` times at a cloud.
//!
//! The argument holds per scope. Two principals of different scopes who pool their answers
//! (a friend's 30-window blocks and another user's 60-window blocks) can difference them; a
//! deployment that fears that gives every non-owner scope the same stride and minimum.

use crate::reading::{GroupId, GroupKey, GroupLevel, Metric};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Who a request speaks for, relative to one house.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The house's owner's apps.
    Owner,
    /// Apps of a user the owner named a friend.
    Friend,
    /// Apps of any other user the owner opened the house to, and the deployment's collector.
    Other,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Owner => "owner",
            Scope::Friend => "friend",
            Scope::Other => "other",
        }
    }
}

/// What one scope may see.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRules {
    /// Fewest distinct plugs behind any revealed cell.
    pub min_contributors: u32,
    /// Fewest windows of a cell's block (or RANGE) in which the cell holds data: a block of
    /// one real window padded with empty ones is withheld.
    pub min_data_windows: u32,
    /// Windows per block: every COMPUTE cell sums one block, and every request's bounds are
    /// multiples of it.
    pub stride_windows: u32,
    /// Times one principal may see one cell at one cloud; 0: no limit.
    pub max_reveals: u32,
    pub levels: Vec<GroupLevel>,
    pub metrics: Vec<Metric>,
    /// Per-plug load histograms (owner only: a histogram is per plug).
    pub histograms: bool,
    /// Differential privacy for this scope (not the owner's): off without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpRules>,
}

/// Noise every cloud adds to what it reveals to a scope (see [`crate::noise`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpRules {
    /// ε each request spends: every revealed cell of it is ε-differentially private with
    /// respect to any one reading, even if every cloud but one colludes with the collector.
    pub epsilon: f64,
    /// ε one principal may spend at one cloud, over all its requests.
    pub budget: f64,
    /// The largest reading a sensor sends, in fixed-point units (value × 1000): the
    /// sensitivity the noise is calibrated to.
    pub max_value: u64,
}

/// Bounds a policy's DP rules must keep.
pub const MAX_EPSILON: f64 = 10.0;
pub const MAX_DP_VALUE: u64 = 1 << 40;

/// One policy per deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosurePolicy {
    pub owner: ScopeRules,
    pub friend: ScopeRules,
    pub other: ScopeRules,
}

impl Default for DisclosurePolicy {
    /// The owner sees its own plugs at full granularity (what DEBS Q1 per plug needs); friends
    /// and other users see house and household aggregates over half-hour and hour blocks (at
    /// 60 s windows) behind at least 3 and 5 plugs.
    fn default() -> Self {
        DisclosurePolicy {
            owner: ScopeRules {
                min_contributors: 1,
                min_data_windows: 1,
                stride_windows: 1,
                max_reveals: 0,
                levels: vec![GroupLevel::House, GroupLevel::Household, GroupLevel::Plug],
                metrics: Metric::ALL.to_vec(),
                histograms: true,
                dp: None,
            },
            friend: ScopeRules {
                min_contributors: 3,
                min_data_windows: 15,
                stride_windows: 30,
                max_reveals: 16,
                levels: vec![GroupLevel::House, GroupLevel::Household],
                metrics: Metric::ALL.to_vec(),
                histograms: false,
                dp: None,
            },
            other: ScopeRules {
                min_contributors: 5,
                min_data_windows: 30,
                stride_windows: 60,
                max_reveals: 8,
                levels: vec![GroupLevel::House, GroupLevel::Household],
                metrics: Metric::ALL.to_vec(),
                histograms: false,
                dp: None,
            },
        }
    }
}

/// Largest values a policy may state: bounds that keep block arithmetic far from overflow
/// and a hostile policy file from making cells that never exist.
pub const MAX_STRIDE_WINDOWS: u32 = 10_080;
pub const MAX_MIN_CONTRIBUTORS: u32 = 100_000;
pub const MAX_REVEALS: u32 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("disclosure policy: {0}")]
    Invalid(String),
    #[error("disclosure policy {path}: {message}")]
    Read { path: String, message: String },
}

impl DisclosurePolicy {
    /// Reads a policy from TOML (tables `[owner]`, `[friend]`, `[other]`), and checks it.
    pub fn from_toml(text: &str) -> Result<DisclosurePolicy, PolicyError> {
        let policy: DisclosurePolicy =
            toml::from_str(text).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        policy.check()?;
        Ok(policy)
    }

    pub fn load(path: &std::path::Path) -> Result<DisclosurePolicy, PolicyError> {
        let read = |message: String| PolicyError::Read {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        DisclosurePolicy::from_toml(&text).map_err(|e| read(e.to_string()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Refuses a policy that would let a non-owner scope see a plug, or states numbers out of
    /// bounds.
    pub fn check(&self) -> Result<(), PolicyError> {
        for (scope, rules) in self.scopes() {
            let bad = |what: String| PolicyError::Invalid(format!("[{}] {what}", scope.name()));
            let bounded = [
                (
                    "min_contributors",
                    rules.min_contributors,
                    1,
                    MAX_MIN_CONTRIBUTORS,
                ),
                (
                    "min_data_windows",
                    rules.min_data_windows,
                    1,
                    MAX_STRIDE_WINDOWS,
                ),
                (
                    "stride_windows",
                    rules.stride_windows,
                    1,
                    MAX_STRIDE_WINDOWS,
                ),
                ("max_reveals", rules.max_reveals, 0, MAX_REVEALS),
            ];
            for (name, value, low, high) in bounded {
                if !(low..=high).contains(&value) {
                    return Err(bad(format!("{name} = {value} is outside {low}..={high}")));
                }
            }
            if let Some(dp) = &rules.dp {
                if scope == Scope::Owner {
                    return Err(bad(
                        "the owner sees its own data exactly: no noise in its scope".into(),
                    ));
                }
                let finite = dp.epsilon.is_finite() && dp.budget.is_finite();
                if !finite || dp.epsilon <= 0.0 || dp.epsilon > MAX_EPSILON {
                    return Err(bad(format!(
                        "dp.epsilon = {} is outside (0, {MAX_EPSILON}]",
                        dp.epsilon
                    )));
                }
                if dp.budget < dp.epsilon || dp.budget > 1000.0 * MAX_EPSILON {
                    return Err(bad(format!(
                        "dp.budget = {} must be at least dp.epsilon and at most {}",
                        dp.budget,
                        1000.0 * MAX_EPSILON
                    )));
                }
                if dp.max_value == 0 || dp.max_value > MAX_DP_VALUE {
                    return Err(bad(format!(
                        "dp.max_value = {} is outside 1..={MAX_DP_VALUE}",
                        dp.max_value
                    )));
                }
            }
            if rules.min_data_windows > rules.stride_windows {
                return Err(bad(format!(
                    "min_data_windows = {} is more than the {} windows of a block: nothing could be revealed",
                    rules.min_data_windows, rules.stride_windows
                )));
            }
            if scope != Scope::Owner
                && (rules.histograms || rules.levels.contains(&GroupLevel::Plug))
            {
                return Err(bad(
                    "only the owner's scope may see plugs or histograms: every other scope sees aggregates"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    fn scopes(&self) -> [(Scope, &ScopeRules); 3] {
        [
            (Scope::Owner, &self.owner),
            (Scope::Friend, &self.friend),
            (Scope::Other, &self.other),
        ]
    }

    pub fn rules(&self, scope: Scope) -> &ScopeRules {
        match scope {
            Scope::Owner => &self.owner,
            Scope::Friend => &self.friend,
            Scope::Other => &self.other,
        }
    }

    /// SHA-256 of the policy's canonical (postcard) encoding: what clouds and collector compare.
    pub fn hash(&self) -> [u8; 32] {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        out
    }
}

/// Why a request is refused: the rule it breaks, with a stable code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("disclosure policy, {} scope: {message}", scope.name())]
pub struct Violation {
    pub scope: Scope,
    pub code: &'static str,
    pub message: String,
}

impl ScopeRules {
    /// Whether a request of `level` for `metrics` over [from, to) may be answered in this
    /// scope at all (the data rules then decide which cells).
    pub fn check_request(
        &self,
        scope: Scope,
        level: GroupLevel,
        histograms: bool,
        from: u64,
        to: u64,
        window_secs: u64,
    ) -> Result<(), Violation> {
        let refuse = |code, message: String| {
            Err(Violation {
                scope,
                code,
                message,
            })
        };
        if !self.levels.contains(&level) {
            return refuse(
                "policy_level",
                format!("{} level is not revealed to this scope", level.name()),
            );
        }
        if histograms && !self.histograms {
            return refuse(
                "policy_histograms",
                "histograms are not revealed to this scope".into(),
            );
        }
        let block = self.block_secs(window_secs);
        let aligned = |t: u64| t % block == 0 || t == u64::MAX;
        if !aligned(from) || !aligned(to) {
            return refuse(
                "policy_stride",
                format!("[{from}, {to}) is not aligned to this scope's {block} s blocks"),
            );
        }
        Ok(())
    }

    /// Seconds per block.
    pub fn block_secs(&self, window_secs: u64) -> u64 {
        window_secs.saturating_mul(self.stride_windows.max(1) as u64)
    }

    pub fn allows_metric(&self, metric: Metric) -> bool {
        self.metrics.contains(&metric)
    }
}

/// Contributors and data windows of one cell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CellFacts {
    /// Each contributing plug, with the windows in which it holds data.
    pub plugs: BTreeMap<GroupKey, BTreeSet<u64>>,
    pub windows: BTreeSet<u64>,
}

/// Who contributed to which cell of one block at one level: fed from clear metadata, one
/// (window, metric, plug) at a time, then asked which cells may be revealed.
#[derive(Clone, Debug, Default)]
pub struct Census {
    /// Per (metric, house): per household, its facts.
    houses: BTreeMap<(Metric, u32), BTreeMap<u32, CellFacts>>,
}

impl Census {
    /// Plug `plug` holds data of `metric` in the window starting at `window`.
    pub fn add(&mut self, window: u64, metric: Metric, plug: GroupKey) {
        let facts = self
            .houses
            .entry((metric, plug.house))
            .or_default()
            .entry(plug.household)
            .or_default();
        facts.plugs.entry(plug).or_default().insert(window);
        facts.windows.insert(window);
    }

    /// The cells at `level` that `rules` let this block reveal, with the plugs behind each;
    /// see the module's argument.
    pub fn revealable(
        &self,
        rules: &ScopeRules,
        level: GroupLevel,
    ) -> BTreeMap<(Metric, GroupId), usize> {
        let k = rules.min_contributors as usize;
        let m = rules.min_data_windows as usize;
        let enough = |plugs: usize, windows: usize| plugs >= k && windows >= m;
        let mut out = BTreeMap::new();
        for (&(metric, house), households) in &self.houses {
            let union = |ids: &mut dyn Iterator<Item = &CellFacts>| {
                let mut plugs = 0;
                let mut windows: BTreeSet<u64> = BTreeSet::new();
                for f in ids {
                    plugs += f.plugs.len();
                    windows.extend(&f.windows);
                }
                (plugs, windows.len())
            };
            let (plugs, windows) = union(&mut households.values());
            if !enough(plugs, windows) {
                continue;
            }
            match level {
                GroupLevel::House => {
                    out.insert((metric, GroupLevel::House.project(any_plug(house))), plugs);
                }
                GroupLevel::Household => {
                    let parts = households
                        .iter()
                        .map(|(id, f)| (*id, f.plugs.len(), f.windows.clone()));
                    for h in safe_subset(parts.collect(), k, m) {
                        let group = GroupId {
                            house,
                            household: Some(h),
                            plug: None,
                        };
                        out.insert((metric, group), households[&h].plugs.len());
                    }
                }
                GroupLevel::Plug => {
                    // A plug cell has one contributor: revealed only where one is enough,
                    // and within each household by the same rule as households in a house.
                    if k <= 1 {
                        for f in households.values() {
                            let plugs = f.plugs.iter().map(|(plug, windows)| {
                                (*plug, 1, windows.iter().copied().collect::<BTreeSet<u64>>())
                            });
                            for plug in safe_subset(plugs.collect(), k, m) {
                                out.insert((metric, GroupLevel::Plug.project(plug)), 1);
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

fn any_plug(house: u32) -> GroupKey {
    GroupKey {
        house,
        household: 0,
        plug: 0,
    }
}

/// Parts of one parent (households of a house, plugs of a household) that may be revealed:
/// each with enough contributors and data windows, and the parts left out together enough
/// or none, so that the parent minus the revealed parts isolates nothing small. Parts are
/// moved out, smallest first, until the rest is safe; the choice depends only on the counts,
/// so every cloud makes the same one.
fn safe_subset<Id: Copy + Ord>(
    parts: Vec<(Id, usize, BTreeSet<u64>)>,
    k: usize,
    m: usize,
) -> Vec<Id> {
    let ok = |plugs: usize, windows: usize| plugs >= k && windows >= m;
    let (mut revealed, mut left): (Vec<_>, Vec<_>) = parts
        .into_iter()
        .partition(|(_, plugs, windows)| ok(*plugs, windows.len()));
    revealed.sort_by_key(|p| (p.1, p.0));
    loop {
        let plugs: usize = left.iter().map(|p| p.1).sum();
        let windows = left
            .iter()
            .flat_map(|p| p.2.iter())
            .collect::<BTreeSet<_>>()
            .len();
        if left.is_empty() || ok(plugs, windows) || revealed.is_empty() {
            break;
        }
        left.push(revealed.remove(0));
    }
    revealed.into_iter().map(|p| p.0).collect()
}

/// Start of the block that holds the window starting at `window_start`.
pub fn block_start(window_start: u64, block_secs: u64) -> u64 {
    window_start - window_start % block_secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: u64 = 60;

    fn key(house: u32, household: u32, plug: u32) -> GroupKey {
        GroupKey {
            house,
            household,
            plug,
        }
    }

    fn rules(k: u32, m: u32, stride: u32) -> ScopeRules {
        ScopeRules {
            min_contributors: k,
            min_data_windows: m,
            stride_windows: stride,
            ..DisclosurePolicy::default().friend
        }
    }

    #[test]
    fn default_policy_is_valid_and_its_hash_follows_its_content() {
        let policy = DisclosurePolicy::default();
        policy.check().unwrap();
        let parsed = DisclosurePolicy::from_toml(&policy.to_toml()).unwrap();
        assert_eq!(parsed, policy);
        let mut other = policy.clone();
        other.friend.min_contributors += 1;
        assert_ne!(other.hash(), policy.hash());
    }

    #[test]
    fn policies_that_show_plugs_to_others_or_state_wild_numbers_are_refused() {
        let mut p = DisclosurePolicy::default();
        p.other.levels.push(GroupLevel::Plug);
        assert!(p.check().unwrap_err().to_string().contains("[other]"));
        let mut p = DisclosurePolicy::default();
        p.friend.histograms = true;
        assert!(p.check().is_err());
        let mut p = DisclosurePolicy::default();
        p.owner.stride_windows = 0;
        assert!(p
            .check()
            .unwrap_err()
            .to_string()
            .contains("stride_windows"));
        let mut p = DisclosurePolicy::default();
        p.friend.min_data_windows = p.friend.stride_windows + 1;
        assert!(p.check().is_err());
        assert!(DisclosurePolicy::from_toml("[owner]\nmin_contributors = -1").is_err());
        let unknown = DisclosurePolicy::default().to_toml() + "\n[extra]\nx = 1\n";
        assert!(DisclosurePolicy::from_toml(&unknown).is_err());
    }

    #[test]
    fn requests_break_level_histogram_and_stride_rules_by_name() {
        let r = rules(3, 1, 60);
        let check = |level, hist, from, to| {
            r.check_request(Scope::Friend, level, hist, from, to, W)
                .map_err(|v| v.code)
        };
        assert_eq!(check(GroupLevel::House, false, 0, 3600), Ok(()));
        assert_eq!(check(GroupLevel::House, false, 3600, u64::MAX), Ok(()));
        assert_eq!(check(GroupLevel::Plug, false, 0, 3600), Err("policy_level"));
        assert_eq!(
            check(GroupLevel::House, true, 0, 3600),
            Err("policy_histograms")
        );
        assert_eq!(
            check(GroupLevel::House, false, 60, 3660),
            Err("policy_stride")
        );
        assert_eq!(
            check(GroupLevel::House, false, 0, 3660),
            Err("policy_stride")
        );
    }

    #[test]
    fn a_household_is_withheld_when_its_house_minus_it_would_isolate_a_plug() {
        // House 1: household 0 has 4 plugs, household 1 has 1 plug. k = 3.
        let mut c = Census::default();
        for plug in 0..4 {
            c.add(0, Metric::Load, key(1, 0, plug));
        }
        c.add(0, Metric::Load, key(1, 1, 9));
        let r = rules(3, 1, 1);
        let house = c.revealable(&r, GroupLevel::House);
        assert_eq!(house.len(), 1, "5 plugs: the house is revealed");
        let households = c.revealable(&r, GroupLevel::Household);
        assert!(
            households.is_empty(),
            "house minus household 0 would be household 1's single plug: {households:?}"
        );
        // With a third household of 3 plugs, households 0 and 2 may go, household 1 may not,
        // and the rest (household 1 alone) is too small: the smallest revealed one joins it.
        for plug in 0..3 {
            c.add(0, Metric::Load, key(1, 2, plug));
        }
        let households = c.revealable(&r, GroupLevel::Household);
        assert_eq!(households.len(), 1, "{households:?}");
        assert_eq!(households.keys().next().unwrap().1.household, Some(0));
    }

    #[test]
    fn a_block_with_data_in_too_few_windows_is_withheld() {
        let mut c = Census::default();
        for plug in 0..5 {
            c.add(120, Metric::Load, key(1, 0, plug));
        }
        assert!(c.revealable(&rules(3, 2, 4), GroupLevel::House).is_empty());
        c.add(180, Metric::Load, key(1, 0, 0));
        assert_eq!(c.revealable(&rules(3, 2, 4), GroupLevel::House).len(), 1);
    }

    /// Whether `target` lies in the span of `rows` (vectors over GF(p), p prime: a vector
    /// in the rational span of 0/1 rows lies in their span mod p).
    fn in_span(rows: &[Vec<i64>], target: &[i64]) -> bool {
        const P: i64 = 1_000_000_007;
        fn pow(mut b: i64, mut e: i64) -> i64 {
            let mut r = 1;
            while e > 0 {
                if e & 1 == 1 {
                    r = r * b % P;
                }
                b = b * b % P;
                e >>= 1;
            }
            r
        }
        let rank = |mut m: Vec<Vec<i64>>| {
            let cols = m.first().map_or(0, |r| r.len());
            let mut rank = 0;
            for c in 0..cols {
                let Some(pivot) = (rank..m.len()).find(|&r| m[r][c] % P != 0) else {
                    continue;
                };
                m.swap(rank, pivot);
                let inv = pow(m[rank][c].rem_euclid(P), P - 2);
                let pivot_row = m[rank].clone();
                for (r, row) in m.iter_mut().enumerate() {
                    if r != rank && row[c] % P != 0 {
                        let f = row[c] * inv % P;
                        for (x, p) in row.iter_mut().zip(&pivot_row) {
                            *x = (*x - f * p).rem_euclid(P);
                        }
                    }
                }
                rank += 1;
            }
            rank
        };
        let mut with = rows.to_vec();
        with.push(target.to_vec());
        rank(rows.to_vec()) == rank(with)
    }

    /// A small deployment's presence: per plug (house 0, household, plug), the windows (of
    /// `WINDOWS`) in which it holds data.
    const WINDOWS: u64 = 8;

    fn presence() -> impl Strategy<Value = Vec<(u32, u32, Vec<u64>)>> {
        prop::collection::vec((0u32..3, prop::collection::vec(0..WINDOWS, 0..4)), 1..8).prop_map(
            |plugs| {
                plugs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (household, windows))| (household, i as u32, windows))
                    .collect()
            },
        )
    }

    fn request() -> impl Strategy<Value = (u8, u64, u64)> {
        (0u8..3, 0..WINDOWS, 1..=WINDOWS).prop_map(|(level, a, b)| {
            let (from, to) = if a < b { (a, b) } else { (b, b + 1) };
            (level, from * W, to * W)
        })
    }

    proptest! {
        /// No sequence of requests the policy allows reveals anything that a set of fewer than
        /// `min_contributors` plugs of one block is alone behind, across levels and
        /// overlapping ranges.
        #[test]
        fn no_allowed_requests_isolate_fewer_than_the_minimum(
            plugs in presence(),
            requests in prop::collection::vec(request(), 1..12),
            k in 1u32..4,
            m in 1u32..3,
            stride in 1u32..4,
        ) {
            let r = ScopeRules {
                levels: vec![GroupLevel::House, GroupLevel::Household, GroupLevel::Plug],
                ..rules(k, m.min(stride), stride)
            };
            let block = r.block_secs(W);
            // Unknowns: one per (block, plug); a revealed cell is a 0/1 row over them.
            let blocks = (WINDOWS * W).div_ceil(block);
            let n = plugs.len();
            let column = |b: u64, plug: usize| b as usize * n + plug;
            let mut rows: Vec<Vec<i64>> = Vec::new();
            for (level, from, to) in requests {
                let level = [GroupLevel::House, GroupLevel::Household, GroupLevel::Plug][level as usize];
                if r.check_request(Scope::Friend, level, false, from, to, W).is_err() {
                    continue;
                }
                let mut census: BTreeMap<u64, Census> = BTreeMap::new();
                for (household, plug, windows) in &plugs {
                    for w in windows.iter().map(|w| w * W).filter(|w| (from..to).contains(w)) {
                        census
                            .entry(block_start(w, block))
                            .or_default()
                            .add(w, Metric::Load, key(0, *household, *plug));
                    }
                }
                for (b, census) in census {
                    for (_, group) in census.revealable(&r, level).into_keys() {
                        let mut row = vec![0; blocks as usize * n];
                        let mut members = 0;
                        for (i, (household, plug, windows)) in plugs.iter().enumerate() {
                            let inside = group.household.is_none_or(|h| h == *household)
                                && group.plug.is_none_or(|p| p == *plug);
                            let present = windows.iter().any(|w| block_start(w * W, block) == b);
                            if inside && present {
                                row[column(b / block, i)] = 1;
                                members += 1;
                            }
                        }
                        prop_assert!(members >= k, "a revealed cell has {members} plugs");
                        rows.push(row);
                    }
                }
            }
            // Every set of fewer than k plugs of one block stays out of the span.
            for b in 0..blocks {
                for subset in 1u32..(1 << n) {
                    if subset.count_ones() >= k {
                        continue;
                    }
                    let mut target = vec![0; blocks as usize * n];
                    for (i, (_, _, windows)) in plugs.iter().enumerate() {
                        if subset & (1 << i) != 0 {
                            // Only plugs with data in the block are unknowns there.
                            if !windows.iter().any(|w| block_start(w * W, block) / block == b) {
                                continue;
                            }
                            target[column(b, i)] = 1;
                        }
                    }
                    if target.iter().all(|t| *t == 0) {
                        continue;
                    }
                    prop_assert!(
                        !in_span(&rows, &target),
                        "plugs {subset:b} of block {b} are isolated by the revealed cells"
                    );
                }
            }
        }
    }
}
