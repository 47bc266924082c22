//! A redb database that is opened again after a failed write, for the stores a cloud writes
//! while it runs (the values table and the audit log).

use crate::CloudError;
use redb::Database;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// A redb database that is closed and opened again after a failed write. redb refuses every
/// transaction on a handle whose file once failed ("Previous I/O error occurred. Please close
/// and re-open the database"), so without this a disk that was full or read-only for a moment
/// would stop the node's writes until it restarts.
pub(crate) struct Reopening {
    path: PathBuf,
    /// `Err`: closed, and why.
    db: RwLock<Result<Arc<Database>, String>>,
}

/// How long a reopening waits for reads still running on the old handle.
const READERS_GONE: Duration = Duration::from_secs(10);

impl Reopening {
    pub(crate) fn new(path: PathBuf, db: Database) -> Reopening {
        Reopening {
            path,
            db: RwLock::new(Ok(Arc::new(db))),
        }
    }

    fn slot(&self) -> RwLockWriteGuard<'_, Result<Arc<Database>, String>> {
        // Only whole values are stored in the slot, so a poisoned lock still holds one.
        self.db.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The open database (hold it for as long as a transaction on it runs), or why it is
    /// closed.
    pub(crate) fn get(&self) -> Result<Arc<Database>, CloudError> {
        match &*self.db.read().unwrap_or_else(|p| p.into_inner()) {
            Ok(db) => Ok(db.clone()),
            Err(why) => Err(CloudError::Storage(format!(
                "{}: {why}",
                self.path.display()
            ))),
        }
    }

    /// After a write failed with `cause`: closes the database once no read holds it and opens
    /// it again, which repairs what the failed commit left. If opening fails too (the disk is
    /// still full or read-only), it stays closed and the next failed write tries again.
    pub(crate) fn reopen(&self, cause: &str) {
        let old = std::mem::replace(
            &mut *self.slot(),
            Err(format!("being reopened after a failed write ({cause})")),
        );
        if let Ok(mut old) = old {
            let until = Instant::now() + READERS_GONE;
            loop {
                match Arc::try_unwrap(old) {
                    // The file and its lock are released here.
                    Ok(db) => break drop(db),
                    Err(shared) if Instant::now() < until => {
                        old = shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(shared) => {
                        tracing::error!(
                            path = %self.path.display(),
                            "reads held the database for {READERS_GONE:?}; not reopening it"
                        );
                        *self.slot() = Ok(shared);
                        return;
                    }
                }
            }
        }
        let reopened = match mcloud_core::database::open(&self.path) {
            Ok(db) => {
                tracing::info!(path = %self.path.display(), "reopened after a failed write ({cause})");
                Ok(Arc::new(db))
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "reopening after a failed write ({cause}): {e}");
                Err(format!(
                    "closed after a failed write; opening it again failed: {e}"
                ))
            }
        };
        *self.slot() = reopened;
    }
}
