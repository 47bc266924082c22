//! The sensor's durable outbox. A batch enters it before anything leaves the sensor and leaves
//! it once its fate is known (committed, or reported as missed or rejected), so a sensor that
//! crashes or loses its network resumes from here. Each batch keeps the seed its shares were
//! drawn from: a retry must send every cloud the same shares as the first attempt, because the
//! clouds that already hold the batch will not take a second version.
//!
//! Beside the batches it keeps the sensor's place in its input ([`Cursor`]), written in the
//! transaction that adds each new batch: a restarted sensor skips what already entered the
//! outbox, so no reading is sent twice under two batch ids and none is left out.

use crate::batcher::Batcher;
use crate::SensorError;
pub use mcloud_core::upload::PlainHistogram;
use mcloud_core::{BatchId, Reading};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

const OUTBOX: TableDefinition<u128, &[u8]> = TableDefinition::new("outbox");
const CURSOR: TableDefinition<&str, &[u8]> = TableDefinition::new("cursor");
const CURSOR_KEY: &str = "input";
/// Under this key in the cursor table: the bridge forgot the ids of readings older than this.
const SEEN_FROM_KEY: &str = "seen_from";
/// A bridge's readings, by reading id, from the moment they are acknowledged to the broker
/// until they are cut into a batch.
const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
/// Ids of the readings a bridge took, with their timestamps, so a broker's redelivery of one
/// is recognised.
const SEEN: TableDefinition<u64, u64> = TableDefinition::new("seen");

/// How far a sensor got in its input: `cuts` batches cut from the input named by `input`
/// (a digest of its first readings) entered the outbox, cut `batch_size` readings at most,
/// with or without histograms. The batcher cuts the same input the same way every time, so
/// cutting it again and dropping the first `cuts` batches continues exactly where it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub input: [u8; 32],
    pub batch_size: u64,
    pub histograms: bool,
    pub cuts: u64,
}

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

/// What [`Outbox::receive`] made of a group of readings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Received {
    /// Taken into the inbox.
    pub new: Vec<Reading>,
    /// Taken before (a broker's redelivery, or a device publishing twice).
    pub repeated: usize,
    /// Older than the ids still remembered.
    pub late: usize,
}

/// How often at most an emptied outbox is replaced by a fresh file (see [`Outbox::remove`]).
const FRESH_FILE_EVERY: Duration = Duration::from_secs(10);

pub struct Outbox {
    path: PathBuf,
    /// Replaced as a whole when the outbox is emptied.
    db: RwLock<Database>,
    fresh_since: Mutex<Instant>,
}

