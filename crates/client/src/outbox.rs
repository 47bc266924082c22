//! The sensor's durable outbox. A batch enters it before anything leaves the sensor and leaves
//! it once its fate is known (committed, or reported as missed or rejected), so a sensor that
//! crashes or loses its network resumes from here. Each batch keeps the seed its shares were
//! drawn from: a retry must send every cloud the same shares as the first attempt, because the
//! clouds that already hold the batch will not take a second version.

use crate::SensorError;
pub use mcloud_core::upload::PlainHistogram;
use mcloud_core::{BatchId, Reading};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const OUTBOX: TableDefinition<u128, &[u8]> = TableDefinition::new("outbox");

/// Readings (and load histograms of completed 30 s windows) travelling as one batch, under
/// one flag. `seed` is the master seed every cloud's body is derived from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlainBatch {
    pub id: BatchId,
    pub seed: [u8; 32],
    pub readings: Vec<Reading>,
    pub histograms: Vec<PlainHistogram>,
}

impl PlainBatch {
    /// A batch of sensor `sensor` (its id goes into the batch id).
    pub fn new(sensor: u32, readings: Vec<Reading>) -> PlainBatch {
        Self::with_histograms(sensor, readings, Vec::new())
    }

    pub fn with_histograms(
        sensor: u32,
        readings: Vec<Reading>,
        histograms: Vec<PlainHistogram>,
    ) -> PlainBatch {
        PlainBatch {
            id: BatchId::of_sensor(sensor),
            seed: mcloud_core::ShareStream::fresh_seed(),
            readings,
            histograms,
        }
    }

    /// The same content under a fresh id and fresh shares, for a retry after the first flag
    /// ended ERROR (an ERROR flag is final, so the batch needs a new one).
    pub fn rekeyed(&self) -> PlainBatch {
        PlainBatch::with_histograms(
            self.id.sensor(),
            self.readings.clone(),
            self.histograms.clone(),
        )
    }
}

pub struct Outbox {
    db: Database,
}

impl Outbox {
    pub fn open(path: &Path) -> Result<Outbox, SensorError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| SensorError::Outbox(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(OUTBOX)?;
        txn.commit()?;
        Ok(Outbox { db })
    }

    /// Adds `batch` (and removes `replaces`, if given) in one durable transaction.
    pub fn put(&self, batch: &PlainBatch, replaces: Option<BatchId>) -> Result<(), SensorError> {
        let bytes = postcard::to_stdvec(batch)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(OUTBOX)?;
            if let Some(old) = replaces {
                table.remove(old.0)?;
            }
            table.insert(batch.id.0, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a settled batch. Not flushed on its own: if the removal is lost in a crash the
    /// batch is simply retried, and every step of a retry is idempotent.
    pub fn remove(&self, id: BatchId) -> Result<(), SensorError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Eventual);
        txn.open_table(OUTBOX)?.remove(id.0)?;
        txn.commit()?;
        Ok(())
    }

    /// Every batch still waiting, e.g. after a restart.
    pub fn pending(&self) -> Result<Vec<PlainBatch>, SensorError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, bytes) = entry?;
            out.push(postcard::from_bytes(bytes.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcloud_core::{GroupKey, Metric};

    #[test]
    fn batches_survive_reopen_and_rekeying_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        let reading = Reading {
            id: 1,
            ts: 10,
            value: 5,
            metric: Metric::Load,
            group: GroupKey {
                house: 1,
                household: 2,
                plug: 3,
            },
        };
        let first = PlainBatch::new(1, vec![reading]);
        let second = first.rekeyed();
        {
            let outbox = Outbox::open(&path).unwrap();
            outbox.put(&first, None).unwrap();
            outbox.put(&second, Some(first.id)).unwrap();
        }
        let outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.pending().unwrap(), vec![second.clone()]);
        assert_ne!(first.id, second.id);
        assert_ne!(first.seed, second.seed);
        outbox.remove(second.id).unwrap();
        assert!(outbox.pending().unwrap().is_empty());
    }
}
