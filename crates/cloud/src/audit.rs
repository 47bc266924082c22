//! The audit log: every disclosure a cloud makes, and how often each cell has been revealed to
//! each principal (the policy's `max_reveals`). Both live in one redb file beside the values
//! table and change in one transaction, so a disclosure is either logged and counted or not
//! made.
//!
//! A disclosure to anyone but the data's owner is durable (fsync) before the answer leaves.
//! An owner reading its own houses is logged too, but made durable by the next second's flush:
//! an owner's analytics ask thousands of times a day, and one fsync each cost them a third of
//! their run (measured with `bench --debs`), for entries that reveal nothing to anyone else.

use crate::reopen::Reopening;
use crate::CloudError;
use mcloud_core::disclosure::Scope;
use mcloud_core::reading::GroupLevel;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Sequence number → the disclosure, as JSON (read by people through `mcloud audit`).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("disclosures");
/// (the cell's first second, hash of (principal, cell)) → times revealed. Keyed by time
/// first so the counts of cells past the retention horizon, which no query can reach any
/// more, leave in one range.
const REVEALS: TableDefinition<(u64, u128), u32> = TableDefinition::new("reveals_by_start");
/// Hash of (principal, cell) → times revealed, as files written before the counts were keyed
/// by time hold them: still counted, never written, and not dropped by retention.
const LEGACY_REVEALS: TableDefinition<u128, u32> = TableDefinition::new("reveals");
/// Hash of a principal → millionths of ε it has spent here.
const BUDGETS: TableDefinition<u128, u64> = TableDefinition::new("budgets");

/// Most entries one read returns.
pub const MAX_READ: usize = 10_000;

/// One disclosure: who learnt what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Disclosure {
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    pub user: String,
    pub app: Option<String>,
    /// The token's revocation ids, one per block: its delegation chain.
    pub chain: Vec<String>,
    pub scopes: Vec<Scope>,
    /// compute, range or histograms.
    pub query: String,
    pub level: GroupLevel,
    pub from: u64,
    pub to: u64,
    /// Houses with at least one revealed cell.
    pub houses: Vec<u32>,
    pub cells: u64,
    pub withheld: u64,
    /// Fewest distinct plugs behind any revealed cell (0 when nothing was revealed).
    pub min_contributors: u64,
}

/// Which entries to read.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub app: Option<String>,
    pub house: Option<u32>,
    /// Unix seconds: entries at or after.
    pub since: Option<u64>,
    pub limit: Option<usize>,
}

impl AuditFilter {
    fn matches(&self, d: &Disclosure) -> bool {
        self.user.as_ref().is_none_or(|u| *u == d.user)
            && self.app.as_ref().is_none_or(|a| d.app.as_ref() == Some(a))
            && self.house.is_none_or(|h| d.houses.contains(&h))
            && self.since.is_none_or(|t| d.at >= t)
    }
}

/// A cell revealed to a principal, with the most times the policy allows it (0: no limit).
pub struct Reveal {
    pub cell: u128,
    /// The cell's first second.
    pub start: u64,
    pub max: u32,
    pub name: String,
}

/// ε a request spends from its principal's budget at this cloud, in millionths.
pub struct Charge {
    pub principal: u128,
    pub micro: u64,
    pub budget_micro: u64,
}

/// Why a disclosure was not made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "{cell} was already revealed {times} times to this principal; the policy allows {max}"
    )]
    TooOften { cell: String, times: u32, max: u32 },
    #[error("this principal has spent ε = {spent} of its budget of {budget} here; the request needs {needs}")]
    Budget { spent: f64, budget: f64, needs: f64 },
    #[error(transparent)]
    Storage(#[from] CloudError),
}

/// How often owner reads logged without fsync are made durable.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct Job {
    /// `None`: a barrier, so a reader sees every entry recorded before it asked.
    entry: Option<Disclosure>,
    reveals: Vec<Reveal>,
    charge: Option<Charge>,
    /// Who waits for the durable commit (none: an owner's read, durable by the next flush).
    done: Option<oneshot::Sender<Result<u64, AuditError>>>,
}

#[derive(Clone)]
pub struct AuditLog {
    db: Arc<Reopening>,
    jobs: mpsc::Sender<Job>,
}

impl AuditLog {
    pub fn open(dir: &Path) -> Result<AuditLog, CloudError> {
        let path = dir.join("audit.redb");
        let db = mcloud_core::database::open(&path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(REVEALS)?;
        txn.open_table(LEGACY_REVEALS)?;
        txn.open_table(BUDGETS)?;
        txn.commit()?;
        let db = Arc::new(Reopening::new(path, db));
        let (jobs, queue) = mpsc::channel();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(&writer_db, &queue))
            .map_err(|e| CloudError::Storage(format!("starting the audit writer: {e}")))?;
        Ok(AuditLog { db, jobs })
    }

