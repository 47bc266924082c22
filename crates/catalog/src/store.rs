//! The flags table kept durably in redb by one process. Every operation validates all its ids
//! first and then commits them in one write transaction, so a rejected request changes nothing
//! and an answered one survives a crash.

use crate::rules::{check_request, check_ttls, Table};
use crate::{now_ms, CatalogError, FlagTable};
use mcloud_core::wire::{CreateFlag, Flag, FlagState, MAX_FLAGS_PER_REQUEST};
use mcloud_core::BatchId;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::rules::{FlagCounts, MAX_TTL_MS};

const FLAGS: TableDefinition<u128, (u8, u64)> = TableDefinition::new("flags");

/// A robust flag's state code carries this bit.
const ROBUST_BIT: u8 = 0x80;

pub(crate) fn encode(flag: &Flag) -> u8 {
    let state = match flag.state {
        FlagState::False => 0,
        FlagState::True => 1,
        FlagState::Error => 2,
    };
    if flag.robust {
        state | ROBUST_BIT
    } else {
        state
    }
}

/// The flag stored as `code` and `deadline_ms`.
pub(crate) fn decode(code: u8, deadline_ms: u64) -> Result<Flag, CatalogError> {
    let state = match code & !ROBUST_BIT {
        0 => FlagState::False,
        1 => FlagState::True,
        2 => FlagState::Error,
        other => return Err(CatalogError::Storage(format!("corrupt flag state {other}"))),
    };
    Ok(Flag {
        state,
        deadline_ms,
        robust: code & ROBUST_BIT != 0,
    })
}

pub struct FlagStore {
    db: Database,
    table: Mutex<Table>,
}

impl FlagStore {
    /// Opens (or creates) the table in `dir/flags.redb` and starts the deadline sweep.
    pub fn open(dir: &Path) -> Result<Arc<FlagStore>, CatalogError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CatalogError::Storage(format!("{}: {e}", dir.display())))?;
        let db = mcloud_core::database::open(dir.join("flags.redb"))?;
        let mut table = Table::default();
        {
            let txn = db.begin_write()?;
            txn.open_table(FLAGS)?;
            txn.commit()?;
            let txn = db.begin_read()?;
            let flags = txn.open_table(FLAGS)?;
            let mut loaded = Vec::new();
            for entry in flags.iter()? {
                let (id, value) = entry?;
                let (code, deadline_ms) = value.value();
                loaded.push((BatchId(id.value()), decode(code, deadline_ms)?));
            }
            table.apply(&loaded);
        }
        let store = Arc::new(FlagStore {
            db,
            table: Mutex::new(table),
        });
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { break };
                if let Err(e) = tokio::task::block_in_place(|| store.sweep(now_ms())) {
                    tracing::error!("deadline sweep: {e}");
                }
            }
        });
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated: memory is only
        // changed after the commit succeeded, so the poisoned state is still consistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, changes: &[(BatchId, Flag)]) -> Result<(), CatalogError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut flags = txn.open_table(FLAGS)?;
            for (id, flag) in changes {
                flags.insert(id.0, (encode(flag), flag.deadline_ms))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Writes ERROR for every FALSE flag past its deadline; returns how many.
    pub fn sweep(&self, now: u64) -> Result<usize, CatalogError> {
        let mut table = self.lock();
        let expired = table.expired(now);
        self.persist(&expired)?;
        table.apply(&expired);
        Ok(expired.len())
    }

    pub fn counts(&self) -> FlagCounts {
        self.lock().counts(now_ms())
    }

    fn create_now(&self, requests: &[CreateFlag], now: u64) -> Result<Vec<Flag>, CatalogError> {
        check_request(requests.iter().map(|r| r.id), requests.len())?;
        check_ttls(requests)?;
        let mut table = self.lock();
        let (out, changes) = table.create(requests, now)?;
        self.persist(&changes)?;
        table.apply(&changes);
        Ok(out)
    }

    fn set_now(&self, ids: &[BatchId], now: u64) -> Result<Vec<Flag>, CatalogError> {
        check_request(ids.iter().copied(), ids.len())?;
        let mut table = self.lock();
        let (out, changes) = table.set(ids, now)?;
        self.persist(&changes)?;
        table.apply(&changes);
        Ok(out)
    }

    fn verdict_now(
        &self,
        ids: &[BatchId],
        valid: bool,
        now: u64,
    ) -> Result<Vec<Flag>, CatalogError> {
        check_request(ids.iter().copied(), ids.len())?;
        let mut table = self.lock();
        let (out, changes) = table.verdict(ids, valid, now)?;
        self.persist(&changes)?;
        table.apply(&changes);
        Ok(out)
    }

    fn get_now(&self, ids: &[BatchId], now: u64) -> Result<Vec<Option<Flag>>, CatalogError> {
        if ids.len() > MAX_FLAGS_PER_REQUEST {
            return Err(CatalogError::TooMany(ids.len()));
        }
        let table = self.lock();
        Ok(ids.iter().map(|id| table.effective(id, now)).collect())
    }
}

