//! The Raft log and vote in redb. Every append and vote is one durable write transaction, so
//! an entry this node acknowledged to the leader survives a crash of this node.
//! A write the disk refuses (full, read-only) is retried until the disk takes it
//! ([`DurableFile`]).

use super::durable::DurableFile;
use super::types::{io_error, Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const PURGED: &str = "purged";

#[derive(Clone)]
pub struct LogStore {
    file: DurableFile,
}

fn enc<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(v).map_err(|e| io_error(what, e))
}

fn dec<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(b).map_err(|e| io_error(what, e))
}

impl LogStore {
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(&dir.display().to_string(), e))?;
        let file = DurableFile::open(
            &dir.join("raft-log.redb"),
            "raft log",
            Arc::new(AtomicBool::new(false)),
        )?;
        let db = file.db()?;
        let txn = db.begin_write().map_err(|e| io_error("log", e))?;
        txn.open_table(LOG).map_err(|e| io_error("log", e))?;
        txn.open_table(META).map_err(|e| io_error("log", e))?;
        txn.commit().map_err(|e| io_error("log", e))?;
        Ok(LogStore { file })
    }

    /// Set to make failing writes give up (the node is shutting down); the state machine
    /// shares it.
    pub fn closing(&self) -> Arc<AtomicBool> {
        self.file.closing()
    }

    fn db(&self) -> Result<Arc<Database>, StorageError> {
        self.file.db()
    }

    async fn write<F>(&self, what: &'static str, f: F) -> Result<(), StorageError>
    where
        F: Fn(&redb::WriteTransaction) -> Result<(), StorageError> + Send + Sync + 'static,
    {
        self.file.write(what, f).await
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| io_error(key, e))?;
        let table = txn.open_table(META).map_err(|e| io_error(key, e))?;
        let value = table.get(key).map_err(|e| io_error(key, e))?;
        value.map(|v| dec(key, v.value())).transpose()
    }

    async fn put_meta<T: Serialize>(&self, key: &'static str, v: &T) -> Result<(), StorageError> {
        let bytes = enc(key, v)?;
        self.write(key, move |txn| {
            let mut t = txn.open_table(META).map_err(|e| io_error(key, e))?;
            t.insert(key, bytes.as_slice())
                .map_err(|e| io_error(key, e))?;
            Ok(())
        })
        .await
    }

    fn last_entry(&self) -> Result<Option<LogId>, StorageError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| io_error("log", e))?;
        let table = txn.open_table(LOG).map_err(|e| io_error("log", e))?;
        let last = table.last().map_err(|e| io_error("log", e))?;
        match last {
            Some((_, v)) => Ok(Some(dec::<Entry>("log entry", v.value())?.log_id)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e),
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&e) => Some(e - 1),
            Bound::Unbounded => None,
        };
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| io_error("log", e))?;
        let table = txn.open_table(LOG).map_err(|e| io_error("log", e))?;
        let iter = match end {
            Some(end) if end < start => return Ok(Vec::new()),
            Some(end) => table.range(start..=end),
            None => table.range(start..),
        }
        .map_err(|e| io_error("log", e))?;
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(|e| io_error("log", e))?;
            out.push(dec("log entry", v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(PURGED)?;
        let last_log_id = self.last_entry()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, enc("log entry", &e)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let result = self
            .write("append", move |txn| {
                let mut t = txn.open_table(LOG).map_err(|e| io_error("append", e))?;
                for (index, bytes) in &encoded {
                    t.insert(*index, bytes.as_slice())
                        .map_err(|e| io_error("append", e))?;
                }
                Ok(())
            })
            .await;
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.write("truncate", move |txn| {
            let mut t = txn.open_table(LOG).map_err(|e| io_error("truncate", e))?;
            t.retain_in(from.., |_, _| false)
                .map_err(|e| io_error("truncate", e))?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = enc(PURGED, &log_id)?;
        let upto = log_id.index;
        self.write("purge", move |txn| {
            let mut m = txn.open_table(META).map_err(|e| io_error("purge", e))?;
            m.insert(PURGED, bytes.as_slice())
                .map_err(|e| io_error("purge", e))?;
            let mut t = txn.open_table(LOG).map_err(|e| io_error("purge", e))?;
            t.retain_in(..=upto, |_, _| false)
                .map_err(|e| io_error("purge", e))?;
            Ok(())
        })
        .await
    }
}
