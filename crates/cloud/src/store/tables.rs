//! The values table's redb layout, and the reads on it. Everything here is bytes: what they
//! encode is `super::encoding`'s business. The names and key types are the on-disk format;
//! renaming one would leave every existing data directory's contents behind.

use crate::CloudError;
use mcloud_core::BatchId;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::{BTreeSet, HashSet};

/// Batch id → the batch as the store keeps it.
pub(super) const BATCHES: TableDefinition<u128, &[u8]> = TableDefinition::new("batches");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Bucket → its state in the latest checkpoint.
pub(super) const CHECKPOINT: TableDefinition<u32, &[u8]> = TableDefinition::new("checkpoint");
/// Batches whose records some checkpoint holds.
pub(super) const COVERED: TableDefinition<u128, u8> = TableDefinition::new("covered");
/// Window start → its sealed sums.
pub(super) const SEALED: TableDefinition<u64, &[u8]> = TableDefinition::new("sealed");
/// Hour start → how many sealed windows its archive file holds: the hours whose windows
/// went to encrypted storage when they passed the retention horizon.
pub(super) const ARCHIVED: TableDefinition<u64, u64> = TableDefinition::new("archived");
/// Batch id → the start of its last window: a batch folded into its windows: all of them sealed
/// and stored, so it is kept without its shares (their sums are in the sealed windows) so that a retry
/// of it is still recognised until retention drops it.
pub(super) const FOLDED: TableDefinition<u128, u64> = TableDefinition::new("folded");
/// Key in `META`: the explicit watermark.
pub(super) const WATERMARK: &str = "watermark";
/// Key in `META`: windows starting before this were dropped by the retention policy.
pub(super) const RETAINED_FROM: &str = "retained_from";
/// Key in `META`: windows dropped from here on went to the archive first; those before it
/// (dropped before the cloud archived) are gone.
pub(super) const ARCHIVED_FROM: &str = "archived_from";

/// Creates the tables a new file lacks, so every read finds them.
pub(super) fn create(db: &Database) -> Result<(), CloudError> {
    let txn = db.begin_write()?;
    txn.open_table(BATCHES)?;
    txn.open_table(FOLDED)?;
    txn.open_table(META)?;
    txn.open_table(CHECKPOINT)?;
    txn.open_table(COVERED)?;
    txn.open_table(SEALED)?;
    txn.open_table(ARCHIVED)?;
    txn.commit()?;
    Ok(())
}

/// What a restart reads besides the batches, the sealed windows and the checkpoint.
pub(super) struct Meta {
    pub watermark: u64,
    pub retained_from: u64,
    pub covered: HashSet<BatchId>,
    pub newest_sealed: Option<u64>,
    pub archived_from: Option<u64>,
    pub archived: BTreeSet<u64>,
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
    let mut archived = BTreeSet::new();
    for entry in txn.open_table(ARCHIVED)?.iter()? {
        archived.insert(entry?.0.value());
    }
    Ok(Meta {
        watermark: meta.get(WATERMARK)?.map(|v| v.value()).unwrap_or(0),
        retained_from: meta.get(RETAINED_FROM)?.map(|v| v.value()).unwrap_or(0),
        covered,
        newest_sealed,
        archived_from: meta.get(ARCHIVED_FROM)?.map(|v| v.value()),
        archived,
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

/// Calls `f` with every folded batch and its last window's start, in id order.
pub(super) fn each_folded(
    db: &Database,
    mut f: impl FnMut(BatchId, u64) -> Result<(), CloudError>,
) -> Result<(), CloudError> {
    let txn = db.begin_read()?;
    for entry in txn.open_table(FOLDED)?.iter()? {
        let (id, last) = entry?;
        f(BatchId(id.value()), last.value())?;
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

/// The stored window starting at `start`, decoded by `decode` straight from the table's
/// page.
pub(super) fn read_sealed<T>(
    db: &Database,
    start: u64,
    decode: impl FnOnce(&[u8]) -> Result<T, CloudError>,
) -> Result<Option<T>, CloudError> {
    let txn = db.begin_read()?;
    let sealed = txn.open_table(SEALED)?;
    let stored = sealed.get(start)?;
    stored.map(|bytes| decode(bytes.value())).transpose()
}

pub(super) fn first_sealed_from(db: &Database, from: u64) -> Result<Option<u64>, CloudError> {
    let txn = db.begin_read()?;
    let sealed = txn.open_table(SEALED)?;
    let first = sealed.range(from..)?.next().transpose()?;
    Ok(first.map(|(start, _)| start.value()))
}

/// The stored sums of the sealed windows starting in [from, to), in start order.
pub(super) fn read_sealed_between(
    db: &Database,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, Vec<u8>)>, CloudError> {
    let txn = db.begin_read()?;
    let sealed = txn.open_table(SEALED)?;
    let mut out = Vec::new();
    for entry in sealed.range(from..to.max(from))? {
        let (start, bytes) = entry?;
        out.push((start.value(), bytes.value().to_vec()));
    }
    Ok(out)
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

/// How many batches are stored with their shares, how many folded, and how many sealed
/// windows.
pub(super) fn counts(db: &Database) -> Result<(u64, u64, u64), CloudError> {
    let txn = db.begin_read()?;
    let batches = txn.open_table(BATCHES)?.len()?;
    let folded = txn.open_table(FOLDED)?.len()?;
    let sealed = txn.open_table(SEALED)?.len()?;
    Ok((batches, folded, sealed))
}
