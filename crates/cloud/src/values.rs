//! The values table: every accepted batch, as received, in redb. A batch is acknowledged only
//! after the transaction that holds it committed (fsync), so an acknowledged share survives a
//! crash. One writer thread commits whatever batches are waiting in one transaction (group
//! commit): concurrent uploads share the fsync instead of queueing for one each.
//!
//! Beside the batches it keeps what lets a restart skip most of them: the latest checkpoint of
//! the buckets' state with the set of batches it covers, and the sums of sealed windows.

use crate::elastic::{BucketState, Checkpoint};
use crate::reopen::Reopening;
use crate::CloudError;
use bytes::Bytes;
use mcloud_core::BatchId;
use redb::{Database, ReadableTable, TableDefinition};
use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

const BATCHES: TableDefinition<u128, &[u8]> = TableDefinition::new("batches");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Bucket → its state in the latest checkpoint.
const CHECKPOINT: TableDefinition<u32, &[u8]> = TableDefinition::new("checkpoint");
/// Batches whose records some checkpoint holds.
const COVERED: TableDefinition<u128, u8> = TableDefinition::new("covered");
/// Window start → its sealed sums.
const SEALED: TableDefinition<u64, &[u8]> = TableDefinition::new("sealed");
const WATERMARK: &str = "watermark";
/// Windows starting before this were dropped by the retention policy.
const RETAINED_FROM: &str = "retained_from";

/// Most bytes one group commit carries, so one transaction stays short.
const MAX_GROUP_BYTES: usize = 64 << 20;

enum Write {
    Batch {
        id: BatchId,
        bytes: Bytes,
    },
    Watermark(u64),
    /// Replaces the stored checkpoint and adds to the covered batches.
    Checkpoint {
        states: Vec<(u32, Vec<u8>)>,
        covered: Vec<BatchId>,
    },
    Sealed(Vec<(u64, Vec<u8>)>),
    /// Drops sealed windows starting before `horizon` and these batches.
    Prune {
        horizon: u64,
        batches: Vec<BatchId>,
    },
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<(), CloudError>>,
}

/// What a restarted node finds on disk, besides the batches ([`ValuesTable::each_batch`])
/// and the sealed windows ([`ValuesTable::each_sealed`]).
pub struct Recovered {
    pub watermark: u64,
    /// The latest checkpoint's bucket states.
    pub checkpoint: Vec<(usize, BucketState)>,
    pub covered: HashSet<BatchId>,
    /// The newest sealed window's start.
    pub newest_sealed: Option<u64>,
    /// Windows starting before this were dropped (0: none was).
    pub retained_from: u64,
}

#[derive(Clone)]
pub struct ValuesTable {
    jobs: mpsc::Sender<Job>,
    db: Arc<Reopening>,
}

