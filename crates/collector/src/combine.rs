//! Combining the clouds' partial aggregates.

use futures::future::join_all;
use mcloud_core::http::CallError;
use mcloud_core::paths::{COMPUTE_PATH, RANGE_PATH};
use mcloud_core::reading::{GroupId, GroupKey, GroupLevel, Metric};
use mcloud_core::stats::RevealError;
use mcloud_core::wire::{ComputeResponse, RangeResponse, RangeSpec};
use mcloud_core::{CountField, Partial, Revealed as Totals, Window};
use prio::field::FieldElement;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CollectError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("cloud {url} says it is party {party} of {parties}, but the collector knows {expected} clouds")]
    Topology {
        url: String,
        party: u16,
        parties: u16,
        expected: usize,
    },
    #[error("two clouds claim to be party {0}")]
    DuplicateParty(u16),
    #[error("cloud {party} decides disclosure by policy {theirs}, cloud {first_party} by {ours}: the clouds must share one policy, nothing was combined")]
    PolicyMismatch {
        party: u16,
        theirs: String,
        first_party: u16,
        ours: String,
    },
    #[error("clouds disagree on window [{}, {}): {detail}", window.start, window.end)]
    Disagreement { window: Window, detail: String },
}

impl CollectError {
    /// Some cloud has not closed a window the request reaches: asking again later succeeds.
    pub fn is_not_ready(&self) -> bool {
        matches!(self, CollectError::Call(e) if e.is_not_ready())
    }
}

/// How often a collector waiting for windows to close asks again.
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// A group withheld because its combined totals are implausible (see [`RevealError`]): a
/// batch in it carried shares that do not add up to readings. Only this group (and the
/// coarser groups that contain it) is withheld; every other group is revealed, so one bad
/// sensor cannot block a whole query.
#[derive(Clone, Debug, PartialEq)]
pub struct Implausible {
    pub window: Window,
    pub metric: Metric,
    pub group: GroupId,
    pub error: RevealError,
}

impl std::fmt::Display for Implausible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "window [{}, {}) {} house {}",
            self.window.start, self.window.end, self.metric, self.group.house
        )?;
        if let Some(h) = self.group.household {
            write!(f, " household {h}")?;
        }
        if let Some(p) = self.group.plug {
            write!(f, " plug {p}")?;
        }
        write!(f, ": {} ({})", self.error, self.error.code())
    }
}

/// Largest histogram count taken as a count. Real counts stay far below it (a day of
/// readings of every plug is below 2^40), while counts revealed from shares that do not
/// belong together are uniform over the 64-bit field and land above it half the time, so
/// one histogram of 195 such buckets is caught all but surely.
const MAX_PLAUSIBLE_COUNT: u64 = 1 << 63;

/// Per-plug revealed load totals and histogram counts over one range.
pub type PlugTotals = BTreeMap<GroupKey, (Totals, Vec<u64>)>;