impl Outbox {
    /// Opens (or creates) the outbox at `path`, readable by its owner only: it holds readings
    /// in plaintext until their batches settle.
    pub fn open(path: &Path) -> Result<Outbox, SensorError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| outbox_error(dir, e))?;
        }
        // A fresh file that was never renamed into place: the old one is still the outbox.
        let _ = std::fs::remove_file(fresh_path(path));
        let db = open_private(path)?;
        let outbox = Outbox {
            path: path.to_path_buf(),
            db: RwLock::new(db),
            fresh_since: Mutex::new(Instant::now()),
        };
        outbox.replace_if_empty()?;
        Ok(outbox)
    }

    fn db(&self) -> std::sync::RwLockReadGuard<'_, Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `batch` (and removes `replaces`, if given) in one durable transaction.
    pub fn put(&self, batch: &PlainBatch, replaces: Option<BatchId>) -> Result<(), SensorError> {
        let bytes = postcard::to_stdvec(batch)?;
        let db = self.db();
        let txn = db.begin_write()?;
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

    /// Adds a batch newly cut from the input and moves the cursor past it, in one durable
    /// transaction: a crash leaves either both or neither.
    pub fn put_cut(&self, batch: &PlainBatch, cursor: &Cursor) -> Result<(), SensorError> {
        let bytes = postcard::to_stdvec(batch)?;
        let place = postcard::to_stdvec(cursor)?;
        let db = self.db();
        let txn = db.begin_write()?;
        {
            txn.open_table(OUTBOX)?
                .insert(batch.id.0, bytes.as_slice())?;
            txn.open_table(CURSOR)?
                .insert(CURSOR_KEY, place.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Takes the readings not taken before into the inbox, durably. A bridge acknowledges a
    /// message to its broker only after this returned, and a message the broker delivers
    /// again adds nothing. A reading older than the ids still remembered
    /// ([`Outbox::forget_seen_before`]) cannot be told from a repeat and is late at the clouds
    /// anyway: it is counted as late and not taken.
    pub fn receive(&self, readings: &[Reading]) -> Result<Received, SensorError> {
        let db = self.db();
        let txn = db.begin_write()?;
        let mut out = Received::default();
        {
            let from = match txn.open_table(CURSOR)?.get(SEEN_FROM_KEY)? {
                Some(bytes) => postcard::from_bytes::<u64>(bytes.value())?,
                None => 0,
            };
            let mut seen = txn.open_table(SEEN)?;
            let mut inbox = txn.open_table(INBOX)?;
            for r in readings {
                if r.ts < from {
                    out.late += 1;
                    continue;
                }
                if seen.get(r.id)?.is_some() {
                    out.repeated += 1;
                    continue;
                }
                seen.insert(r.id, r.ts)?;
                inbox.insert(r.id, postcard::to_stdvec(r)?.as_slice())?;
                out.new.push(*r);
            }
        }
        txn.commit()?;
        Ok(out)
    }

    /// Moves the readings in the inbox stamped before `before` (all of them if `None`) into
    /// batches of sensor `sensor`, in one transaction, and returns how many batches it made.
    /// They are cut in timestamp order as [`Batcher`] cuts a sensor's stream: at most
    /// `batch_size` readings and a bounded body each (bounded as robust reports if `robust`),
    /// with the load histograms of their 30 s windows if `histograms`. The clouds add up
    /// histograms of the same plug and window, so a reading of a window already cut may still
    /// follow in a later cut.
    pub fn cut_inbox(
        &self,
        sensor: u32,
        batch_size: usize,
        histograms: bool,
        robust: bool,
        before: Option<u64>,
    ) -> Result<usize, SensorError> {
        let before = before.unwrap_or(u64::MAX);
        let db = self.db();
        let txn = db.begin_write()?;
        let mut batches = 0;
        {
            let mut inbox = txn.open_table(INBOX)?;
            let mut readings = Vec::new();
            for entry in inbox.iter()? {
                let reading = postcard::from_bytes::<Reading>(entry?.1.value())?;
                if reading.ts < before {
                    readings.push(reading);
                }
            }
            readings.sort_by_key(|r| (r.ts, r.id));
            let mut outbox = txn.open_table(OUTBOX)?;
            let cuts =
                Batcher::new(sensor, readings.into_iter(), batch_size, histograms).robust(robust);
            for cut in cuts {
                let batch = cut.batch;
                outbox.insert(batch.id.0, postcard::to_stdvec(&batch)?.as_slice())?;
                batches += 1;
            }
            inbox.retain(|_, bytes| {
                postcard::from_bytes::<Reading>(bytes).map_or(true, |r| r.ts >= before)
            })?;
        }
        txn.commit()?;
        Ok(batches)
    }

    /// The oldest timestamp still in the inbox.
    pub fn inbox_oldest(&self) -> Result<Option<u64>, SensorError> {
        let db = self.db();
        let txn = db.begin_read()?;
        let mut oldest = None::<u64>;
        for entry in txn.open_table(INBOX)?.iter()? {
            let r: Reading = postcard::from_bytes(entry?.1.value())?;
            oldest = Some(oldest.map_or(r.ts, |o| o.min(r.ts)));
        }
        Ok(oldest)
    }

    /// Forgets the ids of readings older than `before`: the clouds refuse such a reading as
    /// late, so a redelivery of it cannot be counted twice either.
    pub fn forget_seen_before(&self, before: u64) -> Result<(), SensorError> {
        let db = self.db();
        let txn = db.begin_write()?;
        let mut cursor = txn.open_table(CURSOR)?;
        let from = match cursor.get(SEEN_FROM_KEY)? {
            Some(bytes) => postcard::from_bytes::<u64>(bytes.value())?,
            None => 0,
        };
        if before > from {
            cursor.insert(SEEN_FROM_KEY, postcard::to_stdvec(&before)?.as_slice())?;
            txn.open_table(SEEN)?.retain(|_, ts| ts >= before)?;
        }
        drop(cursor);
        txn.commit()?;
        Ok(())
    }

    /// Where the last run stood in its input, if it cut any batch.
    pub fn cursor(&self) -> Result<Option<Cursor>, SensorError> {
        read_cursor(&self.db())
    }

    /// Removes a settled batch. Not flushed on its own: if the removal is lost in a crash the
    /// batch is simply retried, and every step of a retry is idempotent.
    ///
    /// A removed row's bytes stay in the file's free pages until they are reused, so when
    /// the outbox is empty (every batch settled) it is replaced by a fresh file, at most every
    /// [`FRESH_FILE_EVERY`]: settled readings then live in no file at all.
    pub fn remove(&self, id: BatchId) -> Result<(), SensorError> {
        let empty = {
            let db = self.db();
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Eventual);
            let empty = {
                let mut table = txn.open_table(OUTBOX)?;
                table.remove(id.0)?;
                table.is_empty()?
            };
            txn.commit()?;
            empty
        };
        let due = self
            .fresh_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= FRESH_FILE_EVERY;
        if empty && due {
            self.replace_if_empty()?;
        }
        Ok(())
    }

    /// Swaps in a fresh, empty file if no batch is waiting; a crash midway leaves either the
    /// old file or the new one in place, both holding every waiting batch (none).
    fn replace_if_empty(&self) -> Result<(), SensorError> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        {
            let txn = db.begin_read()?;
            if !txn.open_table(OUTBOX)?.is_empty()? || !txn.open_table(INBOX)?.is_empty()? {
                return Ok(());
            }
        }
        let fresh = fresh_path(&self.path);
        let _ = std::fs::remove_file(&fresh);
        let new = open_private(&fresh)?;
        // The place in the input and the ids a bridge took (no readings) move to the new file
        // before it becomes the outbox.
        {
            let old = db.begin_read()?;
            let txn = new.begin_write()?;
            {
                let mut cursor = txn.open_table(CURSOR)?;
                for entry in old.open_table(CURSOR)?.iter()? {
                    let (key, value) = entry?;
                    cursor.insert(key.value(), value.value())?;
                }
                let mut seen = txn.open_table(SEEN)?;
                for entry in old.open_table(SEEN)?.iter()? {
                    let (id, ts) = entry?;
                    seen.insert(id.value(), ts.value())?;
                }
            }
            txn.commit()?;
        }
        *db = new;
        std::fs::rename(&fresh, &self.path).map_err(|e| outbox_error(&self.path, e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| outbox_error(dir, e))?;
        }
        *self.fresh_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Ok(())
    }

    /// Every batch still waiting, e.g. after a restart.
    pub fn pending(&self) -> Result<Vec<PlainBatch>, SensorError> {
        let db = self.db();
        let txn = db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, bytes) = entry?;
            out.push(postcard::from_bytes(bytes.value())?);
        }
        Ok(out)
    }
}

