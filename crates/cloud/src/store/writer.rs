//! The values table's one writer. A write is acknowledged only after the transaction that
//! holds it committed (fsync), so an acknowledged batch survives a crash. The writer thread
//! commits whatever writes are waiting in one transaction (group commit): concurrent uploads
//! share the fsync instead of queueing for one each.

use super::tables::{
    ARCHIVED, ARCHIVED_FROM, BATCHES, CHECKPOINT, COVERED, FOLDED, META, RETAINED_FROM, SEALED,
    WATERMARK,
};
use crate::reopen::Reopening;
use crate::CloudError;
use bytes::Bytes;
use mcloud_core::BatchId;
use redb::{Database, ReadableTable};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Most bytes one group commit carries, so one transaction stays short.
const MAX_GROUP_BYTES: usize = 64 << 20;

/// One change, already encoded.
pub(super) enum Write {
    Batch {
        id: BatchId,
        bytes: Bytes,
    },
    /// Raises the stored watermark (never lowers it).
    Watermark(u64),
    /// Replaces the stored checkpoint and adds to the covered batches.
    Checkpoint {
        states: Vec<(u32, Vec<u8>)>,
        covered: Vec<BatchId>,
    },
    Sealed(Vec<(u64, Vec<u8>)>),
    /// Drops these batches' shares, keeping each id with its last window's start (a batch
    /// not stored, or pruned meanwhile, stays as it is).
    Fold(Vec<(BatchId, u64)>),
    /// Drops sealed windows starting before `horizon` and these batches. With `archived`,
    /// the windows went to these hours' archive files first.
    Prune {
        horizon: u64,
        batches: Vec<BatchId>,
        archived: Option<Vec<(u64, u64)>>,
    },
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<(), CloudError>>,
}

#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub(super) fn start(db: Arc<Reopening>) -> Result<Writer, CloudError> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("values-writer".into())
            .spawn(move || run(db, queue))
            .map_err(|e| CloudError::Storage(format!("starting writer: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Returns once `write` is committed, or why it was not.
    pub(super) async fn submit(&self, write: Write) -> Result<(), CloudError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job { write, done })
            .map_err(|_| CloudError::Storage("writer stopped".into()))?;
        wait.await
            .map_err(|_| CloudError::Storage("writer stopped".into()))?
    }
}

fn run(db: Arc<Reopening>, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        let mut bytes = 0;
        while bytes < MAX_GROUP_BYTES {
            match queue.try_recv() {
                Ok(job) => {
                    if let Write::Batch { bytes: b, .. } = &job.write {
                        bytes += b.len();
                    }
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let result = db.get().and_then(|open| commit(&open, &group));
        let failed = result.as_ref().err().map(|e| match e {
            CloudError::Storage(message) => message.clone(),
            other => other.to_string(),
        });
        for Job { done, .. } in group {
            let answer = match &failed {
                None => Ok(()),
                Some(message) => Err(CloudError::Storage(message.clone())),
            };
            let _ = done.send(answer);
        }
        if let Some(message) = failed {
            tracing::error!("values table: a write failed, nothing of it was stored: {message}");
            db.reopen(&message);
        }
    }
}

fn commit(db: &Database, group: &[Job]) -> Result<(), CloudError> {
    let txn = db.begin_write()?;
    {
        let mut batches = txn.open_table(BATCHES)?;
        let mut folded = txn.open_table(FOLDED)?;
        let mut meta = txn.open_table(META)?;
        let mut checkpoint = txn.open_table(CHECKPOINT)?;
        let mut covered_table = txn.open_table(COVERED)?;
        let mut sealed = txn.open_table(SEALED)?;
        let mut archive = txn.open_table(ARCHIVED)?;
        let mut watermark = meta.get(WATERMARK)?.map(|v| v.value()).unwrap_or(0);
        let mut retained_from = meta.get(RETAINED_FROM)?.map(|v| v.value()).unwrap_or(0);
        for job in group {
            match &job.write {
                Write::Batch { id, bytes } => {
                    batches.insert(id.0, bytes.as_ref())?;
                }
                Write::Watermark(ts) => watermark = watermark.max(*ts),
                Write::Checkpoint { states, covered } => {
                    checkpoint.retain(|_, _| false)?;
                    for (bucket, bytes) in states {
                        checkpoint.insert(*bucket, bytes.as_slice())?;
                    }
                    for id in covered {
                        covered_table.insert(id.0, 1)?;
                    }
                }
                Write::Sealed(windows) => {
                    for (start, bytes) in windows {
                        sealed.insert(*start, bytes.as_slice())?;
                    }
                }
                Write::Fold(ids) => {
                    for (id, last) in ids {
                        if batches.remove(id.0)?.is_some() {
                            folded.insert(id.0, *last)?;
                        }
                    }
                }
                Write::Prune {
                    horizon,
                    batches: ids,
                    archived,
                } => {
                    if let Some(hours) = archived {
                        if meta.get(ARCHIVED_FROM)?.is_none() {
                            meta.insert(ARCHIVED_FROM, retained_from)?;
                        }
                        for (hour, windows) in hours {
                            archive.insert(*hour, *windows)?;
                        }
                    }
                    sealed.retain_in(..*horizon, |_, _| false)?;
                    for id in ids {
                        batches.remove(id.0)?;
                        folded.remove(id.0)?;
                        covered_table.remove(id.0)?;
                    }
                    retained_from = retained_from.max(*horizon);
                }
            }
        }
        meta.insert(WATERMARK, watermark)?;
        meta.insert(RETAINED_FROM, retained_from)?;
    }
    txn.commit()?;
    Ok(())
}
