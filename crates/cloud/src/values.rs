//! The values table: every accepted batch, as received, in redb. A batch is acknowledged only
//! after the transaction that holds it committed (fsync), so an acknowledged share survives a
//! crash. One writer thread commits whatever batches are waiting in one transaction (group
//! commit): concurrent uploads share the fsync instead of queueing for one each.

use crate::CloudError;
use bytes::Bytes;
use mcloud_core::BatchId;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

const BATCHES: TableDefinition<u128, &[u8]> = TableDefinition::new("batches");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const WATERMARK: &str = "watermark";

/// Most bytes one group commit carries, so one transaction stays short.
const MAX_GROUP_BYTES: usize = 64 << 20;

enum Job {
    Batch {
        id: BatchId,
        bytes: Bytes,
        done: oneshot::Sender<Result<(), CloudError>>,
    },
    Watermark {
        ts: u64,
        done: oneshot::Sender<Result<(), CloudError>>,
    },
}

/// What a restarted node finds on disk.
pub struct Recovered {
    pub batches: Vec<(BatchId, Vec<u8>)>,
    pub watermark: u64,
}

#[derive(Clone)]
pub struct ValuesTable {
    jobs: mpsc::Sender<Job>,
    db: Arc<Database>,
}

impl ValuesTable {
    pub fn open(dir: &Path) -> Result<(ValuesTable, Recovered), CloudError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CloudError::Storage(format!("{}: {e}", dir.display())))?;
        let db = Database::create(dir.join("values.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(BATCHES)?;
        txn.open_table(META)?;
        txn.commit()?;
        let recovered = {
            let txn = db.begin_read()?;
            let batches = txn.open_table(BATCHES)?;
            let meta = txn.open_table(META)?;
            let mut out = Vec::new();
            for entry in batches.iter()? {
                let (id, bytes) = entry?;
                out.push((BatchId(id.value()), bytes.value().to_vec()));
            }
            Recovered {
                batches: out,
                watermark: meta.get(WATERMARK)?.map(|v| v.value()).unwrap_or(0),
            }
        };
        let (jobs, queue) = mpsc::channel();
        let db = Arc::new(db);
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("values-writer".into())
            .spawn(move || writer(writer_db, queue))
            .map_err(|e| CloudError::Storage(format!("starting writer: {e}")))?;
        Ok((ValuesTable { jobs, db }, recovered))
    }

    /// The stored bytes of these batches (those that are stored), for a replay.
    pub fn read(&self, ids: &[BatchId]) -> Result<Vec<(BatchId, Vec<u8>)>, CloudError> {
        let txn = self.db.begin_read()?;
        let batches = txn.open_table(BATCHES)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(bytes) = batches.get(id.0)? {
                out.push((*id, bytes.value().to_vec()));
            }
        }
        Ok(out)
    }

    async fn submit(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<(), CloudError>>) -> Job,
    ) -> Result<(), CloudError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(job(done))
            .map_err(|_| CloudError::Storage("writer stopped".into()))?;
        wait.await
            .map_err(|_| CloudError::Storage("writer stopped".into()))?
    }

    /// Stores a batch durably; returns once it is committed.
    pub async fn append(&self, id: BatchId, bytes: Bytes) -> Result<(), CloudError> {
        self.submit(|done| Job::Batch { id, bytes, done }).await
    }

    /// Stores a new explicit watermark durably.
    pub async fn set_watermark(&self, ts: u64) -> Result<(), CloudError> {
        self.submit(|done| Job::Watermark { ts, done }).await
    }
}

fn writer(db: Arc<Database>, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        let mut bytes = 0;
        while bytes < MAX_GROUP_BYTES {
            match queue.try_recv() {
                Ok(job) => {
                    if let Job::Batch { bytes: b, .. } = &job {
                        bytes += b.len();
                    }
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let result = commit(&db, &group);
        for job in group {
            let done = match job {
                Job::Batch { done, .. } | Job::Watermark { done, .. } => done,
            };
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(CloudError::Storage(e.to_string())),
            };
            let _ = done.send(answer);
        }
    }
}

fn commit(db: &Database, group: &[Job]) -> Result<(), CloudError> {
    let txn = db.begin_write()?;
    {
        let mut batches = txn.open_table(BATCHES)?;
        let mut meta = txn.open_table(META)?;
        let mut watermark = meta.get(WATERMARK)?.map(|v| v.value()).unwrap_or(0);
        for job in group {
            match job {
                Job::Batch { id, bytes, .. } => {
                    batches.insert(id.0, bytes.as_ref())?;
                }
                Job::Watermark { ts, .. } => watermark = watermark.max(*ts),
            }
        }
        meta.insert(WATERMARK, watermark)?;
    }
    txn.commit()?;
    Ok(())
}
