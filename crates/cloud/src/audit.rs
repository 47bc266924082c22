//! The audit log: every disclosure a cloud makes, durably, before the answer leaves it, and
//! how often each cell has been revealed to each principal (the policy's `max_reveals`).
//! Both live in one redb file beside the values table and change in one transaction, so a
//! disclosure is either logged and counted or not made.

use crate::CloudError;
use mcloud_core::disclosure::Scope;
use mcloud_core::reading::GroupLevel;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Sequence number → the disclosure, as JSON (read by people through `mcloud audit`).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("disclosures");
/// Hash of (principal, cell) → times revealed.
const REVEALS: TableDefinition<u128, u32> = TableDefinition::new("reveals");

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
    pub max: u32,
    pub name: String,
}

/// Why a disclosure was not made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "{cell} was already revealed {times} times to this principal; the policy allows {max}"
    )]
    TooOften { cell: String, times: u32, max: u32 },
    #[error(transparent)]
    Storage(#[from] CloudError),
}

#[derive(Clone)]
pub struct AuditLog {
    db: Arc<Database>,
}

impl AuditLog {
    pub fn open(dir: &Path) -> Result<AuditLog, CloudError> {
        let db = Database::create(dir.join("audit.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(REVEALS)?;
        txn.commit()?;
        Ok(AuditLog { db: Arc::new(db) })
    }

    /// Counts each of `reveals` and appends `entry`, in one durable transaction; refuses
    /// (and changes nothing) if any cell would pass its maximum.
    pub async fn record(&self, entry: Disclosure, reveals: Vec<Reveal>) -> Result<u64, AuditError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || record(&db, entry, &reveals))
            .await
            .map_err(|e| CloudError::Storage(format!("audit writer: {e}")))?
    }

    /// Newest first, at most `filter.limit` (and [`MAX_READ`]).
    pub fn read(&self, filter: &AuditFilter) -> Result<Vec<Disclosure>, CloudError> {
        let limit = filter.limit.unwrap_or(MAX_READ).min(MAX_READ);
        let txn = self.db.begin_read()?;
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

fn record(db: &Database, mut entry: Disclosure, reveals: &[Reveal]) -> Result<u64, AuditError> {
    let txn = db.begin_write().map_err(CloudError::from)?;
    let seq = {
        let mut counts = txn.open_table(REVEALS).map_err(CloudError::from)?;
        for r in reveals.iter().filter(|r| r.max > 0) {
            let times = counts
                .get(r.cell)
                .map_err(CloudError::from)?
                .map_or(0, |v| v.value());
            if times >= r.max {
                // Dropping the transaction undoes the counts already raised.
                return Err(AuditError::TooOften {
                    cell: r.name.clone(),
                    times,
                    max: r.max,
                });
            }
            counts.insert(r.cell, times + 1).map_err(CloudError::from)?;
        }
        let mut log = txn.open_table(LOG).map_err(CloudError::from)?;
        let seq = log
            .last()
            .map_err(CloudError::from)?
            .map_or(0, |(k, _)| k.value() + 1);
        entry.seq = seq;
        let bytes = serde_json::to_vec(&entry)
            .map_err(|e| CloudError::Storage(format!("audit entry: {e}")))?;
        log.insert(seq, bytes.as_slice())
            .map_err(CloudError::from)?;
        seq
    };
    txn.commit().map_err(CloudError::from)?;
    Ok(seq)
}