impl ValuesTable {
    pub fn open(dir: &Path) -> Result<(ValuesTable, Recovered), CloudError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CloudError::Storage(format!("{}: {e}", dir.display())))?;
        let path = dir.join("values.redb");
        let db = mcloud_core::database::open(&path)?;
        let txn = db.begin_write()?;
        txn.open_table(BATCHES)?;
        txn.open_table(META)?;
        txn.open_table(CHECKPOINT)?;
        txn.open_table(COVERED)?;
        txn.open_table(SEALED)?;
        txn.commit()?;
        let recovered = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let mut checkpoint = Vec::new();
            for entry in txn.open_table(CHECKPOINT)?.iter()? {
                let (bucket, bytes) = entry?;
                checkpoint.push(decode_state(bucket.value(), bytes.value())?);
            }
            let mut covered = HashSet::new();
            for entry in txn.open_table(COVERED)?.iter()? {
                covered.insert(BatchId(entry?.0.value()));
            }
            let newest_sealed = txn
                .open_table(SEALED)?
                .last()?
                .map(|(start, _)| start.value());
            Recovered {
                watermark: meta.get(WATERMARK)?.map(|v| v.value()).unwrap_or(0),
                retained_from: meta.get(RETAINED_FROM)?.map(|v| v.value()).unwrap_or(0),
                checkpoint,
                covered,
                newest_sealed,
            }
        };
        let (jobs, queue) = mpsc::channel();
        let db = Arc::new(Reopening::new(path, db));
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("values-writer".into())
            .spawn(move || writer(writer_db, queue))
            .map_err(|e| CloudError::Storage(format!("starting writer: {e}")))?;
        Ok((ValuesTable { jobs, db }, recovered))
    }

    /// The stored sums of a sealed window, if it is stored.
    pub fn read_sealed(&self, start: u64) -> Result<Option<Vec<u8>>, CloudError> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        let sealed = txn.open_table(SEALED)?;
        Ok(sealed.get(start)?.map(|bytes| bytes.value().to_vec()))
    }

    /// Calls `f` with every stored batch in id order, one at a time: a restart reads them all,
    /// and holding them all at once would take as much memory as the table has on disk.
    pub fn each_batch(
        &self,
        mut f: impl FnMut(BatchId, &[u8]) -> Result<(), CloudError>,
    ) -> Result<(), CloudError> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        for entry in txn.open_table(BATCHES)?.iter()? {
            let (id, bytes) = entry?;
            f(BatchId(id.value()), bytes.value())?;
        }
        Ok(())
    }

    /// Calls `f` with every sealed window's start and encoded sums, one at a time: a restart
    /// keeps only the recent ones' sums, and reading them all at once would hold every
    /// window's histograms within the retention horizon together.
    pub fn each_sealed(
        &self,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), CloudError>,
    ) -> Result<(), CloudError> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        for entry in txn.open_table(SEALED)?.iter()? {
            let (start, bytes) = entry?;
            f(start.value(), bytes.value())?;
        }
        Ok(())
    }

    /// The stored bytes of these batches (those that are stored), for a replay.
    pub fn read(&self, ids: &[BatchId]) -> Result<Vec<(BatchId, Vec<u8>)>, CloudError> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        let batches = txn.open_table(BATCHES)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(bytes) = batches.get(id.0)? {
                out.push((*id, bytes.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// These buckets' state in the latest checkpoint (those it holds).
    pub fn read_checkpoint(
        &self,
        buckets: &[usize],
    ) -> Result<Vec<(usize, BucketState)>, CloudError> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(CHECKPOINT)?;
        let mut out = Vec::new();
        for &b in buckets {
            let Ok(key) = u32::try_from(b) else { continue };
            if let Some(bytes) = table.get(key)? {
                out.push(decode_state(key, bytes.value())?);
            }
        }
        Ok(out)
    }

    async fn submit(&self, write: Write) -> Result<(), CloudError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job { write, done })
            .map_err(|_| CloudError::Storage("writer stopped".into()))?;
        wait.await
            .map_err(|_| CloudError::Storage("writer stopped".into()))?
    }

    /// Stores a batch durably; returns once it is committed.
    pub async fn append(&self, id: BatchId, bytes: Bytes) -> Result<(), CloudError> {
        self.submit(Write::Batch { id, bytes }).await
    }

    /// Stores a new explicit watermark durably.
    pub async fn set_watermark(&self, ts: u64) -> Result<(), CloudError> {
        self.submit(Write::Watermark(ts)).await
    }

    /// Replaces the stored checkpoint with `checkpoint`, whose batches are covered from now
    /// on together with those earlier checkpoints covered, in one transaction.
    pub async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), CloudError> {
        let mut states = Vec::with_capacity(checkpoint.states.len());
        for (bucket, state) in &checkpoint.states {
            let key = u32::try_from(*bucket)
                .map_err(|_| CloudError::Storage(format!("bucket {bucket} out of range")))?;
            let bytes = postcard::to_stdvec(state)
                .map_err(|e| CloudError::Storage(format!("bucket {bucket}: {e}")))?;
            states.push((key, bytes));
        }
        self.submit(Write::Checkpoint {
            states,
            covered: checkpoint.covered,
        })
        .await
    }

    /// Stores sealed windows' sums (start → encoded sums).
    pub async fn save_sealed(&self, windows: Vec<(u64, Vec<u8>)>) -> Result<(), CloudError> {
        self.submit(Write::Sealed(windows)).await
    }

    /// Drops the sealed windows starting before `horizon` and `batches` (whose windows all
    /// start before it), and remembers the horizon for a restart.
    pub async fn prune(&self, horizon: u64, batches: Vec<BatchId>) -> Result<(), CloudError> {
        self.submit(Write::Prune { horizon, batches }).await
    }

    /// How many batches and sealed windows are stored (the status page shows they stay flat).
    pub fn stored(&self) -> Result<(u64, u64), CloudError> {
        use redb::ReadableTableMetadata;
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        let batches = txn.open_table(BATCHES)?.len()?;
        let sealed = txn.open_table(SEALED)?.len()?;
        Ok((batches, sealed))
    }
}

fn decode_state(bucket: u32, bytes: &[u8]) -> Result<(usize, BucketState), CloudError> {
    postcard::from_bytes(bytes)
        .map(|state| (bucket as usize, state))
        .map_err(|e| CloudError::Storage(format!("checkpoint of bucket {bucket}: {e}")))
}

fn writer(db: Arc<Reopening>, queue: mpsc::Receiver<Job>) {
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
        let mut meta = txn.open_table(META)?;
        let mut checkpoint = txn.open_table(CHECKPOINT)?;
        let mut covered_table = txn.open_table(COVERED)?;
        let mut sealed = txn.open_table(SEALED)?;
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
                Write::Prune {
                    horizon,
                    batches: ids,
                } => {
                    sealed.retain_in(..*horizon, |_, _| false)?;
                    for id in ids {
                        batches.remove(id.0)?;
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

/// Sealed windows read back once they left memory: every sealed window is stored here
/// before its sums leave memory.
impl crate::windows::ColdStore for ValuesTable {
    fn load(&self, start: u64) -> Result<Option<crate::windows::SealedWindow>, CloudError> {
        self.read_sealed(start)?
            .map(|bytes| {
                postcard::from_bytes(&bytes)
                    .map_err(|e| CloudError::Storage(format!("stored window {start}: {e}")))
            })
            .transpose()
    }
}
