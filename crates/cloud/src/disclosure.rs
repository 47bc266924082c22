//! Disclosure decided here, before anything leaves the cloud: a request is answered per
//! scope of the disclosure policy (`mcloud_core::disclosure`) that its token reaches, each
//! scope seeing only its houses, at its levels and metrics, in its blocks, and only the cells
//! with enough contributors; every answer is logged and counted in the audit log first.
//! Every cloud applies the same policy to the same committed batches, so all of them refuse
//! or withhold the same things.

use crate::audit::{AuditError, Charge, Disclosure, Reveal};
use crate::windows::View;
use crate::CloudNode;
use mcloud_core::auth::access::Reach;
use mcloud_core::auth::app::Grant;
use mcloud_core::disclosure::{DpRules, Scope, ScopeRules, Violation};
use mcloud_core::http::ApiError;
use mcloud_core::noise;
use mcloud_core::reading::{GroupId, GroupKey, GroupLevel, Metric};
use mcloud_core::wire::{ComputeResponse, RangeResponse, RangeSpec};
use std::collections::BTreeSet;
use std::sync::Arc;

fn refusal(v: Violation) -> ApiError {
    ApiError::forbidden(v.code, v.to_string())
}

fn reaches_nothing() -> ApiError {
    ApiError::forbidden(
        "policy_scope",
        "disclosure policy: the token reaches no house in any scope",
    )
}

/// Which (metric, plug) cells a request reaches in `scope`: its houses there, the scope's
/// metrics, and the token's own narrowing.
fn keep<'a>(
    reach: &'a Reach,
    scope: Scope,
    rules: &'a ScopeRules,
    level: GroupLevel,
) -> impl Fn(Metric, GroupKey) -> bool + Sync + 'a {
    move |metric, key| {
        reach.scope(key.house) == Some(scope)
            && rules.allows_metric(metric)
            && reach.narrowed_to((level == GroupLevel::Plug).then_some(key.plug), metric)
    }
}

/// The first 128 bits of SHA-256: a compact key for the audit log's counters.
fn key_of(text: &str) -> u128 {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_le_bytes(bytes)
}

/// A cell's identity for the reveal counts: principal (user and app) and cell.
fn cell_key(grant: &Grant, metric: Metric, group: &GroupId, from: u64, to: u64) -> u128 {
    key_of(&format!(
        "{}\u{0}{}\u{0}{metric}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{from}\u{0}{to}",
        grant.user,
        grant.app.as_deref().unwrap_or(""),
        group.house,
        group.household,
        group.plug
    ))
}

fn describe(metric: Metric, group: &GroupId, from: u64, to: u64) -> String {
    let mut name = format!("{metric} of house {}", group.house);
    if let Some(h) = group.household {
        name += &format!(" household {h}");
    }
    if let Some(p) = group.plug {
        name += &format!(" plug {p}");
    }
    format!("{name} over [{from}, {to})")
}

fn entry(grant: &Grant, query: &str, level: GroupLevel, from: u64, to: u64) -> Disclosure {
    Disclosure {
        seq: 0,
        at: mcloud_core::auth::now_secs(),
        user: grant.user.clone(),
        app: grant.app.clone(),
        chain: grant.revocation_ids.clone(),
        scopes: Vec::new(),
        query: query.into(),
        level,
        from,
        to,
        houses: Vec::new(),
        cells: 0,
        withheld: 0,
        min_contributors: 0,
    }
}

async fn log(
    node: &Arc<CloudNode>,
    entry: Disclosure,
    reveals: Vec<Reveal>,
    charge: Option<Charge>,
) -> Result<(), ApiError> {
    // See `audit`: only an owner's reads of its own houses wait for the next flush.
    let durable = !reveals.is_empty() || entry.scopes.iter().any(|s| *s != Scope::Owner);
    node.audit()
        .record(entry, reveals, charge, durable)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            AuditError::TooOften { .. } => {
                ApiError::forbidden("policy_reveals", format!("disclosure policy: {e}"))
            }
            AuditError::Budget { .. } => {
                ApiError::forbidden("policy_budget", format!("disclosure policy: {e}"))
            }
            AuditError::Storage(e) => ApiError::from(e),
        })
}

/// A principal's identity for its ε budget: user and app.
fn principal_key(grant: &Grant) -> u128 {
    key_of(&format!(
        "{}\u{0}{}",
        grant.user,
        grant.app.as_deref().unwrap_or("")
    ))
}

/// Adds this cloud's full draw of noise to its share of every revealed cell (see
/// `mcloud_core::noise` for why each cloud adds a full one), and says what it costs.
fn add_noise(answer: &mut ComputeResponse, dp: &DpRules, grant: &Grant) -> Charge {
    let mut rng = rand::rngs::OsRng;
    for w in &mut answer.ready {
        for g in &mut w.groups {
            let [sum, sumsq, count] = noise::cell_noise(&mut rng, dp.epsilon, dp.max_value);
            g.partial.sum = noise::add_signed(g.partial.sum, sum);
            g.partial.sumsq = noise::add_signed(g.partial.sumsq, sumsq);
            g.partial.count = noise::add_signed(g.partial.count, count);
        }
    }
    answer.noisy = true;
    let micro = |eps: f64| (eps * 1e6).round() as u64;
    Charge {
        principal: principal_key(grant),
        micro: micro(dp.epsilon),
        budget_micro: micro(dp.budget),
    }
}

