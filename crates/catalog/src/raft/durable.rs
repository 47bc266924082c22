//! A redb file whose writes are retried until the disk takes them, on the file opened again
//! (redb refuses every transaction on a handle whose file once failed). openraft stops a
//! group for good on any storage error, so returning one would leave this voter out of its
//! group until the node restarts, even once the disk has room again. While a write retries,
//! the voter takes no part in the group (the others go on if they are a majority); a node that
//! shuts down stops retrying. The Raft log and the state machine's snapshot both live in one.

use super::types::{io_error, StorageError};
use redb::Database;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// First and longest pause between two attempts of a write the disk refused.
const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How long reopening waits for reads still running on the old handle.
const READERS_GONE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct DurableFile {
    path: PathBuf,
    /// What the file holds, for the logs.
    label: &'static str,
    /// Replaced after a failed write; `Err`: closed, and why.
    db: Arc<RwLock<Result<Arc<Database>, String>>>,
    /// Set when the node shuts down: a failing write stops retrying.
    closing: Arc<AtomicBool>,
}

impl DurableFile {
    pub fn open(
        path: &Path,
        label: &'static str,
        closing: Arc<AtomicBool>,
    ) -> Result<DurableFile, StorageError> {
        let db = mcloud_core::database::open(path).map_err(|e| io_error(label, e))?;
        Ok(DurableFile {
            path: path.to_path_buf(),
            label,
            db: Arc::new(RwLock::new(Ok(Arc::new(db)))),
            closing,
        })
    }

    pub fn closing(&self) -> Arc<AtomicBool> {
        self.closing.clone()
    }

    /// The open database: hold it while a transaction on it runs.
    pub fn db(&self) -> Result<Arc<Database>, StorageError> {
        match &*self.db.read().unwrap_or_else(|p| p.into_inner()) {
            Ok(db) => Ok(db.clone()),
            Err(why) => Err(io_error(&self.path.display().to_string(), why)),
        }
    }

    /// Closes the database once no read holds it and opens it again; readers wait meanwhile.
    fn reopen(&self) {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *slot, Err("being reopened".into()));
        if let Ok(mut old) = old {
            let until = std::time::Instant::now() + READERS_GONE;
            loop {
                match Arc::try_unwrap(old) {
                    // The file and its lock are released here.
                    Ok(db) => break drop(db),
                    Err(shared) if std::time::Instant::now() < until => {
                        old = shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(shared) => {
                        *slot = Ok(shared);
                        return;
                    }
                }
            }
        }
        *slot = mcloud_core::database::open(&self.path)
            .map(Arc::new)
            .map_err(|e| format!("closed after a failed write; opening it again failed: {e}"));
    }

    /// Writes on a blocking thread (redb commits wait for fsync), until the disk takes it or
    /// the node shuts down.
    pub async fn write<F>(&self, what: &'static str, f: F) -> Result<(), StorageError>
    where
        F: Fn(&redb::WriteTransaction) -> Result<(), StorageError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut pause = RETRY_START;
        let mut failures = 0u32;
        let label = self.label;
        loop {
            let (file, f) = (self.clone(), f.clone());
            let result = tokio::task::spawn_blocking(move || {
                let db = file.db()?;
                let txn = db.begin_write().map_err(|e| io_error(what, e))?;
                f(&txn)?;
                txn.commit().map_err(|e| io_error(what, e))
            })
            .await
            .map_err(|e| io_error(what, e))?;
            let e = match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(path = %self.path.display(), failures, "{label}: {what} stored after the disk refused it");
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            if self.closing.load(Ordering::Acquire) {
                return Err(e);
            }
            failures += 1;
            if failures == 1 {
                tracing::error!(path = %self.path.display(), "{label}: {what} failed; this voter takes no part in its group until the disk takes it (retrying): {e}");
            } else if failures % 30 == 0 {
                tracing::warn!(path = %self.path.display(), failures, "{label}: {what} still failing: {e}");
            }
            let file = self.clone();
            let _ = tokio::task::spawn_blocking(move || file.reopen()).await;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}
