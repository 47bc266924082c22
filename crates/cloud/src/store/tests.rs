use super::*;
use crate::sums::WindowSums;
use crate::windows::{Registered, Windows};
use mcloud_core::reading::{GroupKey, Metric, Reading};
use mcloud_core::upload::split_batch;
use std::time::{Duration, Instant};

/// Party 0's body (a seed) of a batch of two readings, at `ts` and `ts + 1`.
fn batch(id: u128, ts: u64) -> UploadRequest {
    let readings: Vec<Reading> = (0..2)
        .map(|n| Reading {
            id: n,
            ts: ts + n,
            value: 100 + n,
            metric: Metric::Load,
            group: GroupKey {
                house: 1,
                household: 0,
                plug: n as u32,
            },
        })
        .collect();
    split_batch(BatchId(id), &[7; 32], 3, &readings, &[])
        .unwrap()
        .swap_remove(0)
}

/// A sealed 30 s window starting at `start` that one batch went into.
fn sealed_window(start: u64) -> SealedWindow {
    let mut w = Windows::new(30, 0, 0);
    let id = BatchId(u128::from(start) + 1);
    assert!(matches!(w.register(id, vec![start]), Ok(Registered::New)));
    w.stored(id);
    w.decide(id, true);
    w.advance(start + 30);
    w.seal(start, WindowSums::default());
    w.sealed_window(start).unwrap()
}

fn bytes_of(value: &impl serde::Serialize) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap()
}

/// Opens `dir` once the previous handle's writer let go of the file.
fn reopen(dir: &Path) -> (Store, Recovered) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(dir) {
            Ok(opened) => return opened,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("reopening: {e}"),
        }
    }
}

#[tokio::test]
async fn what_was_stored_comes_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, recovered) = Store::open(dir.path()).unwrap();
    assert_eq!(recovered.watermark, 0);
    assert!(recovered.newest_sealed.is_none());
    let (early, late) = (batch(1, 30), batch(2, 90));
    for b in [&early, &late] {
        let body = bytes::Bytes::from(bytes_of(b));
        store
            .put_batch(b.batch_id, StoredBatch::received(body))
            .await
            .unwrap();
    }
    store.set_watermark(500).await.unwrap();
    store.set_watermark(400).await.unwrap();
    let state = crate::elastic::BucketState::default();
    store
        .save_checkpoint(Checkpoint {
            states: vec![(3, state.clone())],
            covered: vec![early.batch_id],
        })
        .await
        .unwrap();
    let mut windows = EncodedWindows::default();
    for start in [30, 60, 90] {
        windows.add(start, &sealed_window(start)).unwrap();
    }
    store.save_sealed(windows).await.unwrap();
    store.prune(60, vec![early.batch_id], None).await.unwrap();
    assert_eq!(store.stored().unwrap(), (1, 0, 2));
    drop(store);

    let (store, recovered) = reopen(dir.path());
    assert_eq!(recovered.watermark, 500);
    assert_eq!(recovered.retained_from, 60);
    assert_eq!(recovered.newest_sealed, Some(90));
    // A pruned batch is no longer covered: a later batch under its id would be replayed.
    assert!(recovered.covered.is_empty());
    assert_eq!(recovered.checkpoint.len(), 1);
    assert_eq!(recovered.checkpoint[0].0, 3);
    assert_eq!(bytes_of(&recovered.checkpoint[0].1), bytes_of(&state));
    assert_eq!(
        store
            .read_checkpoint(&[3, 4, usize::MAX])
            .unwrap()
            .into_iter()
            .map(|(b, _)| b)
            .collect::<Vec<_>>(),
        vec![3]
    );
    let mut batches = Vec::new();
    store
        .each_batch(|id, request| {
            batches.push((id, request));
            Ok(())
        })
        .unwrap();
    assert_eq!(batches, vec![(late.batch_id, late.clone())]);
    let mut starts = Vec::new();
    store
        .each_sealed(|start, window| {
            assert_eq!(bytes_of(&window), bytes_of(&sealed_window(start)));
            starts.push(start);
            Ok(())
        })
        .unwrap();
    assert_eq!(starts, vec![60, 90]);
    assert!(store.read_sealed(30, true).unwrap().is_none());
    assert!(store.read_sealed(60, true).unwrap().is_some());
}

