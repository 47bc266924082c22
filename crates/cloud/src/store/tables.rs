//! The values table's redb layout, and the reads on it. Everything here is bytes: what they
//! encode is `super::encoding`'s business. The names and key types are the on-disk format;
//! renaming one would leave every existing data directory's contents behind.

use crate::CloudError;
use mcloud_core::BatchId;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::HashSet;

/// Batch id → the batch as the store keeps it.
pub(super) const BATCHES: TableDefinition<u128, &[u8]> = TableDefinition::new("batches");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Bucket → its state in the latest checkpoint.
pub(super) const CHECKPOINT: TableDefinition<u32, &[u8]> = TableDefinition::new("checkpoint");
/// Batches whose records some checkpoint holds.
pub(super) const COVERED: TableDefinition<u128, u8> = TableDefinition::new("covered");
/// Window start → its sealed sums.
pub(super) const SEALED: TableDefinition<u64, &[u8]> = TableDefinition::new("sealed");
/// Key in `META`: the explicit watermark.
pub(super) const WATERMARK: &str = "watermark";
/// Key in `META`: windows starting before this were dropped by the retention policy.
pub(super) const RETAINED_FROM: &str = "retained_from";

/// Creates the tables a new file lacks, so every read finds them.
pub(super) fn create(db: &Database) -> Result<(), CloudError> {
    let txn = db.begin_write()?;
    txn.open_table(BATCHES)?;
    txn.open_table(META)?;
    txn.open_table(CHECKPOINT)?;
    txn.open_table(COVERED)?;
    txn.open_table(SEALED)?;
    txn.commit()?;
    Ok(())
}

/// What a restart reads besides the batches, the sealed windows and the checkpoint.
pub(super) struct Meta {
    pub watermark: u64,
    pub retained_from: u64,
    pub covered: HashSet<BatchId>,
    pub newest_sealed: Option<u64>,
}

/// Reads [`Meta`] in one read transaction, calling `state` with each checkpointed bucket's
/// stored state on the way, one at a time.
pub(super) fn read_meta(
    db: &Database,
    mut state: impl FnMut(u32, &[u8]) -> Result<(), CloudError>,
) -> Result<Meta, CloudError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    for entry in txn.open_table(CHECKPOINT)?.iter()? {
        let (bucket, bytes) = entry?;
        state(bucket.value(), bytes.value())?;
    }
    let mut covered = HashSet::new();
    for entry in txn.open_table(COVERED)?.iter()? {
        covered.insert(BatchId(entry?.0.value()));
    }
    let newest_sealed = txn
        .open_table(SEALED)?
        .last()?
        .map(|(start, _)| start.value());
    Ok(Meta {
        watermark: meta.get(WATERMARK)?.map(|v| v.value()).unwrap_or(0),
        retained_from: meta.get(RETAINED_FROM)?.map(|v| v.value()).unwrap_or(0),
        covered,
        newest_sealed,
    })
}

/// Calls `f` with every stored batch in id order, from one read transaction.
pub(super) fn each_batch(
    db: &Database,
    mut f: impl FnMut(BatchId, &[u8]) -> Result<(), CloudError>,
) -> Result<(), CloudError> {
    let txn = db.begin_read()?;
    for entry in txn.open_table(BATCHES)?.iter()? {
        let (id, bytes) = entry?;
        f(BatchId(id.value()), bytes.value())?;
    }
    Ok(())
}

/// The stored bytes of these batches (those that are stored), in `ids` order.
pub(super) fn read_batches(
    db: &Database,
    ids: &[BatchId],
) -> Result<Vec<(BatchId, Vec<u8>)>, CloudError> {
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

/// Calls `f` with every sealed window's start and stored sums, in start order.
pub(super) fn each_sealed(
    db: &Database,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), CloudError>,
) -> Result<(), CloudError> {
    let txn = db.begin_read()?;
    for entry in txn.open_table(SEALED)?.iter()? {
        let (start, bytes) = entry?;
        f(start.value(), bytes.value())?;
    }
    Ok(())
}

pub(super) fn read_sealed(db: &Database, start: u64) -> Result<Option<Vec<u8>>, CloudError> {
    let txn = db.begin_read()?;
    let sealed = txn.open_table(SEALED)?;
    Ok(sealed.get(start)?.map(|bytes| bytes.value().to_vec()))
}

/// Calls `f` with the stored state of each of `buckets` the latest checkpoint holds.
pub(super) fn read_checkpoint(
    db: &Database,
    buckets: &[u32],
    mut f: impl FnMut(u32, &[u8]) -> Result<(), CloudError>,
) -> Result<(), CloudError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(CHECKPOINT)?;
    for &bucket in buckets {
        if let Some(bytes) = table.get(bucket)? {
            f(bucket, bytes.value())?;
        }
    }
    Ok(())
}

/// How many batches and sealed windows are stored.
pub(super) fn counts(db: &Database) -> Result<(u64, u64), CloudError> {
    let txn = db.begin_read()?;
    let batches = txn.open_table(BATCHES)?.len()?;
    let sealed = txn.open_table(SEALED)?.len()?;
    Ok((batches, sealed))
}