fn read_cursor(db: &Database) -> Result<Option<Cursor>, SensorError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(CURSOR)?;
    let cursor = match table.get(CURSOR_KEY)? {
        Some(bytes) => Some(postcard::from_bytes(bytes.value())?),
        None => None,
    };
    Ok(cursor)
}

fn fresh_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".fresh");
    PathBuf::from(name)
}

fn outbox_error(path: &Path, e: std::io::Error) -> SensorError {
    SensorError::Outbox(format!("{}: {e}", path.display()))
}

/// Opens the database at `path` with mode 0600, tightening an existing file's mode too.
fn open_private(path: &Path) -> Result<Database, SensorError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| outbox_error(path, e))?;
    let db = mcloud_core::database::open(path)?;
    let txn = db.begin_write()?;
    txn.open_table(OUTBOX)?;
    txn.open_table(CURSOR)?;
    txn.open_table(INBOX)?;
    txn.open_table(SEEN)?;
    txn.commit()?;
    Ok(db)
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

    /// The outbox holds plaintext readings: only its owner may read the file, and once every
    /// batch settled no file holds them any more.
    #[test]
    fn the_file_is_private_and_settled_readings_leave_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        // A file left readable by an older version is tightened on open.
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let marker = 0x5EC12E7u32;
        let reading = |id| Reading {
            id,
            ts: 10,
            value: u64::from(marker),
            metric: Metric::Load,
            group: GroupKey {
                house: 1,
                household: 2,
                plug: 3,
            },
        };
        let outbox = Outbox::open(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        let batch = PlainBatch::new(1, (0..2000).map(reading).collect());
        outbox.put(&batch, None).unwrap();
        let encoded = postcard::to_stdvec(&batch.readings[0]).unwrap();
        let holds = |p: &Path| {
            let bytes = std::fs::read(p).unwrap();
            bytes
                .windows(encoded.len())
                .any(|w| w == encoded.as_slice())
        };
        assert!(holds(&path), "the outbox should hold the waiting batch");
        *outbox.fresh_since.lock().unwrap() -= FRESH_FILE_EVERY;
        outbox.remove(batch.id).unwrap();
        assert!(
            !holds(&path),
            "a settled reading is still in the outbox file"
        );
        assert_eq!(mode(&path), 0o600);
        assert!(outbox.pending().unwrap().is_empty());
        // The swapped-in file is the outbox: it takes batches and keeps them across a reopen.
        outbox.put(&batch, None).unwrap();
        drop(outbox);
        assert_eq!(Outbox::open(&path).unwrap().pending().unwrap(), vec![batch]);
    }

    /// The place in the input is written with the batch that moves it, and stays when an
    /// emptied outbox is swapped for a fresh file and when the outbox is opened again.
    #[test]
    fn the_cursor_moves_with_its_batch_and_survives_a_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        let outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.cursor().unwrap(), None);
        let batch = PlainBatch::new(1, Vec::new());
        let cursor = Cursor {
            input: [7; 32],
            batch_size: 64,
            histograms: true,
            cuts: 3,
        };
        outbox.put_cut(&batch, &cursor).unwrap();
        assert_eq!(outbox.pending().unwrap(), vec![batch.clone()]);
        assert_eq!(outbox.cursor().unwrap(), Some(cursor));
        *outbox.fresh_since.lock().unwrap() -= FRESH_FILE_EVERY;
        outbox.remove(batch.id).unwrap();
        assert_eq!(outbox.cursor().unwrap(), Some(cursor));
        drop(outbox);
        let outbox = Outbox::open(&path).unwrap();
        assert!(outbox.pending().unwrap().is_empty());
        assert_eq!(outbox.cursor().unwrap(), Some(cursor));
    }

    /// A bridge's readings: a redelivered one is recognised before and after it was cut into
    /// a batch, cutting empties the inbox into batches in one step, and what was seen travels
    /// with the file when an emptied outbox is swapped for a fresh one.
    #[test]
    fn received_readings_are_taken_once_and_cut_into_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        let reading = |id: u64| Reading {
            id,
            ts: 1000 + id,
            value: id,
            metric: Metric::Load,
            group: GroupKey {
                house: 0,
                household: 0,
                plug: 1,
            },
        };
        let outbox = Outbox::open(&path).unwrap();
        let first: Vec<Reading> = (0..5).map(reading).collect();
        assert_eq!(outbox.receive(&first).unwrap().new.len(), 5);
        let again: Vec<Reading> = (3..8).map(reading).collect();
        let received = outbox.receive(&again).unwrap();
        assert_eq!(received.new, (5..8).map(reading).collect::<Vec<_>>());
        assert_eq!(received.repeated, 2);
        assert_eq!(outbox.inbox_oldest().unwrap(), Some(1000));
        // Only what is older than 1006 first: two batches of three, and the histogram of
        // their window in a third (a batch was full when the input ended).
        assert_eq!(outbox.cut_inbox(9, 3, true, false, Some(1006)).unwrap(), 3);
        assert_eq!(outbox.inbox_oldest().unwrap(), Some(1006));
        let histogram_count = |outbox: &Outbox| -> u64 {
            outbox
                .pending()
                .unwrap()
                .iter()
                .flat_map(|b| &b.histograms)
                .map(|h| h.counts.iter().sum::<u64>())
                .sum()
        };
        assert_eq!(histogram_count(&outbox), 6);
        assert_eq!(outbox.cut_inbox(9, 3, true, false, None).unwrap(), 1);
        assert_eq!(
            histogram_count(&outbox),
            8,
            "a later cut adds the window's rest"
        );
        assert_eq!(outbox.inbox_oldest().unwrap(), None);
        let mut cut: Vec<Reading> = outbox
            .pending()
            .unwrap()
            .into_iter()
            .flat_map(|b| b.readings)
            .collect();
        cut.sort_by_key(|r| r.id);
        assert_eq!(cut, (0..8).map(reading).collect::<Vec<_>>());
        assert_eq!(
            outbox.receive(&first).unwrap().repeated,
            5,
            "redelivered after the cut"
        );
        for b in outbox.pending().unwrap() {
            *outbox.fresh_since.lock().unwrap() -= FRESH_FILE_EVERY;
            outbox.remove(b.id).unwrap();
        }
        drop(outbox);
        let outbox = Outbox::open(&path).unwrap();
        assert_eq!(
            outbox.receive(&first).unwrap().repeated,
            5,
            "after a fresh file"
        );
        // Ids older than 1004 are forgotten: those readings are late now, the rest repeats.
        outbox.forget_seen_before(1004).unwrap();
        let received = outbox.receive(&first).unwrap();
        assert_eq!((received.late, received.repeated), (4, 1));
        assert!(received.new.is_empty());
    }
}