/// A batch folded into its sealed windows loses its shares but not its id, which a reopen
/// finds; folding a batch not stored (or pruned meanwhile) stores nothing; retention drops a
/// folded batch like any other.
#[tokio::test]
async fn a_folded_batch_keeps_only_its_id_until_it_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let (early, late) = (batch(1, 30), batch(2, 90));
    for b in [&early, &late] {
        let stored = StoredBatch::encode(b).unwrap();
        store.put_batch(b.batch_id, stored).await.unwrap();
    }
    store
        .fold(vec![(early.batch_id, 30), (BatchId(99), 30)])
        .await
        .unwrap();
    assert_eq!(store.stored().unwrap(), (1, 1, 0));
    assert!(store
        .replay(&[early.batch_id], 30, || |_| true)
        .unwrap()
        .is_empty());
    drop(store);

    let (store, _) = reopen(dir.path());
    let mut ids = Vec::new();
    store
        .each_batch(|id, _| {
            ids.push(id);
            Ok(())
        })
        .unwrap();
    assert_eq!(ids, vec![late.batch_id]);
    let mut folded = Vec::new();
    store
        .each_folded(|id, last| {
            folded.push((id, last));
            Ok(())
        })
        .unwrap();
    assert_eq!(folded, vec![(early.batch_id, 30)]);
    store.prune(60, vec![early.batch_id], None).await.unwrap();
    assert_eq!(store.stored().unwrap(), (1, 0, 0));
}

#[tokio::test]
async fn a_replay_keeps_only_the_windows_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    // Two readings at 29 and 30: one in each of the windows starting at 0 and 30.
    let request = batch(5, 29);
    let stored = StoredBatch::encode(&request).unwrap();
    store.put_batch(request.batch_id, stored).await.unwrap();
    let asked = std::cell::Cell::new(0);
    let replayed = store
        .replay(&[BatchId(4), request.batch_id], 30, || {
            asked.set(asked.get() + 1);
            |start| start >= 30
        })
        .unwrap();
    assert_eq!(asked.get(), 1, "only stored batches are expanded");
    assert_eq!(replayed.len(), 1);
    let times: Vec<u64> = replayed[0].records.iter().map(|r| r.ts).collect();
    assert_eq!(times, vec![30]);
}

