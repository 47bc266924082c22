//! The values table: everything a cloud keeps on disk about its data, behind one typed
//! interface. It holds every accepted batch as received, and beside them what lets a restart
//! skip most of them: the latest checkpoint of the buckets' state with the set of batches it
//! covers, the sums of sealed windows, the watermark and the retention horizon. Callers hand
//! in and get back typed values; the redb layout (`tables`), the encodings (`encoding`) and
//! the group commit (`writer`) stay in here, so where and how the data lies can change in
//! this one place.

mod archive;
mod encoding;
mod tables;
mod writer;

pub use archive::{Archive, ARCHIVE_SECS};
pub use encoding::{EncodedWindows, StoredBatch};

use crate::elastic::{BucketState, Checkpoint};
use crate::reopen::Reopening;
use crate::windows::{ColdStore, SealedWindow};
use crate::CloudError;
use encoding::{
    decode_batch, decode_state, decode_window, decode_window_sums_only, encode_state, expand_kept,
};
use mcloud_core::wire::{UploadBatch, UploadRequest};
use mcloud_core::BatchId;
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use writer::{Write, Writer};

/// What a restarted node finds on disk, besides the batches ([`Store::each_batch`]) and the
/// sealed windows ([`Store::each_sealed`]).
pub struct Recovered {
    pub watermark: u64,
    /// The latest checkpoint's bucket states.
    pub checkpoint: Vec<(usize, BucketState)>,
    pub covered: HashSet<BatchId>,
    /// The newest sealed window's start.
    pub newest_sealed: Option<u64>,
    /// Windows starting before this were dropped (0: none was).
    pub retained_from: u64,
    /// Windows dropped from here on went to the archive first (None: nothing did).
    pub archived_from: Option<u64>,
    /// The hours that have an archive file.
    pub archived: BTreeSet<u64>,
}

/// A cloud's values table. Every write returns once it is durable (or failed, storing
/// nothing of it); reads see every write that returned.
#[derive(Clone)]
pub struct Store {
    db: Arc<Reopening>,
    writer: Writer,
}