// redb commits block on fsync; `block_in_place` keeps that off the async workers' queues
// without a thread hop per call.
impl FlagTable for Arc<FlagStore> {
    async fn create(&self, flags: Vec<CreateFlag>) -> Result<Vec<Flag>, CatalogError> {
        tokio::task::block_in_place(|| self.create_now(&flags, now_ms()))
    }

    async fn set(&self, ids: Vec<BatchId>) -> Result<Vec<Flag>, CatalogError> {
        tokio::task::block_in_place(|| self.set_now(&ids, now_ms()))
    }

    async fn verdict(&self, ids: Vec<BatchId>, valid: bool) -> Result<Vec<Flag>, CatalogError> {
        tokio::task::block_in_place(|| self.verdict_now(&ids, valid, now_ms()))
    }

    async fn get(&self, ids: Vec<BatchId>) -> Result<Vec<Option<Flag>>, CatalogError> {
        self.get_now(&ids, now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(id: u128, ttl_ms: u64) -> CreateFlag {
        CreateFlag {
            id: BatchId(id),
            ttl_ms,
            robust: false,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn false_then_true_or_error_forever() {
        let dir = tempfile::tempdir().unwrap();
        let store = FlagStore::open(dir.path()).unwrap();
        // An hour ahead of the real clock the background sweep never touches these flags.
        let t0 = now_ms() + 3_600_000;
        store
            .create_now(&[create(1, 100), create(2, 100)], t0)
            .unwrap();
        assert_eq!(
            store.get_now(&[BatchId(1)], t0).unwrap()[0].unwrap().state,
            FlagState::False
        );
        assert_eq!(
            store.set_now(&[BatchId(1)], t0 + 50).unwrap()[0].state,
            FlagState::True
        );
        // A replayed SET is idempotent.
        assert_eq!(
            store.set_now(&[BatchId(1)], t0 + 60).unwrap()[0].state,
            FlagState::True
        );
        // Past the deadline, flag 2 reads ERROR and can no longer be SET.
        assert_eq!(
            store.get_now(&[BatchId(2)], t0 + 101).unwrap()[0]
                .unwrap()
                .state,
            FlagState::Error
        );
        let e = store.set_now(&[BatchId(2)], t0 + 101).unwrap_err();
        assert!(matches!(e, CatalogError::DeadlineMissed { .. }), "{e}");
        assert_eq!(store.sweep(t0 + 101).unwrap(), 1);
        let e = store.set_now(&[BatchId(2)], t0 + 102).unwrap_err();
        assert!(e.to_string().contains("already ERROR"), "{e}");
        let e = store.create_now(&[create(1, 100)], t0 + 103).unwrap_err();
        assert!(e.to_string().contains("already TRUE"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_requests_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FlagStore::open(dir.path()).unwrap();
        let t0 = now_ms() + 3_600_000;
        let e = store
            .create_now(&[create(7, 100), create(8, 0)], t0)
            .unwrap_err();
        assert!(matches!(e, CatalogError::BadTtl { .. }), "{e}");
        assert_eq!(store.get_now(&[BatchId(7)], t0).unwrap(), vec![None]);
        let e = store
            .create_now(&[create(9, 100), create(9, 100)], t0)
            .unwrap_err();
        assert!(matches!(e, CatalogError::DuplicateId(_)), "{e}");
        store.create_now(&[create(10, 100)], t0).unwrap();
        let e = store.set_now(&[BatchId(10), BatchId(11)], t0).unwrap_err();
        assert!(matches!(e, CatalogError::Unknown(BatchId(11))), "{e}");
        // The unknown id made the whole SET fail: flag 10 is still FALSE.
        assert_eq!(
            store.get_now(&[BatchId(10)], t0).unwrap()[0].unwrap().state,
            FlagState::False
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn flags_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = now_ms();
        {
            let store = FlagStore::open(dir.path()).unwrap();
            store
                .create_now(&[create(1, 60_000), create(2, 60_000)], t0)
                .unwrap();
            store.set_now(&[BatchId(1)], t0).unwrap();
        }
        // The sweep task holds the store only during a tick, so the database closes a moment
        // after the last handle is dropped.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let store = loop {
            match FlagStore::open(dir.path()) {
                Ok(store) => break store,
                Err(e) if std::time::Instant::now() < until => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reopening the flags table: {e}"),
            }
        };
        let flags = store.get_now(&[BatchId(1), BatchId(2)], t0).unwrap();
        assert_eq!(flags[0].unwrap().state, FlagState::True);
        assert_eq!(flags[1].unwrap().state, FlagState::False);
    }
}