/// What to reveal.
#[derive(Clone, Debug)]
pub struct Query {
    pub from: u64,
    pub to: u64,
    pub level: GroupLevel,
    /// Groups with fewer records are withheld.
    pub min_count: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RevealedGroup {
    pub metric: Metric,
    pub group: GroupId,
    pub totals: Totals,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RevealedWindow {
    pub window: Window,
    pub batches: u64,
    pub groups: Vec<RevealedGroup>,
    /// Groups held back by the clouds' disclosure policy and the collector's minimum count.
    pub withheld: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Revealed {
    pub windows: Vec<RevealedWindow>,
    /// Windows not computable yet at some cloud, with the reason.
    pub not_ready: Vec<(Window, String)>,
    /// Groups withheld because their totals are implausible.
    pub implausible: Vec<Implausible>,
}

impl Revealed {
    pub fn withheld(&self) -> u64 {
        self.windows.iter().map(|w| w.withheld).sum()
    }
}

pub struct Collector {
    /// One client per cloud, each pinning its party's CA and showing the app's token.
    http: Vec<reqwest::Client>,
    clouds: Vec<String>,
    /// Bytes of RANGE answers received so far, from all clouds.
    range_bytes: std::sync::atomic::AtomicU64,
    /// Plugs withheld from RANGE answers so far because their totals are implausible.
    implausible: std::sync::Mutex<Vec<Implausible>>,
}

impl Collector {
    /// `clouds` in party order.
    pub fn new(clouds: Vec<mcloud_core::http::Endpoint>) -> Collector {
        let (clouds, http) = clouds.into_iter().map(|e| (e.url, e.http)).unzip();
        Collector {
            http,
            clouds,
            range_bytes: Default::default(),
            implausible: Default::default(),
        }
    }

    /// The plugs withheld from RANGE answers so far (the analytics then go without them).
    pub fn implausible(&self) -> Vec<Implausible> {
        self.implausible
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bytes of RANGE answers received so far, from all clouds.
    pub fn range_bytes(&self) -> u64 {
        self.range_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn fetch<T: serde::de::DeserializeOwned>(
        &self,
        party: usize,
        url: String,
    ) -> Result<T, CallError> {
        mcloud_core::http::get(&self.http[party], &url).await
    }

    /// Asks every cloud for COMPUTE and reveals what all of them can answer.
    pub async fn collect(&self, query: &Query) -> Result<Revealed, CollectError> {
        let urls: Vec<String> = self
            .clouds
            .iter()
            .map(|c| {
                format!(
                    "{c}{COMPUTE_PATH}?from={}&to={}&level={}",
                    query.from,
                    query.to,
                    query.level.name()
                )
            })
            .collect();
        let answers = join_all(
            urls.iter()
                .cloned()
                .enumerate()
                .map(|(party, u)| self.fetch::<ComputeResponse>(party, u)),
        )
        .await;
        let mut responses = Vec::with_capacity(answers.len());
        let mut parties = BTreeSet::new();
        for (url, answer) in urls.iter().zip(answers) {
            let r = answer?;
            self.check_party(url, r.party, r.parties, &mut parties)?;
            responses.push(r);
        }
        same_policy(responses.iter().map(|r| (r.party, r.policy)))?;
        combine(&responses, query.min_count)
    }

    fn check_party(
        &self,
        url: &str,
        party: u16,
        parties: u16,
        seen: &mut BTreeSet<u16>,
    ) -> Result<(), CollectError> {
        if parties as usize != self.clouds.len() || party as usize >= self.clouds.len() {
            return Err(CollectError::Topology {
                url: url.to_string(),
                party,
                parties,
                expected: self.clouds.len(),
            });
        }
        if !seen.insert(party) {
            return Err(CollectError::DuplicateParty(party));
        }
        Ok(())
    }

    /// RANGE at every cloud: per-plug load totals over [from, to) and, if asked, load
    /// histograms, after checking that all clouds summed the same batches.
    pub async fn range(&self, spec: RangeSpec) -> Result<PlugTotals, CollectError> {
        let mut all = self.ranges(&[spec]).await?;
        Ok(all.pop().unwrap_or_default())
    }

    /// Several ranges in one round trip to every cloud, each combined as `range` does. A
    /// request a cloud refuses as too large (too many ranges, or an answer past its size
    /// limit) is asked again of that cloud in two halves.
    pub async fn ranges(&self, specs: &[RangeSpec]) -> Result<Vec<PlugTotals>, CollectError> {
        self.ranges_when_ready(specs, std::time::Duration::ZERO)
            .await
    }

    /// `ranges`, asking a cloud again while it has not closed a window they reach, for up to
    /// `wait`: what a collector following a stream that is still being uploaded does. A
    /// cloud's answer is kept once it came (sealed windows never change), so only the clouds
    /// that were not ready are asked again.
    pub async fn ranges_when_ready(
        &self,
        specs: &[RangeSpec],
        wait: std::time::Duration,
    ) -> Result<Vec<PlugTotals>, CollectError> {
        // No deadline past what the clock can hold: a wait that long is a wait without end.
        let deadline = tokio::time::Instant::now().checked_add(wait);
        let body = postcard::to_stdvec(specs).map_err(CallError::from)?;
        let answers = join_all(
            (0..self.clouds.len()).map(|party| self.cloud_ranges(party, specs, &body, deadline)),
        )
        .await;
        let mut parties = BTreeSet::new();
        let mut per_cloud = Vec::with_capacity(answers.len());
        for (url, answer) in answers {
            let answer = answer?;
            if answer.len() != specs.len() {
                return Err(CollectError::Disagreement {
                    window: Window { start: 0, end: 0 },
                    detail: format!(
                        "{url} answered {} ranges for {} asked",
                        answer.len(),
                        specs.len()
                    ),
                });
            }
            if let Some(first) = answer.first() {
                self.check_party(&url, first.party, first.parties, &mut parties)?;
            }
            per_cloud.push(answer);
        }
        same_policy(per_cloud.iter().flatten().map(|r| (r.party, r.policy)))?;
        (0..specs.len())
            .map(|i| self.combine_range(per_cloud.iter().map(|answers| &answers[i])))
            .collect()
    }

    /// One cloud's answers to `specs` (encoded as `body`), asked again while it is not ready
    /// and before `deadline`, split in halves while it refuses them as too large.
    async fn cloud_ranges(
        &self,
        party: usize,
        specs: &[RangeSpec],
        body: &[u8],
        deadline: Option<tokio::time::Instant>,
    ) -> (String, Result<Vec<RangeResponse>, CallError>) {
        let url = format!("{}{RANGE_PATH}", self.clouds[party]);
        loop {
            let answer = mcloud_core::http::post_bytes_sized::<Vec<RangeResponse>>(
                &self.http[party],
                &url,
                body.to_vec(),
            )
            .await;
            match answer {
                Ok((answer, bytes)) => {
                    self.range_bytes
                        .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
                    return (url, Ok(answer));
                }
                Err(CallError::Rejected { status: 413, .. }) if specs.len() > 1 => {
                    return (url, self.cloud_ranges_halved(party, specs, deadline).await);
                }
                Err(e)
                    if e.is_not_ready()
                        && deadline.is_none_or(|d| tokio::time::Instant::now() < d) =>
                {
                    tokio::time::sleep(READY_POLL).await
                }
                Err(e) => return (url, Err(e)),
            }
        }
    }

    async fn cloud_ranges_halved(
        &self,
        party: usize,
        specs: &[RangeSpec],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<RangeResponse>, CallError> {
        let mut answers = Vec::with_capacity(specs.len());
        for half in specs.chunks(specs.len().div_ceil(2)) {
            let body = postcard::to_stdvec(half)?;
            answers.extend(
                Box::pin(self.cloud_ranges(party, half, &body, deadline))
                    .await
                    .1?,
            );
        }
        Ok(answers)
    }

    fn combine_range<'a>(
        &self,
        answers: impl Iterator<Item = &'a RangeResponse>,
    ) -> Result<PlugTotals, CollectError> {
        let mut first: Option<(u64, u128)> = None;
        let mut window = Window { start: 0, end: 0 };
        let mut sums: BTreeMap<GroupKey, (Partial, Vec<CountField>, usize)> = BTreeMap::new();
        for r in answers {
            window = Window {
                start: r.from,
                end: r.to,
            };
            let fingerprint = (r.batches, r.batch_digest);
            if *first.get_or_insert(fingerprint) != fingerprint {
                return Err(CollectError::Disagreement {
                    window,
                    detail: format!(
                        "cloud {} summed {} batches, another cloud {}",
                        r.party,
                        r.batches,
                        first.map(|f| f.0).unwrap_or(0)
                    ),
                });
            }
            for p in &r.plugs {
                let entry = sums.entry(p.plug).or_default();
                entry.0.merge(&p.load);
                if entry.1.len() < p.histogram.len() {
                    entry.1.resize(p.histogram.len(), CountField::zero());
                }
                for (t, c) in entry.1.iter_mut().zip(&p.histogram) {
                    *t += *c;
                }
                entry.2 += 1;
            }
        }
        let mut out = BTreeMap::new();
        for (plug, (load, histogram, seen_at)) in sums {
            if seen_at != self.clouds.len() {
                return Err(CollectError::Disagreement {
                    window,
                    detail: format!(
                        "plug {plug:?} is missing at {} clouds",
                        self.clouds.len() - seen_at
                    ),
                });
            }
            let counts = histogram
                .iter()
                .map(|c| {
                    let n = u64::from(*c);
                    if n > MAX_PLAUSIBLE_COUNT {
                        Err(RevealError::Count(u128::from(n)))
                    } else {
                        Ok(n)
                    }
                })
                .collect::<Result<Vec<u64>, _>>();
            match Totals::from_combined(&load).and_then(|t| Ok((t, counts?))) {
                Ok(totals) => {
                    out.insert(plug, totals);
                }
                Err(error) => {
                    let withheld = Implausible {
                        window,
                        metric: Metric::Load,
                        group: GroupLevel::Plug.project(plug),
                        error,
                    };
                    tracing::warn!("withheld from a range: {withheld}");
                    self.implausible
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(withheld);
                }
            }
        }
        Ok(out)
    }
}

/// Every cloud's answer must come from one disclosure policy: a cloud with a looser one
/// would reveal what the others withhold.
fn same_policy(mut answers: impl Iterator<Item = (u16, [u8; 32])>) -> Result<(), CollectError> {
    let Some((first_party, first)) = answers.next() else {
        return Ok(());
    };
    for (party, policy) in answers {
        if policy != first {
            return Err(CollectError::PolicyMismatch {
                party,
                theirs: hex::encode(&policy[..8]),
                first_party,
                ours: hex::encode(&first[..8]),
            });
        }
    }
    Ok(())
}

/// Adds the clouds' answers window by window. A window is revealed only when every cloud can
/// answer for it: either it lists it as ready, or the window is closed there and the cloud
/// never received a share of it.
pub fn combine(responses: &[ComputeResponse], min_count: u64) -> Result<Revealed, CollectError> {
    let mut windows: BTreeSet<Window> = BTreeSet::new();
    for r in responses {
        windows.extend(r.ready.iter().map(|w| w.window));
        windows.extend(r.pending.iter().map(|w| w.window));
    }
    let mut out = Revealed::default();
    'windows: for window in windows {
        let mut parts = Vec::with_capacity(responses.len());
        for r in responses {
            if let Some(p) = r.pending.iter().find(|p| p.window == window) {
                let reason = if p.closed {
                    format!("cloud {}: {} batches undecided", r.party, p.pending_batches)
                } else {
                    format!("cloud {}: window still open", r.party)
                };
                out.not_ready.push((window, reason));
                continue 'windows;
            }
            match r.ready.iter().find(|w| w.window == window) {
                Some(w) => parts.push(Some(w)),
                None if window.end <= r.closed_before => parts.push(None),
                None => {
                    out.not_ready
                        .push((window, format!("cloud {}: window still open", r.party)));
                    continue 'windows;
                }
            }
        }
        let noisy = responses.iter().any(|r| r.noisy);
        let revealed = combine_window(window, &parts, min_count, noisy, &mut out.implausible)?;
        tracing::debug!(
            window = window.start,
            batches = parts
                .iter()
                .flatten()
                .map(|p| p.batches)
                .next()
                .unwrap_or(0),
            groups = revealed.groups.len(),
            "window revealed"
        );
        out.windows.push(revealed);
    }
    Ok(out)
}

fn combine_window(
    window: Window,
    parts: &[Option<&mcloud_core::wire::WindowPartial>],
    min_count: u64,
    noisy: bool,
    implausible: &mut Vec<Implausible>,
) -> Result<RevealedWindow, CollectError> {
    let fingerprint = |p: &Option<&mcloud_core::wire::WindowPartial>| {
        p.map(|w| (w.batches, w.batch_digest)).unwrap_or((0, 0))
    };
    let first = parts.first().map(fingerprint).unwrap_or((0, 0));
    for (party, p) in parts.iter().enumerate() {
        let f = fingerprint(p);
        if f != first {
            return Err(CollectError::Disagreement {
                window,
                detail: format!(
                    "cloud 0 aggregated {} batches (digest {:032x}), cloud {party} {} (digest {:032x})",
                    first.0, first.1, f.0, f.1
                ),
            });
        }
    }
    let mut sums: BTreeMap<(Metric, GroupId), (Partial, usize)> = BTreeMap::new();
    for p in parts.iter().flatten() {
        for g in &p.groups {
            let entry = sums.entry((g.metric, g.group)).or_default();
            entry.0.merge(&g.partial);
            entry.1 += 1;
        }
    }
    let mut groups = Vec::new();
    // What the clouds' policy withheld, then what the collector's minimum count withholds.
    let mut withheld = parts
        .iter()
        .flatten()
        .map(|p| p.withheld)
        .max()
        .unwrap_or(0);
    for ((metric, group), (total, seen_at)) in sums {
        if seen_at != parts.len() {
            return Err(CollectError::Disagreement {
                window,
                detail: format!(
                    "group {group:?} ({metric}) is missing at {} clouds",
                    parts.len() - seen_at
                ),
            });
        }
        let totals = if noisy {
            Totals::from_noisy(&total)
        } else {
            match Totals::from_combined(&total) {
                Ok(totals) => totals,
                Err(error) => {
                    implausible.push(Implausible {
                        window,
                        metric,
                        group,
                        error,
                    });
                    continue;
                }
            }
        };
        if totals.count < min_count {
            withheld += 1;
            continue;
        }
        groups.push(RevealedGroup {
            metric,
            group,
            totals,
        });
    }
    Ok(RevealedWindow {
        window,
        batches: first.0,
        groups,
        withheld,
    })
}

impl Collector {
    /// Collects until every window in range can be revealed, or `timeout` passes (then the
    /// windows still pending are listed in `not_ready`).
    pub async fn collect_when_ready(
        &self,
        query: &Query,
        timeout: std::time::Duration,
    ) -> Result<Revealed, CollectError> {
        let until = std::time::Instant::now() + timeout;
        loop {
            // A cloud that is restarting is waited for like a window that is not ready.
            let revealed = match self.collect(query).await {
                Err(CollectError::Call(e))
                    if e.is_retryable() && std::time::Instant::now() < until =>
                {
                    tracing::info!("waiting for a cloud: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
                other => other?,
            };
            if revealed.not_ready.is_empty() || std::time::Instant::now() >= until {
                return Ok(revealed);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_two_policies_are_never_combined() {
        assert!(same_policy([(0, [1; 32]), (1, [1; 32]), (2, [1; 32])].into_iter()).is_ok());
        let e = same_policy([(0, [1; 32]), (1, [1; 32]), (2, [2; 32])].into_iter()).unwrap_err();
        assert!(
            matches!(
                e,
                CollectError::PolicyMismatch {
                    party: 2,
                    first_party: 0,
                    ..
                }
            ),
            "{e}"
        );
    }
}