    /// Counts each of `reveals`, spends `charge` and appends `entry` (`durable`: returns once
    /// all are on disk, or refuses, changing nothing, if any cell would pass its maximum or
    /// the budget would be overspent; otherwise returns at once and the entry is on disk
    /// within [`FLUSH_EVERY`]).
    pub async fn record(
        &self,
        entry: Disclosure,
        reveals: Vec<Reveal>,
        charge: Option<Charge>,
        durable: bool,
    ) -> Result<(), AuditError> {
        let stopped = || AuditError::Storage(CloudError::Storage("audit writer stopped".into()));
        if !durable && reveals.is_empty() && charge.is_none() {
            return self
                .jobs
                .send(Job {
                    entry: Some(entry),
                    reveals,
                    charge,
                    done: None,
                })
                .map_err(|_| stopped());
        }
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job {
                entry: Some(entry),
                reveals,
                charge,
                done: Some(done),
            })
            .map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?.map(|_| ())
    }

    /// Returns once every entry recorded before the call is committed, so a reader that asks
    /// next sees them (an owner's entries otherwise wait for their group).
    pub async fn settle(&self) -> Result<(), CloudError> {
        let stopped = || CloudError::Storage("audit writer stopped".into());
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job {
                entry: None,
                reveals: Vec::new(),
                charge: None,
                done: Some(done),
            })
            .map_err(|_| stopped())?;
        match wait.await.map_err(|_| stopped())? {
            Err(AuditError::Storage(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Drops the reveal counts of cells starting before `start` (past the retention horizon:
    /// no query reaches them again) and the disclosures recorded before `at` (Unix seconds);
    /// returns how many of each left.
    pub async fn forget_before(&self, start: u64, at: u64) -> Result<(u64, u64), CloudError> {
        let db = self.db.clone();
        let job = move || -> Result<(u64, u64), CloudError> {
            let open = db.get()?;
            let txn = open.begin_write()?;
            let mut counts = 0u64;
            let entries;
            {
                let mut reveals = txn.open_table(REVEALS)?;
                reveals.retain_in(..(start, 0u128), |_, _| {
                    counts += 1;
                    false
                })?;
                let mut log = txn.open_table(LOG)?;
                // Sequence numbers follow time, so the old entries are a prefix; one pass
                // drops at most `MAX_FORGET` (the rest go at the next call).
                let mut old = Vec::new();
                for entry in log.iter()? {
                    let (seq, bytes) = entry?;
                    let recorded =
                        serde_json::from_slice::<Disclosure>(bytes.value()).map_or(0, |d| d.at);
                    if recorded >= at || old.len() >= MAX_FORGET {
                        break;
                    }
                    old.push(seq.value());
                }
                for seq in &old {
                    log.remove(seq)?;
                }
                entries = old.len() as u64;
            }
            txn.commit()?;
            Ok((counts, entries))
        };
        let result = tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| CloudError::Storage(format!("audit retention: {e}")))?;
        if let Err(e) = &result {
            self.db.reopen(&e.to_string());
        }
        result
    }

    /// Newest first, at most `filter.limit` (and [`MAX_READ`]).
    pub fn read(&self, filter: &AuditFilter) -> Result<Vec<Disclosure>, CloudError> {
        let limit = filter.limit.unwrap_or(MAX_READ).min(MAX_READ);
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut out = Vec::new();
        for entry in log.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let (seq, bytes) = entry?;
            let d: Disclosure = serde_json::from_slice(bytes.value())
                .map_err(|e| CloudError::Storage(format!("audit entry {}: {e}", seq.value())))?;
            if filter.matches(&d) {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// Commits whatever jobs are waiting in one transaction: durable (fsync) if anyone waits,
/// otherwise not, with an empty durable commit once a second to persist those.
fn writer(db: &Reopening, queue: &mpsc::Receiver<Job>) {
    let mut dirty = false;
    loop {
        let first = match queue.recv_timeout(FLUSH_EVERY) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if dirty {
                    match flush(db) {
                        Ok(()) => dirty = false,
                        Err(e) => {
                            tracing::warn!("audit log: flush failed: {e}");
                            db.reopen(&e.to_string());
                        }
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Nobody waits for an owner's read: those gather for up to GATHER, so a busy owner
        // costs a commit every GATHER rather than one per request. A waiting job ends the
        // gathering at once.
        let until = std::time::Instant::now() + GATHER;
        let mut waited_for = first.done.is_some();
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            let next = if waited_for {
                queue.try_recv().ok()
            } else {
                let left = until.saturating_duration_since(std::time::Instant::now());
                queue.recv_timeout(left).ok()
            };
            let Some(job) = next else { break };
            waited_for |= job.done.is_some();
            group.push(job);
        }
        let durable = group.iter().any(|j| j.done.is_some());
        match db.get().and_then(|open| commit(&open, &mut group, durable)) {
            Ok(outcomes) => {
                dirty = !durable;
                for (job, outcome) in group.into_iter().zip(outcomes) {
                    if let Some(done) = job.done {
                        let _ = done.send(outcome);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("audit log: commit failed: {e}");
                let message = match &e {
                    CloudError::Storage(message) => message.clone(),
                    other => other.to_string(),
                };
                for job in group {
                    if let Some(done) = job.done {
                        let _ = done.send(Err(AuditError::Storage(CloudError::Storage(
                            message.clone(),
                        ))));
                    }
                }
                db.reopen(&message);
            }
        }
    }
    if dirty {
        if let Err(e) = flush(db) {
            tracing::warn!("audit log: last flush failed: {e}");
        }
    }
}

/// An empty durable commit persists every commit before it.
fn flush(db: &Reopening) -> Result<(), CloudError> {
    db.get()?.begin_write()?.commit()?;
    Ok(())
}

/// How long owners' reads gather before they are committed (without fsync).
const GATHER: std::time::Duration = std::time::Duration::from_millis(100);

/// Jobs in one transaction at most.
const MAX_GROUP: usize = 1024;

/// Disclosures one retention pass drops at most, so its transaction stays small.
const MAX_FORGET: usize = 100_000;

/// One transaction for `group`: per job, its counts and its entry, or its refusal.
fn commit(
    db: &Database,
    group: &mut [Job],
    durable: bool,
) -> Result<Vec<Result<u64, AuditError>>, CloudError> {
    let mut txn = db.begin_write()?;
    if !durable {
        txn.set_durability(redb::Durability::None);
    }
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let mut counts = txn.open_table(REVEALS)?;
        let legacy = txn.open_table(LEGACY_REVEALS)?;
        // Only files from before the counts were keyed by window hold any: the lookup per
        // reveal is skipped everywhere else.
        let has_legacy = !legacy.is_empty()?;
        let mut budgets = txn.open_table(BUDGETS)?;
        let mut log = txn.open_table(LOG)?;
        let mut seq = log.last()?.map_or(0, |(k, _)| k.value() + 1);
        'jobs: for job in group.iter_mut() {
            let Some(entry) = &mut job.entry else {
                outcomes.push(Ok(seq));
                continue;
            };
            let mut raised = Vec::new();
            for r in job.reveals.iter().filter(|r| r.max > 0) {
                let fresh = counts.get((r.start, r.cell))?.map_or(0, |v| v.value());
                let old = if has_legacy {
                    legacy.get(r.cell)?.map_or(0, |v| v.value())
                } else {
                    0
                };
                let times = fresh.saturating_add(old);
                if times >= r.max {
                    outcomes.push(Err(AuditError::TooOften {
                        cell: r.name.clone(),
                        times,
                        max: r.max,
                    }));
                    continue 'jobs;
                }
                raised.push(((r.start, r.cell), fresh + 1));
            }
            if let Some(c) = &job.charge {
                let spent = budgets.get(c.principal)?.map_or(0, |v| v.value());
                let after = spent.saturating_add(c.micro);
                if after > c.budget_micro {
                    let eps = |m: u64| m as f64 / 1e6;
                    outcomes.push(Err(AuditError::Budget {
                        spent: eps(spent),
                        budget: eps(c.budget_micro),
                        needs: eps(c.micro),
                    }));
                    continue 'jobs;
                }
                budgets.insert(c.principal, after)?;
            }
            for (cell, times) in raised {
                counts.insert(cell, times)?;
            }
            entry.seq = seq;
            let bytes = serde_json::to_vec(entry)
                .map_err(|e| CloudError::Storage(format!("audit entry: {e}")))?;
            log.insert(seq, bytes.as_slice())?;
            outcomes.push(Ok(seq));
            seq += 1;
        }
    }
    txn.commit()?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disclosure(at: u64) -> Disclosure {
        Disclosure {
            seq: 0,
            at,
            user: "ann".into(),
            app: None,
            chain: Vec::new(),
            scopes: Vec::new(),
            query: "compute".into(),
            level: GroupLevel::Plug,
            from: 0,
            to: 60,
            houses: vec![1],
            cells: 1,
            withheld: 0,
            min_contributors: 1,
        }
    }

    fn reveal(cell: u128, start: u64) -> Reveal {
        Reveal {
            cell,
            start,
            max: 2,
            name: format!("cell {cell}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_and_entries_past_the_horizon_leave_and_the_rest_stay() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for (at, cell, start) in [(1_000, 1, 100), (2_000, 2, 200), (3_000, 2, 200)] {
            log.record(disclosure(at), vec![reveal(cell, start)], None, true)
                .await
                .unwrap();
        }
        // Cell 2 has reached its maximum.
        let refused = log
            .record(disclosure(3_500), vec![reveal(2, 200)], None, true)
            .await;
        assert!(matches!(
            refused,
            Err(AuditError::TooOften { times: 2, .. })
        ));

        let (counts, entries) = log.forget_before(150, 2_500).await.unwrap();
        assert_eq!((counts, entries), (1, 2));
        let kept: Vec<u64> = log
            .read(&AuditFilter::default())
            .unwrap()
            .iter()
            .map(|d| d.at)
            .collect();
        assert_eq!(kept, vec![3_000]);
        // Cell 2's count is still there; cell 1's left with its window.
        let refused = log
            .record(disclosure(4_000), vec![reveal(2, 200)], None, true)
            .await;
        assert!(matches!(
            refused,
            Err(AuditError::TooOften { times: 2, .. })
        ));
        assert_eq!(log.forget_before(150, 2_500).await.unwrap(), (0, 0));
    }
}