/// COMPUTE as the policy lets `grant` see it.
pub async fn compute(
    node: &Arc<CloudNode>,
    reach: &Reach,
    grant: &Grant,
    from: u64,
    to: u64,
    level: GroupLevel,
) -> Result<ComputeResponse, ApiError> {
    let started = std::time::Instant::now();
    let mut answering = std::time::Duration::ZERO;
    let policy = node.policy();
    let mut refused = None;
    let mut merged: Option<ComputeResponse> = None;
    let mut audit = entry(grant, "compute", level, from, to);
    let mut reveals = Vec::new();
    let mut houses = BTreeSet::new();
    let mut fewest = u64::MAX;
    let mut cells = 0;
    let mut charge = None;
    for scope in reach.scopes() {
        let rules = policy.rules(scope);
        if let Err(v) = rules.check_request(scope, level, false, from, to, node.window_secs()) {
            refused.get_or_insert(v);
            continue;
        }
        let keep = keep(reach, scope, rules, level);
        let view = View {
            policy: node.policy_hash(),
            rules,
            keep: &keep,
        };
        let asked = std::time::Instant::now();
        let (mut answer, least) = node.compute(from, to, level, &view).await?;
        answering += asked.elapsed();
        if let Some(dp) = &rules.dp {
            // One request spends ε once, whichever scopes it reaches with noise.
            let spent = add_noise(&mut answer, dp, grant);
            if charge
                .as_ref()
                .is_none_or(|c: &Charge| c.micro < spent.micro)
            {
                charge = Some(spent);
            }
        }
        audit.scopes.push(scope);
        for w in &answer.ready {
            audit.withheld += w.withheld;
            for g in &w.groups {
                houses.insert(g.group.house);
                cells += 1;
                if rules.max_reveals == 0 {
                    continue;
                }
                reveals.push(Reveal {
                    cell: cell_key(grant, g.metric, &g.group, w.window.start, w.window.end),
                    start: w.window.start,
                    max: rules.max_reveals,
                    name: describe(g.metric, &g.group, w.window.start, w.window.end),
                });
            }
        }
        if least > 0 {
            fewest = fewest.min(least);
        }
        merged = Some(match merged {
            None => answer,
            Some(mut all) => {
                merge(&mut all, answer);
                all
            }
        });
    }
    let Some(answer) = merged else {
        return Err(refused.map_or_else(reaches_nothing, refusal));
    };
    audit.cells = cells;
    audit.houses = houses.into_iter().collect();
    audit.min_contributors = if fewest == u64::MAX { 0 } else { fewest };
    log(node, audit, reveals, charge).await?;
    node.add_policy_time(started.elapsed().saturating_sub(answering));
    Ok(answer)
}

/// Two scopes' answers in one: blocks of the same bounds hold disjoint houses.
fn merge(all: &mut ComputeResponse, other: ComputeResponse) {
    all.noisy |= other.noisy;
    for w in other.ready {
        match all.ready.iter_mut().find(|a| a.window == w.window) {
            Some(a) => {
                a.groups.extend(w.groups);
                a.withheld += w.withheld;
            }
            None => all.ready.push(w),
        }
    }
    for p in other.pending {
        if !all.pending.iter().any(|a| a.window == p.window) {
            all.pending.push(p);
        }
    }
    all.ready.sort_by_key(|w| (w.window.start, w.window.end));
    all.pending.sort_by_key(|w| (w.window.start, w.window.end));
}

/// RANGE answers are per plug, which only the owner's scope may see.
pub async fn ranges(
    node: &Arc<CloudNode>,
    reach: &Reach,
    grant: &Grant,
    specs: &[RangeSpec],
) -> Result<Vec<RangeResponse>, ApiError> {
    let started = std::time::Instant::now();
    let policy = node.policy();
    let scopes = reach.scopes();
    let scope = Scope::Owner;
    let rules = policy.rules(scope);
    if !scopes.contains(&scope) {
        // Whatever scope the token is in, its rules name why it sees no plug.
        let Some(other) = scopes.into_iter().next() else {
            return Err(reaches_nothing());
        };
        let v = policy
            .rules(other)
            .check_request(other, GroupLevel::Plug, false, 0, 0, node.window_secs())
            .err()
            .unwrap_or(Violation {
                scope: other,
                code: "policy_level",
                message: "plug level is not revealed to this scope".into(),
            });
        return Err(refusal(v));
    }
    for s in specs {
        rules
            .check_request(
                scope,
                GroupLevel::Plug,
                s.histograms,
                s.from,
                s.to,
                node.window_secs(),
            )
            .map_err(refusal)?;
    }
    let keep = keep(reach, scope, rules, GroupLevel::Plug);
    let view = View {
        policy: node.policy_hash(),
        rules,
        keep: &keep,
    };
    let asked = std::time::Instant::now();
    let answers = node.ranges(specs, &view).await?;
    let answering = asked.elapsed();
    let histograms = specs.iter().any(|s| s.histograms);
    let from = specs.iter().map(|s| s.from).min().unwrap_or(0);
    let to = specs.iter().map(|s| s.to).max().unwrap_or(0);
    let query = if histograms { "histograms" } else { "range" };
    let mut audit = entry(grant, query, GroupLevel::Plug, from, to);
    audit.scopes.push(scope);
    let mut houses = BTreeSet::new();
    let mut reveals = Vec::new();
    for a in &answers {
        for p in &a.plugs {
            houses.insert(p.plug.house);
            audit.cells += 1;
            if rules.max_reveals > 0 {
                let group = GroupLevel::Plug.project(p.plug);
                reveals.push(Reveal {
                    cell: cell_key(grant, Metric::Load, &group, a.from, a.to),
                    start: a.from,
                    max: rules.max_reveals,
                    name: describe(Metric::Load, &group, a.from, a.to),
                });
            }
        }
    }
    audit.houses = houses.into_iter().collect();
    audit.min_contributors = u64::from(audit.cells > 0);
    log(node, audit, reveals, None).await?;
    node.add_policy_time(started.elapsed().saturating_sub(answering));
    Ok(answers)
}