impl Store {
    /// Opens (or creates) the values table in `dir`, with what a restart needs of it.
    pub fn open(dir: &Path) -> Result<(Store, Recovered), CloudError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CloudError::Storage(format!("{}: {e}", dir.display())))?;
        let path = dir.join("values.redb");
        let db = mcloud_core::database::open(&path)?;
        tables::create(&db)?;
        let mut checkpoint = Vec::new();
        let meta = tables::read_meta(&db, |bucket, bytes| {
            checkpoint.push(decode_state(bucket, bytes)?);
            Ok(())
        })?;
        let recovered = Recovered {
            watermark: meta.watermark,
            checkpoint,
            covered: meta.covered,
            newest_sealed: meta.newest_sealed,
            retained_from: meta.retained_from,
            archived_from: meta.archived_from,
            archived: meta.archived,
        };
        let db = Arc::new(Reopening::new(path, db));
        let writer = Writer::start(db.clone())?;
        Ok((Store { db, writer }, recovered))
    }

    /// Stores a batch durably; returns once it is committed.
    pub async fn put_batch(&self, id: BatchId, batch: StoredBatch) -> Result<(), CloudError> {
        self.writer
            .submit(Write::Batch { id, bytes: batch.0 })
            .await
    }

    /// Calls `f` with every stored batch in id order, one at a time: a restart reads them all,
    /// and holding them all at once would take as much memory as the table has on disk.
    pub fn each_batch(
        &self,
        mut f: impl FnMut(BatchId, UploadRequest) -> Result<(), CloudError>,
    ) -> Result<(), CloudError> {
        let db = self.db.get()?;
        tables::each_batch(&db, |id, bytes| f(id, decode_batch(id, bytes)?))
    }

    /// These batches (those stored, in `ids` order) as a replay hands them to the workers:
    /// expanded, with only their shares of windows that `keep()` keeps. `keep` is called
    /// again for each batch, so a horizon it reads is as recent as the batch's expansion.
    pub fn replay<K: Fn(u64) -> bool>(
        &self,
        ids: &[BatchId],
        window_secs: u64,
        mut keep: impl FnMut() -> K,
    ) -> Result<Vec<UploadBatch>, CloudError> {
        // The database is let go before the expansion, which a reopening would wait for.
        let stored = tables::read_batches(&*self.db.get()?, ids)?;
        stored
            .into_iter()
            .map(|(id, bytes)| {
                let keep = keep();
                expand_kept(id, decode_batch(id, &bytes)?, window_secs, keep)
            })
            .collect()
    }

    /// Replaces the stored checkpoint with `checkpoint`, whose batches are covered from now
    /// on together with those earlier checkpoints covered, in one transaction.
    pub async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), CloudError> {
        let states = checkpoint
            .states
            .iter()
            .map(|(bucket, state)| encode_state(*bucket, state))
            .collect::<Result<_, _>>()?;
        self.writer
            .submit(Write::Checkpoint {
                states,
                covered: checkpoint.covered,
            })
            .await
    }

    /// These buckets' state in the latest checkpoint (those it holds).
    pub fn read_checkpoint(
        &self,
        buckets: &[usize],
    ) -> Result<Vec<(usize, BucketState)>, CloudError> {
        // A bucket beyond the key range was never stored.
        let keys: Vec<u32> = buckets
            .iter()
            .filter_map(|&b| u32::try_from(b).ok())
            .collect();
        let mut out = Vec::new();
        tables::read_checkpoint(&*self.db.get()?, &keys, |bucket, bytes| {
            out.push(decode_state(bucket, bytes)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Drops the shares of batches whose windows are all sealed and stored, keeping their
    /// ids (with their last window's start) to recognise retries: the shares are the bulk of
    /// the values table and nothing reads them once their windows' sums are stored.
    pub async fn fold(&self, batches: Vec<(BatchId, u64)>) -> Result<(), CloudError> {
        self.writer.submit(Write::Fold(batches)).await
    }

    /// Calls `f` with every folded batch and its last window's start.
    pub fn each_folded(
        &self,
        f: impl FnMut(BatchId, u64) -> Result<(), CloudError>,
    ) -> Result<(), CloudError> {
        tables::each_folded(&*self.db.get()?, f)
    }

    /// Stores sealed windows' sums durably.
    pub async fn save_sealed(&self, windows: EncodedWindows) -> Result<(), CloudError> {
        self.writer.submit(Write::Sealed(windows.0)).await
    }

    /// A sealed window as stored, if it is; without its histograms unless `histograms`.
    pub fn read_sealed(
        &self,
        start: u64,
        histograms: bool,
    ) -> Result<Option<SealedWindow>, CloudError> {
        tables::read_sealed(&*self.db.get()?, start, |bytes| {
            if histograms {
                decode_window(start, bytes)
            } else {
                decode_window_sums_only(start, bytes)
            }
        })
    }

    /// Calls `f` with every sealed window in start order, one at a time: a restart keeps only
    /// the recent ones' sums, and reading them all at once would hold every window's
    /// histograms within the retention horizon together.
    pub fn each_sealed(
        &self,
        mut f: impl FnMut(u64, SealedWindow) -> Result<(), CloudError>,
    ) -> Result<(), CloudError> {
        let db = self.db.get()?;
        tables::each_sealed(&db, |start, bytes| f(start, decode_window(start, bytes)?))
    }

    /// Stores a new explicit watermark durably (a lower one leaves the stored one).
    pub async fn set_watermark(&self, ts: u64) -> Result<(), CloudError> {
        self.writer.submit(Write::Watermark(ts)).await
    }

    /// The start of the first sealed window stored at or after `from`.
    pub fn first_sealed_from(&self, from: u64) -> Result<Option<u64>, CloudError> {
        tables::first_sealed_from(&*self.db.get()?, from)
    }

    /// The sealed windows starting in [from, to), encoded as stored: what an archive file
    /// holds, so archiving decodes nothing.
    pub fn sealed_between(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, CloudError> {
        tables::read_sealed_between(&*self.db.get()?, from, to)
    }

    /// Drops the sealed windows starting before `horizon` and `batches` (whose windows all
    /// start before it), and remembers the horizon for a restart. With `archived`, those
    /// windows are in the archive files of these (hour, windows), remembered too.
    pub async fn prune(
        &self,
        horizon: u64,
        batches: Vec<BatchId>,
        archived: Option<Vec<(u64, u64)>>,
    ) -> Result<(), CloudError> {
        self.writer
            .submit(Write::Prune {
                horizon,
                batches,
                archived,
            })
            .await
    }

    /// How many batches are stored with their shares, how many folded (id only), and how
    /// many sealed windows (the status page shows they stay flat).
    pub fn stored(&self) -> Result<(u64, u64, u64), CloudError> {
        tables::counts(&*self.db.get()?)
    }
}

/// Sealed windows read back once they left memory: every sealed window is stored here
/// before its sums leave memory.
impl ColdStore for Store {
    fn load(&self, start: u64, histograms: bool) -> Result<Option<SealedWindow>, CloudError> {
        self.read_sealed(start, histograms)
    }
}

#[cfg(test)]
mod tests;