/// The on-disk format, written here by name and by hand: a data directory from before still
/// opens and reads the same.
#[test]
fn reads_a_values_table_laid_out_by_name() {
    use redb::TableDefinition;
    let dir = tempfile::tempdir().unwrap();
    let request = batch(9, 60);
    let state = crate::elastic::BucketState::default();
    let window = sealed_window(60);
    {
        let db = redb::Database::create(dir.path().join("values.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let batches: TableDefinition<u128, &[u8]> = TableDefinition::new("batches");
            let meta: TableDefinition<&str, u64> = TableDefinition::new("meta");
            let checkpoint: TableDefinition<u32, &[u8]> = TableDefinition::new("checkpoint");
            let covered: TableDefinition<u128, u8> = TableDefinition::new("covered");
            let sealed: TableDefinition<u64, &[u8]> = TableDefinition::new("sealed");
            let bytes = bytes_of(&request);
            txn.open_table(batches)
                .unwrap()
                .insert(9, bytes.as_slice())
                .unwrap();
            let mut meta = txn.open_table(meta).unwrap();
            meta.insert("watermark", 120).unwrap();
            meta.insert("retained_from", 30).unwrap();
            let bytes = bytes_of(&state);
            txn.open_table(checkpoint)
                .unwrap()
                .insert(2, bytes.as_slice())
                .unwrap();
            txn.open_table(covered).unwrap().insert(9, 1).unwrap();
            let bytes = bytes_of(&window);
            txn.open_table(sealed)
                .unwrap()
                .insert(60, bytes.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let (store, recovered) = Store::open(dir.path()).unwrap();
    assert_eq!(
        (recovered.watermark, recovered.retained_from),
        (120, 30),
        "watermark and horizon"
    );
    assert_eq!(recovered.newest_sealed, Some(60));
    assert!(recovered.covered.contains(&BatchId(9)));
    assert_eq!(recovered.checkpoint.len(), 1);
    assert_eq!(recovered.checkpoint[0].0, 2);
    let mut batches = Vec::new();
    store
        .each_batch(|id, request| {
            batches.push((id, request));
            Ok(())
        })
        .unwrap();
    assert_eq!(batches, vec![(BatchId(9), request)]);
    let read = store.read_sealed(60, true).unwrap().unwrap();
    assert_eq!(bytes_of(&read), bytes_of(&window));
}

/// Archiving: the windows of an hour are read out as stored; a prune that archived them
/// remembers the hours, and from where on every dropped window was archived (the horizon
/// before the first archiving prune), across a reopen.
#[tokio::test]
async fn archived_hours_are_remembered_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, recovered) = Store::open(dir.path()).unwrap();
    assert_eq!(recovered.archived_from, None);
    let mut windows = EncodedWindows::default();
    for start in [30, 3600, 3630, 7200] {
        windows.add(start, &sealed_window(start)).unwrap();
    }
    store.save_sealed(windows).await.unwrap();
    // Dropped without archiving first: nothing before 60 is in any archive.
    store.prune(60, Vec::new(), None).await.unwrap();
    assert_eq!(store.first_sealed_from(0).unwrap(), Some(3600));
    assert_eq!(store.first_sealed_from(3601).unwrap(), Some(3630));
    assert_eq!(store.first_sealed_from(7201).unwrap(), None);
    let hour = store.sealed_between(3600, 7200).unwrap();
    assert_eq!(
        hour,
        vec![
            (3600, bytes_of(&sealed_window(3600))),
            (3630, bytes_of(&sealed_window(3630)))
        ]
    );
    store
        .prune(7200, Vec::new(), Some(vec![(3600, 2)]))
        .await
        .unwrap();
    store
        .prune(7230, Vec::new(), Some(vec![(7200, 1)]))
        .await
        .unwrap();
    assert_eq!(store.stored().unwrap(), (0, 0, 0));
    drop(store);

    let (_, recovered) = reopen(dir.path());
    assert_eq!(recovered.retained_from, 7230);
    assert_eq!(recovered.archived_from, Some(60));
    assert_eq!(
        recovered.archived.into_iter().collect::<Vec<_>>(),
        vec![3600, 7200]
    );
}

/// A window read back without its histograms has every record sum, its batches and digest,
/// and no histogram; with them it is the window as stored. Bytes past the sums are refused.
#[tokio::test]
async fn a_window_reads_back_with_or_without_its_histograms() {
    use mcloud_core::{CountField, Field, Partial};
    use prio::field::FieldElement;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let plug = |n| GroupKey {
        house: 1,
        household: 0,
        plug: n,
    };
    let mut sums = WindowSums::default();
    for n in 0..3u32 {
        let x = Field::from(u128::from(n) * 1_000 + 7);
        let partial = Partial {
            sum: x,
            sumsq: x * x,
            count: Field::one(),
        };
        sums.groups.insert((Metric::Load, plug(n)), partial);
        sums.groups.insert((Metric::Work, plug(n)), partial);
        let counts = (0..195u64)
            .map(|b| CountField::from(b * u64::from(n + 1)))
            .collect();
        sums.histograms.insert((60, plug(n)), counts);
    }
    let window = SealedWindow::from_parts(sums.clone(), 4, 0xfeed);
    let mut windows = EncodedWindows::default();
    windows.add(60, &window).unwrap();
    store.save_sealed(windows).await.unwrap();

    // Sorted, as two maps' encodings need not list their entries in one order.
    type Sorted = (Vec<String>, Vec<String>, u64, u128);
    let sorted = |w: &SealedWindow| -> Sorted {
        let (sums, batches, digest) = w.parts();
        let mut groups: Vec<String> = sums.groups.iter().map(|e| format!("{e:?}")).collect();
        let mut histograms: Vec<String> =
            sums.histograms.iter().map(|e| format!("{e:?}")).collect();
        groups.sort();
        histograms.sort();
        (groups, histograms, batches, digest)
    };
    let full = store.read_sealed(60, true).unwrap().unwrap();
    assert!(sorted(&full) == sorted(&window), "the window as stored");
    let light = store.read_sealed(60, false).unwrap().unwrap();
    let (groups, histograms, batches, digest) = sorted(&window);
    assert_eq!(groups.len(), 6);
    assert_eq!(histograms.len(), 3);
    assert!(
        sorted(&light) == (groups, Vec::new(), batches, digest),
        "sums only"
    );

    let mut longer = bytes_of(&window);
    longer.push(0);
    let refused = encoding::decode_window_sums_only(60, &longer)
        .err()
        .unwrap();
    assert!(
        refused.to_string().contains("1 bytes past its sums"),
        "{refused}"
    );
}
